"""Settings of the world model, its training and behaviour learning.

Frozen pydantic models with ``extra="forbid"``: a misspelt key is an error, never a silent default.
The job files under configs/ compose these (see robot_runtime/config.py); a checkpoint stores the
``ModelConfig`` that built it, so a model can be rebuilt from its file alone.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LossConfig(Frozen):
    """Scales of the ELBO's parts (DreamerV3, 2023 code: dyn 0.5, rep 0.1, free bits 1 nat)."""

    dyn_scale: float = Field(0.5, ge=0, description="KL[sg(post) || prior]: trains the prior")
    rep_scale: float = Field(
        0.1, ge=0, description="KL[post || sg(prior)]: regularises the posterior"
    )
    free_nats: float = Field(1.0, ge=0, description="KL below this (summed over latents) is free")
    open_loop_kl: float = Field(
        0.0,
        ge=0,
        description="KL[sg(q) || open-loop prior] at the steps whose observation training "
        "withholds (train.obs_every_max > 1), q being the posterior that step's observation "
        "would give: trains the prior's latent over the gaps it bridges at runtime, not only "
        "one step ahead (PlaNet's latent overshooting, in DreamerV3's KL form). 0: off",
    )
    obs_scale: float = Field(1.0, ge=0)
    reward_scale: float = Field(1.0, ge=0)
    cont_scale: float = Field(1.0, ge=0)


class ModelConfig(Frozen):
    """Sizes and heads of the world model.

    The stochastic state is ``stoch`` categorical variables of ``classes`` classes each; the
    deterministic state is a GRU of ``deter`` units.
    """

    deter: int = Field(256, gt=0)
    hidden: int = Field(
        256, gt=0, description="width of the RSSM's input and prior/posterior layers"
    )
    stoch: int = Field(32, gt=0)
    classes: int = Field(16, gt=1)
    unimix: float = Field(0.01, ge=0, lt=1, description="share of the uniform in every categorical")
    units: int = Field(256, gt=0, description="width of encoder, decoder and head MLPs")
    layers: int = Field(2, ge=1, description="depth of encoder, decoder and head MLPs")
    mlp_keys: tuple[str, ...] = Field((), description="vector observations the MLP encoder reads")
    cnn_keys: tuple[str, ...] = Field((), description="64x64 image observations the CNN reads")
    scale: dict[str, float | tuple[float, ...]] = Field(
        default_factory=dict,
        description="key: units the model works in (per column or one for all); observations "
        "are divided by them before symlog, so an error that matters is about 0.1 everywhere",
    )
    periodic: dict[str, tuple[int, float] | tuple[int, float, float]] = Field(
        default_factory=dict,
        description="key: [column, period] or [column, period, units]: that column is an angle "
        "with this period (e.g. a cube's yaw, period 90 degrees); the model sees (cos, sin) and "
        "decodes it back. units (the angle's own units, like scale): (cos, sin) lie on a circle "
        "of radius period / (2 pi units), so an error of `units` weighs about 1 in the loss, "
        "like 1 unit of a scaled column (without it, radius 1: 15 degrees of a 90-degree yaw "
        "weighed as much as 1 cm)",
    )
    cnn_depth: int = Field(16, gt=0)
    image_size: int = Field(64, description="images are image_size x image_size x 3, uint8")
    reward_head: Literal["twohot", "symlog_mse", "none"] = "twohot"
    reward_bins: int = Field(255, gt=2)
    cont_head: bool = True
    loss: LossConfig = LossConfig()

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if not self.mlp_keys and not self.cnn_keys:
            raise ValueError("model needs at least one observation key in mlp_keys or cnn_keys")
        if self.image_size != 64 and self.cnn_keys:
            raise ValueError("the CNN encoder/decoder supports image_size 64 only")
        for key in self.scale:
            if key not in self.mlp_keys:
                raise ValueError(f"scale.{key}: not one of mlp_keys {list(self.mlp_keys)}")
        for key, (column, period, *units) in self.periodic.items():
            if key not in self.mlp_keys or column < 0 or period <= 0 or any(u <= 0 for u in units):
                raise ValueError(
                    f"periodic.{key}: must name an mlp key, a column >= 0, a positive period "
                    "and (optional) positive units"
                )
        return self


