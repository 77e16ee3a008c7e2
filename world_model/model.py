"""WorldModel = encoder + RSSM + decoder + reward and continue heads; its loss; save and load."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import checkpoint
from .config import ModelConfig, ModelSpec
from .nets import BernoulliHead, Decoder, Encoder, ScalarHead, init_weights, symexp
from .objective import categorical_kl, image_mse, kl_balance, symlog_mse
from .rssm import RSSM, State


def metrics_to_floats(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    """0-d metric tensors -> floats, with one copy off the device for all of them."""
    if not metrics:
        return {}
    values = torch.stack([v.detach().float().reshape(()) for v in metrics.values()]).tolist()
    return dict(zip(metrics, values))


class WorldModel(nn.Module):
    def __init__(self, config: ModelConfig, spec: ModelSpec):
        super().__init__()
        missing = [k for k in config.mlp_keys if k not in spec.vector_dims]
        missing += [k for k in config.cnn_keys if k not in spec.image_keys]
        if missing:
            raise ValueError(
                f"model observation keys {missing} are not in the data "
                f"(vectors: {sorted(spec.vector_dims)}, images: {list(spec.image_keys)})"
            )
        self.config, self.spec = config, spec
        # A periodic column becomes (cos, sin): one more input and output dimension.
        vector_dims = {k: spec.vector_dims[k] + (k in config.periodic) for k in config.mlp_keys}
        self.encoder = Encoder(
            vector_dims,
            config.cnn_keys,
            config.units,
            config.layers,
            config.cnn_depth,
            linear_keys=tuple(config.scale),
        )
        self.rssm = RSSM(
            config.deter,
            config.hidden,
            config.stoch,
            config.classes,
            spec.action_dim,
            self.encoder.out_dim,
            config.unimix,
        )
        feat = self.rssm.feat_dim
        self.decoder = Decoder(
            feat, vector_dims, config.cnn_keys, config.units, config.layers, config.cnn_depth
        )
        self.reward = (
            ScalarHead(feat, config.units, config.layers, config.reward_head, config.reward_bins)
            if config.reward_head != "none"
            else None
        )
        self.cont = BernoulliHead(feat, config.units, config.layers) if config.cont_head else None
        for m in (self.encoder, self.decoder, self.reward, self.cont):
            if m is not None:
                init_weights(m)

        low = spec.action_low or [-1.0] * spec.action_dim
        high = spec.action_high or [1.0] * spec.action_dim
        if len(low) != spec.action_dim or len(high) != spec.action_dim:
            raise ValueError(f"action bounds must have {spec.action_dim} entries")
        self.register_buffer("action_low", torch.tensor(low, dtype=torch.float32), persistent=False)
        self.register_buffer(
            "action_high", torch.tensor(high, dtype=torch.float32), persistent=False
        )

    @property
    def obs_keys(self) -> tuple[str, ...]:
        return tuple(self.config.mlp_keys) + tuple(self.config.cnn_keys)

    def normalize_action(self, action: torch.Tensor) -> torch.Tensor:
        """Data units (e.g. degrees, newton-metres) -> the model's [-1, 1]."""
        return 2.0 * (action - self.action_low) / (self.action_high - self.action_low) - 1.0

    def denormalize_action(self, action: torch.Tensor) -> torch.Tensor:
        return self.action_low + (action + 1.0) * 0.5 * (self.action_high - self.action_low)

    # --- the step functions (shared by training, imagination and the runtime) -------------
    def initial(self, batch: int) -> State:
        return self.rssm.initial(batch)

    def _scale(self, key: str, like: torch.Tensor) -> torch.Tensor | None:
        if key not in self.config.scale:
            return None
        value = self.config.scale[key]
        return (
            torch.as_tensor(value, dtype=like.dtype, device=like.device).expand(like.shape[-1:])
            if isinstance(value, float | int)
            else torch.as_tensor(value, dtype=like.dtype, device=like.device)
        )

    def features(self, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Observations as the networks see them: divided by their ``scale``, and each periodic
        column replaced by (cos, sin), appended at the end of its vector."""
        if not self.config.periodic and not self.config.scale:
            return obs
        out = dict(obs)
        for key in self.config.scale:
            out[key] = obs[key] / self._scale(key, obs[key])
        for key, (column, period, *units) in self.config.periodic.items():
            x = out[key]
            angle = obs[key][..., column] * (2 * math.pi / period)
            radius = period / (2 * math.pi * units[0]) if units else 1.0
            rest = torch.cat([x[..., :column], x[..., column + 1 :]], -1)
            out[key] = torch.cat(
                [rest, radius * torch.cos(angle)[..., None], radius * torch.sin(angle)[..., None]],
                -1,
            )
        return out

    def _unfeature(self, key: str, value: torch.Tensor) -> torch.Tensor:
        if key in self.config.periodic:
            column, period, *_ = self.config.periodic[key]
            angle = torch.atan2(value[..., -1], value[..., -2]) * (period / (2 * math.pi))
            rest = value[..., :-2]
            value = torch.cat([rest[..., :column], angle[..., None], rest[..., column:]], -1)
            if key in self.config.scale:
                scale = self._scale(key, value).clone()
                scale[column] = 1.0  # the angle came back in its own units
                return value * scale
        if key in self.config.scale:
            return value * self._scale(key, value)
        return value

    def _from_decoder(self, key: str, value: torch.Tensor) -> torch.Tensor:
        """Vector decoder output -> features: scaled keys are linear, the others symlog."""
        return value if key in self.config.scale else symexp(value)

    def encode(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.encoder(self.features(obs))

    def img_step(
        self, state: State, action: torch.Tensor, generator: torch.Generator | None = None
    ) -> State:
        return self.rssm.img_step(state, action, generator)

    def obs_step(
        self,
        state: State,
        prev_action: torch.Tensor,
        obs: dict[str, torch.Tensor],
        is_first: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[State, State]:
        return self.rssm.obs_step(state, prev_action, self.encode(obs), is_first, generator)

    def observe(
        self,
        obs: dict[str, torch.Tensor],
        prev_action: torch.Tensor,
        is_first: torch.Tensor,
        state: State | None = None,
        generator: torch.Generator | None = None,
        observed: torch.Tensor | None = None,
    ) -> tuple[State, State]:
        """obs ``{key: [B, T, ...]}``; prev_action[:, t] led to obs[:, t]. See RSSM.observe."""
        return self.rssm.observe(
            self.encode(obs), prev_action, is_first, state, generator, observed
        )

    def imagine(
        self,
        state: State,
        actions,
        horizon: int | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[State, torch.Tensor]:
        return self.rssm.imagine(state, actions, horizon, generator)

    def decode(self, state: State) -> dict[str, torch.Tensor]:
        """Predicted observation in its own units (images as floats in [0, 1]), plus ``reward``
        and ``cont`` (probability) where the model has those heads."""
        feat = state.feat()
        out = {}
        for key, value in self.decoder(feat).items():
            out[key] = (
                (value + 0.5).clamp(0, 1)
                if key in self.config.cnn_keys
                else self._unfeature(key, self._from_decoder(key, value))
            )
        if self.reward is not None:
            out["reward"] = self.reward.mean(self.reward(feat))
        if self.cont is not None:
            out["cont"] = torch.sigmoid(self.cont(feat))
        return out

    def decode_vectors(self, state: State) -> dict[str, torch.Tensor]:
        """The vector observations alone, in their own units (the image decoder's cost is
        skipped: dreams labelled from the decoded joints need no pixels)."""
        return {
            key: self._unfeature(key, self._from_decoder(key, value))
            for key, value in self.decoder.vectors(state.feat()).items()
        }

    # --- training ------------------------------------------------------------------------
    def loss(
        self,
        batch: dict[str, torch.Tensor],
        state: State | None = None,
        generator: torch.Generator | None = None,
        observed: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float], State]:
        """The ELBO with its metrics as floats; see ``loss_tensors``."""
        loss, metrics, post = self.loss_tensors(batch, state, generator, observed)
        return loss, metrics_to_floats(metrics), post

    def loss_tensors(
        self,
        batch: dict[str, torch.Tensor],
        state: State | None = None,
        generator: torch.Generator | None = None,
        observed: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], State]:
        """ELBO on a batch of sequences ``{key: [B, T, ...]}`` from the replay (actions in the
        data's units).

        ``observed [B, T]`` withholds observations where False: those steps follow the prior,
        are reconstructed from it (an open-loop prediction loss) and have no KL term. Training
        this way teaches the model what the runtime needs: to predict between sparse, late
        observations and to recover from its drift when one arrives.

        ``action[:, t]`` is the action taken after seeing obs[:, t] and ``reward[:, t]`` the reward
        received on arriving at obs[:, t] (the replay's convention), so the action that led to
        obs[:, t] is action[:, t-1]. A sequence starts from the initial state (is_first at t=0).

        Metrics come back as detached 0-d tensors (no device sync per metric). Under bfloat16
        autocast the networks' matrix products run in bfloat16, but the recurrent state (the
        GRU's output passes a layer norm, which autocast keeps in float32), the softmaxes of
        sampling and of the KL, and every loss term are float32: head outputs are cast back
        before their losses, so a loss is never summed in bfloat16's 8-bit mantissa.
        """
        cfg = self.config.loss
        action = self.normalize_action(batch["action"])
        prev_action = torch.cat([torch.zeros_like(action[:, :1]), action[:, :-1]], 1)
        is_first = batch["is_first"].clone().bool()
        if state is None:
            is_first[:, 0] = True
        obs = {k: batch[k] for k in self.obs_keys}
        embed = self.encode(obs)
        post, prior = self.rssm.observe(embed, prev_action, is_first, state, generator, observed)
        feat = post.feat()
        parts: dict[str, torch.Tensor] = {}
        recon = self.decoder(feat)
        targets = self.features(obs)
        rec = 0
        for key, pred in recon.items():
            pred = pred.float()
            rec = rec + (
                image_mse(pred, targets[key])
                if key in self.config.cnn_keys
                else ((pred - targets[key]) ** 2).sum(-1)
                if key in self.config.scale
                else symlog_mse(pred, targets[key])
            )
        parts["obs"] = rec
        if self.reward is not None:
            parts["reward"] = self.reward.loss(self.reward(feat).float(), batch["reward"])
        if self.cont is not None:
            cont_target = 1.0 - batch["is_terminal"].float()
            parts["cont"] = self.cont.loss(self.cont(feat).float(), cont_target)
        kl_loss, kl = kl_balance(
            post.logits.float(),
            prior.logits.float(),
            self.config.unimix,
            cfg.dyn_scale,
            cfg.rep_scale,
            cfg.free_nats,
        )
        if observed is not None:
            seen = (observed | is_first).float()
            kl_loss = kl_loss * seen * seen.numel() / seen.sum().clamp(min=1.0)
            if cfg.open_loop_kl > 0:
                parts["open_loop_kl"] = self.open_loop_kl(prior, embed, 1.0 - seen)
        scales = {
            "obs": cfg.obs_scale,
            "reward": cfg.reward_scale,
            "cont": cfg.cont_scale,
            "open_loop_kl": cfg.open_loop_kl,
        }
        total = kl_loss + sum(scales[k] * v for k, v in parts.items())
        loss = total.mean()
        with torch.no_grad():
            metrics = {f"loss_{k}": v.mean() for k, v in parts.items()}
            metrics["loss_kl"] = kl_loss.mean()
            metrics.update({k: v.mean() for k, v in kl.items()})
            metrics["loss"] = loss.detach()
            for key in self.config.mlp_keys:
                err = (self._from_decoder(key, recon[key].float()) - targets[key]) ** 2
                metrics[f"recon_mse_{key}"] = err.mean()
        return loss, metrics, post

    def open_loop_kl(self, prior: State, embed: torch.Tensor, unseen: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` KL[sg(q_t) || p_t] (free bits as the ELBO's) where ``unseen`` is 1, scaled
        so its mean over all elements is its mean over the unseen ones; 0 elsewhere.

        ``prior`` holds the open-loop priors (the deterministic state carried by the prior since
        the last observation) and q_t = q(z | that state, o_t): the latent the withheld
        observation would have given. Only the prior and the dynamics learn from it."""
        target = self.rssm.posterior_logits(prior.deter, embed).detach()
        kl = categorical_kl(target, prior.logits, self.config.unimix)
        kl = kl.clamp(min=self.config.loss.free_nats) * unseen
        return kl * unseen.numel() / unseen.sum().clamp(min=1.0)

    # --- files ---------------------------------------------------------------------------
    def save(
        self,
        path: Path,
        meta: dict[str, Any] | None = None,
        extra: dict[str, dict[str, torch.Tensor]] | None = None,
    ) -> None:
        """Atomic safetensors file holding the weights, the ModelConfig and the ModelSpec."""
        header = {
            "model_config": self.config.model_dump(mode="json"),
            "spec": self.spec.model_dump(mode="json"),
            **(meta or {}),
        }
        checkpoint.save_tensors(path, {"model": self.state_dict(), **(extra or {})}, header)

    @classmethod
    def load(
        cls, path: Path, device: torch.device | str | None = None
    ) -> tuple[WorldModel, dict[str, Any], dict[str, dict]]:
        """Returns (model, metadata, the file's other tensor groups such as optimizer state).

        Files are read onto the CPU whatever device wrote them (safetensors holds plain
        arrays); the model is then moved to ``device`` (default: stays on the CPU). The other
        groups stay on the CPU: their users move what they need."""
        groups, meta = checkpoint.load_tensors(path)
        if "model_config" not in meta or "model" not in groups:
            raise checkpoint.CheckpointError(f"{path} holds no world model")
        model = cls(
            ModelConfig.model_validate(meta["model_config"]), ModelSpec.model_validate(meta["spec"])
        )
        model.load_state_dict(groups.pop("model"))
        if device is not None:
            model.to(device)
        return model, meta, groups
