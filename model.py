"""DocRE-II: base module + inference module, noise injection, training losses and K-step inference.

Batch tensors (see utils.collate_fn): input_ids/attention_mask [B, L], mention_pos/mention_mask [B, N, M],
pair_mask [B, N, N] (valid pairs: real entities, s != o) and pair_index [3, P] (their coordinates, utils.Pairs).
Per-pair tensors are packed over the P valid pairs in pair_mask.nonzero() order: [P, .]; pair_labels [P, C]
are their labels and scored [S] the packed positions of the pairs that are scored (all valid pairs for
DocRED, the candidate pairs for CDR/GDA). Nothing in a training step waits for the GPU: the pair
coordinates come from the CPU and every random choice is made for all pairs at once.
"""
import torch
import torch.nn as nn

from base_module import BaseModule
from inference_module import InferenceModule
from losses import at_loss, simclr_loss, simsiam_loss
from utils import Pairs


def inject_noise(pred, doc, num_docs, max_rate, num_class, gold=None):
    """Noise of Section 2.3: per document a rate r ~ U(0, max_rate) is drawn and round(r * #pairs) of its
    pairs, chosen uniformly, get an incorrect relation instead of their predicted one.

    pred [P] predicted classes of packed pairs; doc [P] their document index in [0, num_docs)
    (non-decreasing, as pair_mask.nonzero() gives); gold [P, C] multi-hot (optional). A replacement is
    drawn uniformly from the classes that are neither the prediction nor a gold relation of the pair (if
    that leaves none, as can happen with 2 classes, from the classes other than the prediction).
    Returns (noisy [P], chosen [P] bool).
    """
    dev = pred.device
    per_doc = torch.zeros(num_docs, dtype=torch.long, device=dev).index_add_(0, doc, torch.ones_like(doc))  # [B]
    rate = torch.rand(num_docs, device=dev) * max_rate
    n_noisy = torch.round(rate * per_doc).long()
    # A uniformly random rank of each pair within its document: sort by doc + U(0, 1).
    order = torch.argsort(doc.to(torch.float64) + torch.rand(doc.shape, device=dev, dtype=torch.float64))
    start = torch.cumsum(per_doc, 0) - per_doc  # first packed index of each document
    rank = torch.empty_like(doc)
    rank[order] = torch.arange(doc.numel(), device=dev) - start[doc[order]]
    chosen = rank < n_noisy[doc]
    # A replacement is drawn for every pair and kept where the pair was chosen (no data-dependent shapes).
    not_pred = torch.ones(pred.size(0), num_class, device=dev).scatter_(1, pred[:, None], 0.0)
    allowed = not_pred if gold is None else not_pred * (1 - gold.float())
    allowed = torch.where(allowed.sum(1, keepdim=True) > 0, allowed, not_pred)
    # argmax of iid uniforms restricted to the allowed classes = a uniform draw among them
    replacement = (torch.rand_like(allowed) * allowed).argmax(1)
    return torch.where(chosen, replacement, pred), chosen


class DocREModel(nn.Module):
    """The whole model of Fig. 2. ``forward`` returns the training losses of a stage; ``predict`` runs Fig. 2's
    K loop."""

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

    def base_forward(self, batch, pairs):
        return self.base(batch["input_ids"], batch["attention_mask"], batch["mention_pos"], batch["mention_mask"],
                         pairs)

    def forward(self, batch, stage):
        """Training losses. Stage 1: L_R of the base module. Stage 2: L_R(base) + L_R(inference) + w * L_C."""
        pairs = Pairs.of(batch)
        scored, labels = batch["scored"], batch["pair_labels"]  # [S], [P, C]
        if stage == 1:
            _, logits0 = self.base_forward(batch, pairs)
            loss = at_loss(logits0[scored], labels[scored])
            return {"loss": loss, "base": loss.detach()}
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_base):
            feats, logits0 = self.base_forward(batch, pairs)
        doc = pairs.b
        f0 = self.inference.reduce(feats)
        pred0 = logits0.detach().argmax(-1)
        gold = torch.zeros_like(labels).index_copy_(0, scored, labels[scored])  # gold relations of scored pairs
        B, C = pairs.mask.size(0), labels.size(-1)
        noisy_a, _ = inject_noise(pred0, doc, B, self.noise_max, C, gold)  # R-bar_0^(0)
        f_a, r_a, logits_a = self.inference(f0, self.inference.rel_emb(noisy_a), pairs)
        out = {"inference": at_loss(logits_a[scored], labels[scored])}
        if not self.freeze_base:
            # The paper keeps L_R on the base module in stage 2 ("in addition to L_R"), as does the authors' code.
            out["base"] = at_loss(logits0[scored], labels[scored])
        if self.predictor is not None and len(doc) > 1:  # BatchNorm needs two pairs or more
            noisy_b, _ = inject_noise(pred0, doc, B, self.noise_max, C, gold)  # R-hat_0^(0)
            # The second view swaps the inputs: (R-hat, F_0) through the same module (Fig. 4).
            f_b, r_b = self.inference.encode(self.inference.rel_emb(noisy_b), f0, pairs)
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
        pairs = Pairs.of(batch)
        feats, logits = self.base_forward(batch, pairs)
        passes = [logits]
        if num_iterations > 0:
            f0 = self.inference.reduce(feats)
            fixed = self.inference.layers[0].fixed(f0) if len(self.inference.layers) else None
            for _ in range(num_iterations):
                _, _, logits = self.inference(f0, self.inference.relation_matrix(logits), pairs, fixed)
                passes.append(logits)
        return passes
