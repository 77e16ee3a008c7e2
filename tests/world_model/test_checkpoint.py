import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from world_model.atomic import (
    TEMP_SUFFIX,
    atomic_path,
    atomic_write_bytes,
    remove_stale_temp_files,
    stale_temp_files,
)
from world_model.checkpoint import HASH_KEY, content_sha256, load_tensors
from world_model.errors import CheckpointError
from world_model.model import WorldModel

from .helpers import tiny_model

ASSETS = Path(__file__).parents[2] / "robot_runtime" / "assets"


def saved(tmp_path: Path) -> Path:
    path = tmp_path / "ckpt.safetensors"
    tiny_model().save(path, {"step": 5})
    return path


def read_raw(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}


def data_start(path: Path) -> int:
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    return 8 + n


def one_line_error(path: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_tensors(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_checkpoint_carries_a_content_hash_and_round_trips(tmp_path):
    path = saved(tmp_path)
    header, _ = read_raw(path)
    assert len(header[HASH_KEY]) == 64
    wm, meta, _ = WorldModel.load(path)
    assert meta["step"] == 5 and HASH_KEY not in meta
    for a, b in zip(wm.state_dict().values(), tiny_model().state_dict().values()):
        assert torch.equal(a, b)


def test_a_flipped_byte_is_refused_as_damaged(tmp_path):
    path = saved(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[(data_start(path) + len(raw)) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    assert "damaged or was edited" in one_line_error(path)


def test_a_16_kb_block_of_nan_is_refused(tmp_path):
    path = saved(tmp_path)
    raw = bytearray(path.read_bytes())
    start = data_start(path)
    assert len(raw) - start > 20_000
    raw[start + 1024 : start + 1024 + 16_384] = struct.pack("<f", float("nan")) * 4096
    path.write_bytes(bytes(raw))
    assert "damaged or was edited" in one_line_error(path)


def test_edited_metadata_is_refused(tmp_path):
    path = saved(tmp_path)
    header, flat = read_raw(path)
    header["step"] = "2479"
    save_file(flat, str(path), metadata=header)
    assert "damaged or was edited" in one_line_error(path)


def test_non_finite_weights_are_refused_even_with_a_matching_hash(tmp_path):
    path = saved(tmp_path)
    header, flat = read_raw(path)
    name = sorted(k for k in flat if k.startswith("model/"))[0]
    flat[name] = flat[name].clone()
    flat[name].view(-1)[0] = float("inf")
    header[HASH_KEY] = content_sha256(flat, header)
    save_file(flat, str(path), metadata=header)
    message = one_line_error(path)
    assert "NaN or Inf" in message and "group 'model'" in message and name in message


def test_a_file_without_hash_still_loads_but_not_with_nan(tmp_path):
    path = saved(tmp_path)
    header, flat = read_raw(path)
    del header[HASH_KEY]
    save_file(flat, str(path), metadata=header)
    groups, meta = load_tensors(path)
    assert meta["step"] == 5 and "model" in groups
    name = sorted(k for k in flat if k.startswith("model/"))[-1]
    flat[name] = torch.full_like(flat[name], float("nan"))
    save_file(flat, str(path), metadata=header)
    assert "group 'model'" in one_line_error(path)


def test_a_truncated_checkpoint_is_a_one_line_error(tmp_path):
    path = saved(tmp_path)
    raw = path.read_bytes()
    for size in (len(raw) // 2, data_start(path) - 10, 5, 0):
        path.write_bytes(raw[:size])
        assert "not a readable safetensors file" in one_line_error(path)


def test_a_diverged_model_is_not_written_over_a_good_checkpoint(tmp_path):
    path = saved(tmp_path)
    before = path.read_bytes()
    wm = tiny_model()
    with torch.no_grad():
        next(iter(wm.parameters())).fill_(float("nan"))
    with pytest.raises(CheckpointError, match="refusing to write .*group 'model'"):
        wm.save(path, {"step": 6})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.parametrize("name", ["grasp_world_model", "grasp_pixels", "pendulum_agent"])
def test_shipped_models_carry_a_hash_and_verify(name):
    path = ASSETS / f"{name}.safetensors"
    header, _ = read_raw(path)
    assert HASH_KEY in header
    groups, _ = load_tensors(path)
    assert "model" in groups


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temp_files_are_named_as_ours_and_only_stale_ones_are_removed(tmp_path):
    with atomic_path(tmp_path / "a.npz") as tmp:
        assert tmp.name.startswith(".a.npz.") and tmp.name.endswith(TEMP_SUFFIX)
        assert str(os.getpid()) in tmp.name
        tmp.write_bytes(b"x")
        assert stale_temp_files(tmp_path) == []  # its writer (this process) is alive
    assert [p.name for p in tmp_path.iterdir()] == ["a.npz"]

    stale = tmp_path / f".b.npz.{dead_pid()}-0123abcd{TEMP_SUFFIX}"
    live = tmp_path / f".c.npz.{os.getpid()}-0123abcd{TEMP_SUFFIX}"
    others = ["notes.tmp", ".d.npz.abc123de.tmp", f"e{TEMP_SUFFIX}", "f.npz"]
    for p in [stale, live, *(tmp_path / n for n in others)]:
        p.write_bytes(b"x")
    assert remove_stale_temp_files(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.npz", live.name, *others])


def test_a_failed_atomic_write_leaves_no_temp_file(tmp_path):
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with atomic_path(tmp_path / "x.bin") as tmp:
            tmp.write_bytes(b"half")
            raise Boom
    atomic_write_bytes(tmp_path / "y.bin", b"whole")
    assert [p.name for p in tmp_path.iterdir()] == ["y.bin"]
