import torch

from world_model.behavior import Actor, Behavior, ReturnNormalizer
from world_model.config import BehaviorConfig

from .helpers import random_batch, tiny_model


def test_return_normalizer_tracks_percentiles_with_a_floor_of_one():
    norm = ReturnNormalizer(5, 95, decay=0.0)  # no smoothing: this batch's percentiles
    returns = torch.linspace(0, 100, 101)
    low, scale = norm.update(returns)
    assert abs(low.item() - 5.0) < 1e-4 and abs(scale.item() - 90.0) < 1e-4
    low, scale = norm.update(torch.full((10,), 3.0))
    assert scale.item() == 1.0  # returns that barely vary are not blown up


def test_return_normalizer_smooths_with_its_decay():
    norm = ReturnNormalizer(0, 100, decay=0.5)
    norm.update(torch.tensor([0.0, 10.0]))
    low, scale = norm.update(torch.tensor([0.0, 30.0]))
    assert scale.item() == 20.0  # 0.5 * 10 + 0.5 * 30


def test_actor_samples_stay_in_bounds_and_carry_gradients():
    actor = Actor(8, 2, 16, 1, 0.1, 1.0)
    feat = torch.randn(500, 8, requires_grad=True)
    action, logp, entropy = actor.sample(feat * 10)
    assert action.abs().max() <= 1.0
    action.sum().backward()
    assert feat.grad.abs().sum() > 0  # reparameterised: gradients reach the state
    assert logp.shape == (500,) and entropy.shape == (500,)


def test_behavior_step_updates_actor_and_critic_but_not_the_world_model():
    wm = tiny_model()
    behavior = Behavior(wm.rssm.feat_dim, 1, BehaviorConfig(horizon=4, units=16, layers=1))
    with torch.no_grad():
        _, _, post = wm.loss(random_batch(2, 5))
    wm_before = [p.clone() for p in wm.parameters()]
    actor_before = [p.clone() for p in behavior.actor.parameters()]
    critic_before = [p.clone() for p in behavior.critic.parameters()]
    metrics = behavior.train_step(wm, post, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(wm_before, wm.parameters()))
    assert all(p.requires_grad for p in wm.parameters()), "world model gradients restored"
    assert any(not torch.equal(a, b) for a, b in zip(actor_before, behavior.actor.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(critic_before, behavior.critic.parameters()))
    assert {"actor_loss", "critic_loss", "imag_return", "actor_entropy"} <= set(metrics)


def test_reinforce_gradient_mode_also_trains():
    wm = tiny_model()
    cfg = BehaviorConfig(horizon=3, units=16, layers=1, actor_grad="reinforce")
    behavior = Behavior(wm.rssm.feat_dim, 1, cfg)
    with torch.no_grad():
        _, _, post = wm.loss(random_batch(2, 4))
    before = [p.clone() for p in behavior.actor.parameters()]
    behavior.train_step(wm, post)
    assert any(not torch.equal(a, b) for a, b in zip(before, behavior.actor.parameters()))
