"""estimate_error_by_age: the latent's cube estimate against the truth, by ticks since the last
observation, beside the raw observations' own error."""

import numpy as np
import pytest

from world_model.config import ModelConfig, ModelSpec
from world_model.evaluate import estimate_error_by_age
from world_model.model import WorldModel


def _episode(rng, length=30):
    truth = np.column_stack(
        [rng.normal(0, 0.05, (length, 3)), rng.uniform(-45, 45, length)]
    ).astype(np.float32)
    obs = truth.copy()
    obs[:, 0] += 0.01  # 10 mm off in x
    obs[:, 3] = (obs[:, 3] + 2.0 + 45) % 90 - 45  # 2 degrees off, wrapped
    return {
        "object": obs,
        "object_true": truth,
        "action": rng.uniform(-1, 1, (length, 1)).astype(np.float32),
    }


def test_groups_by_age_and_measures_raw_perception_with_wrapped_yaw():
    cfg = ModelConfig(
        deter=16, hidden=16, stoch=2, classes=4, units=16, layers=1,
        mlp_keys=("object",), periodic={"object": (3, 90.0, 5.0)},
        scale={"object": (0.01, 0.01, 0.01, 1.0)},
    )  # fmt: skip
    wm = WorldModel(cfg, ModelSpec(vector_dims={"object": 4}, action_dim=1)).eval()
    rng = np.random.default_rng(0)
    out = estimate_error_by_age(wm, [_episode(rng) for _ in range(4)], every=5, warmup=5)
    assert set(out) == {"raw", "all", *(f"age_{a}" for a in range(5))}
    assert out["raw"] == pytest.approx([10.0, 2.0], abs=0.01)
    assert all(np.isfinite(v).all() for v in out.values())
