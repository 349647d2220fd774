import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tokentilt.course.regression import L1Loss, L2Loss
from tokentilt.objectives.losses import (
    OBJECTIVES,
    ObjectiveContext,
    cross_entropy,
    kl_to_target,
    next_token_ce,
    nll,
    unlikelihood,
)
from tokentilt.targets.tokens import alpha_beta_target, uniform_target


def grads(fn, *tensors):
    """Value and gradient w.r.t. the first tensor."""
    x = tensors[0].detach().clone().requires_grad_(True)
    value = fn(x, *tensors[1:])
    value.backward()
    return value.detach(), x.grad


def test_l1_l2_course_values():
    y_hat, y = torch.tensor(2.0), torch.tensor(5.0)
    assert L1Loss()(y_hat, y).item() == 3.0
    assert L2Loss()(y_hat, y).item() == 9.0


@pytest.mark.parametrize("ours,theirs", [(L1Loss(), nn.L1Loss()), (L2Loss(), nn.MSELoss())])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_l1_l2_match_pytorch(ours, theirs, reduction):
    ours.reduction, theirs.reduction = reduction, reduction
    y_hat, y = torch.randn(3, 4), torch.randn(3, 4)
    v1, g1 = grads(ours, y_hat, y)
    v2, g2 = grads(theirs, y_hat, y)
    assert torch.allclose(v1, v2) and torch.allclose(g1, g2)


def test_cross_entropy_and_nll_match_pytorch():
    logits, y = torch.randn(6, 10), torch.randint(0, 10, (6,))
    v1, g1 = grads(cross_entropy, logits, y)
    v2, g2 = grads(F.cross_entropy, logits, y)
    assert torch.allclose(v1, v2) and torch.allclose(g1, g2)
    lp = F.log_softmax(logits, -1)
    assert torch.allclose(nll(lp, y), F.nll_loss(lp, y))
    assert torch.allclose(nll(lp, y), F.cross_entropy(logits, y))  # CE == NLL on log-softmax
    assert torch.allclose(nll(lp, y, "none"), F.nll_loss(lp, y, reduction="none"))


def test_next_token_ce_shifts_labels():
    logits, ids = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, 7), ids[:, 1:].reshape(-1))
    assert torch.allclose(next_token_ce(logits, ids), ref)


@pytest.mark.parametrize("positions", ["all", "last"])
def test_kl_matches_f_kl_div(positions):
    logits = torch.randn(4, 6, 11)
    mask = torch.zeros(11, dtype=torch.bool)
    mask[[2, 5, 7]] = True
    q = torch.full((11,), 1.0 / 23)  # by hand: weight 5 on the 3 set tokens, 1 on the other 8, over 5*3 + 8 = 23
    q[mask] = 5.0 / 23
    assert torch.allclose(alpha_beta_target(mask, 5.0, 1.0), q)
    rows = logits if positions == "all" else logits[:, -1:]

    def ref(x):
        lp = F.log_softmax(x if positions == "all" else x[:, -1:], -1).reshape(-1, 11)
        return F.kl_div(lp, q.expand(lp.shape), reduction="batchmean")

    v1, g1 = grads(lambda x: kl_to_target(x, q, positions), logits)
    v2, g2 = grads(ref, logits)
    assert rows.shape[1] == (6 if positions == "all" else 1)
    assert torch.allclose(v1, v2, atol=1e-6) and torch.allclose(g1, g2, atol=1e-6)


def test_kl_with_zeros_in_target_matches_kl_div():
    """Uniform-over-set targets have zeros; 0*log 0 must count as 0, as in F.kl_div."""
    logits = torch.randn(3, 2, 9)
    mask = torch.tensor([True, False] * 4 + [False])
    q = uniform_target(mask)
    ref = F.kl_div(F.log_softmax(logits, -1).reshape(-1, 9), q.expand(6, 9), reduction="batchmean")
    assert torch.allclose(kl_to_target(logits, q, "all"), ref)
    assert torch.isfinite(kl_to_target(logits, q, "all"))


def test_kl_of_target_itself_is_zero_and_uniform_start_is_near_log_ratio():
    q = alpha_beta_target(torch.tensor([True, False, False]), 2.0, 1.0)
    assert kl_to_target(q.log().expand(1, 1, 3), q, "last").item() == pytest.approx(0.0, abs=1e-6)
    # uniform model vs uniform-over-k target: KL = log(V / k)
    mask = torch.zeros(100, dtype=torch.bool)
    mask[:2] = True
    assert kl_to_target(torch.zeros(1, 1, 100), uniform_target(mask), "last").item() == pytest.approx(
        torch.log(torch.tensor(50.0)).item(), rel=1e-6
    )


def test_tilt_distill_matches_kl_div_and_is_zero_at_the_tilted_reference():
    ref = torch.randn(2, 4, 8)
    mask = torch.zeros(8, dtype=torch.bool)
    mask[1] = True
    ctx = ObjectiveContext(mask=mask, bias=1.5, ref_logits=ref)
    logits = torch.randn(2, 4, 8)
    target = F.softmax(ref + 1.5 * mask.float(), -1)
    expected = F.kl_div(F.log_softmax(logits, -1).reshape(-1, 8), target.reshape(-1, 8), reduction="batchmean")
    assert torch.allclose(OBJECTIVES["tilt-distill"](logits, None, ctx), expected, atol=1e-6)
    tilted = ref + 1.5 * mask.float()
    assert OBJECTIVES["tilt-distill"](tilted, None, ctx).item() == pytest.approx(0.0, abs=1e-6)


def test_mixed_is_kl_plus_lambda_ce():
    logits, ids = torch.randn(2, 5, 6), torch.randint(0, 6, (2, 5))
    mask = torch.tensor([True, False, False, False, False, True])
    ctx = ObjectiveContext(mask=mask, ce_weight=0.3)
    expected = kl_to_target(logits, alpha_beta_target(mask, 10.0, 1.0), "all") + 0.3 * next_token_ce(logits, ids)
    assert torch.allclose(OBJECTIVES["mixed"](logits, ids, ctx), expected)
    # the same from PyTorch's own functions and a target written by hand (weights 10 in the set, 1 outside)
    q = torch.tensor([10.0, 1, 1, 1, 1, 10]) / 24
    kl = F.kl_div(F.log_softmax(logits, -1).reshape(-1, 6), q.expand(10, 6), reduction="batchmean")
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, 6), ids[:, 1:].reshape(-1))  # labels shifted by one
    assert torch.allclose(OBJECTIVES["mixed"](logits, ids, ctx), kl + 0.3 * ce, atol=1e-6)


def test_unlikelihood_hand_value_and_direction():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25]]]))
    mask = torch.tensor([True, False, False])
    assert unlikelihood(logits, mask).item() == pytest.approx(-torch.log(torch.tensor(0.5)).item(), rel=1e-5)
    x = logits.clone().requires_grad_(True)
    unlikelihood(x, mask).backward()
    assert x.grad[0, 0, 0] > 0  # descending the gradient lowers the set's logit


def test_registry_names():
    assert set(OBJECTIVES) == {"kl-uniform", "kl-alpha-beta", "tilt-distill", "mixed", "away"}
    with pytest.raises(ValueError, match="positions"):
        kl_to_target(torch.randn(1, 2, 3), torch.ones(3) / 3, "middle")
