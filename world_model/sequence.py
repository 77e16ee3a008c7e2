"""The posterior over a training sequence, arranged for speed: ``observe_fused``.

It computes what ``RSSM.observe_stepwise`` computes (the same layers and weights, the same
samples for the same uniforms; tests/world_model/test_sequence.py holds them equal), with the
work that does not depend on the recurrence taken out of the per-step loop. A profile of the
training update (batch 16 x 64, reference size) showed it dominated by small matrix products:
in the loop each weight meets only 16 rows, and backward then adds 64 small weight gradients
into each weight one by one. Here:

- the action's share of the input layer and the observation's share of the posterior layer are
  one product each over all B*T rows, before the loop;
- the prior's layers run once over all T deterministic states after the loop (while every
  step is observed, the prior's logits feed only the KL, not the recurrence), and its samples
  are drawn there too, from the same uniforms;
- the weights used inside the loop get their gradient as one product over the whole sequence
  (``SequenceWeight``) instead of T products and T - 1 additions;
- which steps start an episode is read once per sequence, not once per step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .rssm import RSSM, State


class SequenceWeight:
    """A weight used at every step of a sequence. Each step's product ``x_t @ W`` passes only
    the gradient of ``x_t`` back; the steps' inputs and output gradients are kept, and W's
    gradient is one product over all of them, reaching autograd (and DDP's hooks) as one
    ordinary gradient of W once every step's backward has run."""

    def __init__(self, weight: torch.Tensor):
        self.inputs: list[torch.Tensor] = []
        self.grads: list[torch.Tensor] = []
        self.token = _Gather.apply(weight, self)

    def mm(self, x: torch.Tensor) -> torch.Tensor:
        return _StepMatmul.apply(x, self.token, self)


class _Gather(torch.autograd.Function):
    """Identity on W in forward; in backward (which autograd runs after every step using W's
    token, since they all depend on it) W's gradient from the kept inputs and gradients."""

    @staticmethod
    def forward(ctx, weight, seq):
        ctx.seq, ctx.dtype = seq, weight.dtype
        ctx.set_materialize_grads(False)
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad):
        seq = ctx.seq
        total = None if grad is None else grad
        if seq.inputs:
            g = torch.cat(seq.grads)
            x = torch.cat(seq.inputs).to(g.dtype)  # under autocast the step ran in bfloat16
            seq.inputs.clear()
            seq.grads.clear()
            product = (x.t() @ g).to(ctx.dtype)
            total = product if total is None else total + product
        return total, None


class _StepMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, seq):
        ctx.save_for_backward(x, weight)
        ctx.seq = seq
        return x @ weight

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        ctx.seq.inputs.append(x)
        ctx.seq.grads.append(grad)
        if not ctx.needs_input_grad[0]:
            return None, None, None
        return (grad @ weight.t().to(grad.dtype)).to(x.dtype), None, None


def observe_fused(
    rssm: RSSM,
    embed: torch.Tensor,
    prev_action: torch.Tensor,
    is_first: torch.Tensor,
    state: State,
    noise: torch.Tensor,
    observed: torch.Tensor | None = None,
) -> tuple[State, State]:
    """``rssm.observe_stepwise(embed, prev_action, is_first, state, None, observed, noise)``,
    faster; see the module's docstring. ``noise [T, 2, B, S, 1]``: the prior's (0) and the
    posterior's (1) uniforms of each step."""
    from .rssm import State, sample_onehot, stack_states

    p: dict[str, torch.Tensor] = dict(rssm._parameters)  # type: ignore[arg-type]
    batch, length = embed.shape[:2]
    hidden, deter_dim, unimix = rssm.hidden, rssm.deter, rssm.unimix
    post_hidden = p["post_hidden"]
    # [B, T, H]: the parts of two layers' inputs that do not depend on the recurrence.
    action_in = prev_action @ p["in_action"]
    embed_in = embed @ post_hidden[deter_dim:]
    first = is_first.bool()
    starts = first.any(0).tolist()  # one sync per sequence, not one per step
    init = rssm.initial(batch) if any(starts) else None
    in_stoch = SequenceWeight(p["in_stoch"])
    gru = SequenceWeight(p["gru"])
    post_deter = SequenceWeight(post_hidden[:deter_dim])
    post_out = SequenceWeight(p["post_out"])
    in_norm, gru_norm = (p["in_norm_w"], p["in_norm_b"]), (p["gru_norm_w"], p["gru_norm_b"])
    post_norm = (p["post_norm_w"], p["post_norm_b"])
    posts: list[State] = []
    prior_steps: list[State] = []
    deters: list[torch.Tensor] = []
    for t in range(length):
        x_action = action_in[:, t]
        if starts[t]:
            assert init is not None
            f = first[:, t]
            state = State(
                *(torch.where(f.view(-1, *[1] * (s.dim() - 1)), i, s) for s, i in zip(state, init))
            )
            x_action = x_action * (~f).unsqueeze(-1).to(x_action.dtype)
        x = in_stoch.mm(state.stoch.flatten(-2)) + x_action
        x = F.silu(F.layer_norm(x, (hidden,), *in_norm, 1e-3))
        gates = F.layer_norm(
            gru.mm(torch.cat([x, state.deter], -1)), (3 * deter_dim,), *gru_norm, 1e-3
        )
        reset, cand, update = gates.float().chunk(3, -1)  # the state stays float32
        cand = torch.tanh(torch.sigmoid(reset) * cand)
        deter = torch.lerp(state.deter, cand, torch.sigmoid(update - 1.0))
        q = F.silu(F.layer_norm(post_deter.mm(deter) + embed_in[:, t], (hidden,), *post_norm, 1e-3))
        logits = (post_out.mm(q) + p["post_bias"]).view(batch, rssm.stoch, rssm.classes)
        post = State(deter, sample_onehot(logits, unimix, u=noise[t, 1]), logits)
        if observed is not None:  # withheld steps follow the prior: it is needed in the loop
            prior_logits = rssm._prior_logits(deter)
            prior = State(deter, sample_onehot(prior_logits, unimix, u=noise[t, 0]), prior_logits)
            seen = (observed[:, t] | first[:, t]).view(-1, 1)
            post = State(
                torch.where(seen, post.deter, prior.deter),
                torch.where(seen.unsqueeze(-1), post.stoch, prior.stoch),
                torch.where(seen.unsqueeze(-1), post.logits, prior.logits),
            )
            prior_steps.append(prior)
        deters.append(deter)
        posts.append(post)
        state = post
    if observed is not None:
        return stack_states(posts), stack_states(prior_steps)
    # Every step observed: the prior's layers once over all T states. Its samples (unused by
    # the loss) from the same uniforms, without the straight-through gradient.
    deter_seq = torch.stack(deters, 1)
    prior_logits = rssm._prior_logits(deter_seq.reshape(batch * length, deter_dim))
    prior_logits = prior_logits.view(batch, length, rssm.stoch, rssm.classes)
    with torch.no_grad():
        u = noise[:, 0].transpose(0, 1)  # [B, T, S, 1]
        prior_stoch = sample_onehot(prior_logits.detach(), unimix, u=u.contiguous())
    return stack_states(posts), State(deter_seq, prior_stoch, prior_logits)
