"""The recurrent state-space model: one step function for training, imagination and the robot.

State s_t = (h_t, z_t): h is a GRU's deterministic state, z is ``stoch`` categorical variables of
``classes`` classes each, held as one-hot samples (straight-through gradients while training).

    img_step(s_{t-1}, a_{t-1})          -> prior state s_t,  z_t ~ p(z | h_t)
    obs_step(s_{t-1}, a_{t-1}, e_t)     -> (posterior s_t with z_t ~ q(z | h_t, e_t), prior s_t)

``observe`` and ``imagine`` only loop over these two, so the step the benchmarks time is the step
that runs in training and on the robot.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class State(NamedTuple):
    deter: torch.Tensor  # [B, D]
    stoch: torch.Tensor  # [B, S, C] one-hot sample
    logits: torch.Tensor  # [B, S, C] raw logits of the distribution stoch was drawn from

    def feat(self) -> torch.Tensor:
        """``[..., D + S*C]``: what decoders, heads and the actor read."""
        return torch.cat([self.deter, self.stoch.flatten(-2)], -1)

    def detach(self) -> State:
        return State(*(x.detach() for x in self))


def stack_states(states: list[State], dim: int = 1) -> State:
    return State(*(torch.stack(parts, dim) for parts in zip(*states)))


def index_state(state: State, index) -> State:
    return State(*(x[index] for x in state))


def flatten_state(state: State) -> State:
    """``[B, T, ...]`` -> ``[B*T, ...]``."""
    return State(*(x.reshape(-1, *x.shape[2:]) for x in state))


def unimix_probs(logits: torch.Tensor, unimix: float) -> torch.Tensor:
    probs = logits.softmax(-1)
    if unimix > 0:
        probs = probs * (1.0 - unimix) + unimix / logits.shape[-1]
    return probs


def unimix_logprobs(logits: torch.Tensor, unimix: float) -> torch.Tensor:
    if unimix > 0:
        return unimix_probs(logits, unimix).log()
    return logits.log_softmax(-1)


def sample_onehot(
    logits: torch.Tensor,
    unimix: float,
    generator: torch.Generator | None = None,
    u: torch.Tensor | None = None,
) -> torch.Tensor:
    """One-hot sample of each categorical in ``[..., C]`` logits, mixed with ``unimix`` uniform.

    Inverse-CDF sampling: one uniform number per variable (far cheaper than torch.multinomial or
    Gumbel noise for many small categoricals), drawn here or passed in as ``u [..., 1]``. While
    gradients are on, the straight-through estimator passes the gradient of the probabilities.
    """
    classes = logits.shape[-1]
    if u is None:
        u = torch.rand(*logits.shape[:-1], 1, generator=generator, device=logits.device)
    if not (torch.is_grad_enabled() and logits.requires_grad):
        cdf = logits.softmax(-1).mul_(1.0 - unimix).add_(unimix / classes).cumsum_(-1)
        # cdf[..., -1] may round to just below 1: the clamp keeps such a u in the last class.
        idx = torch.searchsorted(cdf, u).clamp_(max=classes - 1)
        return torch.zeros_like(logits).scatter_(-1, idx, 1.0)
    probs = unimix_probs(logits, unimix)
    cdf = probs.cumsum(-1)
    idx = torch.searchsorted(cdf.detach(), u).clamp_(max=classes - 1)
    sample = torch.zeros_like(logits).scatter_(-1, idx, 1.0)
    return sample + probs - probs.detach()


def mode_onehot(logits: torch.Tensor) -> torch.Tensor:
    return F.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)


class RSSM(nn.Module):
    """Weights are plain ``[in, out]`` tables used with F.* calls: on the batch-1 robot path the
    cost of a step is per-op overhead and weight traffic, and this layout and call style cut both
    (see docs/architecture.md, "Why the step is written this way")."""

    def __init__(
        self,
        deter: int,
        hidden: int,
        stoch: int,
        classes: int,
        action_dim: int,
        embed_dim: int,
        unimix: float = 0.01,
    ):
        super().__init__()
        self.deter, self.hidden, self.stoch, self.classes = deter, hidden, stoch, classes
        self.action_dim, self.unimix = action_dim, unimix
        self.fused_observe = True  # False: training runs the plain step loop (for comparison)
        sc = stoch * classes
        # Input layer, split into a z table and an action table: with a one-hot z and no
        # gradients, z's product is a sum of one row per latent (32 rows instead of the table).
        self.in_stoch = _weight(sc, hidden, fan_in=sc + action_dim)
        self.in_action = _weight(action_dim, hidden, fan_in=sc + action_dim)
        self.in_norm_w, self.in_norm_b = _norm_params(hidden)
        self.gru = _weight(hidden + deter, 3 * deter)  # rows: [x; h] -> [reset, cand, update]
        self.gru_norm_w, self.gru_norm_b = _norm_params(3 * deter)
        self.prior_hidden = _weight(deter, hidden)
        self.prior_norm_w, self.prior_norm_b = _norm_params(hidden)
        self.prior_out = _weight(hidden, sc)
        self.prior_bias = nn.Parameter(torch.zeros(sc))
        self.post_hidden = _weight(deter + embed_dim, hidden)
        self.post_norm_w, self.post_norm_b = _norm_params(hidden)
        self.post_out = _weight(hidden, sc)
        self.post_bias = nn.Parameter(torch.zeros(sc))
        self.register_buffer("_offsets", torch.arange(stoch) * classes, persistent=False)
        self.register_buffer(
            "_class_ids", torch.arange(classes, dtype=torch.float32), persistent=False
        )

    @property
    def feat_dim(self) -> int:
        return self.deter + self.stoch * self.classes

    def initial(self, batch: int) -> State:
        """h = 0 and z = the prior's mode at h = 0, so z is one-hot from the first step on."""
        deter = torch.zeros(batch, self.deter, device=self._offsets.device)
        logits = self._prior_logits(deter)
        return State(deter, mode_onehot(logits), logits)

    def _stoch_in(self, stoch: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return stoch.flatten(-2) @ table
        # No gradients: z is an exact one-hot sample, so its product with the table is the sum
        # of one row per latent. The class index is read with a product (argmax is slow here).
        idx = (stoch @ self._class_ids).long() + self._offsets  # [B, S]
        if idx.shape[0] == 1:  # the runtime's step: the cheapest gather at batch 1 (5 vs 9 µs)
            return table.index_select(0, idx.view(-1)).sum(0, keepdim=True)
        if idx.shape[0] <= 16:
            return table[idx].sum(-2)
        return F.embedding_bag(idx, table, mode="sum")  # no [B, S, hidden] temporary

    def _prior_logits(self, deter: torch.Tensor) -> torch.Tensor:
        p = self._parameters
        x = F.layer_norm(
            deter @ p["prior_hidden"], (self.hidden,), p["prior_norm_w"], p["prior_norm_b"], 1e-3
        )
        logits = torch.addmm(p["prior_bias"], F.silu(x), p["prior_out"])
        return logits.view(*logits.shape[:-1], self.stoch, self.classes)

    def img_step(
        self,
        state: State,
        action: torch.Tensor,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> State:
        """Prior step: ``state`` at t-1 and the action taken then -> prior state at t.
        ``noise [B, S, 1]``: the sample's uniforms (default: drawn from ``generator``)."""
        # Parameters are read from the dict: nn.Module's attribute lookup costs ~0.5 us each,
        # a tenth of this step's budget over a dozen weights.
        p = self._parameters
        x = torch.addmm(self._stoch_in(state.stoch, p["in_stoch"]), action, p["in_action"])
        x = F.silu(F.layer_norm(x, (self.hidden,), p["in_norm_w"], p["in_norm_b"], 1e-3))
        gates = F.layer_norm(
            torch.cat([x, state.deter], -1) @ p["gru"],
            (3 * self.deter,),
            p["gru_norm_w"],
            p["gru_norm_b"],
            1e-3,
        )
        # float32 (a no-op unless autocast left bfloat16): the recurrent state stays float32
        reset, cand, update = gates.float().chunk(3, -1)
        cand = torch.tanh(torch.sigmoid(reset) * cand)
        deter = torch.lerp(state.deter, cand, torch.sigmoid(update - 1.0))  # biased to keep h
        logits = self._prior_logits(deter)
        return State(deter, sample_onehot(logits, self.unimix, generator, noise), logits)

    def obs_step(
        self,
        state: State,
        prev_action: torch.Tensor,
        embed: torch.Tensor,
        is_first: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> tuple[State, State]:
        """Posterior step: returns (posterior, prior) at t. Where ``is_first``, the state and the
        previous action are reset first, so sequences of several episodes can run in one batch.
        ``noise [2, B, S, 1]``: uniforms of the prior's and the posterior's samples."""
        if is_first is not None:
            state, prev_action = self.reset_where(state, prev_action, is_first)
        prior = self.img_step(state, prev_action, generator, None if noise is None else noise[0])
        logits = self.posterior_logits(prior.deter, embed)
        u = None if noise is None else noise[1]
        post = State(prior.deter, sample_onehot(logits, self.unimix, generator, u), logits)
        return post, prior

    def posterior_logits(self, deter: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
        """q(z | h, embed) as ``[..., S, C]`` logits, for any leading shape."""
        x = F.silu(
            _layer_norm(
                torch.cat([deter, embed], -1) @ self.post_hidden,
                self.post_norm_w,
                self.post_norm_b,
            )
        )
        out = (
            torch.addmm(self.post_bias, x, self.post_out)
            if x.dim() == 2
            else x @ self.post_out + self.post_bias
        )
        return out.unflatten(-1, (self.stoch, self.classes))

    def reset_where(
        self, state: State, action: torch.Tensor, is_first: torch.Tensor
    ) -> tuple[State, torch.Tensor]:
        first = is_first.bool()
        if not torch.compiler.is_compiling() and not first.any():  # a branch compile would break
            return state, action
        init = self.initial(first.shape[0])
        state = State(
            *(torch.where(first.view(-1, *[1] * (s.dim() - 1)), i, s) for s, i in zip(state, init))
        )
        return state, action * (~first).unsqueeze(-1).to(action.dtype)

    def observe(
        self,
        embed: torch.Tensor,
        prev_action: torch.Tensor,
        is_first: torch.Tensor,
        state: State | None = None,
        generator: torch.Generator | None = None,
        observed: torch.Tensor | None = None,
    ) -> tuple[State, State]:
        """Runs the posterior over a sequence.

        embed ``[B, T, E]``; prev_action ``[B, T, A]``, where prev_action[:, t] is the action
        taken *before* observation t (the one that led to it); is_first ``[B, T]``.
        ``observed [B, T]`` (optional): where False, the observation is withheld and the state
        follows the prior, as on the robot between two late, sparse observations.
        Returns the states (posterior where observed, prior elsewhere) and the priors, stacked
        as ``[B, T, ...]``.

        While gradients are on (training), the uniforms of every sample are drawn at once and
        the sequence runs through ``observe_fused``: the same layers, with the work that does
        not depend on the recurrence taken out of the loop (see there). Without gradients the
        plain step loop runs, drawing from ``generator`` step by step.
        """
        if state is None:
            state = self.initial(embed.shape[0])
        if not torch.is_grad_enabled():
            return self.observe_stepwise(embed, prev_action, is_first, state, generator, observed)
        batch, length = embed.shape[:2]
        # [T, 2, B, S, 1]: noise[t, 0] is step t's prior's uniforms, noise[t, 1] its posterior's
        noise = torch.rand(
            length, 2, batch, self.stoch, 1, generator=generator, device=embed.device
        )
        if self.fused_observe and not torch.compiler.is_compiling():
            from .sequence import observe_fused

            return observe_fused(self, embed, prev_action, is_first, state, noise, observed)
        return self.observe_stepwise(embed, prev_action, is_first, state, None, observed, noise)

    def observe_stepwise(
        self,
        embed: torch.Tensor,
        prev_action: torch.Tensor,
        is_first: torch.Tensor,
        state: State,
        generator: torch.Generator | None = None,
        observed: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> tuple[State, State]:
        """``observe`` as a loop over ``obs_step``: the reference the fused loop must match.
        ``noise [T, 2, B, S, 1]`` (optional): the uniforms of every sample."""
        posts, priors = [], []
        for t in range(embed.shape[1]):
            post, prior = self.obs_step(
                state,
                prev_action[:, t],
                embed[:, t],
                is_first[:, t],
                generator,
                None if noise is None else noise[t],
            )
            if observed is not None:
                seen = (observed[:, t] | is_first[:, t].bool()).view(-1, 1)
                post = State(
                    torch.where(seen, post.deter, prior.deter),
                    torch.where(seen.unsqueeze(-1), post.stoch, prior.stoch),
                    torch.where(seen.unsqueeze(-1), post.logits, prior.logits),
                )
            state = post
            posts.append(post)
            priors.append(prior)
        return stack_states(posts), stack_states(priors)

    def imagine(
        self,
        state: State,
        actions: torch.Tensor | Callable[[State], torch.Tensor],
        horizon: int | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[State, torch.Tensor]:
        """Rolls the prior forward from ``state`` ``[B, ...]``.

        ``actions`` is either ``[B, H, A]`` (open loop) or a policy mapping a state to ``[B, A]``.
        Returns the H states reached, ``[B, H, ...]``, and the H actions taken, ``[B, H, A]``
        (action k was taken in the state before state k).
        """
        if callable(actions):
            if horizon is None:
                raise ValueError("imagine with a policy needs a horizon")
            policy, steps = actions, horizon
        else:
            policy, steps = None, actions.shape[1] if horizon is None else horizon
        states, taken = [], []
        for k in range(steps):
            action = policy(state) if policy is not None else actions[:, k]
            state = self.img_step(state, action, generator)
            states.append(state)
            taken.append(action)
        return stack_states(states), torch.stack(taken, 1)


def _weight(n_in: int, n_out: int, fan_in: int | None = None) -> nn.Parameter:
    """``[n_in, n_out]`` truncated-normal weights scaled by the average fan (DreamerV3-like)."""
    std = (2.0 / ((fan_in or n_in) + n_out)) ** 0.5 / 0.87962566
    return nn.Parameter(
        nn.init.trunc_normal_(torch.empty(n_in, n_out), 0.0, std, -2 * std, 2 * std)
    )


def _norm_params(n: int) -> tuple[nn.Parameter, nn.Parameter]:
    return nn.Parameter(torch.ones(n)), nn.Parameter(torch.zeros(n))


def _layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], weight, bias, 1e-3)
