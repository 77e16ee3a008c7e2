"""A small behaviour-cloning policy that outputs action chunks (ACT-style, without the CVAE).

Images (one CNN per camera, ending in a spatial softmax: the expected image position of each
of ``keypoints`` feature maps, plus their mean activations) and the joint state go through an
MLP that predicts the next ``chunk`` actions at once, all normalised by the dataset's mean and
standard deviation. Trained with an L1 loss (``chunk_l1``). Pure PyTorch: no files, clocks or
data loading here (robot_runtime/bc_training.py trains it, robot_runtime/bc_policy.py
runs it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn


class BCPolicyConfig(BaseModel):
    """The network's sizes and inputs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cameras: tuple[str, ...] = Field(
        ("wrist",), description="camera names (observation.images.<name>) the policy sees"
    )
    image_size: int = Field(64, ge=16, le=256, description="images are resized to this square")
    chunk: int = Field(50, ge=1, le=200, description="actions predicted per query (K)")
    channels: tuple[int, ...] = Field((16, 32, 32), description="CNN widths before keypoints")
    keypoints: int = Field(32, ge=1, description="spatial-softmax keypoints per camera")
    hidden: int = Field(512, ge=8, description="MLP width")
    layers: int = Field(2, ge=1, description="MLP hidden layers")


class SpatialSoftmax(nn.Module):
    """[B, C, H, W] -> [B, 2C]: each map's expected (x, y) in [-1, 1] under its softmax."""

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        b, c, h, w = maps.shape
        weights = torch.softmax(maps.reshape(b, c, h * w), dim=-1).reshape(b, c, h, w)
        xs = torch.linspace(-1.0, 1.0, w, device=maps.device, dtype=maps.dtype)
        ys = torch.linspace(-1.0, 1.0, h, device=maps.device, dtype=maps.dtype)
        x = (weights.sum(dim=2) * xs).sum(dim=-1)  # [B, C]
        y = (weights.sum(dim=3) * ys).sum(dim=-1)
        return torch.cat([x, y], dim=-1)


class CameraEncoder(nn.Module):
    """uint8-range float images [B, 3, S, S] -> features [B, 3 * keypoints]; the first layer
    and every other one halve the resolution until 16 x 16 (64 -> 32 -> 16)."""

    def __init__(self, config: BCPolicyConfig):
        super().__init__()
        layers: list[nn.Module] = []
        size, c_in = config.image_size, 3
        for i, c_out in enumerate(config.channels):
            stride = 2 if size > 16 else 1
            kernel = 5 if i == 0 else 3
            layers += [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2), nn.ReLU()]
            size, c_in = size // stride, c_out
        self.trunk = nn.Sequential(*layers)
        self.maps = nn.Conv2d(c_in, config.keypoints, 3, 1, 1)
        self.softmax = SpatialSoftmax()
        self.out_dim = 3 * config.keypoints

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        maps = self.maps(self.trunk(image / 127.5 - 1.0))
        return torch.cat([self.softmax(maps), maps.mean(dim=(2, 3))], dim=-1)


class BCPolicyNet(nn.Module):
    """``forward(images, state_n) -> [B, chunk, action_dim]`` normalised actions; ``images``
    maps each camera to [B, 3, S, S] floats in 0..255, ``state_n`` is [B, state_dim]
    normalised."""

    def __init__(self, config: BCPolicyConfig, state_dim: int = 6, action_dim: int = 6):
        super().__init__()
        self.config, self.state_dim, self.action_dim = config, state_dim, action_dim
        encoders = {c: CameraEncoder(config) for c in config.cameras}
        self.encoders = nn.ModuleDict(encoders)
        width = sum(e.out_dim for e in encoders.values()) + state_dim
        layers: list[nn.Module] = []
        for _ in range(config.layers):
            layers += [nn.Linear(width, config.hidden), nn.LayerNorm(config.hidden), nn.ReLU()]
            width = config.hidden
        layers.append(nn.Linear(width, config.chunk * action_dim))
        self.head = nn.Sequential(*layers)

    def forward(self, images: dict[str, torch.Tensor], state_n: torch.Tensor) -> torch.Tensor:
        feats = [self.encoders[c](images[c]) for c in self.config.cameras]
        out = self.head(torch.cat([*feats, state_n], dim=-1))
        return out.reshape(-1, self.config.chunk, self.action_dim)


def chunk_l1(pred_n: torch.Tensor, target_n: torch.Tensor) -> torch.Tensor:
    """Mean absolute error between normalised chunks [B, K, A] (ACT's reconstruction loss)."""
    return F.l1_loss(pred_n, target_n)


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """[B, C, H, W] shifted by up to ``pad`` pixels each way, edges repeated (DrQ's
    augmentation): the same crop per sample, a different one across the batch."""
    if pad <= 0:
        return images
    b, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]  # [B, 1, H, 1]
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]  # [B, 1, 1, W]
    batch = torch.arange(b)[:, None, None, None]
    chans = torch.arange(images.shape[1])[None, :, None, None]
    return padded[batch, chans, rows, cols]
