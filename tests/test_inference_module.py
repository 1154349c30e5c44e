"""Tests for inference_module.py (paper Section 2.2): ECA Eq. (5)-(7) against a naive per-pair, per-head
reference, masking, the full-attention ablation, the fusion sub-layer Eq. (8)-(11), caching and Eq. (12)."""
import math

import pytest
import torch

import inference_module
from inference_module import ECAUnit, FullAttentionUnit, InferenceLayer, InferenceModule, masked_softmax
from utils import Pairs

D = 16
COUNTS = [5, 3, 2]  # entities per document, padded to N = 5


def make_pair_mask(counts, n=None):
    """utils.Pairs of documents with ``counts`` entities, padded to n."""
    n = n or max(counts)
    ent = torch.tensor([[i < c for i in range(n)] for c in counts])
    return Pairs.from_mask(ent[:, :, None] & ent[:, None, :] & ~torch.eye(n, dtype=torch.bool))


def packed_index(counts):
    """(b, s, o) -> packed row, in row-major order over the valid pairs (real entities, s != o)."""
    idx = {}
    for b, n in enumerate(counts):
        for s in range(n):
            for o in range(n):
                if s != o:
                    idx[(b, s, o)] = len(idx)
    return idx


def naive_eca(q, kv, counts, h):
    """Eq. (5)-(7) without W_O, one pair, one line, one head at a time."""
    idx = packed_index(counts)
    dim = q.size(1)
    k = dim // (4 * h)
    keys, vals = kv[:, :dim], kv[:, dim:]
    out = torch.zeros_like(q)
    for (b, s, o), p in idx.items():
        n = counts[b]
        lines = [[(s, j) for j in range(n)],   # row s: M[s, j]
                 [(j, s) for j in range(n)],   # column s: M[j, s]
                 [(o, j) for j in range(n)],   # row o: M[o, j]
                 [(j, o) for j in range(n)]]   # column o: M[j, o]
        for g, line in enumerate(lines):
            rows = [idx[(b, x, y)] for x, y in line if x != y]  # valid key pairs only
            for i in range(h):
                c = (g * h + i) * k
                qh = q[p, c:c + k]
                kh, vh = keys[rows, c:c + k], vals[rows, c:c + k]
                w = torch.softmax(kh @ qh / math.sqrt(k), dim=0)  # Eq. (6)
                out[p, c:c + k] = w @ vh
    return out


def naive_full(q, kv, counts, heads):
    """Full attention ablation: each valid pair attends over all valid pairs of its document."""
    idx = packed_index(counts)
    dim = q.size(1)
    k = dim // heads
    keys, vals = kv[:, :dim], kv[:, dim:]
    out = torch.zeros_like(q)
    for (b, s, o), p in idx.items():
        rows = [r for (bb, _, _), r in idx.items() if bb == b]
        for i in range(heads):
            c = i * k
            w = torch.softmax(keys[rows, c:c + k] @ q[p, c:c + k] / math.sqrt(k), dim=0)
            out[p, c:c + k] = w @ vals[rows, c:c + k]
    return out


def rand_inputs(counts=COUNTS, dim=D, seed=0):
    g = torch.Generator().manual_seed(seed)
    P = sum(n * (n - 1) for n in counts)
    return (torch.randn(P, dim, generator=g, dtype=torch.float64),
            torch.randn(P, 2 * dim, generator=g, dtype=torch.float64))


def test_pair_mask_and_packing_helpers():
    pm = make_pair_mask(COUNTS)
    assert [tuple(x) for x in pm.mask.nonzero().tolist()] == list(packed_index(COUNTS))
    assert list(zip(pm.b.tolist(), pm.s.tolist(), pm.o.tolist())) == list(packed_index(COUNTS))


@pytest.mark.parametrize("h", [1, 2])
def test_eca_attend_equals_naive_reference(h):
    torch.manual_seed(h)
    unit = ECAUnit(D, heads_per_line=h, dropout=0.0).double().eval()
    q, kv = rand_inputs(seed=h)
    pm = make_pair_mask(COUNTS)
    ref = naive_eca(q, kv, COUNTS, h)
    torch.testing.assert_close(unit.attend(q, kv, pm), ref, atol=1e-5, rtol=0)
    # forward = W_O applied to the concatenated heads, Eq. (7)
    torch.testing.assert_close(unit(q, kv, pm), ref @ unit.out.weight.t() + unit.out.bias, atol=1e-5, rtol=0)


