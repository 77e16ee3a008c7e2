import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from robot_runtime import jsonout


def strict_loads(text: str):
    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_floats_become_null_at_any_depth():
    obj = {
        "nan": float("nan"),
        "inf": math.inf,
        "ninf": -math.inf,
        "np32": np.float32("nan"),
        "np64": np.float64("inf"),
        "torch": torch.tensor(float("nan")),
        "nested": [{"x": [1.5, float("nan")]}, (np.float32(2.5), -math.inf)],
        "ok": 0.25,
    }
    out = strict_loads(jsonout.dumps(obj))
    assert out == {
        "nan": None,
        "inf": None,
        "ninf": None,
        "np32": None,
        "np64": None,
        "torch": None,
        "nested": [{"x": [1.5, None]}, [2.5, None]],
        "ok": 0.25,
    }


def test_numpy_scalars_and_arrays_become_python_values():
    obj = {
        "i": np.int64(3),
        "b": np.bool_(True),
        "a": np.array([[1.0, np.nan], [np.inf, 4.0]], dtype=np.float32),
        "ints": np.arange(3),
        "t": torch.tensor([1, 2]),
        np.int64(7): "numpy key",
        "path": Path("runs/x"),
    }
    out = strict_loads(jsonout.dumps(obj, indent=1))
    assert out == {
        "i": 3,
        "b": True,
        "a": [[1.0, None], [None, 4.0]],
        "ints": [0, 1, 2],
        "t": [1, 2],
        "7": "numpy key",
        "path": "runs/x",
    }
    assert type(out["i"]) is int and type(out["b"]) is bool


def test_plain_json_dumps_would_have_printed_nan():
    # what the helper exists for: the standard library writes NaN, which is not JSON
    assert "NaN" in json.dumps({"x": float("nan")})
    assert "NaN" not in jsonout.dumps({"x": float("nan")})


def test_unknown_objects_are_still_a_type_error_and_allow_nan_cannot_be_turned_on():
    with pytest.raises(TypeError):
        jsonout.dumps({"x": object()})
    assert jsonout.dumps([float("nan")], allow_nan=True) == "[null]"


def test_write_json_writes_a_whole_valid_file(tmp_path):
    path = tmp_path / "out" / "summary.json"
    jsonout.write_json(path, {"rate": np.float32(0.5), "bad": float("nan")}, indent=2)
    assert strict_loads(path.read_text()) == {"rate": 0.5, "bad": None}
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]
