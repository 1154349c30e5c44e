"""Adaptive-threshold loss, Eq. (13), the prediction rule, and the SimSiam / SimCLR contrastive losses, Eq. (14).

Class 0 is the threshold class TH (``Na`` in DocRED). Every loss here is computed in float32,
whatever the autocast dtype of the logits, so bf16/fp16 training keeps exact loss values.
"""
import torch
import torch.nn.functional as F


def at_loss(logits, labels, weight=None):
    """Adaptive-threshold loss, Eq. (13), averaged over pairs (weighted by ``weight`` [P] when given: a 0/1 weight
    averages over a subset of the pairs without indexing them).

    logits: [P, C]; labels: [P, C] multi-hot, column 0 = 1 exactly for pairs with no relation.
    First term: every positive relation against {positives, TH}; second term: TH against {negatives, TH}.
    """
    logits = logits.float()
    labels = labels.float().clone()
    labels[:, 0] = 0.0
    th = torch.zeros_like(labels)
    th[:, 0] = 1.0
    very_negative = torch.finfo(logits.dtype).min
    # Masked classes get the dtype's minimum (not -inf) so that 0 * log_softmax stays 0, never NaN.
    pos_logits = logits.masked_fill((labels + th) == 0, very_negative)
    loss_pos = -(F.log_softmax(pos_logits, dim=-1) * labels).sum(-1)
    neg_logits = logits.masked_fill(labels == 1, very_negative)
    loss_th = -(F.log_softmax(neg_logits, dim=-1) * th).sum(-1)
    # sum / count rather than mean: a batch with no scored pair gives 0, not NaN
    if weight is None:
        return (loss_pos + loss_th).sum() / max(1, logits.size(0))
    return ((loss_pos + loss_th) * weight).sum() / weight.sum().clamp(min=1)


def get_label(logits, num_labels=-1):
    """Prediction rule of the adaptive threshold: relations whose logit beats TH, at most ``num_labels`` of them.

    logits: [..., C] -> multi-hot [..., C] (float); a pair with no relation gets column 0 = 1.
    """
    th = logits[..., :1]
    keep = logits > th
    if num_labels > 0 and num_labels < logits.size(-1):
        kth = torch.topk(logits, num_labels, dim=-1).values[..., -1:]
        keep = keep & (logits >= kth)
    keep[..., 0] = False
    out = keep.to(logits.dtype)
    out[..., 0] = (~keep.any(-1)).to(logits.dtype)
    return out


def simsiam_loss(p_a, z_a, p_b, z_b):
    """SimSiam loss, Eq. (14): 2 - (cos(p_b, sg(z_a)) + cos(p_a, sg(z_b))), averaged over pairs.

    p_*: predictor outputs [P, D] (online branches), z_*: top-layer outputs [P, D]; the targets are
    detached here, which is the stop-gradient SG(.) of Eq. (14).
    """
    cos_ba = F.cosine_similarity(p_b.float(), z_a.detach().float(), dim=-1)
    cos_ab = F.cosine_similarity(p_a.float(), z_b.detach().float(), dim=-1)
    return 2.0 - (cos_ba.mean() + cos_ab.mean())


def simclr_loss(p_a, p_b, group, temperature):
    """Ablation "w/ negative pairs" (Table 4): symmetric InfoNCE with in-document negatives.

    p_a, p_b: [P, D] projections of the two views of the same P pairs; group: [P] document index of each pair.
    The positive of pair i in view a is pair i in view b; its negatives are the other pairs of the same
    document (the same relation matrix) in view b. No stop-gradient, as in SimCLR.
    """
    za = F.normalize(p_a.float(), dim=-1)
    zb = F.normalize(p_b.float(), dim=-1)
    sim = za @ zb.t() / temperature  # [P, P]
    same_doc = group[:, None] == group[None, :]
    sim = sim.masked_fill(~same_doc, torch.finfo(sim.dtype).min)
    target = torch.arange(sim.size(0), device=sim.device)
    return 0.5 * (F.cross_entropy(sim, target) + F.cross_entropy(sim.t(), target))
