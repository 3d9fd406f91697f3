"""What a process runs: its Python and the installed version of each package that makes a label
what it is or decides how it is made. Workers report theirs (``workers/heartbeat.py``) and the
API compares them with its own (``GET /workers``): a fleet should agree on these."""

from __future__ import annotations

import platform
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version

PACKAGES = ("nst", "torch", "torchvision", "timm", "openvino", "pillow", "numpy", "celery")


@lru_cache(maxsize=1)  # fixed for the life of a process
def installed() -> dict[str, str]:
    """This process's Python and the version of each of ``PACKAGES`` it has."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:  # OpenVINO is optional on a GPU host
            continue
    return found
