"""The fused training sequence (world_model/sequence.py) computes what the plain step loop
computes: the same losses and gradients for the same uniforms, with episode starts inside the
sequence and with withheld observations."""

import pytest
import torch

from world_model.sequence import SequenceWeight

from .helpers import random_batch, tiny_model


def loss_and_grads(wm, batch, fused: bool, observed=None):
    wm.rssm.fused_observe = fused
    wm.zero_grad()
    loss, metrics, post = wm.loss(
        batch, generator=torch.Generator().manual_seed(3), observed=observed
    )
    loss.backward()
    return metrics, post, {n: p.grad.clone() for n, p in wm.named_parameters()}


def assert_close_to_scale(a: torch.Tensor, b: torch.Tensor, name: str) -> None:
    """Equal up to float rounding: summation order differs (batched vs per-step products),
    so the error is measured against the gradient's own scale."""
    error, scale = float((a - b).abs().max()), float(b.abs().max())
    assert error <= 1e-4 * scale + 1e-7, f"{name}: off by {error:.3g} (scale {scale:.3g})"


@pytest.mark.parametrize("sparse", [False, True])
def test_fused_sequence_matches_the_step_loop(sparse):
    wm = tiny_model()
    batch = random_batch(4, 12, seed=2)
    batch["is_first"][1, 5] = True  # an episode starting inside a sequence
    batch["is_first"][3, 9] = True
    observed = None
    if sparse:
        observed = torch.zeros(4, 12, dtype=torch.bool)
        observed[:, ::3] = True
    m_fused, post_fused, g_fused = loss_and_grads(wm, batch, True, observed)
    m_loop, post_loop, g_loop = loss_and_grads(wm, batch, False, observed)
    assert m_fused.keys() == m_loop.keys()
    for key in m_loop:
        assert m_fused[key] == pytest.approx(m_loop[key], rel=1e-5, abs=1e-6), key
    assert torch.equal(post_fused.stoch.argmax(-1), post_loop.stoch.argmax(-1))  # same samples
    for name, g in g_loop.items():
        assert_close_to_scale(g_fused[name], g, name)
    assert any(g.abs().sum() > 0 for g in g_fused.values())


def test_the_comparison_can_fail():
    """Other uniforms give another loss: the test above compares something."""
    wm = tiny_model()
    batch = random_batch(4, 12, seed=2)
    a = wm.loss(batch, generator=torch.Generator().manual_seed(3))[1]["loss"]
    b = wm.loss(batch, generator=torch.Generator().manual_seed(4))[1]["loss"]
    assert a != b


def test_sequence_weight_gradient_is_the_sum_over_steps():
    torch.manual_seed(0)
    w = torch.randn(5, 3, requires_grad=True)
    xs = [torch.randn(4, 5, requires_grad=True) for _ in range(6)]
    seq = SequenceWeight(w)
    h = torch.zeros(4, 3)
    for x in xs:  # a recurrence, so each step's gradient depends on the later ones
        h = torch.tanh(seq.mm(x) + h)
    h.square().sum().backward()
    fused = (w.grad.clone(), [x.grad.clone() for x in xs])
    w.grad = None
    for x in xs:
        x.grad = None
    h = torch.zeros(4, 3)
    for x in xs:
        h = torch.tanh(x @ w + h)
    h.square().sum().backward()
    torch.testing.assert_close(fused[0], w.grad)
    for a, x in zip(fused[1], xs):
        torch.testing.assert_close(a, x.grad)


def test_bfloat16_autocast_keeps_state_and_losses_in_float32():
    """The CPU's autocast exercises the path CUDA takes with --precision bfloat16."""
    wm = tiny_model()
    batch = random_batch(4, 12, seed=2)
    with torch.no_grad():
        full = wm.loss(batch, generator=torch.Generator().manual_seed(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, metrics, post = wm.loss(batch, generator=torch.Generator().manual_seed(3))
    loss.backward()
    assert loss.dtype == torch.float32 and post.deter.dtype == torch.float32
    assert metrics["loss"] == pytest.approx(full[1]["loss"], rel=0.05)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in wm.parameters())


def test_an_image_model_trains_through_the_fused_sequence():
    from world_model.config import ModelConfig, ModelSpec
    from world_model.model import WorldModel

    torch.manual_seed(0)
    cfg = ModelConfig(
        deter=16,
        hidden=16,
        stoch=4,
        classes=4,
        units=16,
        layers=1,
        cnn_keys=("image",),
        cnn_depth=2,
    )
    wm = WorldModel(cfg, ModelSpec(vector_dims={}, image_keys=("image",), action_dim=1))
    batch = random_batch(2, 3)
    batch["image"] = torch.randint(0, 256, (2, 3, 64, 64, 3), dtype=torch.uint8)
    m_fused, _, g_fused = loss_and_grads(wm, batch, True)
    m_loop, _, g_loop = loss_and_grads(wm, batch, False)
    assert m_fused["loss_obs"] == pytest.approx(m_loop["loss_obs"], rel=1e-5)
    assert wm.decode(wm.initial(2))["image"].shape == (2, 64, 64, 3)
    for name, g in g_loop.items():
        assert_close_to_scale(g_fused[name], g, name)
