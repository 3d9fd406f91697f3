"""Bytes by local path or URL: ``s3://bucket/prefix/…`` through s3fs, and any other fsspec URL.

Credentials never travel in a URL (one with ``user:pass@`` is refused): fsspec's back ends take
them from their standard environment (for S3 botocore's: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``~/.aws``, and ``AWS_ENDPOINT_URL`` for MinIO and
friends). Every error raised here is one of ``StorageError``'s kinds, its message redacted.

A file system object holds an event loop and connections that do not survive a fork, so each
process makes its own (``filesystem`` is keyed by process ID): DataLoader and Celery pool
processes read safely after the fork.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from stat import S_ISDIR
from typing import IO
from urllib.parse import urlsplit

from nst import atomic

Location = Path | str  # a resolved local path, or a normalised URL

_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_USERINFO = re.compile(r"(://)[^/@\s]*@")
_SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
_TRANSIENT_ERRNOS = {errno.EIO, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED}


class StorageError(OSError):
    """Reading or listing failed; ``kind`` says how (missing, denied, transient)."""

    kind = "error"


class BadLocation(StorageError, ValueError):
    """The path or URL itself is refused (credentials in it, ``..``, outside the roots)."""

    kind = "invalid"


class ObjectMissing(StorageError, FileNotFoundError):
    kind = "missing"


class AccessDenied(StorageError, PermissionError):
    kind = "denied"


class StorageUnavailable(StorageError, ConnectionError):
    """The store did not answer or failed on its side: a later attempt may succeed."""

    kind = "transient"


def is_url(value: object) -> bool:
    return isinstance(value, str) and _URL.match(value) is not None and not value.startswith("file://")


def redact(text: str) -> str:
    """``text`` without URL credentials or the value of any credential variable."""
    text = _USERINFO.sub(r"\1***@", text)
    for name in _SECRET_VARIABLES:
        secret = os.environ.get(name)
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


_KEY_SCHEMES = frozenset({"s3", "s3a"})  # the path is an object's key, taken literally
_VERSION_SELECTOR = "?versionId="  # s3fs reads this part of a key as an object version


def _split(raw: str) -> tuple[str, str, str]:
    """(scheme, host or bucket, path). An S3 URL's path is the object's key as s3fs reads it:
    ``?`` and ``#`` in it are characters of the key (S3 allows them), not a query or a fragment."""
    scheme, _, rest = raw.partition("://")
    if scheme.lower() in _KEY_SCHEMES:
        bucket, slash, key = rest.partition("/")
        if _VERSION_SELECTOR in key:
            raise BadLocation(
                f"{raw!r} has a query ({_VERSION_SELECTOR}), which would name an object version; "
                "give a plain URL"
            )
        return scheme, bucket, slash + key
    parts = urlsplit(raw)
    if parts.query or parts.fragment:
        raise BadLocation(f"{raw!r} has a query or fragment; give a plain URL")
    return scheme, parts.netloc, parts.path


def normalise_url(raw: str) -> str:
    """The URL with no trailing slash; refused with credentials, ``.``/``..`` parts, or a query or
    fragment (an S3 key's ``?`` and ``#`` are neither: see ``_split``)."""
    if "@" in raw.partition("://")[2].partition("/")[0]:  # user:password@ comes before any "/"
        raise BadLocation(
            f"{redact(raw)!r} carries credentials; give them in the environment (AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY or AWS_PROFILE), never in a URL"
        )
    scheme, netloc, path = _split(raw)
    if not netloc or "?" in netloc or "#" in netloc:
        raise BadLocation(f"{raw!r} names no valid bucket or host")
    segments = path.split("/")
    if any(s in (".", "..") for s in segments):
        raise BadLocation(f"{raw!r} has a '.' or '..' part")
    return f"{scheme.lower()}://{netloc}{path}".rstrip("/")


def location(raw: str | Path) -> Location:
    """A URL normalised, or a local path expanded and resolved (``file://`` URLs are local)."""
    raw = str(raw)
    if is_url(raw):
        return normalise_url(raw)
    if raw.startswith("file://"):
        raw = raw[len("file://") :]
    return Path(raw).expanduser().resolve()


