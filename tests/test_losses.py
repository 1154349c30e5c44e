"""Tests for losses.py: adaptive-threshold loss Eq. (13), the prediction rule, SimSiam Eq. (14), SimCLR ablation."""
import math

import pytest
import torch
import torch.nn.functional as F

from losses import at_loss, get_label, simclr_loss, simsiam_loss


def _lse(xs):
    return math.log(sum(math.exp(x) for x in xs))


# ---------------------------------------------------------------- at_loss, Eq. (13)
def test_at_loss_hand_computed_two_pairs_four_classes():
    # class 0 = TH. Pair 1: positives {1, 2}, negatives {3}. Pair 2: no relation (Na), negatives {1, 2, 3}.
    logits = torch.tensor([[0.5, 2.0, 1.0, -1.0],
                           [1.0, 0.0, 3.0, -2.0]])
    labels = torch.tensor([[0.0, 1.0, 1.0, 0.0],
                           [1.0, 0.0, 0.0, 0.0]])
    # Eq. (13), pair 1:
    #   positive part: -log(e^2.0 / (e^2.0 + e^1.0 + e^0.5)) - log(e^1.0 / (e^2.0 + e^1.0 + e^0.5))
    #                  (each positive against {P_T, TH} = {1, 2, 0})
    #   threshold part: -log(e^0.5 / (e^0.5 + e^-1.0))            (TH against {N_T, TH} = {3, 0})
    z1 = _lse([2.0, 1.0, 0.5])
    pair1 = -(2.0 - z1) - (1.0 - z1) - (0.5 - _lse([0.5, -1.0]))
    # pair 2: no positive part; threshold part: -log(e^1.0 / (e^1.0 + e^0.0 + e^3.0 + e^-2.0))
    pair2 = -(1.0 - _lse([1.0, 0.0, 3.0, -2.0]))
    expected = (pair1 + pair2) / 2  # averaged over pairs
    assert at_loss(logits, labels).item() == pytest.approx(expected, abs=1e-6)
    # the Na column of labels is ignored for pairs that have relations (it's the TH class, not a positive)
    labels_with_na = labels.clone()
    labels_with_na[0, 0] = 1.0
    assert at_loss(logits, labels_with_na).item() == pytest.approx(expected, abs=1e-6)


