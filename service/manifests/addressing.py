"""A manifest's ID: a sha256 over everything that determines its entries."""

from __future__ import annotations

import hashlib
import json

from sqlalchemy.orm import Session

from service.crud import label_bins
from service.models import Dataset, Job
from service.schemas import ManifestCreate

# Part of every ID: changing the selection rules must not reuse the IDs of the old ones.
ALGORITHM = "nst-manifest-v1"


def canonical_params(request: ManifestCreate) -> dict:
    """The request with its lists sorted and deduplicated, and null wherever a value cannot
    change the entries (so that it cannot change the ID either)."""
    params = request.model_dump()
    for name, value in params.items():  # -0.0 is 0.0 to every comparison, and so to the ID
        if isinstance(value, float) and value == 0:
            params[name] = 0.0
    params["labeled_dataset_ids"] = sorted(set(request.labeled_dataset_ids))
    params["job_ids"] = sorted(set(request.job_ids))
    pseudo_only = [name for name in params if name not in ("labeled_dataset_ids", "job_ids")]
    if not params["job_ids"]:  # a labeled-only manifest (how the first teacher is trained)
        return params | dict.fromkeys(pseudo_only)
    if not request.soft:
        params["temperature"] = None
    if not request.balance:
        params |= dict.fromkeys(("target_per_class", "target_mode", "seed"))
    return params


def _job_digest(session: Session, job: Job) -> dict:
    """Integer aggregates of the job's labels (from its label bins): exact, and the same on both
    databases."""
    count, item_sum, class_sum = label_bins.job_digest(session, job.id)
    return {
        "job_id": job.id,
        "teacher_id": job.teacher_id,
        "dataset_id": job.dataset_id,
        "labels": [count, item_sum, class_sum],
    }


def content_id(
    session: Session, *, params: dict, classes: list[str], labeled: list[Dataset], jobs: list[Job]
) -> str:
    document = {
        "algorithm": ALGORITHM,
        "params": params,
        "classes": classes,
        "jobs": [_job_digest(session, job) for job in jobs],
        "labeled": [{"dataset_id": d.id, "item_count": d.item_count} for d in labeled],
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