def join(base: Location, *parts: str) -> Location:
    if isinstance(base, Path):
        return base.joinpath(*parts)
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def parent(where: Location) -> Location:
    return where.parent if isinstance(where, Path) else where.rsplit("/", 1)[0]


def name(where: Location) -> str:
    return where.name if isinstance(where, Path) else where.rsplit("/", 1)[-1]


def inside(where: Location, roots: Sequence[Location]) -> bool:
    """``where`` lies under one of ``roots`` (a local path under a local root, a URL under a
    URL prefix, on whole path segments: ``s3://b/data`` does not hold ``s3://b/database``)."""
    for root in roots:
        if isinstance(where, Path) and isinstance(root, Path) and where.is_relative_to(root):
            return True
        if (
            isinstance(where, str)
            and isinstance(root, str)
            and (where == root or where.startswith(root + "/"))
        ):
            return True
    return False


def confine(raw: str, roots: Sequence[Location], *, what: str = "path") -> Location:
    """``raw`` (a URL, an absolute path, or a path relative to the first root) resolved, following
    every symlink and ``..`` of a local path, and required to lie under one of ``roots``."""
    given = raw
    if not is_url(raw) and not Path(raw).expanduser().is_absolute() and roots:
        raw = str(join(roots[0], raw))
    where = location(raw)
    if not inside(where, roots):
        allowed = ", ".join(str(r) for r in roots)
        how = "lies" if str(where) == given else f"resolves to {str(where)!r},"
        raise BadLocation(f"{what} {redact(given)!r} {how} outside the data roots ({allowed})")
    return where


# -- reading and listing ---------------------------------------------------------------------

_filesystems: dict[tuple[int, str], object] = {}


def filesystem(protocol: str):
    """This process's fsspec file system for ``protocol``, made on first use after any fork.
    Listings are not cached: a long-lived API process must see objects added since."""
    key = (os.getpid(), protocol)
    if key not in _filesystems:
        import fsspec

        _filesystems[key] = fsspec.filesystem(protocol, skip_instance_cache=True, use_listings_cache=False)
    return _filesystems[key]


def _fs(url: str):
    return filesystem(url.split("://", 1)[0]), url


def classify(exc: BaseException) -> str:
    """missing, denied or transient; ``error`` for anything else."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        return "missing"
    if isinstance(exc, PermissionError) or names & {"NoCredentialsError", "PartialCredentialsError"}:
        return "denied"
    if isinstance(exc, (ConnectionError, TimeoutError)) or names & {
        "ConnectionError",
        "HTTPClientError",
        "FSTimeoutError",
        "ClientError",  # aiohttp's, not botocore's (s3fs translates those into the kinds above)
    }:
        return "transient"
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return "transient"  # s3fs: a server-side failure it has no other kind for
    return "error"


_KINDS = {"missing": ObjectMissing, "denied": AccessDenied, "transient": StorageUnavailable}
_SAYS = {"missing": "does not exist", "denied": "access denied", "transient": "storage unavailable"}


def translate(exc: BaseException, where: Location) -> StorageError:
    """``exc`` as a ``StorageError`` of its kind, naming ``where``, its message redacted."""
    if isinstance(exc, StorageError):
        return exc
    kind = classify(exc)
    detail = redact(str(exc) or type(exc).__name__)
    says = _SAYS.get(kind, "cannot be read")
    error = _KINDS.get(kind, StorageError)(f"{str(where)!r}: {says} ({type(exc).__name__}: {detail})")
    error.errno = getattr(exc, "errno", None)
    return error


class _Translating(io.RawIOBase):
    """A store's file object whose failures are ``StorageError``s of their kind, so that a reader
    such as Pillow cannot take a store that stopped answering for a bad file."""

    def __init__(self, handle, where: str) -> None:
        super().__init__()
        self._handle, self._where = handle, where

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._call(self._handle.read, len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._call(self._handle.seek, offset, whence)

    def tell(self) -> int:
        return self._handle.tell()

    def close(self) -> None:
        if not self.closed:
            self._handle.close()
        super().close()

    def _call(self, method, *args):
        try:
            return method(*args)
        except Exception as exc:
            raise translate(exc, self._where) from None


def open_binary(where: Location | str, *, block_size: int | None = None) -> IO[bytes]:
    """A binary file object to read ``where``; raises a ``StorageError`` of its kind on opening
    and, for a URL, on any read. An object is fetched ``block_size`` bytes at a time (fsspec's
    default, 50 MiB for S3, when not given)."""
    if not is_url(where):
        try:
            return open(where, "rb")  # noqa: SIM115 (the caller closes it)
        except OSError as exc:
            raise translate(exc, where) from None
    fs, path = _fs(where)
    options = {} if block_size is None else {"block_size": block_size}
    try:
        handle = fs.open(path, "rb", **options)
    except Exception as exc:
        raise translate(exc, where) from None
    return io.BufferedReader(_Translating(handle, where))


def read_bytes(where: Location | str) -> bytes:
    if not is_url(where):
        try:
            return Path(where).read_bytes()
        except OSError as exc:
            raise translate(exc, where) from None
    fs, path = _fs(where)
    try:
        return fs.cat_file(path)
    except Exception as exc:
        raise translate(exc, where) from None


def openable(where: str) -> str | io.BytesIO:
    """What ``PIL.Image.open`` takes: a local path as it is, a URL's bytes in memory."""
    return io.BytesIO(read_bytes(where)) if is_url(where) else where