def test_at_loss_all_positive_and_no_positive_pairs_are_finite():
    logits = torch.tensor([[0.3, 1.0, -2.0, 4.0],     # every relation positive: N_T is empty
                           [-1.0, 2.0, 0.5, 1.5],     # Na: P_T is empty
                           [2.0, 50.0, -60.0, 0.0]], requires_grad=True)
    labels = torch.tensor([[0.0, 1.0, 1.0, 1.0],
                           [1.0, 0.0, 0.0, 0.0],
                           [0.0, 0.0, 1.0, 0.0]])
    loss = at_loss(logits, labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()
    z = _lse([0.3, 1.0, -2.0, 4.0])
    pair1 = sum(-(x - z) for x in [1.0, -2.0, 4.0]) - 0.0  # TH part: -log(e^0.3 / e^0.3) = 0
    pair2 = -(-1.0 - _lse([-1.0, 2.0, 0.5, 1.5]))
    pair3 = -(-60.0 - _lse([2.0, -60.0])) - (2.0 - _lse([2.0, 50.0, 0.0]))
    assert loss.item() == pytest.approx((pair1 + pair2 + pair3) / 3, rel=1e-6)
    assert logits.grad[1, 0] < 0  # Na pair: raising TH lowers the loss
    # pair with every label zero (not even Na) is treated as Na: finite too
    z0 = at_loss(torch.randn(2, 4), torch.zeros(2, 4))
    assert torch.isfinite(z0)


def test_at_loss_half_precision_logits_computed_in_float32():
    logits = torch.randn(6, 5)
    labels = (torch.rand(6, 5) > 0.6).float()
    labels[:, 0] = (labels[:, 1:].sum(1) == 0).float()
    out = at_loss(logits.to(torch.bfloat16), labels)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(at_loss(logits.to(torch.bfloat16).float(), labels).item(), abs=1e-6)


# ---------------------------------------------------------------- get_label
def test_get_label_threshold_rule_and_na():
    logits = torch.tensor([[0.0, 1.0, -1.0, 2.0],
                           [0.0, -1.0, -2.0, -3.0],   # nothing beats TH -> Na
                           [1.0, 2.0, 3.0, 0.5],
                           [1.0, 1.0, 0.0, 0.0]])     # a tie with TH does not pass (strict >)
    expected = torch.tensor([[0.0, 1.0, 0.0, 1.0],
                             [1.0, 0.0, 0.0, 0.0],
                             [0.0, 1.0, 1.0, 0.0],
                             [1.0, 0.0, 0.0, 0.0]])
    assert torch.equal(get_label(logits), expected)
    assert torch.equal(get_label(logits, num_labels=4), expected)  # num_labels >= C: no cap


def test_get_label_top_k_cap():
    logits = torch.tensor([[0.0, 1.0, -1.0, 2.0],
                           [1.0, 2.0, 3.0, 0.5],
                           [3.0, 2.0, 1.0, 0.0],      # TH is the top logit: Na whatever k
                           [1.0, 2.0, 0.5, 3.0]])
    k1 = torch.tensor([[0.0, 0.0, 0.0, 1.0],
                       [0.0, 0.0, 1.0, 0.0],
                       [1.0, 0.0, 0.0, 0.0],
                       [0.0, 0.0, 0.0, 1.0]])
    assert torch.equal(get_label(logits, num_labels=1), k1)
    k2 = torch.tensor([[0.0, 1.0, 0.0, 1.0],
                       [0.0, 1.0, 1.0, 0.0],
                       [1.0, 0.0, 0.0, 0.0],
                       [0.0, 1.0, 0.0, 1.0]])
    assert torch.equal(get_label(logits, num_labels=2), k2)
    # batched leading dims keep the rule per row
    out = get_label(logits.view(2, 2, 4), num_labels=1)
    assert torch.equal(out.view(4, 4), k1)
    # every row has exactly one Na flag or >= 1 relation, never both
    out = get_label(torch.randn(50, 7), num_labels=3)
    rel = out[:, 1:].sum(1)
    assert torch.equal(out[:, 0], (rel == 0).float())
    assert (rel <= 3).all()


# ---------------------------------------------------------------- SimSiam, Eq. (14)
def test_simsiam_equals_direct_formula():
    torch.manual_seed(0)
    p_a, z_a, p_b, z_b = (torch.randn(7, 6, dtype=torch.float64) for _ in range(4))

    def cos(x, y):
        return (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1))

    expected = 2 - (cos(p_b, z_a).mean() + cos(p_a, z_b).mean())
    assert simsiam_loss(p_a, z_a, p_b, z_b).item() == pytest.approx(expected.item(), abs=1e-6)
    # identical views: the minimum, 0
    assert simsiam_loss(z_a, z_a, z_a, z_a).item() == pytest.approx(0.0, abs=1e-6)
    # opposite views: the maximum, 4
    assert simsiam_loss(-z_b, z_a, -z_a, z_b).item() == pytest.approx(4.0, abs=1e-5)


def test_simsiam_stop_gradient_on_targets():
    torch.manual_seed(1)
    # only the targets require grad: the loss is constant w.r.t. them
    z_a = torch.randn(5, 4, requires_grad=True)
    z_b = torch.randn(5, 4, requires_grad=True)
    p_a, p_b = torch.randn(5, 4), torch.randn(5, 4)
    assert not simsiam_loss(p_a, z_a, p_b, z_b).requires_grad

    # everything requires grad: targets get no grad, predictor outputs get the grad of the formula
    # with detached targets
    p_a = torch.randn(5, 4, requires_grad=True)
    p_b = torch.randn(5, 4, requires_grad=True)
    simsiam_loss(p_a, z_a, p_b, z_b).backward()
    assert z_a.grad is None and z_b.grad is None
    pa2, pb2 = p_a.detach().clone().requires_grad_(), p_b.detach().clone().requires_grad_()
    ref = 2 - (F.cosine_similarity(pb2, z_a.detach(), dim=-1).mean()
               + F.cosine_similarity(pa2, z_b.detach(), dim=-1).mean())
    ref.backward()
    assert p_a.grad.abs().sum() > 0 and p_b.grad.abs().sum() > 0
    torch.testing.assert_close(p_a.grad, pa2.grad)
    torch.testing.assert_close(p_b.grad, pb2.grad)

    # targets computed from a leaf through a shared function: the leaf only gets the predictor path
    x = torch.randn(5, 4, requires_grad=True)
    lin = torch.nn.Linear(4, 4)
    z = torch.tanh(x)
    simsiam_loss(lin(z), z, lin(z), z).backward()
    x2 = x.detach().clone().requires_grad_()
    z2 = torch.tanh(x2)
    (2 - 2 * F.cosine_similarity(lin(z2), z2.detach(), dim=-1).mean()).backward()
    torch.testing.assert_close(x.grad, x2.grad)


