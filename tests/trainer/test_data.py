import io

import pytest
import torch

from tests.utils import synthetic
from tests.utils.tampering import one_copies_value_changed, other_manifest
from tests.utils.transport import in_process_client
from trainer.data import ManifestMismatch, check_entries, fetch_manifest

CLASSES = ["cat", "dog", "eel"]

pytestmark = pytest.mark.usefixtures("backend")  # first, so that the app opens the right database


@pytest.fixture
def manifest(client):
    teacher = synthetic.teacher(CLASSES)
    labeled = synthetic.labeled_dataset(CLASSES, [0, 1, 2, 0])
    job = synthetic.finished_job(teacher, [(0, 0.9), (1, 0.8), (2, 0.6), (1, 0.7), (0, 0.5)])
    body = {"labeled_dataset_ids": [labeled], "job_ids": [job.id], "balance": False, "temperature": 2.0}
    return client.post("/manifests", json=body).json()


def _json_targets(client, manifest: dict) -> dict[str, list[float] | int]:
    entries = client.get(f"/manifests/{manifest['id']}/entries", params={"limit": 1000}).json()["data"]
    return {e["uri"]: e["target"] for e in entries}


def test_the_trainer_rebuilds_the_json_targets_from_sparse_ones(client, manifest):
    with in_process_client(client) as nst:
        _, labeled, pseudo = fetch_manifest(nst, manifest["id"])
    expected = _json_targets(client, manifest)
    assert len(labeled) + len(pseudo) == manifest["totals"]["entries"] and pseudo.soft and not labeled.soft
    for i, uri in enumerate(labeled.uris):
        assert labeled.target(i).item() == expected[uri]
    for i, uri in enumerate(pseudo.uris):
        assert pseudo.target(i).tolist() == expected[uri]
    assert pseudo.target(0).dtype == torch.float32


def test_ranks_take_disjoint_shares_that_cover_the_manifest(client, manifest):
    with in_process_client(client) as nst:
        shares = [fetch_manifest(nst, manifest["id"], part=r, parts=2)[1:] for r in range(2)]
    uris = [set(labeled.uris) | set(pseudo.uris) for labeled, pseudo in shares]
    assert not uris[0] & uris[1] and uris[0] | uris[1] == set(_json_targets(client, manifest))
    check_entries(manifest, sum(len(labeled) + len(pseudo) for labeled, pseudo in shares))
    with pytest.raises(ManifestMismatch, match=r"has 9 entries, the ranks received \d+ in all"):
        check_entries(manifest, len(shares[0][0]) + len(shares[0][1]))


def test_a_manifest_read_in_record_batches_is_the_same_as_read_whole(client, manifest, monkeypatch):
    """Batches of 2 rows: labeled and pseudo entries interleave across them, and one split may
    have no row in a batch at all."""
    with in_process_client(client) as nst:
        _, labeled, pseudo = fetch_manifest(nst, manifest["id"])
        monkeypatch.setattr("nst.manifest_file.BATCH_ROWS", 2)
        _, labeled_2, pseudo_2 = fetch_manifest(nst, manifest["id"])
    for whole, batched in ((labeled, labeled_2), (pseudo, pseudo_2)):
        assert list(whole.uris) == list(batched.uris) and len(batched) == len(whole)
        assert whole.copies.tolist() == batched.copies.tolist()
        assert [whole.target(i).tolist() for i in range(len(whole))] == [
            batched.target(i).tolist() for i in range(len(batched))
        ]
    assert pseudo_2.uris[1] == list(pseudo.uris)[1]  # indexed one at a time, as a Dataset does


def test_a_manifest_with_only_labeled_entries_has_an_empty_soft_pseudo_split(client):
    labeled = synthetic.labeled_dataset(CLASSES, [0, 1, 2])
    teacher = synthetic.teacher(CLASSES)
    job = synthetic.finished_job(teacher, [(0, 0.2)])
    body = {"labeled_dataset_ids": [labeled], "job_ids": [job.id], "threshold": 0.5, "balance": False}
    only_labeled = client.post("/manifests", json=body).json()
    with in_process_client(client) as nst:
        _, labeled_split, pseudo = fetch_manifest(nst, only_labeled["id"])
    assert len(labeled_split) == 3 and len(pseudo) == 0 and pseudo.soft
    assert pseudo.sparse.indices.shape[0] == 0 and pseudo.sparse.indices.ndim == 2


class _Tampering:
    """A client whose Parquet download is changed on the way."""

    def __init__(self, client, change):
        self.client, self.change = client, change

    def manifest(self, manifest_id):
        return self.client.manifest(manifest_id)

    def manifest_parquet(self, manifest_id, into, **share):
        received = io.BytesIO()
        headers = self.client.manifest_parquet(manifest_id, received, **share)
        headers, body = self.change(headers, received.getvalue())
        into.write(body)
        return headers


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (one_copies_value_changed, "the entries that arrived hash to"),
        (lambda h, b: ({**h, "x-manifest-entries": "8"}, b), "announced 8 entries and streamed 9, 9 arrived"),
        (other_manifest, "the service sent entries of " + "f" * 64),
    ],
)
def test_a_download_that_does_not_match_the_manifest_is_refused(client, manifest, change, message):
    with in_process_client(client) as nst, pytest.raises(ManifestMismatch, match=message):
        fetch_manifest(_Tampering(nst, change), manifest["id"])