def chunks(where: Location, size: int = 1 << 20) -> Iterator[bytes]:
    with open_binary(where) as handle:
        while True:
            try:
                chunk = handle.read(size)
            except Exception as exc:
                raise translate(exc, where) from None
            if not chunk:
                return
            yield chunk


def info(where: Location) -> dict:
    """``{"type": "file" | "directory", "size": int, "version": str}``: the version changes
    whenever the content does (mtime locally, the ETag or modification time in a store)."""
    if not is_url(where):
        try:
            found = Path(where).stat()
        except OSError as exc:
            raise translate(exc, where) from None
        kind = "directory" if S_ISDIR(found.st_mode) else "file"
        return {"type": kind, "size": found.st_size, "version": str(found.st_mtime_ns)}
    fs, path = _fs(where)
    try:
        found = fs.info(path)
    except Exception as exc:
        raise translate(exc, where) from None
    version = found.get("ETag") or found.get("LastModified") or found.get("mtime") or ""
    return {
        "type": found.get("type", "file"),
        "size": found.get("size") or 0,
        "version": str(version).strip('"'),
    }


def list_files(prefix: str, *, recursive: bool = True) -> list[str]:
    """Every object under the URL ``prefix`` (or only those right under it), as sorted URLs;
    listed, not read."""
    fs, path = _fs(prefix)
    try:
        found = fs.find(path, maxdepth=None if recursive else 1)
    except Exception as exc:
        raise translate(exc, prefix) from None
    return sorted(fs.unstrip_protocol(key) for key in found)


def write_file(source: Path, where: Location) -> None:
    """Put a local file at ``where``; an object store shows the object only once it is whole."""
    if not is_url(where):
        Path(where).parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, where)
        return
    fs, path = _fs(where)
    try:
        fs.put_file(str(source), path)
    except Exception as exc:
        raise translate(exc, where) from None


def remove(where: Location) -> None:
    """Delete ``where``; already gone is fine."""
    if not is_url(where):
        Path(where).unlink(missing_ok=True)
        return
    fs, path = _fs(where)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass
    except Exception as exc:
        raise translate(exc, where) from None


def cached_copy(where: str, final: Path, sha256: str) -> Path:
    """``final``, made a local copy of ``where`` unless it is one already, checked against its
    sha256: a copy is renamed into place only once whole and verified, so a cached file is
    always good."""
    if final.is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    # The umask's mode, not mkstemp's private 0600: a cache shared by workers under other users.
    with atomic.replacing(final) as part:
        with part.open("xb") as out:
            for chunk in chunks(where):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256:
            raise StorageError(f"{where!r} has sha256 {digest.hexdigest()}, expected {sha256}")
    return final


def suffix_filter(urls: Iterable[str], suffixes: frozenset[str]) -> list[str]:
    return [u for u in urls if Path(name(u)).suffix.lower() in suffixes]
