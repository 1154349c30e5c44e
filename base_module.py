"""Base module (paper Section 2.1): ATLOP encoder, mention/entity pooling, localized context, Eq. (1)-(4).

Tensors are batched over documents with different numbers of entities:
  B documents, L tokens, N entities (padded), M mentions per entity (padded), d encoder width,
  H attention heads, e extractor width, f pair-feature width (e; e * block for "atlop"), C classes.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import AttentionInterface, AttentionMaskInterface, AutoConfig, AutoModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers.models.bert.modeling_bert import eager_attention_forward

from utils import LogitLinear

SDPA_EXCEPT_LAST = "docre_sdpa_except_last"
# Not cuDNN's attention: it builds an execution plan for every new sequence length (1.7 s for the first
# batch and 110-140 ms for each new length on an H200, bench/gpu_suite.sh), and document lengths vary.
SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def sdpa_except_last(module, query, key, value, attention_mask, **kwargs):
    """Attention of one encoder layer: scaled-dot-product attention (fused kernels, no [B, H, L, L]
    probabilities or dropout mask kept for the backward pass) in every layer but the last, whose
    probabilities localized context pooling (Eq. 1) reads; that layer runs the plain eager attention,
    dropout included, so its output and attention map are exactly what eager attention gives."""
    if module.layer_idx != module.config.num_hidden_layers - 1:
        kwargs.pop("output_attentions", None)
        with sdpa_kernel(SDPA_BACKENDS):
            return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if attention_mask is not None and attention_mask.dtype == torch.bool:  # SDPA's mask: True = attend
        attention_mask = torch.zeros_like(attention_mask, dtype=query.dtype).masked_fill(
            ~attention_mask, torch.finfo(query.dtype).min)
    return eager_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(SDPA_EXCEPT_LAST, sdpa_except_last)
AttentionMaskInterface.register(SDPA_EXCEPT_LAST, sdpa_mask)
ATTENTION = {"eager": "eager", "sdpa": SDPA_EXCEPT_LAST}


def load_encoder(name_or_path, attention="eager"):
    """Any HF checkpoint or local folder, in float32 (autocast does the low-precision math). ``attention``:
    'eager' in every layer, or 'sdpa' in every layer but the last (the only one whose map is read)."""
    config = AutoConfig.from_pretrained(name_or_path)
    return AutoModel.from_pretrained(name_or_path, config=config, attn_implementation=ATTENTION[attention],
                                     dtype=torch.float32)


def encoder_from_config(config, attention="eager"):
    """Randomly initialised encoder from a config (tests and benchmarks; no weights needed)."""
    return AutoModel.from_config(config, attn_implementation=ATTENTION[attention])


def window_spans(T, W, ns, ne):
    """Document token ranges [a, b) of the windows that cover a document of T > W tokens.

    Window k is the start special tokens (k > 0, ns of them), tokens [a_k, b_k) and the end special tokens
    (k < K - 1, ne of them): W tokens in all, a well-formed encoder input. K is the fewest windows that
    cover the document, so the room left over is less than one window's content; it becomes the overlap
    of neighbouring windows, shared as evenly as possible among the K - 1 junctions (earlier ones get the
    odd tokens), so no token is in more than two windows. For K = 2 (T <= 2W - ns - ne) these are ATLOP's
    two windows [0, W - ne) and [T - W + ns, T).
    """
    C = W - ns - ne  # content tokens of a middle window
    K = -(-(T - ns - ne) // C)
    spare = K * W - (K - 1) * (ns + ne) - T  # tokens held twice, 0 <= spare < C
    spans, end = [], 0
    for k in range(K):
        size = W - (ns if k else 0) - (ne if k < K - 1 else 0)
        start = end - (spare // (K - 1) + (k - 1 < spare % (K - 1))) if k else 0
        spans.append((start, start + size))
        end = start + size
    return spans


class LongEncoder(nn.Module):
    """Runs the encoder on documents longer than its position limit, as ATLOP does, with as many windows
    as a document needs.

    A document of length T <= W (the encoder window) is encoded once. A longer one is cut into the fewest
    overlapping W-token windows that cover every token (window_spans), each re-wrapped with the start/end
    special tokens; token states are averaged where windows overlap and last-layer attention rows are
    summed and renormalised over the document. Up to T = 2W - 2 (one start and one end token) these are
    ATLOP's two windows [0, W) and [T - W, T), with the same results (bit for bit on the CPU; on a GPU the
    renormalising sum may round differently: at most 1e-9 in float32 on an H200). All windows of a batch
    go through the encoder in one call. Returns states [B, L, d] and last-layer attention [B, H, L, L].
    """

    def __init__(self, encoder, start_ids, end_ids, window):
        super().__init__()
        if window <= len(start_ids) + len(end_ids):
            raise ValueError(f"window {window} leaves no room for tokens between the {len(start_ids)} start "
                             f"and {len(end_ids)} end special tokens")
        self.encoder = encoder
        self.register_buffer("start_ids", torch.tensor(start_ids, dtype=torch.long), persistent=False)
        self.register_buffer("end_ids", torch.tensor(end_ids, dtype=torch.long), persistent=False)
        self.window = window
        # Python copies for planning the windows: reading the buffers would wait for the GPU.
        self._start, self._end = [int(i) for i in start_ids], [int(i) for i in end_ids]

    def _run(self, input_ids, attention_mask):
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True)
        return out.last_hidden_state, out.attentions[-1]

    def _plan(self, lengths):
        """The windows of a batch, as CPU tensors: doc [P] (the document of each window), pos [P, W] (the
        document position of each window token, -1 for an added special token) and fill [P, W] (the added
        token's id, -1 elsewhere); and multi [B], whether a document has several windows.

        A document of T <= W tokens has one window: its first W positions, padding included, so that its
        states and attention are exactly the plain encoder's.
        """
        W, ns, ne = self.window, len(self._start), len(self._end)
        doc, pos, fill, multi = [], [], [], []
        for b, T in enumerate(lengths):
            multi.append(T > W)
            if T <= W:
                doc.append(b)
                pos.append(list(range(W)))
                fill.append([-1] * W)
                continue
            spans = window_spans(T, W, ns, ne)
            for k, (a, e) in enumerate(spans):
                head, tail = (self._start if k else []), (self._end if k < len(spans) - 1 else [])
                doc.append(b)
                pos.append([-1] * len(head) + list(range(a, e)) + [-1] * len(tail))
                fill.append(head + [-1] * (e - a) + tail)
        return torch.tensor(doc), torch.tensor(pos), torch.tensor(fill), torch.tensor(multi)

    def forward(self, input_ids, attention_mask):
        B, L = input_ids.shape
        if L <= self.window:
            return self._run(input_ids, attention_mask)
        device = input_ids.device
        doc, pos, fill, multi = (x.to(device) for x in self._plan(attention_mask.sum(1).tolist()))
        keep = pos >= 0  # [P, W]
        src = (doc[:, None], pos.clamp(min=0))
        ids = torch.where(keep, input_ids[src], fill)
        mask = torch.where(keep, attention_mask[src], torch.ones_like(attention_mask[src]))
        seq_w, att_w = self._run(ids, mask)  # [P, W, d], [P, H, W, W]
        d, H = seq_w.size(-1), att_w.size(1)
        # Scatter-add every kept window token into its document position (index B*L, or B*L*L for
        # attention, collects the added special tokens and is dropped). No position is in more than two
        # windows, and a sum of two terms does not depend on their order: the result is deterministic.
        row = torch.where(keep, doc[:, None] * L + pos, B * L)  # [P, W]
        seq = seq_w.new_zeros(B * L + 1, d).index_add_(0, row.flatten(), seq_w.flatten(0, 1))
        count = seq_w.new_zeros(B * L + 1).index_add_(0, row.flatten(), keep.flatten().to(seq_w.dtype))
        seq = (seq / count.clamp(min=1)[:, None])[:-1].view(B, L, d)
        cell = torch.where(keep[:, :, None] & keep[:, None, :], row[:, :, None] * L + pos[:, None, :],
                           B * L * L)  # [P, W, W]
        att = att_w.new_zeros(H, B * L * L + 1).index_add_(1, cell.flatten(), att_w.transpose(0, 1).flatten(1))
        att = att[:, :-1].view(H, B, L, L).transpose(0, 1)  # [B, H, L, L]
        # Rows of a multi-window document are renormalised; a one-window document keeps the encoder's.
        norm = torch.where(multi[:, None, None, None], att.sum(-1, keepdim=True) + 1e-10, 1.0)
        return seq, att / norm


class BaseModule(nn.Module):
    """ATLOP-style base module. Returns features F and logits of the valid pairs, packed: [P, f], [P, C].

    pair_form picks what follows the extractors of Eq. (2)-(3):
      "fnn"       the paper's wording: FNN over the concatenation [z_s, z_o] -> F [P, e]
      "bilinear"  the authors' code: ATLOP's grouped bilinear of z_s and z_o (blocks of block_size), then
                  Linear + ReLU -> F [P, e]
      "atlop"     ATLOP's own head: F is the grouped bilinear itself [P, e * block_size], and the classifier of
                  Eq. (4) reads it directly (ATLOP's Linear(emb * block -> classes)), so stage 1 is ATLOP's model
    feat_dim is F's width f (e, or e * block_size for "atlop"): what the inference module reads.
    """

    def __init__(self, encoder, start_ids, end_ids, num_class, emb_size=None, window=None, pair_form="fnn",
                 block_size=64):
        super().__init__()
        cfg = encoder.config
        d = cfg.hidden_size
        e = emb_size or d
        if pair_form not in ("fnn", "bilinear", "atlop"):
            raise ValueError(f"pair_form must be 'fnn', 'bilinear' or 'atlop', got {pair_form!r}")
        if pair_form != "fnn" and (block_size < 1 or e % block_size):
            raise ValueError(f"the grouped bilinear needs a block size that divides the pair-feature width "
                             f"{e}, got {block_size}")
        # RoBERTa reserves two positions for its padding offset. The default window is ATLOP's 512.
        positions = cfg.max_position_embeddings - (2 if cfg.model_type in ("roberta", "xlm-roberta") else 0)
        if window is None:
            window = min(512, positions)
        elif window > positions:
            raise ValueError(f"window {window} is longer than the encoder's {positions} positions")
        self.encoder = LongEncoder(encoder, start_ids, end_ids, window)
        self.hidden_size, self.emb_size, self.num_class = d, e, num_class
        self.pair_form, self.block_size = pair_form, block_size
        self.feat_dim = e * block_size if pair_form == "atlop" else e
        self.head_extractor = nn.Linear(2 * d, e)  # W_s of Eq. (2), acting on [h(e_s), c_so]
        self.tail_extractor = nn.Linear(2 * d, e)  # W_o of Eq. (3), acting on [h(e_o), c_so]
        if pair_form == "fnn":
            self.pair_fnn = nn.Sequential(nn.Linear(2 * e, e), nn.ReLU(), nn.Linear(e, e))
        elif pair_form == "bilinear":
            self.pair_fnn = nn.Sequential(nn.Linear(e * block_size, e), nn.ReLU())
        self.classifier = LogitLinear(self.feat_dim, num_class)  # W_r, b_r of Eq. (4), in fp32 under autocast

    def unused_parameters(self):
        """Encoder parameters the forward pass never reaches: the pooler that HF BERT/RoBERTa compute."""
        pooler = getattr(self.encoder.encoder, "pooler", None)
        return list(pooler.parameters()) if pooler is not None else []

    def pool_entities(self, seq, att, mention_pos, mention_mask):
        """Mention = state of its start '*'; entity = logsumexp over mentions; entity attention = mean.

        seq [B, L, d], att [B, H, L, L], mention_pos/mention_mask [B, N, M] -> h [B, N, d], A [B, N, H, L].
        Entities with no mention left after truncation get zero embedding and zero attention (as ATLOP).
        """
        B = seq.size(0)
        bidx = torch.arange(B, device=seq.device)[:, None, None]
        # [B, N, M, d]; pooled in at least float32 (fp16/bf16 under autocast), float64 stays float64
        ment = seq[bidx, mention_pos]
        ment = ment.to(torch.promote_types(ment.dtype, torch.float32))
        mask = mention_mask.unsqueeze(-1)
        # A finite fill (not -inf) keeps the backward pass NaN-free for entities with no mention left.
        h = torch.logsumexp(ment.masked_fill(~mask, torch.finfo(ment.dtype).min), dim=2)
        h = torch.where(mention_mask.any(-1, keepdim=True), h, torch.zeros_like(h))
        ment_att = att.transpose(1, 2)[bidx, mention_pos]  # [B, N, M, H, L]
        w = mention_mask.to(ment_att.dtype)
        A = (ment_att * w[..., None, None]).sum(2) / w.sum(2).clamp(min=1)[..., None, None]
        return h.to(seq.dtype), A

    @staticmethod
    def localized_context(seq, A, pairs):
        """Localized context pooling, Eq. (1): c_so = H^T (A_s o A_o) / 1^T (A_s o A_o).

        A [B, N, H, L] holds per-head attention; as in ATLOP the product is averaged over heads.
        Returns c [P, d] for the valid pairs (utils.Pairs, packed order).
        """
        H = A.size(2)
        q = torch.einsum("bshl,bohl->bsol", A, A) / H  # [B, N, N, L]
        q = q / (q.sum(-1, keepdim=True) + 1e-5)
        return torch.einsum("bsol,bld->bsod", q, seq)[pairs.b, pairs.s, pairs.o]

    def pair_features(self, h, c, pairs):
        """Eq. (2)-(3): F_so = FNN([tanh(W_s[h_s, c_so]), tanh(W_o[h_o, c_so])]) for the P valid pairs.

        The FNN reads the concatenation [z_s, z_o] (pair_form "fnn", the paper's wording) or, as in the
        authors' code, ATLOP's grouped bilinear of z_s and z_o (pair_form "bilinear"): blocks of k features,
        every product z_s[i] z_o[j] within a block, then Linear + ReLU. Only the bilinear multiplies head and
        tail features, which is what matching a head with its tail needs. pair_form "atlop" returns the grouped
        bilinear itself, ATLOP's pair representation.
        W[h, c] is split as W_h h + W_c c so the entity halves are computed once per entity, not per pair.
        h [B, N, d], c [P, d] -> [P, f].
        """
        d = self.hidden_size
        b, s, o = pairs.b, pairs.s, pairs.o
        ws, wo = self.head_extractor, self.tail_extractor
        zs = torch.tanh(F.linear(h, ws.weight[:, :d])[b, s] + F.linear(c, ws.weight[:, d:], ws.bias))
        zo = torch.tanh(F.linear(h, wo.weight[:, :d])[b, o] + F.linear(c, wo.weight[:, d:], wo.bias))
        if self.pair_form == "fnn":
            return self.pair_fnn(torch.cat([zs, zo], dim=-1))
        k = self.block_size
        # [P, e/k, k, 1] @ [P, e/k, 1, k] -> [P, e/k, k, k] -> [P, e * k]. A product over an inner dimension of 1
        # gives the elementwise products, bit for bit, and its backward pass is two batched matrix-vector
        # products that read the [P, e * k] gradient once; the broadcast multiply's backward writes two more
        # [P, e * k] tensors and reduces them (twice the time for the pair features, docs/PERFORMANCE.md section 6).
        blocks = (zs.unflatten(-1, (-1, k)).unsqueeze(-1) @ zo.unflatten(-1, (-1, k)).unsqueeze(-2)).flatten(1)
        return blocks if self.pair_form == "atlop" else self.pair_fnn(blocks)

    def forward(self, input_ids, attention_mask, mention_pos, mention_mask, pairs):
        """-> pair features F [P, f] and logits [P, C] (Eq. (4) before the sigmoid) of the valid pairs."""
        seq, att = self.encoder(input_ids, attention_mask)
        h, A = self.pool_entities(seq, att, mention_pos, mention_mask)
        c = self.localized_context(seq, A, pairs)
        feats = self.pair_features(h, c, pairs)
        return feats, self.classifier(feats)
