"""The losses, as plain functions with explicit scalar arguments.

ELBO parts: reconstruction (symlog MSE for vectors, MSE for images), reward, continue, and the KL
between posterior and prior with balancing and free bits (DreamerV3):

    L_kl = dyn_scale * max(free_nats, KL[sg(q) || p]) + rep_scale * max(free_nats, KL[q || sg(p)])

with the KL summed over the latents and the free-bits floor applied per (batch, time) element.
"""

from __future__ import annotations

import torch

from .nets import symlog
from .rssm import unimix_logprobs


def categorical_kl(
    lhs_logits: torch.Tensor, rhs_logits: torch.Tensor, unimix: float
) -> torch.Tensor:
    """KL[lhs || rhs] of ``[..., S, C]`` unimix categoricals, summed over the S latents.

    Returns ``[...]``."""
    return _kl_logprobs(unimix_logprobs(lhs_logits, unimix), unimix_logprobs(rhs_logits, unimix))


def _kl_logprobs(lhs_logp: torch.Tensor, rhs_logp: torch.Tensor) -> torch.Tensor:
    return (lhs_logp.exp() * (lhs_logp - rhs_logp)).sum((-2, -1))


def kl_balance(
    post_logits: torch.Tensor,
    prior_logits: torch.Tensor,
    unimix: float,
    dyn_scale: float,
    rep_scale: float,
    free_nats: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Returns the per-element loss ``[...]`` and the KL (same value in both terms) for logging."""
    post = unimix_logprobs(post_logits, unimix)
    prior = unimix_logprobs(prior_logits, unimix)
    dyn = _kl_logprobs(post.detach(), prior)  # trains the prior towards the posterior
    rep = _kl_logprobs(post, prior.detach())  # keeps the posterior predictable
    loss = dyn_scale * dyn.clamp(min=free_nats) + rep_scale * rep.clamp(min=free_nats)
    return loss, {"kl": dyn.detach()}


def symlog_mse(pred_symlog: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error in symlog space, summed over the last dim: ``[...]``."""
    return ((pred_symlog - symlog(target)) ** 2).sum(-1)


def image_mse(pred: torch.Tensor, image_uint8: torch.Tensor) -> torch.Tensor:
    """Squared error of ``[..., H, W, 3]`` predictions in [-0.5, 0.5] against uint8 images,
    summed over pixels."""
    target = image_uint8.float() / 255.0 - 0.5
    return ((pred - target) ** 2).sum((-3, -2, -1))


def lambda_return(
    reward: torch.Tensor, value: torch.Tensor, cont: torch.Tensor, lam: float
) -> torch.Tensor:
    """TD(lambda) returns along the time axis (dim 1).

    All inputs are ``[B, H]`` and aligned on the *arrival* state: reward[:, k], cont[:, k] (the
    discount times the continue probability) and value[:, k] belong to the state reached after
    action k. The return from the state before action k is

        R_k = reward_k + cont_k * ((1 - lam) * value_k + lam * R_{k+1}),   R_{H-1} bootstraps
        from value_{H-1}: R_{H-1} = reward_{H-1} + cont_{H-1} * value_{H-1}.
    """
    horizon = reward.shape[1]
    out = [None] * horizon
    nxt = value[:, -1]
    for k in reversed(range(horizon)):
        nxt = reward[:, k] + cont[:, k] * ((1 - lam) * value[:, k] + lam * nxt)
        out[k] = nxt
    return torch.stack(out, 1)
