"""Small grasp world models and configs shared by the runtime tests."""

from pathlib import Path

import torch

from robot_runtime.collect import grasp_spec
from robot_runtime.config import GraspJob, load_config
from world_model.config import ModelConfig
from world_model.model import WorldModel


def tiny_grasp_model(seed: int = 0) -> WorldModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        deter=32,
        hidden=32,
        stoch=4,
        classes=4,
        units=32,
        layers=1,
        mlp_keys=("state", "object"),
        periodic={"object": (3, 90.0)},
        scale={"state": 20.0, "object": (0.02, 0.02, 0.02, 1.0)},
        reward_head="none",
        cont_head=False,
    )
    return WorldModel(cfg, grasp_spec()).eval()


def tiny_checkpoint(path: Path) -> Path:
    tiny_grasp_model().save(path)
    return path


def grasp_job(*overrides: str) -> GraspJob:
    job, _ = load_config("sim_grasp", GraspJob, list(overrides))
    return job
