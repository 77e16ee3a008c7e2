"""The project's own learned chunk policy, as a plain callable for any slow process.

``policy = load()`` (the shipped checkpoint) or ``load("runs/policy/policy.safetensors")``;
then ``policy(observation)`` with

- ``"observation.state"``: float (6,), LeRobot units (five arm joints in degrees, gripper
  0..100);
- ``"observation.images.wrist"`` (and ``"observation.images.front"`` if the policy was
  trained with it): uint8 [H, W, 3] RGB, any size (resized to the policy's, e.g. 128 -> 64);
- ``"task"``: str (this policy learned one task and ignores it); ``"timestamp"``: capture
  time in seconds (row 0 of the answer is for that time).

It returns float32 [K, 6] in the same units (the gripper column clipped to 0..100; joint
limits are the safety step's business), rows ``policy.dt`` apart (1 / the dataset's fps), or
None when an image it needs is absent. A malformed observation (wrong shape, dtype,
non-finite state) raises ValueError. ``kiwi slow --policy robot_runtime.bc_policy:load``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .bc_data import IMAGE_PREFIX, STATE_KEY, resize_image

SHIPPED = "shipped:grasp_bc_policy.safetensors"


class BCPolicy:
    """Callable ``policy(observation) -> [K, 6] float32 | None``; attributes ``dt`` (s),
    ``chunk`` (K), ``cameras`` and ``meta`` (the checkpoint's metadata)."""

    def __init__(self, net, norm: dict[str, np.ndarray], fps: int, meta: dict):
        import torch

        self.net = net.eval()
        self.norm = norm
        self.dt = 1.0 / float(fps)
        self.chunk = net.config.chunk
        self.cameras: tuple[str, ...] = tuple(net.config.cameras)
        self.image_size = net.config.image_size
        self.meta = meta
        self._torch = torch

    def __call__(self, observation: dict) -> np.ndarray | None:
        torch = self._torch
        state = np.asarray(observation.get(STATE_KEY))
        if state.shape != (6,) or state.dtype.kind not in "fiu":
            raise ValueError(f"{STATE_KEY} must be 6 numbers, got {state.dtype} {state.shape}")
        state = state.astype(np.float32)
        if not np.isfinite(state).all():
            raise ValueError(f"{STATE_KEY} is not finite: {state}")
        images = {}
        for cam in self.cameras:
            image = observation.get(f"{IMAGE_PREFIX}{cam}")
            if image is None:
                return None
            image = np.asarray(image)
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(
                    f"{IMAGE_PREFIX}{cam} must be uint8 [H, W, 3], got {image.dtype} {image.shape}"
                )
            small = resize_image(np.ascontiguousarray(image), self.image_size)
            images[cam] = torch.from_numpy(small).permute(2, 0, 1)[None].float()
        state_n = (state - self.norm["state_mean"]) / self.norm["state_std"]
        with torch.no_grad():
            out = self.net(images, torch.from_numpy(state_n)[None])[0].numpy()
        chunk = out * self.norm["action_std"] + self.norm["action_mean"]
        chunk[:, 5] = np.clip(chunk[:, 5], 0.0, 100.0)  # the gripper's range, not a limit
        return chunk.astype(np.float32)


def load_policy(path: Path) -> BCPolicy:
    """A checkpoint from `kiwi train policy`; a one-line CheckpointError for anything else."""
    from world_model.bc_net import BCPolicyConfig, BCPolicyNet
    from world_model.checkpoint import load_tensors
    from world_model.errors import CheckpointError

    from .bc_training import KIND

    groups, meta = load_tensors(path)
    if meta.get("kind") != KIND or "policy" not in groups or "norm" not in groups:
        raise CheckpointError(
            f"{path} is not a chunk policy from `kiwi train policy` (kind {meta.get('kind')!r})"
        )
    try:
        config = BCPolicyConfig.model_validate(meta["policy_config"])
        fps = int(meta["fps"])
        net = BCPolicyNet(config)
        net.load_state_dict(groups["policy"])
        norm = {k: groups["norm"][k].numpy() for k in NORM_KEYS}
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        reason = " ".join(str(e).split())[:300]
        raise CheckpointError(f"{path}: chunk policy does not load: {reason}") from None
    if fps <= 0 or any(v.shape != (6,) for v in norm.values()):
        raise CheckpointError(f"{path}: fps {fps} or normalisation shapes are invalid")
    return BCPolicy(net, norm, fps, meta)


NORM_KEYS = ("state_mean", "state_std", "action_mean", "action_std")


def load(path: str | None = None) -> BCPolicy:
    """The factory for ``--policy robot_runtime.bc_policy:load``: the shipped grasp policy,
    or the checkpoint at ``path``."""
    from .assets import resolve

    return load_policy(resolve(path or SHIPPED))
