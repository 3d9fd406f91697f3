from dataclasses import replace
from typing import Literal

from fastapi import APIRouter, HTTPException, Response, status

from nst import storage
from service import pixel_stats
from service.api.deps import (
    Offset,
    OrdinalCursor,
    PageLimit,
    RegistryLimit,
    RowId,
    SessionDep,
    SettingsDep,
    get_or_404,
)
from service.api.errors import BODY, responses
from service.crud import datasets as crud
from service.manifests import reads
from service.models import Dataset
from service.scan import ScanError, scan
from service.schemas import DatasetCreate, DatasetPublic, DatasetsPublic, ItemsPage

router = APIRouter(prefix="/datasets", tags=["datasets"])


def _public(session, dataset: Dataset) -> DatasetPublic:
    public = DatasetPublic.model_validate(dataset)
    public.class_counts = crud.class_counts(session, dataset=dataset)
    return public


@router.post("", status_code=status.HTTP_201_CREATED, responses=responses(*BODY, 503))
def register_dataset(body: DatasetCreate, session: SessionDep, settings: SettingsDep) -> DatasetPublic:
    sample = pixel_stats.EvenSample()
    try:
        result = scan(
            body.path, labeled=body.kind == "labeled", roots=settings.data_roots, classes=body.classes
        )
        # A folder's rows are walked as they are inserted: a problem met on the way is still a 422.
        dataset = crud.create_dataset(
            session,
            name=body.name,
            kind=body.kind,
            split=body.split,
            modality=body.modality,
            scan=replace(result, rows=sample.watch(result.rows)),
        )
    except ScanError as exc:
        session.rollback()
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"path: {exc}") from None
    except storage.StorageUnavailable as exc:  # the store did not answer; a retry may succeed
        session.rollback()
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=f"path: {exc}") from None
    dataset.pixel_stats = pixel_stats.measure(sample.uris)
    session.commit()
    return _public(session, dataset)


@router.get("")
def list_datasets(
    session: SessionDep,
    offset: Offset = 0,
    limit: RegistryLimit = 100,
    kind: Literal["labeled", "unlabeled"] | None = None,
    split: Literal["train", "val", "test"] | None = None,
) -> DatasetsPublic:
    rows, count = crud.list_datasets(session, offset=offset, limit=limit, kind=kind, split=split)
    return DatasetsPublic(data=[_public(session, d) for d in rows], count=count)


@router.get("/{dataset_id}", responses=responses(404))
def get_dataset(dataset_id: RowId, session: SessionDep) -> DatasetPublic:
    return _public(session, get_or_404(session, Dataset, dataset_id))


@router.get("/{dataset_id}/items", responses=responses(404))
def list_items(
    dataset_id: RowId,
    session: SessionDep,
    cursor: OrdinalCursor = None,
    limit: PageLimit = 1000,
) -> ItemsPage:
    get_or_404(session, Dataset, dataset_id)
    rows, next_cursor = crud.items_page(session, dataset_id=dataset_id, cursor=cursor, limit=limit)
    return ItemsPage(data=rows, next_cursor=next_cursor)


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT, responses=responses(404, 409))
def delete_dataset(dataset_id: RowId, session: SessionDep) -> Response:
    dataset = get_or_404(session, Dataset, dataset_id)
    jobs = crud.dependent_job_ids(session, dataset_id=dataset_id)
    if jobs:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail=f"dataset {dataset_id} is used by labeling job(s) {jobs}; delete those first",
        )
    manifests = reads.drawing_on(session, dataset_id=dataset_id)
    if manifests:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail=f"dataset {dataset_id} is part of manifest(s) {manifests}, which are immutable",
        )
    session.delete(dataset)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
