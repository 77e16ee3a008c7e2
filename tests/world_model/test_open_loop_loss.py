"""The open-loop prior loss (latent overshooting over withheld observations) and the periodic
column's loss units."""

import pytest
import torch

from world_model.config import LossConfig, ModelConfig, ModelSpec
from world_model.model import WorldModel
from world_model.rssm import State

from .helpers import random_batch, tiny_model


def _loss_model(scale: float = 1.0, free_nats: float = 0.0) -> WorldModel:
    return tiny_model(loss=LossConfig(open_loop_kl=scale, free_nats=free_nats))


def test_zero_when_the_prior_equals_the_posterior():
    wm = _loss_model()
    embed = torch.randn(2, 5, wm.encoder.out_dim)
    deter = torch.randn(2, 5, wm.config.deter)
    logits = wm.rssm.posterior_logits(deter, embed)
    prior = State(deter, torch.zeros_like(logits), logits)
    unseen = torch.ones(2, 5)
    assert wm.open_loop_kl(prior, embed, unseen).abs().max().item() < 1e-5


def test_only_unseen_steps_count_and_are_averaged_over_themselves():
    wm = _loss_model()
    embed = torch.randn(2, 6, wm.encoder.out_dim)
    deter = torch.randn(2, 6, wm.config.deter)
    prior = State(deter, torch.zeros(2, 6, 4, 4), torch.randn(2, 6, 4, 4))
    unseen = torch.zeros(2, 6)
    unseen[:, 2:4] = 1.0
    kl = wm.open_loop_kl(prior, embed, unseen)
    assert torch.all(kl[unseen == 0] == 0) and torch.all(kl[unseen == 1] > 0)
    # Its mean over all elements is the mean KL over the unseen steps.
    every = wm.open_loop_kl(prior, embed, torch.ones(2, 6))
    assert kl.mean().item() == pytest.approx(every[:, 2:4].mean().item(), rel=1e-5)
    # No step unseen: nothing (not a division by zero).
    assert wm.open_loop_kl(prior, embed, torch.zeros(2, 6)).abs().sum().item() == 0


def test_gradients_reach_the_prior_and_dynamics_not_the_posterior():
    wm = _loss_model(scale=1.0)
    batch = random_batch(batch=4, length=10)
    observed = torch.zeros(4, 10, dtype=torch.bool)
    observed[:, ::5] = True
    loss, metrics, _ = wm.loss(batch, observed=observed)
    assert metrics["loss_open_loop_kl"] > 0
    wm.zero_grad()
    # The open-loop term alone:
    action = wm.normalize_action(batch["action"])
    prev = torch.cat([torch.zeros_like(action[:, :1]), action[:, :-1]], 1)
    first = torch.zeros(4, 10, dtype=torch.bool)
    first[:, 0] = True
    embed = wm.encode({"state": batch["state"]}).detach().requires_grad_()
    _, prior = wm.rssm.observe(embed.detach(), prev, first, observed=observed)
    wm.open_loop_kl(prior, embed, (~observed).float()).mean().backward()
    params = dict(wm.rssm.named_parameters())
    assert params["prior_out"].grad.abs().sum() > 0
    assert params["gru"].grad.abs().sum() > 0, "the gaps' dynamics learn, not only the head"
    assert embed.grad is None, "the target (the withheld step's posterior) is held fixed"


def test_off_by_default_and_without_withheld_observations():
    batch = random_batch()
    _, metrics, _ = tiny_model().loss(batch, observed=torch.rand(3, 8) > 0.5)
    assert "loss_open_loop_kl" not in metrics
    _, metrics, _ = _loss_model().loss(batch)
    assert "loss_open_loop_kl" not in metrics


def test_periodic_units_set_the_circle_radius_and_decode_back():
    def model(periodic):
        cfg = ModelConfig(
            deter=16, hidden=16, stoch=2, classes=4, units=16, layers=1,
            mlp_keys=("object",), periodic=periodic,
        )  # fmt: skip
        return WorldModel(cfg, ModelSpec(vector_dims={"object": 4}, action_dim=1))

    obs = {"object": torch.tensor([[0.1, -0.2, 0.3, 20.0], [0.1, -0.2, 0.3, 25.0]])}
    plain, weighted = model({"object": (3, 90.0)}), model({"object": (3, 90.0, 5.0)})
    f_plain, f_weighted = plain.features(obs)["object"], weighted.features(obs)["object"]
    radius = 90.0 / (2 * torch.pi * 5.0)
    assert torch.allclose(f_weighted[:, 3:].norm(dim=-1), torch.tensor(radius), atol=1e-5)
    # 5 degrees apart: about 1 unit apart, like 1 unit of a scaled column
    assert torch.dist(f_weighted[0, 3:], f_weighted[1, 3:]).item() == pytest.approx(1.0, abs=0.1)
    assert torch.dist(f_plain[0, 3:], f_plain[1, 3:]).item() < 0.4
    assert torch.allclose(weighted._unfeature("object", f_weighted), obs["object"], atol=1e-4)
    with pytest.raises(ValueError, match="periodic"):
        model({"object": (3, 90.0, 0.0)})
