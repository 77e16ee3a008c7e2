"""Files shipped inside the package (trained models), named ``shipped:NAME`` in configs."""

from __future__ import annotations

from pathlib import Path

from world_model.errors import CheckpointError

ASSETS = Path(__file__).resolve().parent / "assets"


def resolve(spec: str) -> Path:
    if spec.startswith("shipped:"):
        path = ASSETS / spec.split(":", 1)[1]
        if not path.is_file():
            raise CheckpointError(
                f"the shipped model {path.name} is missing from {ASSETS}; "
                "reinstall, or train one (see configs/sim_grasp.yaml's header)"
            )
        return path
    path = Path(spec)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path
