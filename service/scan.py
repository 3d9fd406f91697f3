"""Scan a folder tree, a URL prefix or a list file into dataset items, refusing anything outside
the data roots.

Pure functions: they read the file system or list the object store (``nst.storage``; objects are
listed, never downloaded) and return rows or raise ``ScanError`` whose message names the
problem, or ``storage.StorageUnavailable`` when the store does not answer (a later attempt may
succeed); they never touch the database, so a failed scan leaves nothing behind.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from nst import storage
from nst.storage import Location
from nst.text import check_text

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
LIST_SUFFIXES = frozenset({".csv", ".jsonl", ".txt"})


class ScanError(ValueError):
    """The request names data that cannot be registered; the message says why."""


@dataclass
class ScanResult:
    source_path: Location
    source_format: str  # folder | csv | jsonl | list
    uris: list[str] = field(default_factory=list)
    labels: list[int | None] = field(default_factory=list)
    classes: list[str] | None = None


def resolve_under_roots(raw: str, roots: list[Location], *, what: str = "path") -> Location:
    """Resolve ``raw`` (a URL, an absolute path, or one relative to the first root) following
    every symlink and ``..``, and require the result to lie under one of ``roots``. A local path
    must exist; a URL is only checked for its form here (listing or reading it says the rest)."""
    try:
        real = storage.confine(raw, roots, what=what)
    except storage.BadLocation as exc:
        raise ScanError(str(exc)) from None
    except (OSError, RuntimeError, ValueError) as exc:  # "~nobody", a NUL byte, a name too long
        raise ScanError(f"{what} {shown(raw)} cannot be resolved: {_reason(exc)}") from None
    if isinstance(real, Path) and not _exists(real):
        raise ScanError(f"{what} {shown(raw)} does not exist")
    return real


def shown(raw: str) -> str:
    """``raw`` as an error message quotes it: escaped, and cut short."""
    return repr(raw) if len(raw) <= 200 else f"{raw[:200]!r}... ({len(raw)} characters)"


def _reason(exc: Exception) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def _exists(real: Path) -> bool:
    try:
        return real.exists()
    except (OSError, ValueError):  # a name too long to look up
        return False


def scan(raw_path: str, *, labeled: bool, roots: list[Location], classes: list[str] | None) -> ScanResult:
    path = resolve_under_roots(raw_path, roots)
    if isinstance(path, str):
        return _scan_url(path, roots, labeled=labeled, classes=classes)
    if path.is_dir():
        if labeled:
            return _scan_image_folder(path, roots, classes)
        return _scan_tree(path, roots)
    if path.suffix.lower() not in LIST_SUFFIXES:
        raise ScanError(
            f"path {shown(raw_path)} is a file but not a list (.csv, .jsonl or .txt); "
            "give a folder or a list of files"
        )
    return _scan_list(path, roots, labeled=labeled, classes=classes)


def _image_files(folder: Path, roots: list[Path], seen: dict[str, str] | None = None) -> list[str]:
    """Every image under ``folder`` (real paths, in path order); a symlink that leads outside the
    roots is an error, and so is one that names an image found before (here or in ``seen``,
    shared by the class folders of one dataset): an item is one image, once. Only symlinks are
    resolved (a folder's listing says which entries are): a million plain files cost a listing a
    folder, not a path resolution each. Folders that cannot be listed are skipped."""
    seen = {} if seen is None else seen
    found: list[str] = []
    seen_dirs: set[str] = set()
    pending = [str(folder)]
    while pending:
        dirpath = pending.pop()
        real_dir = os.path.realpath(dirpath)
        _require_inside(Path(real_dir), roots, shown=dirpath)
        if real_dir in seen_dirs:  # a symlink loop, or a folder linked twice
            continue
        seen_dirs.add(real_dir)
        try:
            entries = list(os.scandir(dirpath))
        except OSError:
            continue
        inside = real_dir.rstrip(os.sep) + os.sep
        for entry in entries:
            if _is_dir(entry):
                pending.append(entry.path)
                continue
            if _suffix(entry.name).lower() not in IMAGE_SUFFIXES:
                continue
            if entry.is_symlink():
                real = os.path.realpath(entry.path)
                _require_inside(Path(real), roots, shown=entry.path)
            else:
                real = inside + entry.name
            if real in seen:
                raise ScanError(
                    f"{entry.path!r} and {seen[real]!r} are the same image {real!r}; "
                    "a dataset holds each image once"
                )
            seen[real] = entry.path
            found.append(real)
    # In pathlib's order, by path components: a separator sorts before any character of a name.
    return sorted(found, key=lambda path: path.replace(os.sep, "\0"))


def _suffix(name: str) -> str:
    """``Path(name).suffix``, without making a Path: ".png" of "a.png" and of "..png", none of
    ".png" or "a."."""
    dot = name.rfind(".")
    return name[dot:] if 0 < dot < len(name) - 1 else ""


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # through a symlink too
    except OSError:
        return False


def _require_inside(real: Path, roots: list[Path], *, shown: str) -> None:
    if not any(real.is_relative_to(root) for root in roots):
        raise ScanError(f"{shown!r} is a symlink that leads outside the data roots (to {str(real)!r})")


def _scan_tree(folder: Path, roots: list[Path]) -> ScanResult:
    files = _image_files(folder, roots)
    if not files:
        raise ScanError(f"folder {str(folder)!r} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return ScanResult(folder, "folder", files, [None] * len(files))


def _scan_url(url: str, roots: list[Location], *, labeled: bool, classes: list[str] | None) -> ScanResult:
    """A list object, or every image under a prefix (its first level names the classes of a
    labeled set), from one listing."""
    if Path(storage.name(url)).suffix.lower() in LIST_SUFFIXES:
        return _scan_list(url, roots, labeled=labeled, classes=classes)
    found = _listing(url)
    if not found:
        raise ScanError(f"path {url!r} names no object and no prefix with objects under it")
    if found == [url]:
        raise ScanError(f"path {url!r} is an object but not a list (.csv, .jsonl or .txt); give a prefix")
    images = [_addressable(image, url) for image in storage.suffix_filter(found, IMAGE_SUFFIXES)]
    if not images:
        raise ScanError(f"prefix {url!r} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if not labeled:
        return ScanResult(url, "folder", images, [None] * len(images))
    by_class: dict[str, list[str]] = {}
    for image in images:
        first, _, rest = image[len(url) + 1 :].partition("/")
        if rest:
            by_class.setdefault(first, []).append(image)
    result = ScanResult(url, "folder", classes=_class_order(sorted(by_class), classes, url))
    for index, name in enumerate(result.classes):
        result.uris.extend(by_class[name])
        result.labels.extend([index] * len(by_class[name]))
    return result


def _listing(prefix: str, *, recursive: bool = True) -> list[str]:
    """The objects under ``prefix``; missing or denied is a ``ScanError``, a store that does not
    answer is not (it is no fault of the request)."""
    try:
        return storage.list_files(prefix, recursive=recursive)
    except storage.StorageUnavailable:
        raise
    except storage.StorageError as exc:
        raise ScanError(str(exc)) from None


def _addressable(image: str, prefix: str) -> str:
    """A listed object's URL as thumbnails and workers will read it again; a key that no URL can
    name (a ``.`` or ``..`` part, a version selector) is refused here, by name, not later."""
    try:
        return storage.normalise_url(image)
    except storage.BadLocation as exc:
        raise ScanError(f"prefix {prefix!r} holds an object that cannot be registered: {exc}") from None


def _class_order(subfolders: list[str], classes: list[str] | None, folder: Location) -> list[str]:
    if not subfolders:
        raise ScanError(
            f"folder {str(folder)!r} has no class sub-folders; a labeled folder needs one "
            "sub-folder per class (ImageFolder layout)"
        )
    if classes is None:
        return subfolders
    if sorted(classes) != subfolders:
        raise ScanError(f"classes {classes} do not match the sub-folders of {str(folder)!r}: {subfolders}")
    return list(classes)


def _scan_image_folder(folder: Path, roots: list[Path], classes: list[str] | None) -> ScanResult:
    subfolders = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    classes = _class_order(subfolders, classes, folder)
    result = ScanResult(folder, "folder", classes=list(classes))
    seen: dict[str, str] = {}
    for index, name in enumerate(classes):
        files = _image_files(folder / name, roots, seen)
        if not files:
            raise ScanError(f"class folder {name!r} in {str(folder)!r} holds no image files")
        result.uris.extend(files)
        result.labels.extend([index] * len(files))
    return result


def _scan_list(
    list_path: Location, roots: list[Location], *, labeled: bool, classes: list[str] | None
) -> ScanResult:
    try:
        text = storage.read_bytes(list_path).decode("utf-8")
    except storage.StorageUnavailable:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise ScanError(f"list {str(list_path)!r} is unreadable: {exc}") from None
    list_name = storage.name(list_path)
    suffix = Path(list_name).suffix.lower()
    rows = list(_parse_rows(text, suffix, list_name, labeled=labeled))
    if not rows:
        raise ScanError(f"list {str(list_path)!r} names no files")
    if labeled:
        missing = [(n, p) for n, p, label in rows if label is None]
        if missing:
            line, _ = missing[0]
            raise ScanError(f"list {list_name} line {line}: a labeled list needs a label")
        if classes is None:
            classes = sorted({label for _, _, label in rows})
    index_of = {name: i for i, name in enumerate(classes or [])}
    result = ScanResult(list_path, {"csv": "csv", "jsonl": "jsonl"}.get(suffix[1:], "list"))
    result.classes = list(classes) if labeled else None
    listed: dict[str, set[str]] = {}  # a URL entry's parent prefix: its objects, listed once
    line_of: dict[Location, int] = {}
    for line, raw, label in rows:
        real = _list_entry(raw, list_path, roots, f"list {list_name} line {line}")
        if not _is_file(real, listed):
            raise ScanError(f"list {list_name} line {line}: file {raw!r} does not exist")
        if real in line_of:
            raise ScanError(
                f"list {list_name} line {line}: file {raw!r} is line {line_of[real]}'s file again; "
                "a dataset holds each image once"
            )
        line_of[real] = line
        if labeled and label not in index_of:
            raise ScanError(f"list {list_name} line {line}: unknown class {label!r} (classes: {classes})")
        result.uris.append(str(real))
        result.labels.append(index_of[label] if labeled else None)
    return result


def _list_entry(raw: str, list_path: Location, roots: list[Location], where: str) -> Location:
    """A list's entry: a URL, an absolute path, or a path relative to the list's own folder."""
    try:
        if storage.is_url(raw):
            real = storage.location(raw)
        elif Path(raw).is_absolute():
            real = Path(raw).resolve()
        else:
            real = storage.location(str(storage.join(storage.parent(list_path), _without_dot_parts(raw))))
    except storage.BadLocation as exc:
        raise ScanError(f"{where}: {exc}") from None
    except (OSError, RuntimeError, ValueError) as exc:
        raise ScanError(f"{where}: {shown(raw)} cannot be resolved: {_reason(exc)}") from None
    if isinstance(real, Path):
        _require_inside(real, roots, shown=raw)
    elif not storage.inside(real, roots):
        raise ScanError(f"{where}: {raw!r} lies outside the data roots")
    return real


def _without_dot_parts(relative: str) -> str:
    """``./pool/a.png`` as ``pool/a.png``: a ``.`` part names its own folder, which a local path
    resolves and a URL refuses; ``..`` stays, for the confinement checks to judge."""
    return "/".join(part for part in relative.split("/") if part != ".")


def _is_file(real: Location, listed: dict[str, set[str]]) -> bool:
    if isinstance(real, Path):
        return _exists(real) and real.is_file()
    folder = storage.parent(real)
    if folder not in listed:
        listed[folder] = set(_listing(folder, recursive=False))
    return real in listed[folder]


def _parse_rows(text: str, suffix: str, list_name: str, *, labeled: bool):
    """Yield (line number, path, label or None) from a CSV, JSONL or plain list; an unlabeled
    dataset's list may carry labels, which are not read."""
    if suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                path, label = record["path"], record.get("label")
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                raise ScanError(
                    f"list {list_name} line {number}: expected a JSON object with "
                    '"path" (and "label" for labeled data)'
                ) from None
            if not isinstance(path, str):
                raise ScanError(f"list {list_name} line {number}: path {path!r} is not a string")
            yield number, path, _label(label, f"list {list_name} line {number}") if labeled else None
    elif suffix == ".csv":
        for number, row in enumerate(csv.reader(text.splitlines()), start=1):
            if not row or not row[0].strip():
                continue
            if number == 1 and row[0].strip().lower() == "path":  # a header row
                continue
            label = row[1] if len(row) > 1 and labeled else None
            yield number, row[0].strip(), _label(label, f"list {list_name} line {number}")
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                yield number, line.strip(), None


def _label(value: object, where: str) -> str | None:
    """A class name from a labeled list: a string or an integer (``3`` names class "3"), stripped,
    without control characters; ``None`` for an entry without one (or an empty one)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ScanError(f"{where}: label {value!r} is not a class name (a string or an integer)")
    name = str(value).strip()
    if not name:
        return None
    try:
        return check_text(name)
    except ValueError as exc:
        raise ScanError(f"{where}: label {exc}") from None
