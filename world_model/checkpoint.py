"""Checkpoint files: safetensors weights with their config in the header, written atomically.

One file holds everything needed to rebuild and resume: tensors named ``<group>/<name>`` (model
weights, optimizer moments) and string metadata (configs as JSON, the step). No pickle anywhere,
so a checkpoint from someone else cannot run code when loaded.

Every file carries ``content_sha256``: SHA-256 over the other metadata and every tensor (name,
dtype, shape, bytes), checked on load, so a damaged or edited file is refused rather than run.
Files from before the hash load without that check. Non-finite values (NaN, Inf) in a float
tensor are refused both ways: a diverged run cannot write over a good checkpoint, and such a
file cannot be loaded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .atomic import atomic_path, atomic_write_bytes
from .errors import CheckpointError

FORMAT = "kiwi-checkpoint/1"
HASH_KEY = "content_sha256"
__all__ = ["CheckpointError", "save_tensors", "load_tensors", "atomic_write_bytes"]


def content_sha256(flat: dict[str, torch.Tensor], header: dict[str, str]) -> str:
    """Hex SHA-256 of the header (without the hash itself) and the tensors, in name order; it
    does not depend on where safetensors puts each tensor in the file."""
    h = hashlib.sha256()
    for key in sorted(header):
        if key != HASH_KEY:
            h.update(json.dumps(["meta", key, header[key]]).encode())
    for name in sorted(flat):
        t = flat[name].contiguous()
        h.update(json.dumps(["tensor", name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def non_finite_groups(flat: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    """``{group: [tensor names]}`` of float tensors holding NaN or Inf."""
    bad: dict[str, list[str]] = {}
    for name, t in flat.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad.setdefault(name.partition("/")[0], []).append(name)
    return bad


def describe_non_finite(bad: dict[str, list[str]]) -> str:
    parts = []
    for group, names in sorted(bad.items()):
        more = f" and {len(names) - 1} more" if len(names) > 1 else ""
        parts.append(f"group '{group}' ({sorted(names)[0]}{more})")
    return "NaN or Inf in " + ", ".join(parts)


def save_tensors(
    path: Path, groups: dict[str, dict[str, torch.Tensor]], meta: dict[str, Any]
) -> None:
    """Writes ``{group: {name: tensor}}`` and JSON-able ``meta`` to ``path`` atomically."""
    path = Path(path)
    flat = {
        f"{g}/{k}": v.detach().contiguous().cpu()
        for g, tensors in groups.items()
        for k, v in tensors.items()
    }
    bad = non_finite_groups(flat)
    if bad:
        raise CheckpointError(
            f"refusing to write {path}: {describe_non_finite(bad)} (the training diverged; "
            "an earlier checkpoint there is kept)"
        )
    header = {"format": FORMAT, **{k: json.dumps(v) for k, v in meta.items()}}
    header[HASH_KEY] = content_sha256(flat, header)
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=header)


def load_tensors(path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Reads and verifies a checkpoint: its hash (where it has one) and finite weights; any
    problem is a one-line CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            flat = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for a damaged file
        reason = " ".join(str(e).split()) or type(e).__name__
        raise CheckpointError(
            f"checkpoint {path} is not a readable safetensors file (truncated or damaged?): "
            f"{reason}"
        ) from e
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a kiwi checkpoint (format {header.get('format')!r})")
    stored = header.get(HASH_KEY)
    if stored is not None and stored != content_sha256(flat, header):
        raise CheckpointError(
            f"checkpoint {path} fails its content check (SHA-256 mismatch): the file is damaged "
            "or was edited"
        )
    bad = non_finite_groups(flat)
    if bad:
        raise CheckpointError(
            f"checkpoint {path} holds non-finite weights: {describe_non_finite(bad)}"
        )
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        group, _, name = key.partition("/")
        groups.setdefault(group, {})[name] = value
    try:
        meta = {k: json.loads(v) for k, v in header.items() if k not in ("format", HASH_KEY)}
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path} has unreadable metadata: {e}") from e
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
