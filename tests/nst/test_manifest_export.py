"""A manifest export is put in place only when it is the manifest asked for, whole: its rows
match the count the service announced and, for Parquet, the digest in its footer. A download
changed on the way is refused with the reason, leaving the earlier file as it was. The checks
are the client's, the same whichever database served the manifest: the embedded one here."""

import json

import pyarrow.parquet as pq
import pytest

from nst.manifest_file import ManifestMismatch
from tests.utils import synthetic
from tests.utils.tampering import one_copies_value_changed, other_manifest
from tests.utils.transport import in_process_client

CLASSES = ["cat", "dog", "eel"]


@pytest.fixture
def manifest(client):
    teacher = synthetic.teacher(CLASSES)
    labeled = synthetic.labeled_dataset(CLASSES, [0, 1, 2])
    job = synthetic.finished_job(teacher, [(0, 0.9), (1, 0.8), (2, 0.6), (1, 0.7)])
    body = {"labeled_dataset_ids": [labeled], "job_ids": [job.id], "balance": False}
    return client.post("/manifests", json=body).json()


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "exports"
    path.mkdir()
    return path


def _last_line_dropped(headers, body):
    return headers, b"".join(body.splitlines(keepends=True)[:-1])


def test_an_export_that_matches_is_written(client, manifest, folder):
    with in_process_client(client) as nst:
        parquet = nst.export_manifest(manifest["id"], folder / "m.parquet")
        jsonl = nst.export_manifest(manifest["id"], folder / "m.jsonl", fmt="jsonl")
    entries = manifest["totals"]["entries"]
    assert pq.read_table(parquet).num_rows == entries
    assert len(jsonl.read_text().splitlines()) == entries
    assert {json.loads(line)["item_id"] for line in jsonl.read_text().splitlines()} == set(
        pq.read_table(parquet)["item_id"].to_pylist()
    )
    assert sorted(p.name for p in folder.iterdir()) == ["m.jsonl", "m.parquet"]


@pytest.mark.parametrize(
    ("fmt", "change", "message"),
    [
        ("parquet", one_copies_value_changed, "the entries that arrived hash to"),
        ("parquet", lambda h, b: (h, b[: len(b) // 2]), "not a Parquet file"),
        ("parquet", other_manifest, "the service sent entries of " + "f" * 64),
        ("jsonl", _last_line_dropped, r"the service announced 7 entries, 6 arrived"),
        ("jsonl", other_manifest, "the service sent entries of " + "f" * 64),
    ],
)
def test_an_export_changed_on_the_way_is_refused_and_the_earlier_file_kept(
    client, manifest, folder, fmt, change, message
):
    out = folder / f"m.{fmt}"
    out.write_bytes(b"an earlier export")
    with in_process_client(client, change) as nst, pytest.raises(ManifestMismatch, match=message):
        nst.export_manifest(manifest["id"], out, fmt=fmt)
    assert out.read_bytes() == b"an earlier export"
    assert [p.name for p in folder.iterdir()] == [out.name]