# ---------------------------------------------------------------- SimCLR ablation
def _simclr_reference(p_a, p_b, group, t):
    """Per-document InfoNCE in both directions, averaged over all pairs of the batch."""
    za, zb = F.normalize(p_a, dim=-1), F.normalize(p_b, dim=-1)
    rows_a, rows_b = [], []
    for i in range(len(group)):
        same = [j for j in range(len(group)) if group[j] == group[i]]
        pos = same.index(i)
        la = torch.stack([za[i] @ zb[j] for j in same]) / t
        lb = torch.stack([zb[i] @ za[j] for j in same]) / t
        rows_a.append(-(la[pos] - torch.logsumexp(la, 0)))
        rows_b.append(-(lb[pos] - torch.logsumexp(lb, 0)))
    return 0.5 * (torch.stack(rows_a).mean() + torch.stack(rows_b).mean())


def test_simclr_hand_computed_two_documents():
    # doc 0: two pairs on the unit axes; doc 1: one pair, whose only candidate is its own positive.
    p_a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    p_b = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    group = torch.tensor([0, 0, 1])
    # doc 0, each anchor: -log(e^1 / (e^1 + e^0)) = log(1 + e^-1); doc 1: -log(e^1 / e^1) = 0.
    # Mean over 3 anchors, same for both directions: 2/3 log(1 + e^-1).
    expected = 2.0 / 3.0 * math.log(1 + math.exp(-1))
    assert simclr_loss(p_a, p_b, group, temperature=1.0).item() == pytest.approx(expected, abs=1e-6)
    # without the document mask pair 2 (= pair 0's direction) would be a negative of pair 0: larger loss
    sim = F.normalize(p_a) @ F.normalize(p_b).t()
    t = torch.arange(3)
    unmasked = 0.5 * (F.cross_entropy(sim, t) + F.cross_entropy(sim.t(), t))
    assert unmasked.item() > expected + 0.1


def test_simclr_matches_reference_and_ignores_other_documents():
    torch.manual_seed(2)
    group = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    p_a = torch.randn(9, 3, dtype=torch.float64)
    p_b = torch.randn(9, 3, dtype=torch.float64)
    loss = simclr_loss(p_a, p_b, group, temperature=0.3)
    assert loss.item() == pytest.approx(_simclr_reference(p_a, p_b, group, 0.3).item(), abs=1e-5)
    # Rotate both views of document 2 by the same orthogonal matrix: within-document similarities are
    # unchanged, cross-document ones change; the loss must not move.
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    sel = group == 2
    p_a2, p_b2 = p_a.clone(), p_b.clone()
    p_a2[sel] = p_a[sel] @ q
    p_b2[sel] = p_b[sel] @ q
    cross_before = F.normalize(p_a[~sel]) @ F.normalize(p_b[sel]).t()
    cross_after = F.normalize(p_a2[~sel]) @ F.normalize(p_b2[sel]).t()
    assert (cross_before - cross_after).abs().max() > 0.1
    assert simclr_loss(p_a2, p_b2, group, 0.3).item() == pytest.approx(loss.item(), abs=1e-5)
    # temperature matters
    assert simclr_loss(p_a, p_b, group, 1.0).item() != pytest.approx(loss.item(), abs=1e-3)