@pytest.mark.parametrize("h", [1, 2])
def test_eca_padding_and_batching_invariance(h):
    # same documents padded to a larger N give the same outputs
    torch.manual_seed(10 + h)
    unit = ECAUnit(D, heads_per_line=h, dropout=0.0).double().eval()
    q, kv = rand_inputs(seed=20 + h)
    a = unit.attend(q, kv, make_pair_mask(COUNTS))
    b = unit.attend(q, kv, make_pair_mask(COUNTS, n=7))
    torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    # a document alone gives the same rows as inside the batch
    P0 = COUNTS[0] * (COUNTS[0] - 1)
    alone = unit.attend(q[P0:P0 + 6], kv[P0:P0 + 6], make_pair_mask([3]))
    torch.testing.assert_close(a[P0:P0 + 6], alone, atol=1e-10, rtol=0)


def test_masked_softmax_gives_exact_zeros():
    scores = torch.tensor([[1e4, 0.0, -2.0, 3.0], [5.0, 1.0, 2.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[False, True, True, False], [False, False, False, False]])
    w = masked_softmax(scores, mask)
    assert w[0, 0] == 0 and w[0, 3] == 0
    torch.testing.assert_close(w[0, 1:3], torch.softmax(torch.tensor([0.0, -2.0], dtype=torch.float64), 0))
    assert torch.equal(w[1], torch.zeros(4, dtype=torch.float64))  # all-masked row: zeros, not NaN


@pytest.mark.parametrize("unit_cls", [ECAUnit, FullAttentionUnit])
def test_invalid_pairs_get_zero_weight(unit_cls, monkeypatch):
    """Fill padded entities and s = o positions with large garbage instead of zeros: valid outputs don't move."""
    torch.manual_seed(5)
    unit = unit_cls(D, heads_per_line=2, dropout=0.0).double().eval()
    q, kv = rand_inputs(seed=5)
    pm = make_pair_mask(COUNTS)
    clean = unit.attend(q, kv, pm)
    real = inference_module.scatter_pairs

    def garbage_scatter(x, pairs):
        out = real(x, pairs)
        noise = 1e3 * torch.randn(out.shape, dtype=out.dtype)
        return torch.where(pairs.mask[..., None], out, noise)

    monkeypatch.setattr(inference_module, "scatter_pairs", garbage_scatter)
    dirty = unit.attend(q, kv, pm)
    assert torch.isfinite(dirty).all()
    torch.testing.assert_close(dirty, clean, atol=1e-10, rtol=0)


def test_eca_only_overlapping_pairs_matter():
    """Changing the key/value of a pair that shares no entity with (s, o) leaves (s, o) unchanged;
    changing one in row s changes it."""
    torch.manual_seed(6)
    unit = ECAUnit(D, dropout=0.0).double().eval()
    q, kv = rand_inputs(seed=6)
    pm = make_pair_mask(COUNTS)
    idx = packed_index(COUNTS)
    base = unit.attend(q, kv, pm)
    kv2 = kv.clone()
    kv2[idx[(0, 3, 4)]] += 5.0  # shares no entity with (0, 1, 2)
    out = unit.attend(q, kv2, pm)
    torch.testing.assert_close(out[idx[(0, 1, 2)]], base[idx[(0, 1, 2)]], atol=1e-12, rtol=0)
    assert (out[idx[(0, 3, 1)]] - base[idx[(0, 3, 1)]]).abs().max() > 1e-3  # (3, 4) is in row 3
    # other documents never see it
    torch.testing.assert_close(out[20:], base[20:], atol=1e-12, rtol=0)


@pytest.mark.parametrize("h", [1, 2])
def test_full_attention_unit_equals_naive_reference(h):
    torch.manual_seed(7)
    unit = FullAttentionUnit(D, heads_per_line=h, dropout=0.0).double().eval()
    q, kv = rand_inputs(seed=7)
    pm = make_pair_mask(COUNTS)
    ref = naive_full(q, kv, COUNTS, 4 * h)
    torch.testing.assert_close(unit.attend(q, kv, pm), ref, atol=1e-5, rtol=0)
    # and differs from ECA on the same weights and inputs
    eca = ECAUnit(D, heads_per_line=h, dropout=0.0).double().eval()
    eca.load_state_dict(unit.state_dict())
    assert (eca(q, kv, pm) - unit(q, kv, pm)).abs().max() > 1e-3


def test_eca_rejects_indivisible_width():
    with pytest.raises(ValueError):
        ECAUnit(12, heads_per_line=2)


def _naive_unit(unit, x, f, r, counts, full=False):
    """The ECA unit of Eq. (5)-(7) with the explicit concatenation M = [F, R]."""
    q = unit.q(x)
    kv = unit.kv(torch.cat([f, r], dim=-1))
    a = naive_full(q, kv, counts, 4 * unit.h) if full else naive_eca(q, kv, counts, unit.h)
    return unit.out(a)


@pytest.mark.parametrize("eca", ["eca", "full"])
def test_inference_layer_fusion_eq8_to_eq11(eca):
    torch.manual_seed(8)
    layer = InferenceLayer(D, heads_per_line=2, dropout=0.0, eca=eca, fusion=True).double().eval()
    f, r = rand_inputs(seed=8)[0], rand_inputs(seed=9)[0]
    pm = make_pair_mask(COUNTS)
    f1, r1 = layer(f, r, pm)
    with torch.no_grad():
        f_t = _naive_unit(layer.eca_f, f, f, r, COUNTS, eca == "full")   # F~_l: query from F
        r_t = _naive_unit(layer.eca_r, r, f, r, COUNTS, eca == "full")   # R~_l: query from R
        s = torch.sigmoid(torch.cat([f_t, r_t], -1) @ layer.gate.weight.t() + layer.gate.bias)  # Eq. (8)
        m = s * f_t + (1 - s) * r_t  # Eq. (9)
        f_ref = layer.norm_f(f + layer.fnn_f(m))  # Eq. (10)
        r_ref = layer.norm_r(r + layer.fnn_r(m))  # Eq. (11)
    torch.testing.assert_close(f1, f_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(r1, r_ref, atol=1e-5, rtol=0)


def test_inference_layer_without_fusion():
    torch.manual_seed(9)
    layer = InferenceLayer(D, heads_per_line=1, dropout=0.0, fusion=False).double().eval()
    assert layer.gate is None
    assert not any("gate" in n for n, _ in layer.named_parameters())
    with_gate = InferenceLayer(D, heads_per_line=1, dropout=0.0, fusion=True)
    n_params = sum(p.numel() for p in layer.parameters())
    assert sum(p.numel() for p in with_gate.parameters()) - n_params == 2 * D * D + D
    f, r = rand_inputs(seed=10)[0], rand_inputs(seed=11)[0]
    pm = make_pair_mask(COUNTS)
    f1, r1 = layer(f, r, pm)
    with torch.no_grad():
        f_t = _naive_unit(layer.eca_f, f, f, r, COUNTS)
        r_t = _naive_unit(layer.eca_r, r, f, r, COUNTS)
        f_ref = layer.norm_f(f + layer.fnn_f(f_t))
        r_ref = layer.norm_r(r + layer.fnn_r(r_t))
    torch.testing.assert_close(f1, f_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(r1, r_ref, atol=1e-5, rtol=0)
    # with fusion on the same weights the outputs differ
    with_gate = with_gate.double().eval()
    with_gate.load_state_dict(layer.state_dict(), strict=False)
    f2, _ = with_gate(f, r, pm)
    assert (f2 - f1).abs().max() > 1e-3


def test_fixed_cache_equals_uncached():
    torch.manual_seed(11)
    layer = InferenceLayer(D, heads_per_line=2, dropout=0.0).double().eval()
    f, r = rand_inputs(seed=12)[0], rand_inputs(seed=13)[0]
    pm = make_pair_mask(COUNTS)
    fixed = layer.fixed(f)
    a = layer(f, r, pm, fixed=fixed)
    b = layer(f, r, pm)
    torch.testing.assert_close(a[0], b[0], atol=1e-12, rtol=0)
    torch.testing.assert_close(a[1], b[1], atol=1e-12, rtol=0)
    # reused with another relation matrix (the K loop): still equal
    r2 = rand_inputs(seed=14)[0]
    torch.testing.assert_close(layer(f, r2, pm, fixed=fixed)[1], layer(f, r2, pm)[1], atol=1e-12, rtol=0)
    # the cache is what it claims: feature-level queries and F halves of kv(M) (incl. bias)
    q_f, fkv_f, fkv_r = fixed
    torch.testing.assert_close(q_f, layer.eca_f.q(f))
    torch.testing.assert_close(layer.eca_f.keys_values(fkv_f, r), layer.eca_f.kv(torch.cat([f, r], -1)))
    torch.testing.assert_close(layer.eca_r.keys_values(fkv_r, r), layer.eca_r.kv(torch.cat([f, r], -1)))


def test_inference_module_forward_and_classifier():
    torch.manual_seed(12)
    C, feat_dim = 6, 24
    mod = InferenceModule(feat_dim, D, C, num_layers=2, heads_per_line=1, dropout=0.0).double().eval()
    pm = make_pair_mask(COUNTS)
    P = int(pm.mask.sum())
    feats = torch.randn(P, feat_dim, dtype=torch.float64)
    ids = torch.randint(0, C, (P,))
    f0 = mod.reduce(feats)
    r0 = mod.relation_matrix(ids)
    assert f0.shape == (P, D) and r0.shape == (P, D)
    torch.testing.assert_close(r0, mod.rel_emb.weight[ids])  # R_0 = emb(ids)
    f, r, logits = mod(feats, ids, pm)
    assert f.shape == (P, D) and r.shape == (P, D) and logits.shape == (P, C)
    # the N_I layers in sequence, then Eq. (12) on [F_NI, R_NI]
    fr, rr = f0, r0
    for layer in mod.layers:
        fr, rr = layer(fr, rr, pm)
    torch.testing.assert_close(f, fr, atol=1e-12, rtol=0)
    torch.testing.assert_close(r, rr, atol=1e-12, rtol=0)
    torch.testing.assert_close(logits, torch.cat([fr, rr], -1) @ mod.classifier.weight.t() + mod.classifier.bias,
                               atol=1e-12, rtol=0)
    # the swapped view feeds (R_0, F_0) to the same layers
    fs, rs, _ = mod(feats, ids, pm, swap=True)
    torch.testing.assert_close((fs, rs), mod.encode(r0, f0, pm), atol=1e-12, rtol=0)
    # iterate: pass 1 from decode(base logits) equals one pass from scratch (the cached first-layer part)
    logits0 = torch.randn(P, C, dtype=torch.float64)
    first = mod.iterate(feats, logits0, pm, 1, lambda s: s.argmax(-1))[0]
    torch.testing.assert_close(first, mod(feats, logits0.argmax(-1), pm)[2], atol=1e-12, rtol=0)
    # first_input replaces only the first pass's R_0; the second pass reads the first pass's logits
    given = torch.randn(P, C, dtype=torch.float64)
    p1, p2 = mod.iterate(feats, logits0, pm, 2, lambda s: s.argmax(-1), first_input=given)
    torch.testing.assert_close(p1, mod(feats, given.argmax(-1), pm)[2], atol=1e-12, rtol=0)
    torch.testing.assert_close(p2, mod(feats, p1.argmax(-1), pm)[2], atol=1e-12, rtol=0)
    # accumulated (authors' test-time score): the base logits plus each pass's logits, whatever R_0 was read
    a1, _ = mod.iterate(feats, logits0, pm, 2, lambda s: s.argmax(-1), accumulate=True, first_input=given)
    torch.testing.assert_close(a1, logits0 + p1, atol=1e-12, rtol=0)
    # the relation matrix matters (relation-level inference is wired in)
    assert (mod(feats, (ids + 1) % C, pm)[2] - logits).abs().max() > 1e-4


def test_relation_matrix_of_a_multi_hot_is_the_sum_of_embeddings():
    torch.manual_seed(13)
    mod = InferenceModule(8, D, 5, num_layers=1, dropout=0.0).double()
    multi = torch.tensor([[1, 0, 0, 0, 0], [0, 1, 0, 1, 0], [0, 0, 1, 1, 1]], dtype=torch.float64)
    w = mod.rel_emb.weight
    expected = torch.stack([w[0], w[1] + w[3], w[2] + w[3] + w[4]])
    torch.testing.assert_close(mod.relation_matrix(multi), expected, atol=1e-12, rtol=0)
    # a one-hot row is emb(its class), as ids give
    torch.testing.assert_close(mod.relation_matrix(multi[:1]), mod.relation_matrix(torch.tensor([0])))


def test_rel_emb_init_and_two_layer_classifier():
    torch.manual_seed(14)
    C, dim = 97, 512
    normal = InferenceModule(8, dim, C, num_layers=1)
    xavier = InferenceModule(8, dim, C, num_layers=1, rel_emb_init="xavier")
    bound = (6 / (C + dim)) ** 0.5  # xavier_uniform: U(-b, b), b = sqrt(6 / (fan_in + fan_out))
    assert xavier.rel_emb.weight.abs().max() <= bound
    ratio = normal.rel_emb.weight.std() / xavier.rel_emb.weight.std()  # N(0, 1) vs std b / sqrt(3)
    assert 16 < ratio < 18
    two = InferenceModule(8, 16, 5, num_layers=1, dropout=0.0, classifier_layers=2).eval()
    lin1, _, norm, lin2 = two.classifier
    assert lin1.weight.shape == (16, 32) and lin2.weight.shape == (5, 16)
    x = torch.randn(7, 32)
    torch.testing.assert_close(two.classifier(x), lin2(norm(lin1(x))))
