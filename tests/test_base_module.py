"""Tests for base_module.py (paper Section 2.1): shapes, masking, padding invariance, entity pooling,
Eq. (1) localized context, Eq. (2)-(3) pair features, and the long-document encoder. Tiny random BERT only."""

import pytest
import torch
import torch.nn.functional as F
import transformers

import base_module
import helpers
from base_module import BaseModule, LongEncoder
from losses import at_loss
from utils import Pairs, collate_fn

CLS, SEP, STAR = 1, 2, 3
NUM_CLASS = 4


def tiny_encoder(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return base_module.encoder_from_config(cfg).eval()


def make_feature(title, length, entity_pos, rels=None, seed=0):
    return helpers.make_feature(title, length, entity_pos, NUM_CLASS, rels, seed, CLS, SEP, STAR)


def docs():
    a = make_feature("A", 12, [[(1, 3), (6, 8)], [(3, 5)], [(8, 10)]], {(0, 1): [1], (2, 0): [2, 3]}, seed=1)
    b = make_feature("B", 30, [[(1, 3)], [(4, 6), (10, 12), (20, 22)], [(13, 15)], [(16, 18), (24, 26)]],
                     {(1, 3): [2]}, seed=2)
    c = make_feature("C", 8, [[(1, 3)], [(4, 6)]], seed=3)
    return [a, b, c]


def run_base(base, batch):
    return base(batch["input_ids"], batch["attention_mask"], batch["mention_pos"], batch["mention_mask"],
                Pairs.of(batch))


def make_base(emb_size=24, seed=0):
    enc = tiny_encoder(seed)
    torch.manual_seed(seed + 100)
    return BaseModule(enc, [CLS], [SEP], NUM_CLASS, emb_size=emb_size).eval()


def test_logits_are_float32_under_bf16_autocast():
    """The base module's classifier (Eq. 4) runs in fp32 on the bf16 pair features: ties with the threshold
    class are not rounded into "no relation" (utils.LogitLinear)."""
    base = make_base()
    batch = collate_fn(docs())
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        feats, logits = run_base(base, batch)
    assert feats.dtype == torch.bfloat16 and logits.dtype == torch.float32
    expected = F.linear(feats.float(), base.classifier.weight, base.classifier.bias)
    assert torch.equal(logits, expected)


def test_shapes_and_masks():
    base = make_base()
    feats = docs()
    batch = collate_fn(feats)
    assert batch["pair_mask"].shape == (3, 4, 4)
    P = int(batch["pair_mask"].sum())
    assert P == 3 * 2 + 4 * 3 + 2 * 1
    # pair_mask: real entities only, never s = o
    for b, f in enumerate(feats):
        n = f["num_entities"]
        for s in range(4):
            for o in range(4):
                assert bool(batch["pair_mask"][b, s, o]) == (s < n and o < n and s != o)
    # packed pair coordinates, labels and scored positions (utils.Pairs order)
    assert torch.equal(batch["pair_index"], batch["pair_mask"].nonzero().t())
    packed = {tuple(x): i for i, x in enumerate(batch["pair_mask"].nonzero().tolist())}
    for b, f in enumerate(feats):
        for (h, t), rels in zip(f["hts"], f["labels"]):
            assert batch["pair_labels"][packed[(b, h, t)]].nonzero()[:, 0].tolist() == (sorted(rels) or [0])
    assert batch["scored"].tolist() == sorted(packed[(b, h, t)] for b, f in enumerate(feats) for h, t in f["hts"])
    # mention mask counts the mentions per entity
    assert batch["mention_mask"][1].sum(-1).tolist() == [1, 3, 1, 2]
    assert batch["mention_pos"][1, 1].tolist() == [4, 10, 20]
    with torch.no_grad():
        f, logits = run_base(base, batch)
    assert f.shape == (P, 24)
    assert logits.shape == (P, NUM_CLASS)
    assert torch.isfinite(f).all() and torch.isfinite(logits).all()
    torch.testing.assert_close(logits, base.classifier(f))


def test_padding_invariance_float64():
    base = make_base().double()
    feats = docs()
    with torch.no_grad():
        f_all, l_all = run_base(base, collate_fn(feats))
        f_rev, l_rev = run_base(base, collate_fn(feats[::-1]))
        start = 0
        alone = []
        for feat in feats:
            f1, l1 = run_base(base, collate_fn([feat]))
            alone.append((f1, l1))
            n = f1.size(0)
            torch.testing.assert_close(f_all[start:start + n], f1, atol=1e-6, rtol=0)
            torch.testing.assert_close(l_all[start:start + n], l1, atol=1e-6, rtol=0)
            start += n
        assert start == f_all.size(0)
        # reversed batch order: the packed rows follow the documents
        rev = torch.cat([a[0] for a in alone[::-1]])
        torch.testing.assert_close(f_rev, rev, atol=1e-6, rtol=0)
    assert f_all.dtype == torch.float64


def test_entity_embedding_is_logsumexp_over_start_markers():
    base = make_base().double()
    feats = docs()
    batch = collate_fn(feats)
    with torch.no_grad():
        seq, att = base.encoder(batch["input_ids"], batch["attention_mask"])
        h, A = base.pool_entities(seq, att, batch["mention_pos"], batch["mention_mask"])
    assert h.shape == (3, 4, 32) and A.shape == (3, 4, 4, seq.size(1))
    assert h.dtype == torch.float64
    for b, f in enumerate(feats):
        for e in range(4):
            if e >= f["num_entities"]:
                assert h[b, e].abs().max() == 0 and A[b, e].abs().max() == 0  # padded entity
                continue
            starts = [s for s, _ in f["entity_pos"][e]]
            ref_h = torch.logsumexp(seq[b, starts], dim=0)
            ref_A = att[b, :, starts, :].mean(1)  # mean over mentions, per head
            torch.testing.assert_close(h[b, e], ref_h, atol=1e-10, rtol=0)
            torch.testing.assert_close(A[b, e], ref_A, atol=1e-10, rtol=0)


def test_entity_without_mentions_gets_zeros_and_no_nan():
    base = make_base().train()  # dropout is 0 in the tiny config; train mode for gradients
    feat = make_feature("T", 14, [[(1, 3)], [], [(5, 7), (9, 11)]], {(0, 2): [1]}, seed=5)
    other = make_feature("U", 10, [[(1, 3)], [(4, 6)]], seed=6)
    batch = collate_fn([feat, other])
    assert not batch["mention_mask"][0, 1].any()
    seq, att = base.encoder(batch["input_ids"], batch["attention_mask"])
    h, A = base.pool_entities(seq, att, batch["mention_pos"], batch["mention_mask"])
    assert h[0, 1].abs().max() == 0 and A[0, 1].abs().max() == 0
    f, logits = run_base(base, batch)
    assert torch.isfinite(f).all() and torch.isfinite(logits).all()
    labels = batch["pair_labels"]
    (at_loss(logits, labels) + h.sum()).backward()
    grads = [p.grad for p in base.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert base.encoder.encoder.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    # localized context of a pair with the mention-less entity is zero: c = 0 / (0 + 1e-5)
    c = BaseModule.localized_context(seq, A, Pairs.of(batch))
    packed = batch["pair_mask"].nonzero().tolist()
    for p, (b, s, o) in enumerate(packed):
        if b == 0 and 1 in (s, o):
            assert c[p].abs().max() == 0


def test_localized_context_eq1_against_per_pair_reference():
    torch.manual_seed(3)
    B, N, H, L, d = 2, 4, 3, 9, 5
    seq = torch.randn(B, L, d, dtype=torch.float64)
    A = torch.softmax(torch.randn(B, N, H, L, dtype=torch.float64), dim=-1)
    A[1, 3] = 0.0  # a padded / mention-less entity
    ent = torch.tensor([[True] * 4, [True, True, True, False]])
    pair_mask = ent[:, :, None] & ent[:, None, :] & ~torch.eye(N, dtype=torch.bool)
    c = BaseModule.localized_context(seq, A, Pairs.from_mask(pair_mask))
    refs = []
    for b, s, o in pair_mask.nonzero().tolist():
        a = (A[b, s] * A[b, o]).mean(0)  # mean over heads of A_s o A_o: [L]
        a = a / (a.sum() + 1e-5)
        refs.append(a @ seq[b])  # c_so = H^T a
    ref = torch.stack(refs)
    assert c.shape == (int(pair_mask.sum()), d)
    torch.testing.assert_close(c, ref, atol=1e-6, rtol=0)


def pair_inputs(requires_grad=False):
    """Float64 entity states h [2, 3, 32] (the second document has 2 entities), its pair mask and contexts c [8, 32]
    for the pair-feature tests."""
    ent = torch.tensor([[True] * 3, [True, True, False]])
    pair_mask = ent[:, :, None] & ent[:, None, :] & ~torch.eye(3, dtype=torch.bool)
    h = torch.randn(2, 3, 32, dtype=torch.float64, requires_grad=requires_grad)
    c = torch.randn(int(pair_mask.sum()), 32, dtype=torch.float64, requires_grad=requires_grad)
    return h, c, pair_mask


def test_pair_features_eq2_eq3_against_full_concatenation():
    base = make_base(emb_size=24).double()
    torch.manual_seed(4)
    h, c, pair_mask = pair_inputs()
    P = len(c)
    with torch.no_grad():
        out = base.pair_features(h, c, Pairs.from_mask(pair_mask))
        refs = []
        for p, (b, s, o) in enumerate(pair_mask.nonzero().tolist()):
            zs = torch.tanh(base.head_extractor(torch.cat([h[b, s], c[p]])))  # tanh(W_s [h(e_s), c_so])
            zo = torch.tanh(base.tail_extractor(torch.cat([h[b, o], c[p]])))  # tanh(W_o [h(e_o), c_so])
            refs.append(base.pair_fnn(torch.cat([zs, zo])))  # FNN([., .])
    assert out.shape == (P, 24)
    torch.testing.assert_close(out, torch.stack(refs), atol=1e-10, rtol=0)


def test_pair_features_bilinear_against_atlop_grouped_bilinear():
    """--pair_features bilinear: z_s and z_o cut into blocks of k, every product z_s[i] z_o[j] within a block
    (ATLOP's grouped bilinear), then Linear + ReLU: the authors' F."""
    enc = tiny_encoder(0)
    torch.manual_seed(5)
    base = BaseModule(enc, [CLS], [SEP], NUM_CLASS, emb_size=24, pair_form="bilinear", block_size=8).double()
    e, k = 24, 8
    h, c, pair_mask = pair_inputs()
    P = len(c)
    linear = base.pair_fnn[0]
    assert linear.in_features == e * k and linear.out_features == e
    with torch.no_grad():
        out = base.pair_features(h, c, Pairs.from_mask(pair_mask))
        refs = []
        for p, (b, s, o) in enumerate(pair_mask.nonzero().tolist()):
            zs = torch.tanh(base.head_extractor(torch.cat([h[b, s], c[p]])))
            zo = torch.tanh(base.tail_extractor(torch.cat([h[b, o], c[p]])))
            products = [zs[g * k + i] * zo[g * k + j] for g in range(e // k) for i in range(k) for j in range(k)]
            refs.append(torch.relu(linear(torch.stack(products))))
    assert out.shape == (P, e)
    torch.testing.assert_close(out, torch.stack(refs), atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="divides the pair-feature width 24, got 5"):
        BaseModule(enc, [CLS], [SEP], NUM_CLASS, emb_size=24, pair_form="bilinear", block_size=5)
    with pytest.raises(ValueError, match="pair_form must be"):
        BaseModule(enc, [CLS], [SEP], NUM_CLASS, pair_form="concat")


def test_pair_features_atlop_is_atlops_head():
    """--pair_features atlop: F is the grouped bilinear itself, written here as ATLOP's model.py forms it
    (a broadcast multiply of the [P, e/k, k] blocks, viewed as [P, e * k]), and the classifier of Eq. (4) is one
    Linear(e * k -> C) on it, ATLOP's. No pair FNN; the inference module reads feat_dim = e * k features."""
    enc = tiny_encoder(0)
    torch.manual_seed(7)
    e, k = 24, 8
    base = BaseModule(enc, [CLS], [SEP], NUM_CLASS, emb_size=e, pair_form="atlop", block_size=k).double()
    assert base.feat_dim == e * k and not hasattr(base, "pair_fnn")
    assert (base.classifier.in_features, base.classifier.out_features) == (e * k, NUM_CLASS)
    assert not any(name.startswith("pair_fnn") for name, _ in base.named_parameters())
    h, c, pair_mask = pair_inputs()
    P = len(c)
    with torch.no_grad():
        out = base.pair_features(h, c, Pairs.from_mask(pair_mask))
        b, s, o = pair_mask.nonzero().unbind(1)
        zs = torch.tanh(base.head_extractor(torch.cat([h[b, s], c], dim=-1)))  # ATLOP: extractor on [hs, rs]
        zo = torch.tanh(base.tail_extractor(torch.cat([h[b, o], c], dim=-1)))
        b1, b2 = zs.view(-1, e // k, k), zo.view(-1, e // k, k)
        ref = (b1.unsqueeze(3) * b2.unsqueeze(2)).view(-1, e * k)  # ATLOP's bl
    assert out.shape == (P, e * k)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(base.classifier(out), F.linear(ref, base.classifier.weight, base.classifier.bias))
    with pytest.raises(ValueError, match="divides the pair-feature width 24, got 5"):
        BaseModule(enc, [CLS], [SEP], NUM_CLASS, emb_size=24, pair_form="atlop", block_size=5)


# ---------------------------------------------------------------- LongEncoder
def test_long_encoder_short_batch_is_plain_encoder():
    enc = tiny_encoder(7)
    le = LongEncoder(enc, [CLS], [SEP], window=16)
    ids = torch.randint(4, 100, (2, 14))
    mask = torch.ones(2, 14, dtype=torch.long)
    mask[1, 10:] = 0
    with torch.no_grad():
        seq, att = le(ids, mask)
        out = enc(input_ids=ids, attention_mask=mask, output_attentions=True)
    assert torch.equal(seq, out.last_hidden_state)
    assert torch.equal(att, out.attentions[-1])


def test_long_encoder_two_windows_against_reference():
    enc = tiny_encoder(8).double()
    W, T, Ts = 16, 24, 10
    le = LongEncoder(enc, [CLS], [SEP], window=W)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 100, (2, T), generator=g)
    ids[:, 0] = CLS
    ids[0, T - 1] = SEP
    ids[1, Ts - 1] = SEP
    ids[1, Ts:] = 0
    mask = torch.zeros(2, T, dtype=torch.long)
    mask[0] = 1
    mask[1, :Ts] = 1
    with torch.no_grad():
        seq, att = le(ids, mask)

        def run(x):
            o = enc(input_ids=x[None], attention_mask=torch.ones(1, x.numel(), dtype=torch.long),
                    output_attentions=True)
            return o.last_hidden_state[0], o.attentions[-1][0]

        # window 1: tokens [0, W-1) + [SEP]; window 2: [CLS] + tokens [T-W+1, T)
        s1, a1 = run(torch.cat([ids[0, :W - 1], torch.tensor([SEP])]))
        s2, a2 = run(torch.cat([torch.tensor([CLS]), ids[0, T - W + 1:]]))
        short, short_att = run(ids[1, :Ts])
    d = seq.size(-1)
    assert seq.shape == (2, T, d) and att.shape == (2, 4, T, T)
    off = T - W + 1  # first document position covered by window 2 (= 9)
    ref = torch.zeros(T, d, dtype=torch.float64)
    cnt = torch.zeros(T, 1, dtype=torch.float64)
    ref[:W - 1] += s1[:W - 1]
    cnt[:W - 1] += 1
    ref[off:] += s2[1:]
    cnt[off:] += 1
    ref = ref / cnt
    torch.testing.assert_close(seq[0], ref, atol=1e-10, rtol=0)
    # positions seen by one window only keep that window's state
    torch.testing.assert_close(seq[0, :off], s1[:off], atol=1e-10, rtol=0)
    torch.testing.assert_close(seq[0, W - 1:], s2[W - off:], atol=1e-10, rtol=0)
    ra = torch.zeros(4, T, T, dtype=torch.float64)
    ra[:, :W - 1, :W - 1] += a1[:, :W - 1, :W - 1]
    ra[:, off:, off:] += a2[:, 1:, 1:]
    ra = ra / ra.sum(-1, keepdim=True)
    torch.testing.assert_close(att[0], ra, atol=1e-10, rtol=0)
    torch.testing.assert_close(att[0].sum(-1), torch.ones(4, T, dtype=torch.float64), atol=1e-8, rtol=0)
    # the short document of the batch: the plain encoder output on its real tokens (padding states, as
    # in the plain encoder, are whatever the encoder gives and are never read); real tokens never
    # attend to padding
    torch.testing.assert_close(seq[1, :Ts], short, atol=1e-10, rtol=0)
    torch.testing.assert_close(att[1, :, :Ts, :Ts], short_att, atol=1e-10, rtol=0)
    assert att[1, :, :Ts, Ts:].abs().max() == 0
    assert seq[1, W:].abs().max() == 0 and att[1, :, W:].abs().max() == 0  # beyond the window: zero fill
    torch.testing.assert_close(att[1, :, :Ts].sum(-1), torch.ones(4, Ts, dtype=torch.float64), atol=1e-8, rtol=0)


def two_window_reference(enc, start_ids, end_ids, W, input_ids, attention_mask):
    """ATLOP's two-window algorithm as LongEncoder ran it before it took any number of windows (documents
    of up to 2W - ns - ne tokens): the reference the general code must reproduce on such documents."""
    B, L = input_ids.shape
    ns, ne = len(start_ids), len(end_ids)
    dev = input_ids.device
    start_ids, end_ids = torch.tensor(start_ids, device=dev), torch.tensor(end_ids, device=dev)
    pieces_ids, pieces_mask, plan = [], [], []
    for b, T in enumerate(attention_mask.sum(1).tolist()):
        ids, m = input_ids[b], attention_mask[b]
        if T <= W:
            plan.append((len(pieces_ids), None, T))
            pieces_ids.append(ids[:W])
            pieces_mask.append(m[:W])
            continue
        plan.append((len(pieces_ids), len(pieces_ids) + 1, T))
        pieces_ids += [torch.cat([ids[:W - ne], end_ids]), torch.cat([start_ids, ids[T - W + ns:T]])]
        pieces_mask += [torch.ones(W, dtype=m.dtype, device=dev)] * 2
    out = enc(input_ids=torch.stack(pieces_ids), attention_mask=torch.stack(pieces_mask), output_attentions=True)
    seq_w, att_w = out.last_hidden_state, out.attentions[-1]
    seqs, atts = [], []
    for first, second, T in plan:
        if second is None:
            seqs.append(F.pad(seq_w[first], (0, 0, 0, L - W)))
            atts.append(F.pad(att_w[first], (0, L - W, 0, L - W)))
            continue
        s1 = F.pad(seq_w[first, :W - ne], (0, 0, 0, L - W + ne))
        a1 = F.pad(att_w[first, :, :W - ne, :W - ne], (0, L - W + ne, 0, L - W + ne))
        m1 = F.pad(torch.ones(W - ne, dtype=s1.dtype, device=dev), (0, L - W + ne))
        off = T - W + ns
        s2 = F.pad(seq_w[second, ns:], (0, 0, off, L - T))
        a2 = F.pad(att_w[second, :, ns:, ns:], (off, L - T, off, L - T))
        m2 = F.pad(torch.ones(W - ns, dtype=s1.dtype, device=dev), (off, L - T))
        seqs.append((s1 + s2) / (m1 + m2).clamp(min=1).unsqueeze(-1))
        att = a1 + a2
        atts.append(att / (att.sum(-1, keepdim=True) + 1e-10))
    return torch.stack(seqs), torch.stack(atts)


def batch_of(lengths, seed=0, start=(CLS,), end=(SEP,)):
    """Random documents of the given lengths, [CLS] ... [SEP] (or RoBERTa's <s> ... </s></s>), right-padded."""
    g = torch.Generator().manual_seed(seed)
    L = max(lengths)
    ids = torch.zeros(len(lengths), L, dtype=torch.long)
    mask = torch.zeros(len(lengths), L, dtype=torch.long)
    for b, T in enumerate(lengths):
        ids[b, :T] = torch.randint(4, 100, (T,), generator=g)
        ids[b, :len(start)] = torch.tensor(start)
        ids[b, T - len(end):T] = torch.tensor(end)
        mask[b, :T] = 1
    return ids, mask


@pytest.mark.parametrize("start,end", [((CLS,), (SEP,)), ((CLS,), (SEP, SEP))], ids=["bert", "roberta"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_long_encoder_equals_two_window_algorithm_where_two_windows_cover(start, end, dtype):
    """Up to T = 2W - ns - ne (1022 for BERT at W = 512) two windows hold every token: the K-window code
    gives exactly the two-window results, padding positions and one-window documents of the batch included."""
    enc = tiny_encoder(11).to(dtype)
    W = 16
    longest = 2 * W - len(start) - len(end)
    lengths = [longest, W + 1, 24, 10, W, longest - 1]
    ids, mask = batch_of(lengths, seed=3, start=start, end=end)
    le = LongEncoder(enc, list(start), list(end), window=W)
    with torch.no_grad():
        seq, att = le(ids, mask)
        ref_seq, ref_att = two_window_reference(enc, list(start), list(end), W, ids, mask)
    assert seq.shape == ref_seq.shape and att.shape == ref_att.shape
    assert torch.equal(seq, ref_seq) and torch.equal(att, ref_att)


def test_window_spans_cover_with_fewest_windows():
    """Every window has W tokens with its special tokens, the windows cover [0, T) without a gap, no token
    is in more than two windows, one window fewer could not cover T, and two windows are ATLOP's."""
    for ns, ne in ((1, 1), (1, 2), (2, 2)):
        for W in (6, 16, 512):
            for T in list(range(W + 1, 6 * W)) if W < 512 else (513, 1021, 1022, 1023, 1024, 4096):
                spans = base_module.window_spans(T, W, ns, ne)
                K = len(spans)
                sizes = [b - a + (ns if k else 0) + (ne if k < K - 1 else 0) for k, (a, b) in enumerate(spans)]
                assert sizes == [W] * K, (ns, ne, W, T)
                assert spans[0][0] == 0 and spans[-1][1] == T
                assert all(a2 <= b1 for (_, b1), (a2, _) in zip(spans, spans[1:]))  # no gap
                assert all(a1 < a2 and b1 < b2 for (a1, b1), (a2, b2) in zip(spans, spans[1:]))
                assert all(b1 <= a3 for (_, b1), _, (a3, _) in zip(spans, spans[1:], spans[2:]))  # <= 2 windows
                assert (K - 1) * W - (K - 2) * (ns + ne) < T  # K - 1 windows hold fewer than T tokens
                if T <= 2 * W - ns - ne:
                    assert spans == [(0, W - ne), (T - W + ns, T)]
    assert len(base_module.window_spans(4096, 512, 1, 1)) == 9


def test_long_encoder_many_windows_against_per_window_reference():
    """Documents of several windows: each window encoded on its own, states averaged over the windows that
    hold a token, attention summed over windows and renormalised, in float64."""
    enc = tiny_encoder(12).double()
    W = 16
    lengths = [3 * W, 4 * W + 3, 9]
    ids, mask = batch_of(lengths, seed=4)
    with torch.no_grad(), helpers.one_thread():
        seq, att = LongEncoder(enc, [CLS], [SEP], window=W)(ids, mask)
        for b, T in enumerate(lengths):
            if T <= W:
                continue
            spans = base_module.window_spans(T, W, 1, 1)
            ref = torch.zeros(T, seq.size(-1), dtype=torch.float64)
            cnt = torch.zeros(T, 1, dtype=torch.float64)
            ref_att = torch.zeros(4, T, T, dtype=torch.float64)
            for k, (a, e) in enumerate(spans):
                window = torch.cat([torch.tensor([CLS] if k else []), ids[b, a:e],
                                    torch.tensor([SEP] if k < len(spans) - 1 else [])]).long()
                out = enc(input_ids=window[None], output_attentions=True)
                lo = 1 if k else 0
                ref[a:e] += out.last_hidden_state[0, lo:lo + e - a]
                cnt[a:e] += 1
                ref_att[:, a:e, a:e] += out.attentions[-1][0, :, lo:lo + e - a, lo:lo + e - a]
            torch.testing.assert_close(seq[b, :T], ref / cnt, atol=1e-10, rtol=0)
            torch.testing.assert_close(att[b, :, :T, :T], ref_att / ref_att.sum(-1, keepdim=True), atol=1e-10, rtol=0)


def test_long_document_has_no_zero_vector_and_attention_rows_sum_to_one():
    """A document of 3W tokens (and ones of other lengths in the same batch): every real position gets a
    non-zero state, every real attention row sums to 1 over the real tokens, and nothing goes to padding."""
    enc = tiny_encoder(13)
    W = 16
    lengths = [3 * W, 2 * W + 5, 4 * W - 1, 12]
    ids, mask = batch_of(lengths, seed=5)
    with torch.no_grad():
        seq, att = LongEncoder(enc, [CLS], [SEP], window=W)(ids, mask)
    assert seq.shape == (4, 4 * W - 1, 32) and att.shape == (4, 4, 4 * W - 1, 4 * W - 1)
    for b, T in enumerate(lengths):
        assert (seq[b, :T].abs().sum(-1) > 0).all(), (b, T)
        torch.testing.assert_close(att[b, :, :T, :T].sum(-1), torch.ones(4, T), atol=1e-5, rtol=0)
        assert att[b, :, :T, T:].abs().sum() == 0
        if T > W:
            assert seq[b, T:].abs().sum() == 0 and att[b, :, T:].abs().sum() == 0


def test_long_encoder_gradients_reach_every_window():
    """Training reaches the tokens of every window, not only those of the first and the last."""
    enc = tiny_encoder(14).train()
    W = 16
    ids, mask = batch_of([3 * W + 2, 20], seed=6)
    emb = enc.embeddings.word_embeddings
    seq, att = LongEncoder(enc, [CLS], [SEP], window=W)(ids, mask)
    # a random projection: the plain sum of a LayerNorm output does not depend on its input
    r = torch.randn(seq.size(-1), generator=torch.Generator().manual_seed(0))
    for position in (1, 2 * W, 3 * W):  # tokens of the first, third and fourth window
        emb.weight.grad = None
        with helpers.one_thread():
            (seq[0, position] @ r + att[0, :, position, 1].sum()).backward(retain_graph=True)
        assert emb.weight.grad[ids[0, position]].abs().sum() > 0, position


def test_base_module_on_long_document_end_to_end():
    enc = tiny_encoder(9)
    base = BaseModule(enc, [CLS], [SEP], NUM_CLASS, emb_size=24, window=16).eval()
    long = make_feature("L", 24, [[(1, 3), (18, 20)], [(5, 7)], [(12, 14), (21, 23)]], seed=9)
    short = make_feature("S", 10, [[(1, 3)], [(5, 7)]], seed=10)
    with torch.no_grad():
        f, logits = run_base(base, collate_fn([long, short]))
        f_short, _ = run_base(base, collate_fn([short]))
    assert f.shape == (6 + 2, 24) and logits.shape == (8, NUM_CLASS)
    assert torch.isfinite(f).all()
    torch.testing.assert_close(f[6:], f_short, atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_type,expected", [("bert", 64), ("roberta", 62)])
def test_default_window_from_position_limit(model_type, expected):
    enc = tiny_encoder(0)
    enc.config.model_type = model_type
    base = BaseModule(enc, [CLS], [SEP], NUM_CLASS)
    assert base.encoder.window == expected
    assert base.emb_size == 32


@pytest.mark.parametrize("config_cls", [transformers.BertConfig, transformers.RobertaConfig])
def test_sdpa_except_last_equals_eager(config_cls):
    """--attention sdpa: SDPA in every layer but the last gives the eager encoder's states and last-layer map,
    with padding and through the two-window path, in float64 (eval mode: no dropout)."""
    cfg = dict(vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
               max_position_embeddings=40)
    torch.manual_seed(0)
    eager = base_module.encoder_from_config(config_cls(**cfg), "eager").double().eval()
    sdpa = base_module.encoder_from_config(config_cls(**cfg), "sdpa").double().eval()
    sdpa.load_state_dict(eager.state_dict())
    window = 38 if config_cls is transformers.RobertaConfig else 40
    ids = torch.randint(5, 100, (2, 60))
    mask = torch.ones(2, 60, dtype=torch.long)
    mask[1, 25:] = 0  # one long document (two windows) and one short, padded one
    for long_ids, long_mask in ((ids, mask), (ids[:, :window], mask[:, :window])):
        seq_e, att_e = LongEncoder(eager, [CLS], [SEP], window)(long_ids, long_mask)
        seq_s, att_s = LongEncoder(sdpa, [CLS], [SEP], window)(long_ids, long_mask)
        assert torch.allclose(seq_s, seq_e, atol=1e-10) and torch.allclose(att_s, att_e, atol=1e-10)
        assert att_s.shape == (2, 4, long_ids.size(1), long_ids.size(1))


def test_sdpa_except_last_keeps_only_the_last_attention_map():
    """The point of --attention sdpa: the encoder keeps one attention map (the last layer's), not one per layer."""
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64)
    enc = base_module.encoder_from_config(cfg, "sdpa").train()
    out = enc(input_ids=torch.randint(5, 100, (2, 20)), output_attentions=True)
    assert len(out.attentions) == 1 and out.attentions[0].shape == (2, 4, 20, 20)


def test_pair_features_bilinear_gradients_against_atlop_grouped_bilinear():
    """The grouped bilinear's backward pass (two batched matrix-vector products) gives the gradients of the
    per-pair reference: every product z_s[i] z_o[j] within a block, then Linear + ReLU. Float64; and in float32 the
    features are the broadcast multiply's bit for bit."""
    enc = tiny_encoder(0)
    torch.manual_seed(6)
    base = BaseModule(enc, [CLS], [SEP], NUM_CLASS, emb_size=24, pair_form="bilinear", block_size=8).double()
    e, k = 24, 8
    h, c, pair_mask = pair_inputs(requires_grad=True)
    P = len(c)
    w = torch.randn(P, e, dtype=torch.float64)
    params = [h, c, base.head_extractor.weight, base.tail_extractor.weight, base.pair_fnn[0].weight]
    got = torch.autograd.grad((base.pair_features(h, c, Pairs.from_mask(pair_mask)) * w).sum(), params)
    refs = []
    for p, (b, s, o) in enumerate(pair_mask.nonzero().tolist()):
        zs = torch.tanh(base.head_extractor(torch.cat([h[b, s], c[p]])))
        zo = torch.tanh(base.tail_extractor(torch.cat([h[b, o], c[p]])))
        products = [zs[g * k + i] * zo[g * k + j] for g in range(e // k) for i in range(k) for j in range(k)]
        refs.append(torch.relu(base.pair_fnn[0](torch.stack(products))))
    expected = torch.autograd.grad((torch.stack(refs) * w).sum(), params)
    for g, r in zip(got, expected):
        torch.testing.assert_close(g, r, atol=1e-12, rtol=1e-10)
    zs, zo = torch.randn(2, P, e).unflatten(-1, (-1, k)).unbind(0)
    assert torch.equal(zs.unsqueeze(-1) @ zo.unsqueeze(-2), zs.unsqueeze(-1) * zo.unsqueeze(-2))
