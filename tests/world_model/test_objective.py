import math

import pytest
import torch

from world_model.objective import categorical_kl, kl_balance, lambda_return


def _logits(*probs):
    return torch.tensor(probs).log()


def test_categorical_kl_matches_hand_computation():
    post = _logits([0.25, 0.75], [0.5, 0.5]).unsqueeze(0)  # [B=1, S=2, C=2]
    prior = _logits([0.5, 0.5], [0.9, 0.1]).unsqueeze(0)
    # KL latent 0: 0.25 ln(0.5) + 0.75 ln(1.5); latent 1: 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1)
    hand = (
        0.25 * math.log(0.25 / 0.5)
        + 0.75 * math.log(0.75 / 0.5)
        + 0.5 * math.log(0.5 / 0.9)
        + 0.5 * math.log(0.5 / 0.1)
    )
    assert categorical_kl(post, prior, unimix=0.0).item() == pytest.approx(hand, rel=1e-5)


def test_unimix_enters_the_kl():
    post = _logits([1.0 - 1e-6, 1e-6]).unsqueeze(0)
    prior = _logits([0.5, 0.5]).unsqueeze(0)
    p = [0.99 * (1 - 1e-6) + 0.005, 0.99 * 1e-6 + 0.005]
    hand = sum(pi * math.log(pi / 0.5) for pi in p)
    assert categorical_kl(post, prior, unimix=0.01).item() == pytest.approx(hand, rel=1e-4)


def test_free_bits_and_balance_against_hand_computation():
    post = _logits([0.25, 0.75], [0.5, 0.5]).unsqueeze(0).requires_grad_()
    prior = _logits([0.5, 0.5], [0.9, 0.1]).unsqueeze(0).requires_grad_()
    kl = categorical_kl(post, prior, 0.0).item()  # ~0.62 nats
    # Above the floor: loss = (dyn + rep) * KL
    loss, parts = kl_balance(post, prior, 0.0, dyn_scale=0.5, rep_scale=0.1, free_nats=0.1)
    assert loss.item() == pytest.approx(0.6 * kl, rel=1e-5)
    assert parts["kl"].item() == pytest.approx(kl, rel=1e-5)
    # Below the floor (1 nat): the loss is the constant 0.6 and no gradient flows.
    loss, _ = kl_balance(post, prior, 0.0, dyn_scale=0.5, rep_scale=0.1, free_nats=1.0)
    assert loss.item() == pytest.approx(0.6)
    loss.backward()
    assert post.grad.abs().sum() == 0 and prior.grad.abs().sum() == 0


def test_balance_routes_gradients_dyn_to_prior_rep_to_posterior():
    post = _logits([0.25, 0.75]).unsqueeze(0).requires_grad_()
    prior = _logits([0.9, 0.1]).unsqueeze(0).requires_grad_()
    dyn_only, _ = kl_balance(post, prior, 0.0, dyn_scale=1.0, rep_scale=0.0, free_nats=0.0)
    dyn_only.backward()
    assert post.grad is None or post.grad.abs().sum() == 0
    assert prior.grad.abs().sum() > 0
    post.grad = prior.grad = None
    rep_only, _ = kl_balance(post, prior, 0.0, dyn_scale=0.0, rep_scale=1.0, free_nats=0.0)
    rep_only.backward()
    assert post.grad.abs().sum() > 0
    assert prior.grad is None or prior.grad.abs().sum() == 0


def test_free_bits_apply_per_element_not_to_the_batch_mean():
    # Element 0 has KL ~0.62 (< 1, floored), element 1 a large KL; a batch-mean floor would
    # give mean(KL) instead.
    post = torch.stack([_logits([0.25, 0.75], [0.5, 0.5]), _logits([0.999, 0.001], [0.5, 0.5])])
    prior = torch.stack([_logits([0.5, 0.5], [0.9, 0.1]), _logits([0.001, 0.999], [0.5, 0.5])])
    kls = categorical_kl(post, prior, 0.0)
    loss, _ = kl_balance(post, prior, 0.0, 1.0, 0.0, free_nats=1.0)
    assert kls[0] < 1 < kls[1]
    assert loss.tolist() == pytest.approx([1.0, kls[1].item()], rel=1e-5)


def test_lambda_return_hand_computed():
    reward = torch.tensor([[1.0, 2.0, 3.0]])
    value = torch.tensor([[10.0, 20.0, 30.0]])  # values of the states reached
    cont = torch.tensor([[0.5, 0.5, 0.5]])
    # R2 = 3 + .5*30 = 18;  R1 = 2 + .5*(.5*20 + .5*18) = 11.5;  R0 = 1 + .5*(.5*10 + .5*11.5)
    got = lambda_return(reward, value, cont, lam=0.5)
    assert got.tolist() == [[pytest.approx(6.375), pytest.approx(11.5), pytest.approx(18.0)]]
    # lambda = 1: discounted rewards plus the bootstrap; lambda = 0: one-step TD targets.
    assert lambda_return(reward, value, cont, 1.0).tolist() == [[6.5, 11.0, 18.0]]
    assert lambda_return(reward, value, cont, 0.0).tolist() == [[6.0, 12.0, 18.0]]


def test_lambda_return_stops_at_termination():
    reward = torch.tensor([[1.0, 5.0]])
    value = torch.tensor([[100.0, 100.0]])
    cont = torch.tensor([[0.0, 1.0]])  # the first arrival is terminal
    assert lambda_return(reward, value, cont, 0.95)[0, 0].item() == 1.0
