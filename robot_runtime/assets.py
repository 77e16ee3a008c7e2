"""Files shipped inside the package (trained models), named ``shipped:NAME`` in configs."""

from __future__ import annotations

from pathlib import Path

from world_model.errors import CheckpointError

ASSETS = Path(__file__).resolve().parent / "assets"


def resolve(spec: str) -> Path:
    if spec.startswith("shipped:"):
        name = spec.split(":", 1)[1]
        path = ASSETS / name
        if not path.is_file() and not name.endswith(".safetensors"):
            path = ASSETS / f"{name}.safetensors"  # shipped:grasp_pixels
        if not path.is_file() or path.parent != ASSETS:
            there = ", ".join(sorted(p.stem for p in ASSETS.glob("*.safetensors")))
            raise CheckpointError(
                f"the shipped model {name!r} is not in {ASSETS} (shipped: {there}); "
                "reinstall, or train one (see the .md beside each shipped model)"
            )
        return path
    path = Path(spec)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path
