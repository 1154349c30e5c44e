"""Inference module (paper Section 2.2): ECA units, fusion sub-layer, inference layers and classifier.

Pairs are packed: every per-pair tensor is [P, .] over the valid pairs of the batch, in the row-major
order of ``pair_mask.nonzero()`` (document, subject s, object o); ``pairs`` is a utils.Pairs (the mask
and those coordinates). The dense layers, which are nearly all
of the module's arithmetic, therefore run on real pairs only, never on padding or s = o. Only the
attention lays pairs out as per-document matrices [B, N, N, .] (B documents, N entities padded), where
row s / column s / row o / column o are cheap views. D is the module width, 4 lines (row s, column s,
row o, column o) x h heads per line, k = D / (4h) per head. No tensor of N^3 * D elements is formed:
attention scores are [B, N, N, h, N] per line, i.e. N^3 * heads.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils import LogitLinear


def scatter_pairs(x, pairs):
    """[P, X] packed pairs -> [B, N, N, X] matrix with zeros at invalid pairs."""
    out = x.new_zeros(*pairs.mask.shape, x.size(-1))
    out[pairs.b, pairs.s, pairs.o] = x
    return out


def gather_pairs(x, pairs):
    """[B, N, N, ...] matrix -> [P, ...] packed pairs."""
    return x[pairs.b, pairs.s, pairs.o]


def masked_softmax(scores, mask):
    """Softmax over the last dim where masked keys get exactly zero weight (all-masked rows give zeros)."""
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1) * mask


class ECAUnit(nn.Module):
    """Extended Cross Attention unit, Eq. (5)-(7).

    For pair (s, o) the query comes from X[s, o] (X = F_l for the feature-level unit, R_l for the
    relation-level one); keys and values come from M = [F_l, R_l]. The four lines are row s, column s,
    row o and column o of M, each attended by its own head(s); the heads are concatenated and mixed by W_O.
    The pair (s, o) itself lies in row s and in column o and is attended in both (the paper is silent).
    """

    def __init__(self, dim, heads_per_line=1, dropout=0.1):
        super().__init__()
        if dim % (4 * heads_per_line):
            raise ValueError(f"inference width {dim} is not divisible by 4 lines x {heads_per_line} heads")
        self.dim, self.h, self.k = dim, heads_per_line, dim // (4 * heads_per_line)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(2 * dim, 2 * dim)  # keys and values from M = [F, R], Eq. (5)
        self.out = nn.Linear(dim, dim)  # W_O, Eq. (7)
        self.drop = nn.Dropout(dropout)

    def feature_part(self, f):
        """The F half of the key/value projection of M = [F, R] (bias included): [P, D] -> [P, 2D]."""
        return F.linear(f, self.kv.weight[:, :self.dim], self.kv.bias)

    def keys_values(self, f_part, r):
        """kv(M) = W_F F + W_R R + b, without materialising the concatenation [F, R]."""
        return f_part + F.linear(r, self.kv.weight[:, self.dim:])

    def attend(self, q, kv, pairs):
        """Eq. (5)-(6) for all pairs at once: q [P, D], kv [P, 2D] -> concatenated heads [P, D]."""
        B, N, _ = pairs.mask.shape
        shape = (B, N, N, 4, self.h, self.k)
        q = scatter_pairs(q / math.sqrt(self.k), pairs).view(shape).unbind(3)  # 4 x [B, N, N, h, k]
        keys, vals = scatter_pairs(kv, pairs).chunk(2, dim=-1)
        k, v = keys.reshape(shape).unbind(3), vals.reshape(shape).unbind(3)
        valid, valid_t = pairs.mask, pairs.mask.transpose(1, 2)
        # scores [B, s, o, h, j] per line: row s -> M[s, j], column s -> M[j, s], row o -> M[o, j],
        # column o -> M[j, o]; each mask broadcasts the validity of that key pair.
        lines = [
            ("bsohk,bsjhk->bsohj", "bsohj,bsjhk->bsohk", valid[:, :, None, None, :]),
            ("bsohk,bjshk->bsohj", "bsohj,bjshk->bsohk", valid_t[:, :, None, None, :]),
            ("bsohk,bojhk->bsohj", "bsohj,bojhk->bsohk", valid[:, None, :, None, :]),
            ("bsohk,bjohk->bsohj", "bsohj,bjohk->bsohk", valid_t[:, None, :, None, :]),
        ]
        heads = []
        for g, (score_eq, mix_eq, mask) in enumerate(lines):
            w = masked_softmax(torch.einsum(score_eq, q[g], k[g]), mask)  # Eq. (6)
            heads.append(gather_pairs(torch.einsum(mix_eq, w, v[g]), pairs))  # [P, h, k]
        return torch.stack(heads, dim=1).flatten(1)  # Concat(head_1..head_4): [P, D]

    def forward(self, q, kv, pairs):
        """q = self.q(X) [P, D], kv = kv(M) [P, 2D] -> the temporary matrix of Eq. (7), [P, D]."""
        return self.drop(self.out(self.attend(q, kv, pairs)))


class FullAttentionUnit(ECAUnit):
    """Ablation "w/o ECA" (Table 4): standard multi-head attention of every pair over all valid pairs."""

    def attend(self, q, kv, pairs):
        B, N, _ = pairs.mask.shape
        heads = 4 * self.h
        shape = (B, N * N, heads, self.k)
        q = scatter_pairs(q / math.sqrt(self.k), pairs).view(shape)
        keys, vals = scatter_pairs(kv, pairs).chunk(2, dim=-1)
        scores = torch.einsum("bqhk,bphk->bhqp", q, keys.reshape(shape))  # [B, heads, N^2, N^2]
        w = masked_softmax(scores, pairs.mask.view(B, 1, 1, N * N))
        out = torch.einsum("bhqp,bphk->bqhk", w, vals.reshape(shape))  # [B, N^2, heads, k]
        return gather_pairs(out.reshape(B, N, N, heads * self.k), pairs)


class FNN(nn.Sequential):
    """Position-wise feed-forward network of Eq. (10)-(11): D -> 2D -> D."""

    def __init__(self, dim, dropout):
        super().__init__(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim), nn.Dropout(dropout))


class InferenceLayer(nn.Module):
    """One inference layer: two ECA units, fusion sub-layer Eq. (8)-(9), residual LayerNorms Eq. (10)-(11)."""

    def __init__(self, dim, heads_per_line=1, dropout=0.1, eca="eca", fusion=True):
        super().__init__()
        unit = ECAUnit if eca == "eca" else FullAttentionUnit
        self.eca_f = unit(dim, heads_per_line, dropout)  # feature-level inference
        self.eca_r = unit(dim, heads_per_line, dropout)  # relation-level inference
        self.fusion = fusion
        self.gate = nn.Linear(2 * dim, dim) if fusion else None  # W_g, b_g of Eq. (8)
        self.fnn_f, self.fnn_r = FNN(dim, dropout), FNN(dim, dropout)
        self.norm_f, self.norm_r = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def fixed(self, f):
        """Everything the layer computes from F alone: the feature-level queries and the F halves of both
        key/value projections. Constant across the K iterations when F = F_0 (the first layer)."""
        return self.eca_f.q(f), self.eca_f.feature_part(f), self.eca_r.feature_part(f)

    def forward(self, f, r, pairs, fixed=None):
        q_f, fkv_f, fkv_r = self.fixed(f) if fixed is None else fixed
        f_t = self.eca_f(q_f, self.eca_f.keys_values(fkv_f, r), pairs)  # F~_l, Eq. (7)
        r_t = self.eca_r(self.eca_r.q(r), self.eca_r.keys_values(fkv_r, r), pairs)  # R~_l, Eq. (7)
        if self.fusion:
            s = torch.sigmoid(self.gate(torch.cat([f_t, r_t], dim=-1)))  # Eq. (8)
            f_in = r_in = s * f_t + (1 - s) * r_t  # Eq. (9)
        else:
            f_in, r_in = f_t, r_t  # ablation "w/o fusion sub-layer": each stream keeps its own ECA output
        f = self.norm_f(f + self.fnn_f(f_in))  # Eq. (10)
        r = self.norm_r(r + self.fnn_r(r_in))  # Eq. (11)
        return f, r


class InferenceModule(nn.Module):
    """N_I inference layers and the classifier of Eq. (12); the projection of the base features and the
    relation embedding emb(.) live here too. Used through ``forward`` (one pass) and ``iterate`` (K passes)."""

    def __init__(self, feat_dim, dim, num_class, num_layers=2, heads_per_line=1, dropout=0.1,
                 eca="eca", fusion=True, classifier_layers=1, rel_emb_init="normal"):
        super().__init__()
        # The base features (width e) are projected to the module width D, as in the authors' code.
        self.reduce = nn.Sequential(nn.Linear(feat_dim, dim, bias=False), nn.Dropout(dropout))
        self.rel_emb = nn.Embedding(num_class, dim)  # emb(.) of R_0 = emb(argmax p)
        if rel_emb_init == "xavier":  # the authors' init: entries ~1/17 of nn.Embedding's N(0, 1)
            nn.init.xavier_uniform_(self.rel_emb.weight)
        self.layers = nn.ModuleList(
            InferenceLayer(dim, heads_per_line, dropout, eca, fusion) for _ in range(num_layers))
        if classifier_layers == 1:
            self.classifier = LogitLinear(2 * dim, num_class)  # W_c, b_c of Eq. (12), in fp32 under autocast
        else:  # the authors' classifier: W_c maps [F, R] to D first (then dropout, LayerNorm, a linear layer)
            self.classifier = nn.Sequential(nn.Linear(2 * dim, dim), nn.Dropout(dropout), nn.LayerNorm(dim),
                                            LogitLinear(dim, num_class))

    def relation_matrix(self, relations):
        """R_0: relation ids [P] -> emb(ids) (Eq. 12's emb(argmax P)), or a multi-hot [P, C] -> the sum of the
        embeddings of its relations (the authors' reading); -> [P, D]."""
        if relations.dim() == 1:
            return self.rel_emb(relations)
        return relations.to(self.rel_emb.weight.dtype) @ self.rel_emb.weight

    def encode(self, f, r, pairs, fixed=None):
        """Run the N_I layers; returns the top-layer (F_NI, R_NI). ``fixed`` = layers[0].fixed(f), reusable."""
        for i, layer in enumerate(self.layers):
            f, r = layer(f, r, pairs, fixed if i == 0 else None)
        return f, r

    def forward(self, feats, relations, pairs, swap=False):
        """One pass, Eq. (5)-(12): base features [P, e] and relations (ids [P] or multi-hot [P, C], the R_0 of
        ``relation_matrix``) -> (F_NI, R_NI, logits [P, C]). ``swap`` feeds (R_0, F_0) in place of (F_0, R_0):
        the second view of the contrastive loss (Fig. 4)."""
        f0, r0 = self.reduce(feats), self.relation_matrix(relations)
        f, r = self.encode(r0, f0, pairs) if swap else self.encode(f0, r0, pairs)
        return f, r, self.classifier(torch.cat([f, r], dim=-1))

    def iterate(self, feats, scores, pairs, passes, decode, accumulate=False, first_input=None):
        """Fig. 2's loop: pass k + 1 reads R_0 = decode(scores of pass k) and the same F_0, so what the first layer
        derives from F_0 alone is computed once. ``scores``: the base module's logits [P, C] (pass 0). Returns the
        scores of passes 1..K: each pass's logits, or with ``accumulate`` the base logits plus the logits of every
        pass so far (the authors' test-time score). ``first_input`` [P, C], when given, is decoded for the first
        pass instead of the base logits (a diagnostic: experiments/oracle_relations.py)."""
        if not passes:  # K = 0 (stage 1's dev scores, --num_iterations 0): no layer input to prepare
            return []
        f0 = self.reduce(feats)
        fixed = self.layers[0].fixed(f0) if len(self.layers) else None
        out = []
        for k in range(passes):
            given = scores if first_input is None or k else first_input
            f, r = self.encode(f0, self.relation_matrix(decode(given)), pairs, fixed)
            logits = self.classifier(torch.cat([f, r], dim=-1))
            scores = scores + logits if accumulate else logits
            out.append(scores)
        return out
