"""GRPO maths against hand-computed references on fixed tensors."""

import math

import pytest
import torch

from node.trainer.grpo import group_advantages, grpo_token_loss, off_policy_weights, token_logprobs


def test_advantages_match_hand_computation():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5], [1.0, 0.0, 0.0, 0.0]])
    a = group_advantages(r, eps=1e-4)
    # group 0: mean .5, unbiased std sqrt((4 * .25) / 3)
    p = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    assert a[0].tolist() == pytest.approx([p, -p, -p, p], rel=1e-6)
    # zero-std group: all advantages exactly zero
    assert a[1].tolist() == [0.0, 0.0, 0.0, 0.0]
    # group 2: mean .25, std = sqrt(((.75)^2 + 3*(.25)^2)/3) = 0.5
    assert a[2].tolist() == pytest.approx([0.75 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001],
                                          rel=1e-6)


def test_advantages_without_scaling_are_centred_rewards():
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    assert group_advantages(r, scale=False)[0].tolist() == [0.75, -0.25, -0.25, -0.25]


def test_clipped_loss_both_sides_and_mask():
    # 2 sequences x 4 positions; the last position of sequence 1 is padding.
    old = torch.zeros(2, 4)
    ratios = torch.tensor([[1.0, 1.5, 0.5, 1.1], [1.5, 0.5, 0.9, 9.0]])
    logp = torch.log(ratios)
    adv = torch.tensor([2.0, -1.0])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]])
    loss, st = grpo_token_loss(logp, old, adv, mask, eps_low=0.2, eps_high=0.28)
    # A>0: -min(r*A, clip(r)*A): r=1 -> -2; r=1.5 -> clip 1.28 -> -2.56; r=.5 -> min(1.0, 1.6) -> -1.0;
    # r=1.1 -> -2.2.   A<0 (A=-1): -min(-r, -clip(r)) = max(r, clip(r)): r=1.5 -> 1.5; r=.5 -> clip .8 -> .8;
    # r=.9 -> .9; padded token ignored.
    expected = (-2.0 - 2.56 - 1.0 - 2.2) + (1.5 + 0.8 + 0.9)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert st["clip_high"].item() == 1  # seq 0, r=1.5 with A>0
    assert st["clip_low"].item() == 1  # seq 1, r=.5 with A<0
    assert st["tokens"].item() == 7


def test_clipped_tokens_have_zero_gradient():
    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.5, 1.0, 0.5]])).requires_grad_(True)
    loss, _ = grpo_token_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 3), 0.2, 0.28)
    loss.backward()
    g = logp.grad[0]
    assert g[0].item() == 0.0  # clipped above, A>0
    assert g[1].item() == pytest.approx(-1.0)  # d(-r*A)/dlogp = -r*A = -1
    assert g[2].item() == pytest.approx(-0.5)  # below the band with A>0: not clipped, -r*A


def test_zero_advantage_gives_zero_loss_and_gradient():
    logp = torch.randn(3, 5, requires_grad=True)
    loss, _ = grpo_token_loss(logp, logp.detach(), torch.zeros(3), torch.ones(3, 5), 0.2, 0.28)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(logp.grad) == 0


def test_kl_k3_term():
    logp = torch.log(torch.tensor([[0.5, 0.25]]))
    ref = torch.log(torch.tensor([[0.25, 0.25]]))
    loss, _ = grpo_token_loss(logp, logp.detach(), torch.tensor([0.0]), torch.ones(1, 2), 0.2, 0.28,
                              ref_logp=ref, beta=0.1)
    d = math.log(0.5)  # ref - logp at token 0; 0 at token 1
    assert loss.item() == pytest.approx(0.1 * (math.exp(d) - d - 1.0), rel=1e-6)


def test_token_level_normalisation_weighs_tokens_not_sequences():
    # A long and a short sequence with equal |A|: per-token normalisation sums over tokens / total tokens.
    old = torch.zeros(2, 4)
    logp = torch.zeros(2, 4)
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    loss, st = grpo_token_loss(logp, old, adv, mask, 0.2, 0.28)
    assert (loss / st["tokens"]).item() == pytest.approx((-4.0 + 1.0) / 5.0)


def test_token_logprobs_with_temperature():
    logits = torch.tensor([[[2.0, 0.0, -1.0]]])
    t = torch.tensor([[0]])
    expected = torch.log_softmax(logits / 0.5, -1)[0, 0, 0]
    assert token_logprobs(logits, t, 0.5).item() == pytest.approx(expected.item())


# ---------------------------------------------------------------- off-policy correction (TIS / mask)
def _offp_inputs():
    # one sequence, 5 token slots; slot 4 is an external / padding token (no behaviour logprob)
    old = torch.tensor([[-1.0, -2.0, -0.5, -3.0, -1.0]])
    # behaviour logprobs chosen so rho = exp(old - behav) is 1, e, e^-1, 3, (ignored)
    behav = torch.tensor([[-1.0, -3.0, 0.5, -3.0 - math.log(3.0), -9.0]])
    has = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    return old, behav, has


def test_tis_weights_match_hand_computation():
    old, behav, has = _offp_inputs()
    w, st = off_policy_weights(old, behav, has, "tis", cap=2.0)
    # rho = [1, e, 1/e, 3]; truncated at 2: [1, 2, 1/e, 2]; the slot without a behaviour logprob weighs 1
    assert w[0].tolist() == pytest.approx([1.0, 2.0, math.exp(-1.0), 2.0, 1.0], rel=1e-6)
    assert st["n"].item() == 4 and st["truncated"].item() == 2 and st["masked"].item() == 0
    ws = [1.0, 2.0, math.exp(-1.0), 2.0]
    assert st["w_sum"].item() == pytest.approx(sum(ws), rel=1e-6)
    assert st["w_sq_sum"].item() == pytest.approx(sum(x * x for x in ws), rel=1e-6)
    assert st["log_rho_abs_sum"].item() == pytest.approx(0 + 1 + 1 + math.log(3.0), rel=1e-6)


def test_mask_weights_match_hand_computation():
    old, behav, has = _offp_inputs()
    w, st = off_policy_weights(old, behav, has, "mask", band=(0.5, 2.0))
    # rho = [1, e, 1/e, 3] -> inside [0.5, 2]: yes, no (2.72), no (0.37), no (3)
    assert w[0].tolist() == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert st["masked"].item() == 3 and st["truncated"].item() == 0
    w_none, _ = off_policy_weights(old, behav, has, "none")
    assert w_none.tolist() == [[1.0] * 5]


def test_token_weights_scale_each_tokens_loss():
    logp = torch.tensor([[-1.0, -1.0]], requires_grad=True)
    adv = torch.tensor([1.0])
    mask = torch.ones(1, 2)
    base, _ = grpo_token_loss(logp, logp.detach(), adv, mask, 0.2, 0.28)
    weighted, _ = grpo_token_loss(logp, logp.detach(), adv, mask, 0.2, 0.28,
                                  token_weights=torch.tensor([[2.0, 0.0]]))
    # ratio 1 everywhere: each token's loss is -A = -1; weights 2 and 0 give -2
    assert base.item() == pytest.approx(-2.0) and weighted.item() == pytest.approx(-2.0)
    (g,) = torch.autograd.grad(weighted, logp)
    assert g[0].tolist() == pytest.approx([-2.0, 0.0])
