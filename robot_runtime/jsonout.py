"""JSON that every parser accepts: use ``dumps``/``write_json`` for every ``--json`` print and
every JSON file a command writes.

``json.dumps`` writes ``NaN``/``Infinity`` for non-finite floats (not JSON: jq, JavaScript and
most parsers reject it) and fails on numpy scalars and arrays. Here:

- NaN, +Inf, -Inf (Python, numpy or torch floats) become ``null``;
- numpy scalars and arrays (and torch tensors) become Python numbers and lists;
- tuples and sets become lists, ``Path`` becomes a string, dict keys that are numpy scalars
  become Python ones;
- anything else ``json`` cannot write is still a TypeError.

``allow_nan=False`` stays on as a guard, so a non-finite float that slipped through is an error,
never invalid output. No numpy import here: this module serves the hardware commands too.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["to_jsonable", "dumps", "write_json"]


def to_jsonable(obj: Any) -> Any:
    """``obj`` with non-finite floats as None and numpy/torch values as plain Python ones."""
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, float):  # numpy.float64 is a float too
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {_key(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return [to_jsonable(v) for v in sorted(obj, key=repr)]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist") and hasattr(obj, "dtype"):  # numpy scalar or array, torch tensor
        return to_jsonable(obj.tolist())
    return obj  # json.dumps decides (a TypeError names the type)


def _key(key: Any) -> Any:
    if hasattr(key, "item") and hasattr(key, "dtype"):
        key = key.item()
    return key


def dumps(obj: Any, **kw: Any) -> str:
    """``json.dumps(to_jsonable(obj), **kw)`` with ``allow_nan=False``: always valid JSON."""
    kw["allow_nan"] = False
    return json.dumps(to_jsonable(obj), **kw)


def write_json(path: Path, obj: Any, **kw: Any) -> None:
    """Writes ``dumps(obj, **kw)`` plus a newline to ``path`` atomically."""
    from world_model.atomic import atomic_write_text

    atomic_write_text(Path(path), dumps(obj, **kw) + "\n")
