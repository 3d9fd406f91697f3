"""nst.storage on its own: URL rules, confinement, redaction, and reads from a real S3 server in
forked DataLoader processes, where missing, denied and unreachable become item errors."""

import io
import os
import stat
from pathlib import Path

import pytest
from PIL import Image
from torch.utils.data import DataLoader

from nst import storage
from nst.config import SettingsError, get_settings
from tests.utils.env import clear_caches
from workers.decode import ImageFiles, TransientError
from workers.teacher_model import ImageFormat

pytest_plugins = ["tests.utils.s3"]

FORMAT = ImageFormat(1, 28, "bilinear", (0.5,), (0.5,), 1.0)


def test_a_url_with_credentials_is_refused_without_repeating_them():
    with pytest.raises(storage.BadLocation, match="carries credentials") as caught:
        storage.normalise_url("s3://AKIAEXAMPLE:hunter2-secret@nst-test/data")
    assert "hunter2" not in str(caught.value) and "AKIAEXAMPLE" not in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("s3://nst-test/data/../other", "'..'"),
        ("s3://nst-test/a?versionId=1", "query"),
        ("s3://nst-test/a.png#/../../other", "'..'"),
        ("https://example.com/a.png?X-Amz-Signature=0", "query"),
        ("s3:///key", "bucket"),
        ("s3://nst-test#x/key", "bucket"),
    ],
)
def test_urls_that_could_escape_or_mislead_are_refused(raw, problem):
    with pytest.raises(storage.BadLocation, match=problem):
        storage.normalise_url(raw)


def test_an_s3_keys_hash_and_question_mark_are_its_own_characters():
    """S3 allows them in a key and s3fs reads them so: a URL names such an object as it is."""
    for raw in ("s3://nst-test/pool/img#1.png", "s3://nst-test/pool/what?.png", "s3://nst-test/a@b.png"):
        assert storage.location(raw) == raw


def test_confinement_under_url_prefixes_is_by_whole_segments(tmp_path):
    roots = [storage.location("s3://nst-test/data/"), tmp_path]
    assert storage.confine("s3://nst-test/data/a/b.png", roots) == "s3://nst-test/data/a/b.png"
    assert storage.confine("s3://nst-test/data", roots) == "s3://nst-test/data"
    for outside in ("s3://nst-test/database/x.png", "s3://other/data/x.png", "/etc/passwd"):
        with pytest.raises(storage.BadLocation, match="outside the data roots"):
            storage.confine(outside, roots)
    (tmp_path / "link").symlink_to("/etc")
    with pytest.raises(storage.BadLocation, match="resolves to '/etc'"):
        storage.confine(str(tmp_path / "link"), roots)


def test_secrets_from_the_environment_and_urls_are_redacted(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value-xyz")
    text = storage.redact("signed with s3cr3t-value-xyz for s3://user:pw@bucket/key")
    assert text == "signed with *** for s3://***@bucket/key"


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (FileNotFoundError("NoSuchKey"), "missing"),
        (PermissionError("SignatureDoesNotMatch"), "denied"),
        (ConnectionResetError(), "transient"),
        (TimeoutError(), "transient"),
        (OSError(5, "InternalError"), "transient"),  # s3fs's EIO for a server-side failure
        (ValueError("bad"), "error"),
    ],
)
def test_errors_are_classified(error, kind):
    assert storage.classify(error) == kind


def test_settings_take_url_prefixes_and_name_the_variable_on_a_bad_one(monkeypatch, tmp_path):
    monkeypatch.setenv("NST_DATA_ROOTS", f"s3://nst-test/data/,{tmp_path}")
    monkeypatch.setenv("NST_ARTIFACT_DIR", "s3://nst-test/artifacts")
    clear_caches()
    settings = get_settings()
    assert settings.data_roots == ["s3://nst-test/data", tmp_path.resolve()]
    assert settings.artifact_dir == "s3://nst-test/artifacts"
    settings.ensure_dirs()  # URL roots are not folders to make
    monkeypatch.setenv("NST_ARTIFACT_DIR", "s3://key:secret@nst-test/artifacts")
    clear_caches()
    with pytest.raises(SettingsError, match="NST_ARTIFACT_DIR: .*carries credentials") as caught:
        get_settings()
    assert "secret" not in str(caught.value).replace("AWS_SECRET", "")


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (28, 28), value).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def objects(s3_server):
    client = s3_server.client()
    for i in range(4):
        client.put_object(Bucket=s3_server.bucket, Key=f"unit/{i}.png", Body=_png(40 * i))
    storage._filesystems.clear()  # this process's file system, made afresh with today's environment
    yield [s3_server.url(f"unit/{i}.png") for i in range(4)]
    storage._filesystems.clear()


def _decode_in_processes(uris: list[str]) -> list[tuple]:
    """Decode keys in two forked DataLoader processes, as a worker does."""
    keys = [(i, uri, FORMAT) for i, uri in enumerate(uris)]
    loader = DataLoader(ImageFiles(), sampler=keys, batch_size=None, num_workers=2)
    return list(loader)


def test_objects_are_listed_and_decoded_in_forked_processes(objects, s3_server):
    storage.list_files(s3_server.url("unit"))  # the parent's own file system exists before the fork
    assert storage.list_files(s3_server.url("unit")) == objects
    decoded = _decode_in_processes([*objects, s3_server.url("unit/gone.png")])
    for tensor, _, error, _ in decoded[:4]:
        assert error == "" and tensor.shape == (1, 28, 28)
    assert [int(t[0][0, 0, 0]) for t in decoded[:4]] == [40 * i for i in range(4)]  # uint8 pixels
    _, _, error, _ = decoded[4]
    assert "does not exist" in error and not isinstance(error, TransientError)


def test_wrong_credentials_and_an_unreachable_store_are_item_errors(objects, s3_server, monkeypatch):
    wrong = "wrong-secret-" + "x" * 27
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    (_, _, denied, _), *_ = _decode_in_processes(objects[:1])
    assert "access denied" in denied and not isinstance(denied, TransientError)
    assert wrong not in denied and s3_server.secret not in denied
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_RETRY_MODE", "standard")
    (_, _, unreachable, _), *_ = _decode_in_processes(objects[:1])
    assert isinstance(unreachable, TransientError) and "storage unavailable" in unreachable


def test_a_cached_copy_is_checked_against_its_sha256(objects, tmp_path):
    import hashlib

    sha = hashlib.sha256(storage.read_bytes(objects[1])).hexdigest()
    previous = os.umask(0o022)
    try:
        copy = storage.cached_copy(objects[1], tmp_path / f"{sha}.png", sha)
    finally:
        os.umask(previous)
    assert copy == tmp_path / f"{sha}.png" and copy.read_bytes() == storage.read_bytes(objects[1])
    assert stat.S_IMODE(copy.stat().st_mode) == 0o644  # the umask's mode: other users' workers read it
    with pytest.raises(storage.StorageError, match="expected 0000"):
        storage.cached_copy(objects[2], tmp_path / "other" / "copy.png", "0" * 64)
    assert list(Path(tmp_path / "other").iterdir()) == []  # nothing half-written left behind
