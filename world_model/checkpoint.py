"""Checkpoint files: safetensors weights with their config in the header, written atomically.

One file holds everything needed to rebuild and resume: tensors named ``<group>/<name>`` (model
weights, optimizer moments) and string metadata (configs as JSON, the step). No pickle anywhere,
so a checkpoint from someone else cannot run code when loaded.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .atomic import atomic_write_bytes
from .errors import CheckpointError

FORMAT = "kiwi-checkpoint/1"
__all__ = ["CheckpointError", "save_tensors", "load_tensors", "atomic_write_bytes"]


def save_tensors(
    path: Path, groups: dict[str, dict[str, torch.Tensor]], meta: dict[str, Any]
) -> None:
    """Writes ``{group: {name: tensor}}`` and JSON-able ``meta`` to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {
        f"{g}/{k}": v.detach().contiguous().cpu()
        for g, tensors in groups.items()
        for k, v in tensors.items()
    }
    header = {"format": FORMAT, **{k: json.dumps(v) for k, v in meta.items()}}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(flat, tmp, metadata=header)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_tensors(path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            flat = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for a damaged file
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file: {e}") from e
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a kiwi checkpoint (format {header.get('format')!r})")
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        group, _, name = key.partition("/")
        groups.setdefault(group, {})[name] = value
    meta = {k: json.loads(v) for k, v in header.items() if k != "format"}
    return groups, meta


def optimizer_tensors(opt: torch.optim.Optimizer, prefix: str) -> dict[str, torch.Tensor]:
    """Flattens an optimizer's per-parameter state to named tensors (its hyperparameters come
    from the config, not the file)."""
    out = {}
    for index, state in opt.state_dict()["state"].items():
        for key, value in state.items():
            out[f"{prefix}.{index}.{key}"] = (
                value if torch.is_tensor(value) else torch.tensor(value)
            )
    return out


def load_optimizer_tensors(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], prefix: str
) -> None:
    sd = opt.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        p, _, rest = name.partition(".")
        if p != prefix:
            continue
        index, _, key = rest.partition(".")
        state.setdefault(int(index), {})[key] = value
    sd["state"] = state
    opt.load_state_dict(sd)
