"""A LeRobot checkpoint folder as the slow process's policy (``kiwi slow --policy lerobot:PATH``).

The folder is what LeRobot's ``save_pretrained`` and its training write: ``config.json`` (the
policy's type and features), ``model.safetensors`` and the pre/post-processors
(``policy_preprocessor.json``, ``policy_postprocessor.json`` and their normaliser state). It is
loaded with lerobot's own classes, so lerobot must be installed (the ``lerobot`` extra: README,
"LeRobot policies"); the core install never imports it.

The adapter maps names both ways: the frame's ``observation.state`` (6 values, degrees and
gripper 0..100: LeRobot's SO-100/SO-101 units) and cameras ``observation.images.<camera>`` to
the policy's input features (a policy camera takes the frame's camera of the same name, or the
one given in ``cameras=policy_name:frame_name,...``, or the frame's only camera when both have
one), images turned into float [1, 3, H, W] in 0..1 and resized to the policy's size; the
policy's ``predict_action_chunk`` output, un-normalised by its postprocessor, back to a [T, 6]
chunk. Rows are ``1/fps`` seconds apart (``fps``: the rate of the data it was trained on).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from world_model.errors import KiwiError

N_JOINTS = 6
STATE_KEY = "observation.state"
IMAGE_PREFIX = "observation.images."
CHECKPOINT_FILES = ("config.json", "model.safetensors", "policy_preprocessor.json")
LEROBOT_MISSING = (
    "lerobot is not installed in this environment: `pip install -e .[lerobot]` in a venv of "
    "its own (README, 'LeRobot policies')"
)


def parse_cameras(text: str) -> dict[str, str]:
    """``"front:wrist,side:top"`` -> {"observation.images.front": "wrist", ...}."""
    out = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        policy_name, sep, frame_name = pair.partition(":")
        if not sep or not policy_name or not frame_name:
            raise ValueError(f"cameras entry {pair!r} is not POLICY_CAMERA:FRAME_CAMERA")
        key = policy_name if policy_name.startswith(IMAGE_PREFIX) else IMAGE_PREFIX + policy_name
        out[key] = frame_name
    return out


def _shape(feature) -> tuple[int, ...]:
    return tuple(int(d) for d in getattr(feature, "shape", ()) or ())


class LeRobotPolicy:
    """``policy(observation) -> [T, 6] chunk`` around a LeRobot policy and its processors."""

    def __init__(
        self,
        policy,
        preprocessor,
        postprocessor,
        *,
        fps: float = 30.0,
        cameras: dict[str, str] | None = None,
        device: str = "cpu",
    ):
        cfg = policy.config
        state = getattr(cfg, "robot_state_feature", None)
        if state is None or _shape(state) != (N_JOINTS,):
            raise ValueError(
                f"the policy's state feature has shape {_shape(state) if state else None}; "
                f"the arm gives {N_JOINTS} values"
            )
        action = getattr(cfg, "action_feature", None)
        if action is None or _shape(action) != (N_JOINTS,):
            raise ValueError(
                f"the policy's action has shape {_shape(action) if action else None}; "
                f"the arm takes {N_JOINTS} values"
            )
        if not fps > 0:
            raise ValueError(f"fps {fps!r} must be positive")
        self.policy, self.preprocessor, self.postprocessor = policy, preprocessor, postprocessor
        self.image_shapes = {k: _shape(f) for k, f in (cfg.image_features or {}).items()}
        cameras = cameras or {}
        unknown = sorted(set(cameras) - set(self.image_shapes))
        if unknown:
            raise ValueError(
                f"cameras names {unknown}, which the policy does not take "
                f"(it takes {sorted(self.image_shapes)})"
            )
        self.camera_for = {k: cameras.get(k, k[len(IMAGE_PREFIX) :]) for k in self.image_shapes}
        self.explicit = set(cameras)
        self.dt = 1.0 / float(fps)
        self.device = device

    def frame_camera(self, policy_key: str, observation: dict) -> str:
        """The observation key that feeds ``policy_key``; KeyError naming what is missing."""
        wanted = IMAGE_PREFIX + self.camera_for[policy_key]
        if wanted in observation:
            return wanted
        have = sorted(k for k in observation if k.startswith(IMAGE_PREFIX))
        if policy_key not in self.explicit and len(self.image_shapes) == 1 and len(have) == 1:
            return have[0]  # one camera each side: the names need not agree
        raise KeyError(
            f"the policy's {policy_key} needs {wanted}; the frame has {have} "
            "(map them with --policy-arg cameras=POLICY_CAMERA:FRAME_CAMERA)"
        )

    def batch(self, observation: dict) -> dict[str, Any]:
        """The observation in LeRobot's inference layout (``prepare_observation_for_inference``):
        tensors with a batch dimension, images float [1, 3, H, W] in 0..1, plus task."""
        import torch
        import torch.nn.functional as F

        state = np.asarray(observation[STATE_KEY], np.float32).reshape(N_JOINTS)
        batch: dict[str, Any] = {STATE_KEY: torch.from_numpy(state.copy())[None].to(self.device)}
        for key, shape in self.image_shapes.items():
            image = np.array(observation[self.frame_camera(key, observation)], np.uint8)
            x = torch.from_numpy(image).to(torch.float32).div(255).permute(2, 0, 1)[None]
            if len(shape) == 3 and tuple(x.shape[-2:]) != shape[-2:]:
                x = F.interpolate(x, size=shape[-2:], mode="bilinear", align_corners=False)
            batch[key] = x.to(self.device)
        batch["task"] = str(observation.get("task", ""))
        batch["robot_type"] = ""
        return batch

    def __call__(self, observation: dict) -> np.ndarray:
        import torch

        with torch.inference_mode():
            batch = self.preprocessor(self.batch(observation))
            actions = self.policy.predict_action_chunk(batch)  # [1, T, 6], normalised
            actions = self.postprocessor(actions)  # the arm's units
        actions = actions.detach().to("cpu", torch.float32).numpy()
        return actions.reshape(-1, N_JOINTS) if actions.ndim == 3 else actions


def check_checkpoint_folder(path: Path) -> None:
    if not path.is_dir():
        raise KiwiError(f"LeRobot checkpoint folder {path} does not exist")
    missing = [name for name in CHECKPOINT_FILES if not (path / name).is_file()]
    if missing:
        raise KiwiError(
            f"{path} is not a LeRobot checkpoint folder: no {', '.join(missing)} "
            "(point at the folder save_pretrained wrote, e.g. .../pretrained_model)"
        )


def load_lerobot_policy(
    path: str, fps: str = "30", cameras: str = "", device: str = "cpu"
) -> LeRobotPolicy:
    """The checkpoint at ``path`` with lerobot's classes (keyword strings from --policy-arg)."""
    folder = Path(path)
    check_checkpoint_folder(folder)
    try:
        from lerobot.configs.policies import PreTrainedConfig
        from lerobot.policies.factory import get_policy_class, make_pre_post_processors
    except ImportError:
        raise KiwiError(LEROBOT_MISSING) from None
    try:
        fps_value = float(fps)
    except ValueError:
        raise ValueError(f"--policy-arg fps={fps!r} is not a number") from None
    cfg = PreTrainedConfig.from_pretrained(folder)
    cfg.device = device
    policy = get_policy_class(cfg.type).from_pretrained(folder, config=cfg)
    policy.eval()
    policy.reset()
    preprocessor, postprocessor = make_pre_post_processors(
        cfg,
        pretrained_path=str(folder),
        preprocessor_overrides={"device_processor": {"device": device}},
    )
    return LeRobotPolicy(
        policy,
        preprocessor,
        postprocessor,
        fps=fps_value,
        cameras=parse_cameras(cameras),
        device=device,
    )
