"""The house's layers import one way (README, "Architecture"): a test, so a wrong-way import fails.

    cli (the nst command, demo, local stack)        may import everything below
    trainer                                          nst only: it knows the service over HTTP
    workers                                          nst and service's data layer, not its API
    service (API, data layer, queue interface)       nst only (and its own Alembic scripts)
    nst (SDK: settings, client, checkpoint format)   nothing of ours

Every import is read from the source, including those inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("nst", "service", "workers", "trainer", "cli", "migrations", "bench")

# For each package, the modules of ours it may import (by prefix); itself is always allowed.
ALLOWED = {
    "nst": (),
    # service.core.migrate imports the migrations package only to find its scripts on disk.
    "service": ("nst", "migrations"),
    "migrations": ("nst", "service.core", "service.models"),
    "workers": (
        "nst",
        "service.core",
        "service.models",
        "service.lifecycle",
        "service.queue",
        "service.crud",
    ),
    "trainer": ("nst",),
    "cli": ("nst", "service", "workers", "trainer"),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from service import lifecycle` imports service.lifecycle: judge the full name
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] in OURS]


def _allowed(package: str, module: str) -> bool:
    prefixes = (package, *ALLOWED[package])
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def wrong_way_imports(root: Path = ROOT) -> list[str]:
    wrong = []
    for package in ALLOWED:
        for path in sorted((root / package).rglob("*.py")):
            for line, module in _imports(path):
                if not _allowed(package, module):
                    wrong.append(f"{path.relative_to(root)}:{line} imports {module}")
    return wrong


def test_every_import_runs_down_the_layers():
    assert wrong_way_imports() == []


@pytest.mark.parametrize(
    ("package", "source"),
    [
        ("nst", "from service.models import Job\n"),
        ("service", "def f():\n    from workers.tasks import label_shard\n"),
        ("workers", "import service.api.deps\n"),
        ("workers", "from service import api\n"),
        ("trainer", "from service.core.db import session_scope\n"),
    ],
)
def test_a_wrong_way_import_is_caught(tmp_path, package, source):
    (tmp_path / package).mkdir()
    (tmp_path / package / "bad.py").write_text(source)
    for other in set(ALLOWED) - {package}:
        (tmp_path / other).mkdir()
    assert len(wrong_way_imports(tmp_path)) == 1
