import numpy as np
import pytest
import torch

from world_model.rssm import sample_onehot, unimix_probs

from .helpers import random_batch, tiny_model


def test_sampler_follows_the_unimix_distribution():
    logits = torch.tensor([[2.0, 0.0, -1.0, -30.0]]).repeat(20000, 1)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        samples = sample_onehot(logits, 0.01, gen)
    assert torch.all(samples.sum(-1) == 1)
    freq = samples.mean(0)
    expected = unimix_probs(logits[:1], 0.01)[0]
    assert torch.allclose(freq, expected, atol=0.01)
    assert freq[3] > 0  # the uniform share reaches even a class with logit -30


def test_straight_through_sample_carries_gradients():
    logits = torch.zeros(2, 3, 4, requires_grad=True)
    sample = sample_onehot(logits, 0.01)
    assert torch.allclose(sample.detach().sum(-1), torch.ones(2, 3))
    (sample * torch.arange(4.0)).sum().backward()
    assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize("batch", [1, 5, 40])  # the three gather paths
def test_gathered_input_equals_the_matrix_product(batch):
    wm = tiny_model()
    state = wm.initial(batch)
    with torch.no_grad():
        state = wm.img_step(state, torch.zeros(batch, 1))
        gathered = wm.rssm._stoch_in(state.stoch, wm.rssm.in_stoch)
    product = state.stoch.flatten(-2) @ wm.rssm.in_stoch
    assert torch.allclose(gathered, product.detach(), atol=1e-6)


def _observe(wm, batch, seed=0):
    action = wm.normalize_action(batch["action"])
    prev = torch.cat([torch.zeros_like(action[:, :1]), action[:, :-1]], 1)
    first = batch["is_first"].clone()
    first[:, 0] = True
    with torch.no_grad():
        return wm.observe(
            {"state": batch["state"]}, prev, first, generator=torch.Generator().manual_seed(seed)
        )


def test_observe_pairs_each_observation_with_the_action_that_led_to_it():
    """action[t] is taken after obs t, so changing it may only change posteriors from t+1 on."""
    wm = tiny_model()
    batch = random_batch(2, 10)
    post_a, _ = _observe(wm, batch)
    batch["action"][:, 4] += 1.5
    post_b, _ = _observe(wm, batch)
    same = (post_a.deter - post_b.deter).abs().amax((0, 2))  # per time step
    assert torch.all(same[:5] == 0), "obs <= 4 must not see action[4]"
    assert same[5] > 0, "obs 5 must see action[4]"


def test_is_first_resets_the_state_mid_sequence():
    wm = tiny_model()
    batch = random_batch(2, 10)
    batch["is_first"][:, 6] = True
    post, _ = _observe(wm, batch)
    tail = {k: v[:, 6:] for k, v in batch.items()}
    post_tail, _ = _observe(wm, tail)
    # The deterministic state and the posterior's logits do not depend on the sampling noise.
    assert torch.allclose(post.deter[:, 6], post_tail.deter[:, 0], atol=1e-6)
    assert torch.allclose(post.logits[:, 6], post_tail.logits[:, 0], atol=1e-5)
    assert not torch.allclose(post.deter[:, 5], post_tail.deter[:, 0])


def test_imagine_accepts_actions_or_a_policy():
    wm = tiny_model()
    start = wm.initial(3)
    actions = torch.linspace(-1, 1, 3 * 5).reshape(3, 5, 1)
    with torch.no_grad():
        a, taken_a = wm.imagine(start, actions, generator=torch.Generator().manual_seed(1))
        calls = iter(range(5))
        b, taken_b = wm.imagine(
            start, lambda s: actions[:, next(calls)], 5, generator=torch.Generator().manual_seed(1)
        )
    assert a.deter.shape == (3, 5, 32) and a.stoch.shape == (3, 5, 4, 4)
    assert torch.equal(taken_a, actions) and torch.equal(taken_b, actions)
    assert torch.equal(a.deter, b.deter)


@pytest.mark.parametrize("batch", [1, 64])
def test_one_step_function_for_grad_and_no_grad(batch):
    """Training (gradients on) and the runtime (off) take different input paths of the same
    step; with the same noise they must give the same state."""
    wm = tiny_model()
    state = wm.initial(batch)
    action = torch.rand(batch, 1) * 2 - 1
    with torch.no_grad():
        fast = wm.img_step(state, action, torch.Generator().manual_seed(3))
    slow = wm.img_step(state, action, torch.Generator().manual_seed(3))
    np.testing.assert_allclose(fast.deter.numpy(), slow.deter.detach().numpy(), atol=1e-5)
    assert torch.equal(fast.stoch, slow.stoch.detach().round())


def test_withheld_observations_leave_the_state_on_the_prior():
    wm = tiny_model()
    batch = random_batch(2, 8)
    action = wm.normalize_action(batch["action"])
    prev = torch.cat([torch.zeros_like(action[:, :1]), action[:, :-1]], 1)
    first = torch.zeros(2, 8, dtype=torch.bool)
    first[:, 0] = True
    observed = torch.ones(2, 8, dtype=torch.bool)
    observed[:, 3:6] = False
    with torch.no_grad():
        states, priors = wm.observe(
            {"state": batch["state"]},
            prev,
            first,
            generator=torch.Generator().manual_seed(0),
            observed=observed,
        )
    for t in (3, 4, 5):
        assert torch.equal(states.stoch[:, t], priors.stoch[:, t])
        assert torch.equal(states.logits[:, t], priors.logits[:, t])
    assert not torch.equal(states.logits[:, 6], priors.logits[:, 6])  # observed again


def test_sparse_observation_masks():
    from world_model.train import sparse_observations

    assert sparse_observations((4, 10), 1) is None
    mask = sparse_observations((500, 24), 6, torch.Generator().manual_seed(0))
    gaps = [int(torch.diff(torch.nonzero(row)[:, 0]).unique()[0]) for row in mask if row.sum() > 1]
    assert set(gaps) == {1, 2, 3, 4, 5, 6}
