"""Python client for the nst service, on httpx. The CLI, the trainer and the demo all use it.

from nst.client import Client
with Client("http://127.0.0.1:8000", token=None) as nst:
    ds = nst.register_dataset(name="pool", kind="unlabeled", path="/data/pool")
    job = nst.create_job(teacher_id=t["id"], dataset_id=ds["id"])
    nst.wait_for_job(job["id"])
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Literal

import httpx

from nst import atomic, manifest_file
from nst.states import TERMINAL_JOB_STATES, TeacherStatus


class NstError(Exception):
    """The service answered with an error; ``detail`` is its message (or, for a request body
    that failed validation, pydantic's list of errors, which the message spells out per field)."""

    def __init__(self, status_code: int, detail: Any, method: str, url: str):
        self.status_code, self.detail = status_code, detail
        super().__init__(f"{method} {url} -> {status_code}: {_described(detail)}")


def _described(detail: Any) -> str:
    """``threshold: Input should be less than or equal to 1`` for each of a 422's errors."""
    if not isinstance(detail, list) or not all(isinstance(e, dict) and "msg" in e for e in detail):
        return str(detail)
    fields = [".".join(map(str, error.get("loc", [])[1:])) or "request" for error in detail]
    return "; ".join(f"{field}: {error['msg']}" for field, error in zip(fields, detail, strict=True))


class UnknownId(LookupError):
    """No registered teacher or manifest, or more than one, has an ID starting with the prefix."""


class NotFound(NstError):
    pass


class Conflict(NstError):
    pass


class InvalidRequest(NstError):
    pass


class Unauthorized(NstError):
    pass


class Unavailable(NstError):
    pass


_ERRORS = {401: Unauthorized, 404: NotFound, 409: Conflict, 422: InvalidRequest, 503: Unavailable}


def _raise_for_error(response: httpx.Response, method: str) -> None:
    """The service's error (its ``detail``) as the matching NstError; nothing on success."""
    if not response.is_error:
        return
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    error = _ERRORS.get(response.status_code, NstError)
    raise error(response.status_code, detail, method, str(response.url))


# An idle pooled connection is dropped after this long. It must be shorter than the server's own
# keep-alive (uvicorn's default is 5 s, httpx's was 5 s too): otherwise a request sent as the
# server closes the connection is lost ("Server disconnected without sending a response"), as
# an integration test of ours saw. Polls come every 0.5 s and still reuse connections.
KEEPALIVE_EXPIRY_S = 1.0


def _copy_checked(response: httpx.Response, handle, path: str, sha256: str | None) -> None:
    """The response's body into ``handle``; raises unless it hashes to ``sha256`` (when given)."""
    digest = hashlib.sha256()
    for chunk in response.iter_bytes():
        handle.write(chunk)
        digest.update(chunk)
    if sha256 is not None and digest.hexdigest() != sha256:
        raise ValueError(f"{path}: the file's sha256 is {digest.hexdigest()}, not {sha256}")


class Client:
    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        token: str | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url
        self._http = httpx.Client(
            base_url=base_url,
            headers=headers,
            timeout=timeout,
            transport=transport,
            # httpx's own connection caps, which a Limits without them would lift
            limits=httpx.Limits(
                max_connections=100, max_keepalive_connections=20, keepalive_expiry=KEEPALIVE_EXPIRY_S
            ),
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        response = self._http.request(method, path, **kwargs)
        _raise_for_error(response, method)
        return response

    def _json(self, method: str, path: str, **kwargs) -> Any:
        response = self._request(method, path, **kwargs)
        return None if response.status_code == 204 else response.json()

    def _until_done(self) -> httpx.Timeout:
        """For a request whose answer is work done within it (a folder of millions scanned and
        inserted, a manifest of millions built, a checkpoint hashed): no limit on the wait for the
        answer, which a timeout would give up on while the server goes on and commits; the
        client's limits for connecting and sending stay."""
        limits = self._http.timeout
        return httpx.Timeout(connect=limits.connect, read=None, write=limits.write, pool=limits.pool)

    def _listing(self, path: str, params: dict, page_size: int = 1000) -> list[dict]:
        """Every row of a registry list (``{data, count}``, paged by offset), not only the first page."""
        rows: list[dict] = []
        while True:
            page = self._json("GET", path, params={**params, "offset": len(rows), "limit": page_size})
            rows += page["data"]
            if not page["data"] or len(rows) >= page["count"]:
                return rows

    def _download(
        self,
        path: str,
        params: dict,
        out: str | Path | IO[bytes],
        *,
        sha256: str | None = None,
        check: Callable[[Path, httpx.Headers], None] | None = None,
    ) -> Path | IO[bytes]:
        """Stream the response into ``out`` through a temporary file beside it (beside the file a
        symlink names), flushed to disk and renamed into place only once the whole body has
        arrived and, with ``sha256``, matches it and passes ``check(file, headers)``: a failed,
        interrupted or refused download leaves ``out`` as it was, with no partial file beside it.
        A pipe, a device (``/dev/stdout``) or an open binary file is written directly, as it cannot
        be replaced, and is not read back for ``check``. A missing folder is an error before any
        request."""
        if not isinstance(out, str | Path):
            with self._stream(path, params) as resp:
                _copy_checked(resp, out, path, sha256)
            return out
        out = Path(out)
        atomic.check_folder(out)
        with self._stream(path, params) as resp, atomic.replacing(out) as part:
            with part.open("wb") as handle:
                _copy_checked(resp, handle, path, sha256)
            if check is not None and part.is_file():
                check(part, resp.headers)
        return out

    @contextmanager
    def _stream(self, path: str, params: dict) -> Iterator[httpx.Response]:
        """A streamed GET whose body is still to be read; an error answer raises its NstError."""
        with self._http.stream("GET", path, params=params) as resp:
            if resp.is_error:
                resp.read()
                _raise_for_error(resp, "GET")
            yield resp

    def _pages(self, path: str, params: dict | None = None) -> Iterator[dict]:
        params = dict(params or {})
        while True:
            page = self._json("GET", path, params=params)
            yield from page["data"]
            if page.get("next_cursor") is None:
                return
            params["cursor"] = page["next_cursor"]

    # --- service -----------------------------------------------------------------------------

    def health(self) -> dict:
        return self._json("GET", "/health")

    def wait_until_up(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.health()
                return
            except (httpx.TransportError, NstError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    # --- datasets ----------------------------------------------------------------------------

    def register_dataset(
        self,
        *,
        name: str,
        kind: str,
        path: str | Path,
        split: str | None = None,
        classes: list[str] | None = None,
    ) -> dict:
        body = {"name": name, "kind": kind, "path": str(path), "split": split}
        if classes is not None:
            body["classes"] = classes
        return self._json("POST", "/datasets", json=body, timeout=self._until_done())

    def dataset(self, dataset_id: int) -> dict:
        return self._json("GET", f"/datasets/{dataset_id}")

    def datasets(self, **filters) -> list[dict]:
        return self._listing("/datasets", filters)

    def items(self, dataset_id: int, page_size: int = 5000) -> Iterator[dict]:
        return self._pages(f"/datasets/{dataset_id}/items", {"limit": page_size})

    def delete_dataset(self, dataset_id: int) -> None:
        self._json("DELETE", f"/datasets/{dataset_id}")

    # --- teachers ----------------------------------------------------------------------------

    def register_teacher(self, path: str | Path, metadata: dict | None = None) -> dict:
        """Register a safetensors file that lies under a data root (by path)."""
        return self._json(
            "POST", "/teachers", json={"path": str(path), "metadata": metadata}, timeout=self._until_done()
        )

    def upload_teacher(self, path: str | Path, metadata: dict | None = None) -> dict:
        path = Path(path)
        data = {"metadata": json.dumps(metadata)} if metadata else {}
        with path.open("rb") as handle:
            files = {"file": (path.name, handle, "application/octet-stream")}
            return self._json("POST", "/teachers/upload", files=files, data=data, timeout=self._until_done())

    def teacher(self, teacher_id: str) -> dict:
        return self._json("GET", f"/teachers/{teacher_id}")

    def teachers(self, **filters) -> list[dict]:
        return self._listing("/teachers", filters)

    def full_id(self, kind: Literal["teacher", "manifest"], given: str) -> str:
        """The ID of the one teacher or manifest whose ID starts with ``given`` (any case), as
        `nst teachers list` and `nst manifests list` print them, shortened; ``UnknownId`` if none
        or several do. A whole ID is returned as it is, lower-cased."""
        given = given.strip().lower()
        if len(given) == 64:
            return given
        listing = self.teachers() if kind == "teacher" else self.manifests()
        matches = [row["id"] for row in listing if row["id"].startswith(given)]
        if len(matches) != 1:
            found = f"no {kind}" if not matches else f"{len(matches)} {kind}s"
            raise UnknownId(f"{found} with an ID starting {given!r}")
        return matches[0]

    def download_teacher(self, teacher_id: str, out: str | Path) -> Path:
        """The teacher's safetensors file, checked against its ID (the file's sha256) before it
        takes ``out``'s place."""
        return self._download(f"/teachers/{teacher_id}/checkpoint", {}, out, sha256=teacher_id)

    def set_teacher_temperature(self, teacher_id: str, temperature: float | None) -> dict:
        """Store the teacher's calibrated softmax temperature (None clears it)."""
        return self._json("PUT", f"/teachers/{teacher_id}/temperature", json={"temperature": temperature})

    def delete_teacher(self, teacher_id: str) -> None:
        self._json("DELETE", f"/teachers/{teacher_id}")

    def wait_for_teacher(self, teacher_id: str, timeout: float = 300.0) -> dict:
        """Wait for a worker's verdict; raise ``InvalidRequest`` if the checkpoint is invalid."""
        teacher = self._poll(
            lambda: self.teacher(teacher_id),
            lambda t: t["status"] != TeacherStatus.PENDING,
            timeout,
            f"teacher {teacher_id}",
        )
        if teacher["status"] == TeacherStatus.INVALID:
            raise InvalidRequest(
                422,
                f"teacher {teacher_id} is invalid: {teacher['status_reason']}",
                "GET",
                f"/teachers/{teacher_id}",
            )
        return teacher

    # --- workers -----------------------------------------------------------------------------

    def workers(self) -> dict:
        """``{data, count, online}``: the worker processes heard from in the last day, online
        ones first."""
        return self._json("GET", "/workers")

    # --- jobs --------------------------------------------------------------------------------

    def create_job(self, *, teacher_id: str, dataset_id: int, **options) -> dict:
        body = {"teacher_id": teacher_id, "dataset_id": dataset_id, **options}
        return self._json("POST", "/jobs", json=body)

    def job(self, job_id: int) -> dict:
        return self._json("GET", f"/jobs/{job_id}")

    def jobs(self, *, teacher_id: str | None = None, dataset_id: int | None = None) -> list[dict]:
        """Every job, or only a teacher's, or only those over a dataset."""
        filters = {"teacher_id": teacher_id, "dataset_id": dataset_id}
        return self._listing("/jobs", {name: value for name, value in filters.items() if value is not None})

    def delete_job(self, job_id: int) -> None:
        """Delete a job that has stopped, with its labels (409 while a manifest uses it)."""
        self._json("DELETE", f"/jobs/{job_id}")

    def cancel_job(self, job_id: int) -> dict:
        return self._json("POST", f"/jobs/{job_id}/cancel")

    def resume_job(self, job_id: int) -> dict:
        return self._json("POST", f"/jobs/{job_id}/resume")

    def shards(self, job_id: int, states: Sequence[str] = ()) -> Iterator[dict]:
        """The job's shards in index order, a page at a time (only those in ``states``, if any)."""
        return self._pages(f"/jobs/{job_id}/shards", {"state": list(states)} if states else None)

    def wait_for_job(
        self, job_id: int, timeout: float | None = 3600.0, on_progress: Callable[[dict], None] | None = None
    ) -> dict:
        """The job once it has ended; ``TimeoutError`` after ``timeout`` seconds (None: no limit)."""

        def fetch() -> dict:
            job = self.job(job_id)
            if on_progress:
                on_progress(job)
            return job

        return self._poll(fetch, lambda j: j["state"] in TERMINAL_JOB_STATES, timeout, f"job {job_id}")

    def labels(self, job_id: int, page_size: int = 5000) -> Iterator[dict]:
        return self._pages(f"/jobs/{job_id}/labels", {"limit": page_size})

    def item_errors(self, job_id: int) -> Iterator[dict]:
        return self._pages(f"/jobs/{job_id}/errors")

    def export_labels(
        self, job_id: int, out: str | Path | IO[bytes], fmt: str = "parquet"
    ) -> Path | IO[bytes]:
        return self._download(f"/jobs/{job_id}/labels", {"format": fmt}, out)

    @staticmethod
    def _poll(
        fetch: Callable[[], dict],
        done: Callable[[dict], bool],
        timeout: float | None,
        what: str,
        interval: float = 0.5,
    ) -> dict:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            value = fetch()
            if done(value):
                return value
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{what} not finished after {timeout:.0f} s: {value}")
            time.sleep(interval)

    # --- statistics and manifests --------------------------------------------------------------

    def job_stats(self, job_id: int, threshold: float = 0.3, **params) -> dict:
        """Per-class counts, mean confidence and histograms; ``labeled_dataset_id=`` picks the
        labeled dataset to compare with."""
        return self._json("GET", f"/jobs/{job_id}/stats", params={"threshold": threshold, **params})

    def job_quality(self, job_id: int, thresholds: list[float] | None = None) -> dict:
        """Coverage and precision per threshold of a job over a labeled dataset."""
        params = {"thresholds": ",".join(map(str, thresholds))} if thresholds else {}
        return self._json("GET", f"/jobs/{job_id}/quality", params=params)

    def job_stats_chart(
        self, job_id: int, out_path: str | Path, threshold: float = 0.3, fmt: str = "png", **params
    ) -> Path:
        query = {"threshold": threshold, "format": fmt, **params}
        chart = self._request("GET", f"/jobs/{job_id}/stats/chart", params=query).content
        return atomic.write_bytes(out_path, chart)

    def create_manifest(self, **body) -> dict:
        """Build (201) or find (200) the manifest for these inputs; see ``ManifestCreate``."""
        return self._json("POST", "/manifests", json=body, timeout=self._until_done())

    def delete_manifest(self, manifest_id: str) -> None:
        """Delete a manifest and its entries (409 while a teacher's lineage names it)."""
        self._json("DELETE", f"/manifests/{manifest_id}")

    def manifest(self, manifest_id: str) -> dict:
        return self._json("GET", f"/manifests/{manifest_id}")

    def manifests(self, **params) -> list[dict]:
        return self._listing("/manifests", params)

    def export_manifest(
        self, manifest_id: str, out: str | Path | IO[bytes], fmt: str = "parquet"
    ) -> Path | IO[bytes]:
        """Every entry into ``out``: a file is put in place only once its rows match the count
        the service announced and, for Parquet, the digest in its footer
        (``nst.manifest_file``); a stream is written as it arrives."""

        def check(file: Path, headers: httpx.Headers) -> None:
            if fmt == "parquet":
                manifest_file.check_parquet(file, manifest_id, dict(headers))
            else:
                manifest_file.check_jsonl(file, manifest_id, dict(headers))

        return self._download(f"/manifests/{manifest_id}/entries", {"format": fmt}, out, check=check)

    def manifest_parquet(self, manifest_id: str, into: IO[bytes], *, part: int = 0, parts: int = 1) -> dict:
        """Stream one share of the manifest's entries as Parquet (sparse targets) into the file
        ``into``, never holding the body in memory; return the response's headers. ``part`` of
        ``parts`` disjoint shares together cover it."""
        params = {"format": "parquet", "part": part, "parts": parts}
        with self._stream(f"/manifests/{manifest_id}/entries", params) as response:
            for chunk in response.iter_bytes():
                into.write(chunk)
            return dict(response.headers)

    def manifest_entries(self, manifest_id: str, page_size: int = 5000) -> Iterator[dict]:
        return self._pages(f"/manifests/{manifest_id}/entries", {"limit": page_size})
