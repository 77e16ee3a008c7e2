"""NM512/dreamerv3-torch's world model at our reference size, for `kiwi bench train --against`.

Nothing of theirs is copied here: PATH is a checkout of their repository (the figures in the
README are of commit 6ef8646d), and their modules are imported from it. Two things make their
code run on a CPU-only machine, neither changing what is timed:

- ``torch.utils.tensorboard`` (imported by their tools.py for logging, which is never called
  here) is given an empty stand-in when tensorboard is not installed;
- their ``networks.MLP`` and ``tools.DiscDist`` default to ``device="cuda"``; the defaults are
  set to the device asked for.

Their config is set to the same sizes as ours: deter 256, hidden 256, 32 x 32 stoch, MLP
encoder/decoder/heads of 2 x 256 (their default is 5 x 1024), a 255-bin reward head, Adam at
lr 1e-4, eps 1e-8, clip 1000, float32 (``precision: 32``).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch


def check_checkout(path: Path) -> None:
    """A one-line ValueError unless ``path`` holds dreamerv3-torch's modules."""
    missing = [f for f in ("networks.py", "models.py", "tools.py") if not (path / f).is_file()]
    if missing:
        raise ValueError(
            f"--against {path}: not a dreamerv3-torch checkout (no {', '.join(missing)}); "
            "clone https://github.com/NM512/dreamerv3-torch there"
        )


def import_modules(path: Path) -> tuple[Any, Any, Any]:
    """(networks, models, tools) imported from the checkout at ``path``."""
    path = Path(path).resolve()
    check_checkout(path)
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        stand_in = types.ModuleType("torch.utils.tensorboard")
        stand_in.SummaryWriter = None  # type: ignore[attr-defined]
        sys.modules["torch.utils.tensorboard"] = stand_in
    sys.path.insert(0, str(path))
    try:
        import models
        import networks
        import tools
    finally:
        sys.path.remove(str(path))
    return networks, models, tools


def _set_default_device(func, device: str) -> None:
    names = func.__code__.co_varnames[: func.__code__.co_argcount]
    defaults = list(func.__defaults__)
    offset = len(names) - len(defaults)
    defaults[names.index("device") - offset] = device
    func.__defaults__ = tuple(defaults)


def config(device: str, pixel: bool) -> types.SimpleNamespace:
    keys = (
        {"mlp_keys": "$^", "cnn_keys": "image"} if pixel else {"mlp_keys": "obs", "cnn_keys": "$^"}
    )
    coder = dict(act="SiLU", norm=True, cnn_depth=32, kernel_size=4, minres=4, mlp_layers=2)
    return types.SimpleNamespace(
        device=device,
        precision=32,
        encoder={**keys, **coder, "mlp_units": 256, "symlog_inputs": True},
        decoder={
            **keys,
            **coder,
            "mlp_units": 256,
            "cnn_sigmoid": False,
            "image_dist": "mse",
            "vector_dist": "symlog_mse",
            "outscale": 1.0,
        },
        dyn_stoch=32,
        dyn_deter=256,
        dyn_hidden=256,
        dyn_rec_depth=1,
        dyn_discrete=32,
        act="SiLU",
        norm=True,
        dyn_mean_act="none",
        dyn_std_act="sigmoid2",
        dyn_min_std=0.1,
        unimix_ratio=0.01,
        initial="learned",
        num_actions=6,
        units=256,
        reward_head={"layers": 2, "dist": "symlog_disc", "loss_scale": 1.0, "outscale": 0.0},
        cont_head={"layers": 2, "loss_scale": 1.0, "outscale": 1.0},
        grad_heads=["decoder", "reward", "cont"],
        model_lr=1e-4,
        opt_eps=1e-8,
        grad_clip=1000,
        weight_decay=0.0,
        opt="adam",
        kl_free=1.0,
        dyn_scale=0.5,
        rep_scale=0.1,
        discount=0.997,
    )


class TheirWorldModel:
    """Their WorldModel built at the reference (or pixel) size, with the calls we time."""

    def __init__(self, path: Path, pixel: bool = False, device: str = "cpu"):
        import contextlib
        import io

        import gymnasium as gym

        networks, models, tools = import_modules(path)
        _set_default_device(networks.MLP.__init__, device)
        _set_default_device(tools.DiscDist.__init__, device)
        self.pixel, self.device = pixel, device
        box = gym.spaces.Box
        obs = {"image": box(0, 255, (64, 64, 3), np.uint8)} if pixel else {"obs": box(-1, 1, (16,))}
        space = gym.spaces.Dict(
            {**obs, "is_first": box(0, 1, (1,)), "is_terminal": box(0, 1, (1,))}
        )
        with contextlib.redirect_stdout(io.StringIO()):  # their constructors print shapes
            self.wm = models.WorldModel(space, box(-1, 1, (6,)), 0, config(device, pixel))
        self.wm.to(device)

    def batch(self, b: int = 16, t: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        data = {
            "action": rng.uniform(-1, 1, (b, t, 6)).astype(np.float32),
            "reward": rng.normal(size=(b, t)).astype(np.float32),
            "is_first": np.zeros((b, t), np.float32),
            "is_terminal": np.zeros((b, t), np.float32),
        }
        data["is_first"][:, 0] = 1.0
        if self.pixel:
            data["image"] = rng.integers(0, 256, (b, t, 64, 64, 3)).astype(np.uint8)
        else:  # their preprocess divides "image" by 255 whatever the keys: a small stand-in
            data["obs"] = rng.normal(size=(b, t, 16)).astype(np.float32)
            data["image"] = np.zeros((b, t, 1), np.float32)
        return data

    def update(self, data: dict[str, np.ndarray]) -> None:
        """Their full world-model update (``WorldModel._train``: posterior over the sequence,
        KL balancing, reconstruction, reward and continue heads, backward, Adam)."""
        self.wm._train(data)

    @torch.no_grad()
    def prior_step_fn(self):
        """A function running one prior step at batch 1 (their ``img_step``)."""
        dyn = self.wm.dynamics
        state = dyn.initial(1)
        action = torch.zeros(1, 6, device=self.device)

        def step():
            nonlocal state
            with torch.no_grad():
                state = dyn.img_step(state, action)

        return step

    def rollout_fn(self, k: int, horizon: int):
        """K x H open-loop imagination (their ``imagine_with_action``)."""
        dyn = self.wm.dynamics
        with torch.no_grad():
            start = dyn.initial(k)
        actions = torch.rand(k, horizon, 6, device=self.device) * 2 - 1

        def rollout():
            with torch.no_grad():
                dyn.imagine_with_action(actions, dict(start))

        return rollout
