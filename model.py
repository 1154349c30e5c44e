"""DocRE-II: base module + inference module, noise injection, training losses and K-step inference.

Batch tensors (see utils.collate_fn): input_ids/attention_mask [B, L], mention_pos/mention_mask [B, N, M],
pair_mask [B, N, N] (valid pairs: real entities, s != o), label_mask [B, N, N] (pairs that are scored:
all valid pairs for DocRED, the candidate pairs for CDR/GDA) and labels [B, N, N, C].
Per-pair tensors are packed over the P valid pairs in pair_mask.nonzero() order: [P, .].
"""
import torch
import torch.nn as nn

from base_module import BaseModule
from inference_module import InferenceModule
from losses import at_loss, simclr_loss, simsiam_loss


def inject_noise(pred, doc, max_rate, num_class, gold=None):
    """Noise of Section 2.3: per document a rate r ~ U(0, max_rate) is drawn and round(r * #pairs) of its
    pairs, chosen uniformly, get an incorrect relation instead of their predicted one.

    pred [P] predicted classes of packed pairs; doc [P] their document index (non-decreasing, as
    pair_mask.nonzero() gives); gold [P, C] multi-hot (optional). A replacement is drawn uniformly from
    the classes that are neither the prediction nor a gold relation of the pair (if that leaves none, as
    can happen with 2 classes, from the classes other than the prediction).
    Returns (noisy [P], chosen [P] bool).
    """
    dev = pred.device
    B = int(doc.max()) + 1 if doc.numel() else 0
    per_doc = torch.bincount(doc, minlength=B)  # [B]
    rate = torch.rand(B, device=dev) * max_rate
    n_noisy = torch.round(rate * per_doc).long()
    # A uniformly random rank of each pair within its document: sort by doc + U(0, 1).
    order = torch.argsort(doc.to(torch.float64) + torch.rand(doc.shape, device=dev, dtype=torch.float64))
    start = torch.cumsum(per_doc, 0) - per_doc  # first packed index of each document
    rank = torch.empty_like(doc)
    rank[order] = torch.arange(doc.numel(), device=dev) - start[doc[order]]
    chosen = rank < n_noisy[doc]
    old = pred[chosen]
    not_pred = torch.ones(old.size(0), num_class, device=dev).scatter_(1, old[:, None], 0.0)
    allowed = not_pred if gold is None else not_pred * (1 - gold[chosen].float())
    allowed = torch.where(allowed.sum(1, keepdim=True) > 0, allowed, not_pred)
    noisy = pred.clone()
    # argmax of iid uniforms restricted to the allowed classes = a uniform draw among them
    noisy[chosen] = (torch.rand_like(allowed) * allowed).argmax(1)
    return noisy, chosen


class DocREModel(nn.Module):
    """The whole model of Fig. 2. ``forward`` returns the training losses of a stage; ``predict`` runs Fig. 2's K loop."""

    def __init__(self, base: BaseModule, inference: InferenceModule, noise_max=0.4, contrastive="simsiam",
                 contrastive_weight=1.0, temperature=0.1, freeze_base=False):
        super().__init__()
        self.base, self.inference = base, inference
        self.noise_max, self.contrastive = noise_max, contrastive
        self.contrastive_weight, self.temperature = contrastive_weight, temperature
        self.freeze_base = freeze_base
        width = 2 * inference.rel_emb.embedding_dim
        self.predictor = None
        if contrastive != "none":
            # MLP(.) of Eq. (14): the SimSiam predictor (the projection head in the SimCLR ablation),
            # Linear-BN-ReLU-Linear with a bottleneck as in SimSiam.
            self.predictor = nn.Sequential(nn.Linear(width, width // 2), nn.BatchNorm1d(width // 2), nn.ReLU(),
                                           nn.Linear(width // 2, width))

    def base_forward(self, batch):
        return self.base(batch["input_ids"], batch["attention_mask"], batch["mention_pos"], batch["mention_mask"],
                         batch["pair_mask"])

    def forward(self, batch, stage):
        """Training losses. Stage 1: L_R of the base module. Stage 2: L_R(base) + L_R(inference) + w * L_C."""
        pair_mask = batch["pair_mask"]
        scored = batch["label_mask"][pair_mask]  # [P]
        labels = batch["labels"][pair_mask]  # [P, C]
        if stage == 1:
            _, logits0 = self.base_forward(batch)
            loss = at_loss(logits0[scored], labels[scored])
            return {"loss": loss, "base": loss.detach()}
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_base):
            feats, logits0 = self.base_forward(batch)
        doc = pair_mask.nonzero()[:, 0]
        f0 = self.inference.reduce(feats)
        pred0 = logits0.detach().argmax(-1)
        gold = labels * scored[:, None]
        C = labels.size(-1)
        noisy_a, _ = inject_noise(pred0, doc, self.noise_max, C, gold)  # R-bar_0^(0)
        f_a, r_a, logits_a = self.inference(f0, self.inference.rel_emb(noisy_a), pair_mask)
        out = {"inference": at_loss(logits_a[scored], labels[scored])}
        if not self.freeze_base:
            # The paper keeps L_R on the base module in stage 2 ("in addition to L_R"), as does the authors' code.
            out["base"] = at_loss(logits0[scored], labels[scored])
        if self.predictor is not None and len(doc) > 1:  # BatchNorm needs two pairs or more
            noisy_b, _ = inject_noise(pred0, doc, self.noise_max, C, gold)  # R-hat_0^(0)
            # The second view swaps the inputs: (R-hat, F_0) through the same module (Fig. 4).
            f_b, r_b = self.inference.encode(self.inference.rel_emb(noisy_b), f0, pair_mask)
            m_a = torch.cat([f_a, r_a], dim=-1)  # M-bar_NI: [P, 2D]
            m_b = torch.cat([f_b, r_b], dim=-1)  # M-hat_NI: [P, 2D]
            p_a, p_b = self.predictor(m_a), self.predictor(m_b)
            if self.contrastive == "simsiam":
                out["contrastive"] = simsiam_loss(p_a, m_a, p_b, m_b)
            else:
                out["contrastive"] = simclr_loss(p_a, p_b, doc, self.temperature)
        loss = out["inference"] + out.get("base", 0.0) + self.contrastive_weight * out.get("contrastive", 0.0)
        out = {k: v.detach() for k, v in out.items()}
        out["loss"] = loss
        return out

    @torch.no_grad()
    def predict(self, batch, num_iterations):
        """Iterative inference (Fig. 2). Returns the packed logits [P, C] of every pass: P^(0) (base),
        P^(1), ..., P^(K); pass k+1 reads R_0^(k) = emb(argmax P^(k)) and the same F_0, so what the first
        layer derives from F_0 alone is computed once."""
        pair_mask = batch["pair_mask"]
        feats, logits = self.base_forward(batch)
        passes = [logits]
        if num_iterations > 0:
            f0 = self.inference.reduce(feats)
            fixed = self.inference.layers[0].fixed(f0) if len(self.inference.layers) else None
            for _ in range(num_iterations):
                _, _, logits = self.inference(f0, self.inference.relation_matrix(logits), pair_mask, fixed)
                passes.append(logits)
        return passes
