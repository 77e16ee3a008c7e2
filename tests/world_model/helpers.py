"""Small models and data shared by the world-model tests."""

import numpy as np
import torch

from world_model.config import ModelConfig, ModelSpec
from world_model.model import WorldModel

SPEC = ModelSpec(vector_dims={"state": 3}, action_dim=1, action_low=(-2.0,), action_high=(2.0,))


def tiny_model(**overrides) -> WorldModel:
    torch.manual_seed(0)
    cfg = dict(deter=32, hidden=32, stoch=4, classes=4, units=32, layers=1, mlp_keys=("state",))
    cfg.update(overrides)
    return WorldModel(ModelConfig(**cfg), SPEC)


def random_batch(batch: int = 3, length: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    return {
        "state": torch.tensor(rng.normal(size=(batch, length, 3)), dtype=torch.float32),
        "action": torch.tensor(rng.uniform(-2, 2, size=(batch, length, 1)), dtype=torch.float32),
        "reward": torch.tensor(rng.normal(size=(batch, length)), dtype=torch.float32),
        "is_first": torch.zeros(batch, length, dtype=torch.bool),
        "is_terminal": torch.zeros(batch, length, dtype=torch.bool),
    }
