"""Behaviour learned in imagination: an actor and a critic trained on the world model's dreams.

From every posterior state of a training batch, the prior is rolled ``horizon`` steps with the
actor's actions; rewards and continue flags come from the model's heads. The critic learns
lambda-returns (two-hot, with a slowly updated copy as a regulariser); the actor maximises the
returns normalised by their 5-95 percentile range (DreamerV3), either by backpropagating through
the learned dynamics (continuous control, DreamerV1/2) or by REINFORCE.

Actions are in [-1, 1] on the model's side; the environment wrapper rescales them.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .config import BehaviorConfig
from .nets import TwoHot, init_weights, mlp
from .objective import lambda_return
from .rssm import State, flatten_state


class Actor(nn.Module):
    """A Gaussian over actions in [-1, 1]: mean tanh-squashed, std in [min_std, max_std]."""

    def __init__(
        self,
        feat_dim: int,
        action_dim: int,
        units: int,
        layers: int,
        min_std: float,
        max_std: float,
    ):
        super().__init__()
        self.mlp = mlp(feat_dim, units, layers)
        self.out = nn.Linear(units, 2 * action_dim)
        self.min_std, self.max_std = min_std, max_std
        init_weights(self)

    def dist(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = self.out(self.mlp(feat)).chunk(2, -1)
        std = (self.max_std - self.min_std) * torch.sigmoid(std + 2.0) + self.min_std
        return torch.tanh(mean), std

    def sample(
        self, feat: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reparameterised sample clipped to [-1, 1] with a straight-through gradient.
        Returns (action, log-prob of the unclipped sample, entropy)."""
        mean, std = self.dist(feat)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device)
        raw = mean + std * noise
        action = raw + (raw.clamp(-1, 1) - raw).detach()
        normal = torch.distributions.Normal(mean, std, validate_args=False)
        return action, normal.log_prob(raw.detach()).sum(-1), normal.entropy().sum(-1)

    def mode(self, feat: torch.Tensor) -> torch.Tensor:
        return self.dist(feat)[0]


class Critic(nn.Module):
    def __init__(self, feat_dim: int, units: int, layers: int, bins: int):
        super().__init__()
        self.mlp = mlp(feat_dim, units, layers)
        self.head = TwoHot(units, bins)
        init_weights(self)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.head(self.mlp(feat))

    def value(self, feat: torch.Tensor) -> torch.Tensor:
        return self.head.mean(self(feat))


class ReturnNormalizer:
    """EMA of the low and high percentiles of returns; scale = max(1, high - low)."""

    def __init__(self, low: float, high: float, decay: float):
        self.q = torch.tensor([low / 100.0, high / 100.0])
        self.decay = decay
        self.range: torch.Tensor | None = None

    def update(self, returns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = returns.detach().flatten().float()
        if flat.numel() > 1_000_000:  # torch.quantile has an input size limit
            flat = flat[torch.randperm(flat.numel(), device=flat.device)[:1_000_000]]
        now = torch.quantile(flat, self.q.to(flat.device))
        self.range = now if self.range is None else self.decay * self.range + (1 - self.decay) * now
        low, high = self.range
        return low, torch.clamp(high - low, min=1.0)


class Behavior(nn.Module):
    def __init__(self, feat_dim: int, action_dim: int, config: BehaviorConfig):
        super().__init__()
        self.config = config
        self.actor = Actor(
            feat_dim, action_dim, config.units, config.layers, config.min_std, config.max_std
        )
        self.critic = Critic(feat_dim, config.units, config.layers, config.critic_bins)
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.retnorm = ReturnNormalizer(
            config.retnorm_low, config.retnorm_high, config.retnorm_decay
        )
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), config.actor_lr, eps=config.eps)
        self.critic_opt = torch.optim.Adam(
            self.critic.parameters(), config.critic_lr, eps=config.eps
        )

    def policy(
        self, state: State, sample: bool = True, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        feat = state.feat()
        return self.actor.sample(feat, generator)[0] if sample else self.actor.mode(feat)

    def train_step(
        self, world_model, start: State, generator: torch.Generator | None = None
    ) -> dict[str, float]:
        """One actor and one critic update from the posterior states ``start`` ``[B, T, ...]``."""
        cfg = self.config
        start = flatten_state(start).detach()
        if cfg.imag_starts is not None and cfg.imag_starts < start.deter.shape[0]:
            pick = torch.randperm(
                start.deter.shape[0], generator=generator, device=start.deter.device
            )[: cfg.imag_starts]
            start = State(*(x[pick] for x in start))
        world_model.requires_grad_(False)
        try:
            feats, entropies, logps = [start.feat()], [], []

            def act(state: State) -> torch.Tensor:
                action, logp, ent = self.actor.sample(state.feat(), generator)
                if cfg.actor_grad == "reinforce":
                    action = action.detach()
                logps.append(logp)
                entropies.append(ent)
                return action

            states, _ = world_model.imagine(start, act, cfg.horizon, generator)
            feats += list(states.feat().unbind(1))
            feat = torch.stack(feats, 1)  # [N, H+1, F]: s_0 .. s_H
            arrived = feat[:, 1:].reshape(-1, feat.shape[-1])  # 2-D: linear layers avoid bmm
            n, horizon = feat.shape[0], feat.shape[1] - 1
            reward = world_model.reward.mean(world_model.reward(arrived)).view(n, horizon)
            cont = (
                torch.sigmoid(world_model.cont(arrived)).view(n, horizon)
                if world_model.cont is not None
                else torch.ones_like(reward)
            )
        finally:
            world_model.requires_grad_(True)
        disc = cfg.discount * cont  # [N, H]
        value = self.critic.value(feat.reshape(-1, feat.shape[-1])).view(n, horizon + 1)
        returns = lambda_return(reward, value[:, 1:], disc, cfg.lam)  # R_0 .. R_{H-1}
        weight = torch.cumprod(
            torch.cat([torch.ones_like(disc[:, :1]), disc[:, :-1]], 1), 1
        ).detach()
        low, scale = self.retnorm.update(returns)
        entropy = torch.stack(entropies, 1)
        if cfg.actor_grad == "dynamics":
            objective = (returns - low) / scale
        else:
            adv = ((returns - value[:, :-1]) / scale).detach()
            objective = torch.stack(logps, 1) * adv
        actor_loss = -(weight * (objective + cfg.entropy * entropy)).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        actor_norm = nn.utils.clip_grad_norm_(self.actor.parameters(), cfg.grad_clip)
        self.actor_opt.step()

        critic_feat = feat[:, :-1].detach().reshape(-1, feat.shape[-1])
        out = self.critic(critic_feat).view(n, horizon, -1)
        target = returns.detach()
        critic_loss = self.critic.head.loss(out, target)
        with torch.no_grad():
            slow_target = self.slow_critic.value(critic_feat).view(n, horizon)
        critic_loss = critic_loss + cfg.slow_critic_reg * self.critic.head.loss(out, slow_target)
        critic_loss = (weight * critic_loss).mean()
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        critic_norm = nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.grad_clip)
        self.critic_opt.step()
        with torch.no_grad():
            for slow, fast in zip(self.slow_critic.parameters(), self.critic.parameters()):
                slow.lerp_(fast, cfg.slow_critic_rate)
        return {
            "actor_loss": actor_loss.item(),
            "critic_loss": critic_loss.item(),
            "imag_return": returns.mean().item(),
            "imag_reward": reward.mean().item(),
            "return_scale": float(scale),
            "actor_entropy": entropy.mean().item(),
            "actor_grad_norm": float(actor_norm),
            "critic_grad_norm": float(critic_norm),
        }
