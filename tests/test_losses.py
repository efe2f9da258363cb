"""Each objective on hand-computed tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from spare_train.policy import losses as L

T = torch.tensor
ls = lambda x: math.log(1 + math.exp(-x))  # noqa: E731  -log sigmoid(x)


def test_token_logprobs_gathers_taken_tokens_and_matches_log_softmax_grad():
    logits = T([[[0.0, 0.0], [math.log(3), 0.0], [0.0, 0.0]]])
    out = L.token_logprobs(logits, T([[0, 0, 1]]))
    assert torch.allclose(out, T([[0.0, math.log(0.5), math.log(0.25)]]))

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 7, generator=g, requires_grad=True)
    ids = torch.randint(0, 7, (3, 5), generator=g)
    ref = F.pad(torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1), (1, 0))
    got = L.token_logprobs(logits, ids, chunk_rows=2)
    assert torch.allclose(got, ref, atol=1e-6)
    (g1,) = torch.autograd.grad(got.sum(), logits)
    (g2,) = torch.autograd.grad(ref.sum(), logits)
    assert torch.allclose(g1, g2, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_rows", [1, 2, 8])
def test_token_logprobs_gradient_matches_autograd_and_leaves_logits_intact(dtype, chunk_rows):
    g = torch.Generator().manual_seed(1)
    logits = (3 * torch.randn(3, 6, 11, generator=g)).to(dtype).requires_grad_()
    ids = torch.randint(0, 11, (3, 6), generator=g)
    weights = torch.randn(3, 6, generator=g)
    before = logits.detach().clone()
    got = L.token_logprobs(logits, ids, chunk_rows=chunk_rows)
    ref = F.pad(torch.log_softmax(logits.float()[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1), (1, 0))
    assert got.dtype == torch.float32 and torch.allclose(got, ref, atol=1e-5)
    (g1,) = torch.autograd.grad((got * weights).sum(), logits)
    (g2,) = torch.autograd.grad((ref * weights).sum(), logits)
    assert g1.dtype == dtype and torch.allclose(g1.float(), g2.float(), atol=1e-2 if dtype == torch.bfloat16 else 1e-6)
    assert torch.equal(logits.detach(), before)


def test_sequence_logps_sum_mean_and_weights():
    tok, mask = T([[0.0, -1.0, -2.0, -3.0]]), T([[False, True, True, False]])
    assert L.sequence_logps(tok, mask).item() == -3.0
    assert L.sequence_logps(tok, mask, average=True).item() == -1.5
    assert L.sequence_logps(tok, mask, weights=T([[9.0, 2.0, 0.5, 9.0]])).item() == -3.0


def test_continuation_mask_from_a_step_for_n_steps():
    steps = T([[-1, -1, 0, 0, -1, 1, 1, -1, 2, -1]])
    mask = steps.new_ones(steps.shape).bool()
    mask[0, :2] = False
    pos = lambda m: m[0].nonzero().flatten().tolist()  # noqa: E731
    assert pos(L.continuation_mask(steps, mask, T([1]))) == [5, 6, 7, 8, 9]
    assert pos(L.continuation_mask(steps, mask, T([1]), num_steps=1)) == [5, 6, 7]
    assert pos(L.continuation_mask(steps, mask, T([-1]))) == list(range(2, 10))
    assert pos(L.continuation_mask(steps, mask, T([5]))) == []  # truncated away: nothing


def test_label_weights_interpolate_soft_labels_and_default_elsewhere():
    steps = T([[-1, 0, 1, 2, 3, -1]])
    labels = T([[1.0, 0.0, 0.5, math.nan]])
    w = L.label_weights(steps, labels, correct=1.0, incorrect=0.2, other=0.7)
    assert torch.allclose(w, T([[0.7, 1.0, 0.2, 0.6, 0.7, 0.7]]))


def test_sft_averages_over_response_tokens():
    tok, mask = T([[0.0, -1.0, -2.0], [0.0, -3.0, 0.0]]), T([[False, True, True], [False, True, False]])
    assert L.sft_loss(tok, mask).item() == pytest.approx(2.0)  # (1 + 2 + 3) / 3
    assert L.rft_loss is L.sft_loss


def test_step_weighted_sft_weights_and_unlikelihood():
    tok = T([[0.0, -1.0, -2.0, -3.0]])
    mask = T([[False, True, True, True]])
    steps, labels = T([[-1, 0, 1, -1]]), T([[1.0, 0.0]])
    loss = L.step_weighted_sft_loss(tok, mask, steps, labels, correct_weight=1.0, incorrect_weight=0.5, other_weight=1.0)
    assert loss.item() == pytest.approx((1 + 0.5 * 2 + 3) / 3)
    loss = L.step_weighted_sft_loss(tok, mask, steps, labels, 1.0, 0.0, 1.0, unlikelihood_weight=2.0)
    ul = -math.log(1 - math.exp(-2.0))
    assert loss.item() == pytest.approx((1 + 2 * ul + 3) / 3)


def test_dpo_sigmoid_and_label_smoothing():
    pc, pr, rc, rr = T([-1.0]), T([-3.0]), T([-2.0]), T([-2.0])
    losses, cr, rj = L.dpo_loss(pc, pr, rc, rr, beta=0.5)  # margin 2, beta * margin = 1
    assert losses.item() == pytest.approx(ls(1.0))
    assert cr.item() == pytest.approx(0.5) and rj.item() == pytest.approx(-0.5)
    losses, _, _ = L.dpo_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=0.1)
    assert losses.item() == pytest.approx(0.9 * ls(1.0) + 0.1 * ls(-1.0))


def test_ipo_squared_distance_to_half_inverse_beta():
    losses, _, _ = L.ipo_loss(T([-1.0]), T([-3.0]), T([-2.0]), T([-2.0]), beta=0.5)
    assert losses.item() == pytest.approx((2 - 1) ** 2)


def test_orpo_uses_odds_of_mean_logps():
    c, r = T([math.log(0.5)]), T([math.log(0.25)])
    losses, cr, rj = L.orpo_loss(c, r, -c, beta=0.2)
    # odds 1 vs 1/3: log odds ratio log 3; log sigmoid(log 3) = log 0.75
    assert losses.item() == pytest.approx(math.log(2) - 0.2 * math.log(0.75))
    assert cr.item() == pytest.approx(0.2 * math.log(0.5))


def test_kto_losses_and_reference_point():
    pol, ref = T([-1.0, -4.0]), T([-2.0, -2.0])
    z0 = L.kto_reference_point((pol - ref).sum(), T(2.0))
    assert z0.item() == 0.0  # mean log-ratio -0.5, clamped at 0
    losses, rewards = L.kto_loss(pol, ref, T([True, False]), z0, beta=1.0, desirable_weight=2.0)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert losses.tolist() == pytest.approx([2 * (1 - sig(1.0)), 1 - sig(2.0)])
    assert rewards.tolist() == pytest.approx([1.0, -2.0])
    p = T([0.0, 0.0], requires_grad=True)
    z = L.kto_reference_point((p - T([-1.0, -3.0])).sum(), T(2.0))
    assert z.item() == 2.0 and not z.requires_grad


def test_step_dpo_prefers_only_the_continuation():
    cs = T([[-1, 0, 0, 1, 1, 2]])
    rs = T([[-1, 0, 0, 1, 1, 2]])
    mask = T([[False, True, True, True, True, True]])
    pc = T([[0.0, -1.0, -1.0, -0.5, -0.5, -0.2]])
    pr = T([[0.0, -1.0, -1.0, -2.0, -2.0, -0.4]])
    ref = torch.full((1, 6), -1.0)
    losses, _, _ = L.step_dpo_loss(pc, pr, ref, ref, mask, mask, cs, rs, T([1]), beta=1.0)
    margin = ((-1.2) - (-3.0)) - ((-4.4) - (-3.0))  # continuation = positions 3..5
    assert losses.item() == pytest.approx(ls(margin))
    # the shared prefix does not count
    pc2, pr2 = pc.clone(), pr.clone()
    pc2[0, 1:3] = -9.0
    assert L.step_dpo_loss(pc2, pr2, ref, ref, mask, mask, cs, rs, T([1]), beta=1.0)[0].item() == pytest.approx(ls(margin))
    # only the next step: positions 3..4
    losses, _, _ = L.step_dpo_loss(pc, pr, ref, ref, mask, mask, cs, rs, T([1]), beta=1.0, num_steps=1)
    assert losses.item() == pytest.approx(ls(((-1.0) - (-2.0)) - ((-4.0) - (-2.0))))


def test_error_weights_and_step_weighted_dpo():
    steps = T([[-1, 0, 1, 1, -1]])
    mask = T([[False, True, True, True, True]])
    assert L.error_weights(steps, mask, T([1]), before=0.5, after=2.0).tolist() == [[0.0, 0.5, 2.0, 2.0, 2.0]]
    assert L.error_weights(steps, mask, T([-1]), before=0.5, after=2.0).tolist() == [[0.0, 2.0, 2.0, 2.0, 2.0]]
    w = L.error_weights(steps, mask, T([1]), before=0.5, after=2.0)
    pc, pr, ref = T([[0.0, -1.0, -1.0, 0.0, 0.0]]), T([[0.0, -1.0, -2.0, -1.0, 0.0]]), torch.zeros(1, 5)
    losses, cr, rj = L.step_weighted_dpo_loss(pc, pr, ref, ref, w, w, beta=0.1)
    # chosen: 0.5*-1 + 2*-1 = -2.5; rejected: 0.5*-1 + 2*(-2 - 1) = -6.5
    assert cr.item() == pytest.approx(-0.25) and rj.item() == pytest.approx(-0.65)
    assert losses.item() == pytest.approx(ls(0.1 * 4.0))
    ones = mask.float()
    plain = L.step_weighted_dpo_loss(pc, pr, ref, ref, ones, ones, beta=0.1)[0]
    assert plain.item() == pytest.approx(L.dpo_loss(T([-2.0]), T([-4.0]), T([0.0]), T([0.0]), 0.1)[0].item())


def test_focal_sft_loss_weights_tokens_by_how_badly_they_are_predicted():
    """gamma 0 is plain cross-entropy; gamma > 0 leaves a sure token (p ~ 1) almost no weight and a
    doubtful one (p = 0.5) (1 - 0.5)^gamma of its loss, and the weight passes no gradient."""
    logps = torch.log(torch.tensor([[0.999, 0.5, 0.25]])).requires_grad_()
    mask = torch.ones(1, 3)
    plain = L.sft_loss(logps, mask)
    assert torch.allclose(plain, L.sft_loss(logps, mask, 0.0))
    focal = L.sft_loss(logps, mask, 2.0)
    want = -(logps.detach() * torch.tensor([0.001**2, 0.25, 0.5625])).sum() / 3
    assert torch.allclose(focal, want, atol=1e-7)
    focal.backward()
    assert torch.allclose(logps.grad, -torch.tensor([[0.001**2, 0.25, 0.5625]]) / 3, atol=1e-7)
