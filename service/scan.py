"""Scan a folder tree, a URL prefix or a list file into dataset items, refusing anything outside
the data roots.

Pure functions: they read the file system or list the object store (``nst.storage``; objects are
listed, never downloaded) and return rows or raise ``ScanError`` whose message names the
problem, or ``storage.StorageUnavailable`` when the store does not answer (a later attempt may
succeed); they never touch the database. A folder's rows come as they are walked, so that a
million images are never all in memory: a problem found on the way raises from the rows, inside
the caller's transaction, which then leaves nothing behind.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator
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
    rows: Iterable[tuple[str, int | None]]  # (uri, class index or None), in item order, read once
    classes: list[str] | None = None


@dataclass
class _Seen:
    """What a walk has met, to refuse an image met twice without keeping every path: the real
    folders walked (each once, as the path it was reached by) and the image each link leads to.
    A plain file is only met again through a link, so only links are remembered."""

    folders: dict[str, str] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)

    def plain(self, real: str) -> None:
        if real in self.links:
            raise _same_image(self.links[real], real, real)

    def link(self, path: str, real: str) -> None:
        folder, name = os.path.split(real)
        if real in self.links:
            raise _same_image(path, self.links[real], real)
        if folder in self.folders and _suffix(name).lower() in IMAGE_SUFFIXES:  # walked, or being walked
            raise _same_image(path, os.path.join(self.folders[folder], name), real)
        self.links[real] = path


def _same_image(path: str, other: str, real: str) -> ScanError:
    return ScanError(f"{path!r} and {other!r} are the same image {real!r}; a dataset holds each image once")


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


def _image_files(folder: Path, roots: list[Path], seen: _Seen | None = None) -> Iterator[str]:
    """Every image under ``folder`` (real paths), as the tree is walked in pathlib's order (by path
    components; a link's image where the link is); a symlink that leads outside the roots is an
    error, and so is one that names an image met before (here or in ``seen``, shared by the class
    folders of one dataset): an item is one image, once. Only symlinks are resolved (a folder's
    listing says which entries are): a million plain files cost a listing a folder, not a path
    resolution each. Folders that cannot be listed are skipped."""
    seen = _Seen() if seen is None else seen
    stack = [walking] if (walking := _walk_into(str(folder), roots, seen)) else []
    while stack:
        path, inside, names, links = stack[-1]
        name = next(names, None)
        if name is None:
            stack.pop()
        elif name.endswith(_FOLDER):
            if walking := _walk_into(os.path.join(path, name[:-1]), roots, seen):
                stack.append(walking)
        elif name in links:
            link = os.path.join(path, name)
            real = os.path.realpath(link)
            _require_inside(Path(real), roots, shown=link)
            seen.link(link, real)
            yield real
        else:
            real = inside + name
            seen.plain(real)
            yield real


# Marks a sub-folder's name in a folder's sorted names; sorting before any character of a name, it
# also puts the folder where its paths sort by components (``b/z.png`` before ``b-c/a.png``).
_FOLDER = "\0"


def _walk_into(path: str, roots: list[Path], seen: _Seen):
    """(the folder's path, its real path with a trailing separator, the names of its image files
    and sub-folders in pathlib's order, which of them are symlinks), or None for a folder walked
    before (a symlink loop, a folder linked twice) or that cannot be listed. Names only, not the
    listing's entries: a folder of a million images costs a million short strings."""
    real = os.path.realpath(path)
    _require_inside(Path(real), roots, shown=path)
    if real in seen.folders:
        return None
    names: list[str] = []
    links: set[str] = set()
    try:
        with os.scandir(path) as listing:
            for entry in listing:
                if _is_dir(entry):
                    names.append(entry.name + _FOLDER)
                elif _suffix(entry.name).lower() in IMAGE_SUFFIXES:
                    names.append(entry.name)
                    if entry.is_symlink():
                        links.add(entry.name)
    except OSError:  # not remembered: a link may still reach an image inside it
        return None
    seen.folders[real] = path
    names.sort()
    return path, real.rstrip(os.sep) + os.sep, iter(names), links


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
    suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
    images = _not_none(
        _image_files(folder, roots), f"folder {str(folder)!r} holds no image files ({suffixes})"
    )
    return ScanResult(folder, "folder", ((image, None) for image in images))


def _not_none(images: Iterator[str], problem: str) -> Iterator[str]:
    """``images`` as they come, and a ``ScanError`` saying ``problem`` at their end if there was none."""
    found = False
    for image in images:
        found = True
        yield image
    if not found:
        raise ScanError(problem)


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
        return ScanResult(url, "folder", [(image, None) for image in images])
    by_class: dict[str, list[str]] = {}
    for image in images:
        first, _, rest = image[len(url) + 1 :].partition("/")
        if rest:
            by_class.setdefault(first, []).append(image)
    classes = _class_order(sorted(by_class), classes, url)
    rows = [(image, index) for index, name in enumerate(classes) for image in by_class[name]]
    return ScanResult(url, "folder", rows, classes)


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

    def rows() -> Iterator[tuple[str, int]]:
        seen = _Seen()
        for index, name in enumerate(classes):
            problem = f"class folder {name!r} in {str(folder)!r} holds no image files"
            for image in _not_none(_image_files(folder / name, roots, seen), problem):
                yield image, index

    return ScanResult(folder, "folder", rows(), list(classes))


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
    items: list[tuple[str, int | None]] = []
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
        items.append((str(real), index_of[label] if labeled else None))
    source_format = {"csv": "csv", "jsonl": "jsonl"}.get(suffix[1:], "list")
    return ScanResult(list_path, source_format, items, list(classes) if labeled else None)


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
