"""Strings the service accepts: valid Unicode without control characters, so that every one
reaches the database (PostgreSQL refuses NUL), the file system and a JSON response intact."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator

# C0 and C1 control characters, and UTF-16 surrogates (JSON's "\ud800" escapes decode to one
# alone, which no UTF-8 encoder takes).
_REFUSED = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def check_text(value: str) -> str:
    bad = _REFUSED.search(value)
    if bad is not None:
        char = bad.group()
        what = "a lone UTF-16 surrogate" if "\ud800" <= char <= "\udfff" else "a control character"
        raise ValueError(f"holds {what} ({ascii(char)} at character {bad.start()})")
    return value


def check_json(value: Any) -> Any:
    """Check every key and string in a JSON value, and refuse NaN and infinities (no JSON column
    stores them)."""
    if isinstance(value, str):
        check_text(value)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"holds {value}, which JSON cannot carry")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(str(key))
            check_json(item)
    elif isinstance(value, list):
        for item in value:
            check_json(item)
    return value


Text = Annotated[str, AfterValidator(check_text)]