class ModelSpec(Frozen):
    """What the data looks like: vector observation sizes, image keys, action size and units."""

    vector_dims: dict[str, int]
    image_keys: tuple[str, ...] = ()
    action_dim: int
    action_low: tuple[float, ...] | None = None  # the data's action units; the model sees [-1, 1]
    action_high: tuple[float, ...] | None = None


class TrainConfig(Frozen):
    """World-model training (Adam, 2023 DreamerV3 settings unless noted)."""

    batch_size: int = Field(16, gt=0)
    seq_len: int = Field(64, gt=1)
    lr: float = Field(1e-4, gt=0)
    eps: float = Field(1e-8, gt=0)
    grad_clip: float = Field(1000.0, gt=0)
    steps: int = Field(5000, ge=0, description="gradient steps for `kiwi train world-model`")
    log_every: int = Field(100, gt=0)
    checkpoint_every: int = Field(1000, gt=0)
    seed: int = 0
    threads: int = Field(2, gt=0, description="torch intra-op threads for training")
    obs_every_max: int = Field(
        1,
        ge=1,
        description="each training sequence sees its observations every N steps, N "
        "uniform in 1..obs_every_max (at a random phase); between them the state follows the "
        "prior. 1: every step (plain ELBO); the runtime's models want sparse, late observations",
    )


class BehaviorConfig(Frozen):
    """Actor-critic learned in imagination."""

    horizon: int = Field(15, gt=0)
    imag_starts: int | None = Field(
        None,
        gt=0,
        description="imagine from this many random posterior states of the batch (None: all B*T)",
    )
    discount: float = Field(0.99, gt=0, le=1)
    lam: float = Field(0.95, ge=0, le=1, description="lambda of the lambda-returns")
    units: int = Field(256, gt=0)
    layers: int = Field(2, ge=1)
    actor_lr: float = Field(3e-5, gt=0)
    critic_lr: float = Field(3e-5, gt=0)
    eps: float = Field(1e-5, gt=0)
    grad_clip: float = Field(100.0, gt=0)
    entropy: float = Field(3e-4, ge=0, description="actor entropy bonus (on normalised returns)")
    actor_grad: Literal["dynamics", "reinforce"] = "dynamics"
    min_std: float = Field(0.1, gt=0)
    max_std: float = Field(1.0, gt=0)
    retnorm_low: float = Field(5.0, ge=0, le=100, description="lower percentile of returns")
    retnorm_high: float = Field(95.0, ge=0, le=100, description="upper percentile of returns")
    retnorm_decay: float = Field(0.99, ge=0, lt=1)
    slow_critic_rate: float = Field(0.02, gt=0, le=1)
    slow_critic_reg: float = Field(1.0, ge=0)
    critic_bins: int = Field(255, gt=2)


class AgentConfig(Frozen):
    """Learning a policy from the agent's own experience (`kiwi train agent`)."""

    env_steps: int = Field(20000, gt=0)
    prefill: int = Field(1000, ge=0, description="random-policy steps before training starts")
    train_ratio: float = Field(64.0, gt=0, description="replayed steps per environment step")
    eval_episodes: int = Field(50, gt=0)
    obs_every_max: int | None = Field(
        None,
        ge=1,
        description="the agent's world model trains with this train.obs_every_max (None: "
        "train's own): an agent whose latent runs on late, sparse observations wants > 1",
    )
    log_every: int = Field(1000, gt=0, description="environment steps between metric lines")
    checkpoint_every: int = Field(5000, gt=0, description="environment steps between checkpoints")
