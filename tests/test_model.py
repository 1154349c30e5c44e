"""Tests for model.py: noise injection (Section 2.3), the K-step loop (Fig. 2), the stage-1 / stage-2 losses,
the stop-gradient of Eq. (14), freeze_base and the ablation flags. Tiny random BERT only."""
import math

import pytest
import torch
import transformers

import base_module
import helpers
from base_module import BaseModule
from inference_module import InferenceModule
from model import DocREModel, paper_noise, replace_relations
from utils import Pairs, collate_fn

CLS, SEP, STAR = 1, 2, 3
C = 5


# ---------------------------------------------------------------- helpers
def tiny_encoder(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return base_module.encoder_from_config(cfg)


def make_feature(title, length, entity_pos, rels=None, seed=0):
    return helpers.make_feature(title, length, entity_pos, C, rels, seed, CLS, SEP, STAR)


def make_batch():
    a = make_feature("A", 14, [[(1, 3), (8, 10)], [(3, 5)], [(5, 7)], [(11, 13)]],
                     {(0, 1): [1], (2, 0): [2, 3], (3, 1): [4]}, seed=1)
    b = make_feature("B", 10, [[(1, 3)], [(4, 6)], [(6, 8)]], {(1, 2): [2]}, seed=2)
    return collate_fn([a, b])


def build(contrastive="simsiam", eca="eca", fusion=True, freeze_base=False, seed=0, weight=0.7, **recipe):
    enc = tiny_encoder(seed)
    torch.manual_seed(seed + 1)
    base = BaseModule(enc, [CLS], [SEP], C, emb_size=24)
    inf = InferenceModule(24, 16, C, num_layers=2, heads_per_line=1, dropout=0.0, eca=eca, fusion=fusion)
    recipe = {"loss_weights": f"1,1,0,{weight}", "contrastive": contrastive, **recipe}
    return DocREModel(base, inf, helpers.recipe(**recipe), freeze_base=freeze_base)


def inject_noise(pred, doc, num_docs, max_rate, num_class, gold=None):
    """The paper's noise as the model applies it to predicted classes: (noisy [P], chosen [P])."""
    chosen = paper_noise(doc, num_docs, max_rate)
    onehot = torch.nn.functional.one_hot(pred, num_class).float()
    noisy = replace_relations(onehot, torch.zeros_like(onehot) if gold is None else gold, chosen)
    return noisy.argmax(1), chosen


def grads(module):
    return {n: p.grad for n, p in module.named_parameters()}


# ---------------------------------------------------------------- the paper's noise
SIZES = [20, 6, 2, 50, 1, 13]


def _noise_inputs(num_class, seed=0):
    g = torch.Generator().manual_seed(seed)
    doc = torch.cat([torch.full((n,), b, dtype=torch.long) for b, n in enumerate(SIZES)])
    pred = torch.randint(0, num_class, (len(doc),), generator=g)
    gold = torch.zeros(len(doc), num_class)
    has_rel = torch.rand(len(doc), generator=g) < 0.5
    gold[~has_rel, 0] = 1.0
    r1 = torch.randint(1, num_class, (len(doc),), generator=g)
    r2 = torch.randint(1, num_class, (len(doc),), generator=g)
    gold[has_rel, r1[has_rel]] = 1.0
    gold[has_rel, r2[has_rel]] = 1.0
    return pred, doc, gold


@pytest.mark.parametrize("max_rate", [0.0, 0.1, 0.4, 1.0])
def test_inject_noise_counts_and_labels(max_rate):
    pred, doc, gold = _noise_inputs(C)
    per_doc = torch.tensor(SIZES)
    for seed in range(8):
        torch.manual_seed(seed)
        noisy, chosen = inject_noise(pred, doc, len(SIZES), max_rate, C, gold)
        # re-draw the per-document rate r ~ U(0, max_rate) from the same RNG state (the function's first draw)
        torch.manual_seed(seed)
        rate = torch.rand(len(SIZES)) * max_rate
        expected = torch.round(rate * per_doc).long()
        counts = torch.bincount(doc[chosen], minlength=len(SIZES))
        assert torch.equal(counts, expected)
        # never more than max_rate of a document's pairs (+ rounding)
        for n, k in zip(SIZES, counts.tolist()):
            assert k <= math.floor(max_rate * n + 0.5)
        # unchosen pairs keep their prediction; chosen ones get a class that is neither the prediction
        # nor a gold relation of the pair (C = 5 and <= 2 gold classes always leave one)
        assert torch.equal(noisy[~chosen], pred[~chosen])
        assert (noisy[chosen] != pred[chosen]).all()
        assert (gold[chosen, noisy[chosen]] == 0).all()
        assert ((noisy >= 0) & (noisy < C)).all()
        if max_rate == 0.0:
            assert not chosen.any() and torch.equal(noisy, pred)


def test_inject_noise_without_gold_and_randomness():
    pred, doc, _ = _noise_inputs(C, seed=3)
    seen_classes, seen_pairs = set(), torch.zeros(len(doc), dtype=torch.bool)
    torch.manual_seed(0)
    for _ in range(60):
        noisy, chosen = inject_noise(pred, doc, int(doc.max()) + 1, 1.0, C)
        assert (noisy[chosen] != pred[chosen]).all()
        seen_classes |= set(noisy[chosen & (pred == 0)].tolist())
        seen_pairs |= chosen
    assert seen_classes == {1, 2, 3, 4}  # replacement drawn among all other classes
    assert seen_pairs.all()  # every pair can be chosen, not only the first of each document


def test_inject_noise_two_classes_fallback():
    n = 40
    doc = torch.zeros(n, dtype=torch.long)
    pred = torch.arange(n) % 2
    gold = torch.zeros(n, 2)
    # half the pairs: gold differs from pred, so "neither pred nor gold" leaves no class -> fallback
    gold[torch.arange(n), (torch.arange(n) // 2) % 2] = 1.0
    torch.manual_seed(0)
    draws_with_noise = 0
    for _ in range(10):
        noisy, chosen = inject_noise(pred, doc, 1, 1.0, 2, gold)
        draws_with_noise += bool(chosen.any())  # r ~ U(0, 1) x 40 pairs rounds to 0 with probability 1/80
        assert torch.equal(noisy[chosen], 1 - pred[chosen])
    assert draws_with_noise >= 8


def test_inject_noise_bound_at_40_percent():
    doc = torch.cat([torch.full((n,), b, dtype=torch.long) for b, n in enumerate([3, 7, 10, 31, 100])])
    pred = torch.zeros(len(doc), dtype=torch.long)
    torch.manual_seed(1)
    for _ in range(200):
        _, chosen = inject_noise(pred, doc, 5, 0.4, C)
        for b, n in enumerate([3, 7, 10, 31, 100]):
            assert int(chosen[doc == b].sum()) <= math.floor(0.4 * n + 0.5)


# ---------------------------------------------------------------- K-step loop, Fig. 2
def test_predict_feeds_back_previous_argmax():
    model = build().eval()
    batch = make_batch()
    emb_inputs, layer_inputs = [], []
    h1 = model.inference.rel_emb.register_forward_hook(lambda m, i, o: emb_inputs.append(i[0].clone()))
    h2 = model.inference.layers[0].register_forward_pre_hook(lambda m, a: layer_inputs.append(a[1].clone()))
    passes = model.predict(batch, 3)
    h1.remove()
    h2.remove()
    assert len(passes) == 4
    P = int(batch["pair_mask"].sum())
    assert all(p.shape == (P, C) for p in passes)
    with torch.no_grad():
        feats, logits0 = model.base_forward(batch, Pairs.of(batch))
        torch.testing.assert_close(passes[0], logits0)  # pass 0 = the base module
        assert len(emb_inputs) == 3 and len(layer_inputs) == 3
        for k in range(3):
            idx = passes[k].argmax(-1)
            assert torch.equal(emb_inputs[k], idx)  # R_0^(k) = emb(argmax P^(k))
            torch.testing.assert_close(layer_inputs[k], model.inference.rel_emb.weight[idx])
            _, _, ref = model.inference(feats, idx, Pairs.of(batch))  # one pass from scratch, no cache
            torch.testing.assert_close(passes[k + 1], ref, atol=1e-5, rtol=1e-5)
    # the refinement changes the logits (a real pass, not the base logits again)
    assert (passes[1] - passes[0]).abs().max() > 1e-3
    only_base = model.predict(batch, 0)
    assert len(only_base) == 1
    torch.testing.assert_close(only_base[0], logits0)


def test_predict_loop_input_changes_with_previous_pass(monkeypatch):
    """Force pass 1's argmax: pass 2 must read exactly that relation matrix."""
    model = build().eval()
    batch = make_batch()
    P = int(batch["pair_mask"].sum())
    forced = torch.arange(P) % C

    class Forced(torch.nn.Module):  # every pass "predicts" the forced classes
        def forward(self, x):
            return torch.nn.functional.one_hot(forced, C).float() * 10.0

    model.inference.classifier = Forced()
    seen = []
    model.inference.rel_emb.register_forward_hook(lambda m, i, o: seen.append(i[0].clone()))
    model.predict(batch, 2)
    assert len(seen) == 2
    assert torch.equal(seen[1], forced)


# ---------------------------------------------------------------- stage 1 / stage 2
def test_stage1_touches_only_the_base_module():
    model = build().train()
    batch = make_batch()
    out = model(batch, stage=1)
    assert set(out) == {"loss", "base"}
    out["loss"].backward()
    assert all(g is None for g in grads(model.inference).values())
    assert all(g is None for g in grads(model.predictor).values())
    g = grads(model.base)
    assert g["classifier.weight"].abs().sum() > 0
    assert g["encoder.encoder.embeddings.word_embeddings.weight"].abs().sum() > 0
    torch.testing.assert_close(out["loss"].detach(), out["base"])


def test_stage2_simsiam_stop_gradient():
    torch.manual_seed(0)
    model = build("simsiam").train()
    batch = make_batch()
    recorded = []

    def keep_input(module, args):
        args[0].retain_grad()
        recorded.append(args[0])

    hook = model.predictor.register_forward_pre_hook(keep_input)
    torch.manual_seed(5)
    out = model(batch, stage=2)
    hook.remove()
    assert set(out) == {"loss", "inference", "base", "contrastive"}
    torch.testing.assert_close(out["loss"].detach(), out["inference"] + out["base"] + 0.7 * out["contrastive"])
    out["loss"].backward()
    m_a, m_b = recorded
    # Gradient reaching M-bar / M-hat must come only through the predictor (online branch) of Eq. (14):
    # recompute w * (2 - cos(MLP(m_b), sg(m_a)) - cos(MLP(m_a), sg(m_b))) on leaf copies and differentiate
    # w.r.t. the online inputs only.
    a = m_a.detach().clone().requires_grad_()
    b = m_b.detach().clone().requires_grad_()
    cos = torch.nn.functional.cosine_similarity
    pred = model.predictor
    ref = 0.7 * (2 - (cos(pred(b), m_a.detach(), dim=-1).mean() + cos(pred(a), m_b.detach(), dim=-1).mean()))
    ga, gb = torch.autograd.grad(ref, [a, b])
    torch.testing.assert_close(m_a.grad, ga, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(m_b.grad, gb, atol=1e-6, rtol=1e-4)
    # without the stop-gradient there would be an extra target-path term: make sure it is not negligible,
    # so the comparison above can fail
    a2, b2 = m_a.detach().clone().requires_grad_(), m_b.detach().clone().requires_grad_()
    nosg = 0.7 * (2 - (cos(pred(b2), a2, dim=-1).mean() + cos(pred(a2), b2, dim=-1).mean()))
    ga2, _ = torch.autograd.grad(nosg, [a2, b2])
    assert (ga2 - ga).abs().max() > 1e-4
    # the predictor and the inference module learn; the base module too (no freeze)
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads(model.predictor).items())
    assert grads(model.inference)["layers.0.eca_f.q.weight"].abs().sum() > 0
    assert grads(model.base)["classifier.weight"].abs().sum() > 0


def test_stage2_contrastive_modes():
    batch = make_batch()
    outs = {}
    ref = build("simsiam")
    for mode in ["none", "simsiam", "simclr"]:
        model = build(mode).train()
        if mode == "none":
            assert model.predictor is None
            model.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.startswith("predictor.")})
        else:
            model.load_state_dict(ref.state_dict())
        torch.manual_seed(11)
        outs[mode] = model(batch, stage=2)
    assert "contrastive" not in outs["none"]
    torch.testing.assert_close(outs["none"]["loss"].detach(), outs["none"]["inference"] + outs["none"]["base"])
    # same weights and noise: the supervised terms agree, the contrastive term depends on the mode
    for mode in ["simsiam", "simclr"]:
        torch.testing.assert_close(outs[mode]["inference"], outs["none"]["inference"])
        torch.testing.assert_close(outs[mode]["base"], outs["none"]["base"])
        torch.testing.assert_close(outs[mode]["loss"].detach(),
                                   outs[mode]["inference"] + outs[mode]["base"] + 0.7 * outs[mode]["contrastive"])
    assert abs(outs["simsiam"]["contrastive"].item() - outs["simclr"]["contrastive"].item()) > 1e-3
    assert 0.0 <= outs["simsiam"]["contrastive"].item() <= 4.0


def test_stage2_freeze_base():
    torch.manual_seed(0)
    model = build("simsiam", freeze_base=True).train()
    out = model(make_batch(), stage=2)
    assert "base" not in out and "inference" in out
    out["loss"].backward()
    assert all(g is None for g in grads(model.base).values())
    assert grads(model.inference)["classifier.weight"].abs().sum() > 0
    assert grads(model.inference)["reduce.0.weight"].abs().sum() > 0
    torch.testing.assert_close(out["loss"].detach(), out["inference"] + 0.7 * out["contrastive"])


def test_ablation_eca_full_and_fusion_change_outputs():
    batch = make_batch()
    eca = build(eca="eca").eval()
    full = build(eca="full").eval()
    full.load_state_dict(eca.state_dict())  # same parameter set
    nofuse = build(fusion=False).eval()
    missing, unexpected = nofuse.load_state_dict(eca.state_dict(), strict=False)
    assert not missing and all(".gate." in k for k in unexpected) and unexpected
    p_eca, p_full, p_nofuse = eca.predict(batch, 1), full.predict(batch, 1), nofuse.predict(batch, 1)
    # same base module ...
    torch.testing.assert_close(p_full[0], p_eca[0])
    torch.testing.assert_close(p_nofuse[0], p_eca[0])
    # ... different inference computation
    assert (p_full[1] - p_eca[1]).abs().max() > 1e-4
    assert (p_nofuse[1] - p_eca[1]).abs().max() > 1e-4
