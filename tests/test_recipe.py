"""The two readings of stage 2 (model.Recipe, train.py --recipe): which pairs get noise and at what rates, which
pairs enter each loss, the loss weights, the contrastive target, the relation input, the test-time score, the
optimiser groups and the flag presets. Tiny random BERT only."""
import argparse
import math

import pytest
import torch
import torch.nn.functional as F

import flags
import helpers
import train
import utils
from losses import at_loss, get_label, simsiam_loss
from model import choose, sample_negatives, sampled_noise, withhold
from model import build_model
from test_model import C, CLS, SEP, build, make_batch, tiny_encoder
from utils import Pairs


def bool_mask(bits):
    return torch.tensor(bits, dtype=torch.bool)


# ---------------------------------------------------------------- random choices
def test_choose_counts_per_group_only_eligible_and_uniform():
    group = torch.tensor([0] * 6 + [1] * 4 + [2] * 5)
    eligible = bool_mask([1, 0, 1, 1, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    counts = torch.tensor([3, 10, 2])
    hits = torch.zeros(len(group))
    torch.manual_seed(0)
    for _ in range(400):
        chosen = choose(eligible, group, 3, counts)
        assert not (chosen & ~eligible).any()
        per = torch.zeros(3, dtype=torch.long).index_add_(0, group, chosen.long())
        assert per.tolist() == [3, 4, 0]  # min(count, eligible in the group)
        hits += chosen
    # group 0: 3 of 4 eligible pairs, each chosen with probability 3/4
    assert ((hits[eligible & (group == 0)] / 400 - 0.75).abs() < 0.08).all()


def test_sample_negatives_takes_ratio_times_the_positives():
    positive = bool_mask([1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])
    negative = ~positive & bool_mask([1] * 13 + [0, 1])  # pair 13 is not scored
    torch.manual_seed(1)
    for ratio, expected in ((1, 3), (3, 9), (5, 11)):  # 5 x 3 = 15 > 11 negatives: all of them
        neg = sample_negatives(positive, negative, ratio)
        assert not (neg & ~negative).any() and int(neg.sum()) == expected


def test_sampled_noise_rates_of_the_authors():
    positive = torch.zeros(300, dtype=torch.bool)
    positive[:100] = True
    negative = ~positive
    torch.manual_seed(2)
    n_pos, n_neg = [], []
    for _ in range(300):
        chosen = sampled_noise(positive, negative)
        n_pos.append(int(chosen[:100].sum()))
        n_neg.append(int(chosen[100:].sum()))
    # int(r * n + 1): positives r ~ U(0.2, 0.5) of 100, negatives r ~ U(0.05, 0.15) of 200
    assert 21 <= min(n_pos) and max(n_pos) <= 51 and abs(sum(n_pos) / 300 - 35.5) < 1.5
    assert 11 <= min(n_neg) and max(n_neg) <= 31 and abs(sum(n_neg) / 300 - 20.5) < 1.5


# ---------------------------------------------------------------- training views
def stage2_inputs(model, batch):
    pairs = Pairs.of(batch)
    with torch.no_grad():
        _, logits0 = model.base_forward(batch, pairs)
    labels, scored = batch["pair_labels"], batch["scored"]
    is_scored = torch.zeros(len(labels), dtype=torch.bool).index_fill_(0, scored, True)
    gold = torch.where(is_scored[:, None], labels, F.one_hot(torch.zeros_like(pairs.b), C).float())
    return pairs, logits0, gold, is_scored, is_scored & (gold[:, 0] == 0)


@pytest.mark.parametrize("source", ["pred", "gold"])
def test_training_view_relations_and_noise(source):
    model = build(train_relations=source, relation_input="multihot", noise_on="sampled", negative_ratio=1)
    batch = make_batch()
    pairs, logits0, gold, is_scored, positive = stage2_inputs(model, batch)
    clean = gold if source == "gold" else get_label(logits0, model.recipe.num_labels)
    torch.manual_seed(3)
    for _ in range(30):
        view, mask = model.training_view(logits0, gold, pairs, is_scored, positive)
        assert view.shape == gold.shape  # multi-hot R_0
        changed = (view != clean).any(1)
        # positives are always in the loss; negatives: ratio 1 x #positives of them
        assert (mask[positive]).all() and int((mask & ~positive).sum()) == int(positive.sum())
        # noise only on positives and on the sampled negatives; a noised pair gets one wrong relation
        assert not (changed & ~mask).any()
        assert changed[positive].sum() >= 1
        assert (view[changed].sum(1) == 1).all() and (view[changed] * gold[changed]).sum() == 0


def test_training_view_paper_reading_uses_predictions_and_all_pairs():
    model = build()
    batch = make_batch()
    pairs, logits0, gold, is_scored, positive = stage2_inputs(model, batch)
    torch.manual_seed(4)
    seen = torch.zeros(len(gold), dtype=torch.bool)
    for _ in range(60):
        ids, mask = model.training_view(logits0, gold, pairs, is_scored, positive)
        assert mask is None and ids.shape == (len(gold),)
        changed = ids != logits0.argmax(-1)
        assert (gold[changed, ids[changed]] == 0).all()  # neither the prediction nor a gold relation
        seen |= changed
    assert seen.all()  # every valid pair, positive or not, can get noise


def test_withhold_sets_na_on_eligible_pairs_at_rate_up_to_the_maximum():
    relations = F.one_hot(torch.randint(1, C, (200,)), C).float()
    eligible = torch.zeros(200, dtype=torch.bool)
    eligible[::2] = True
    torch.manual_seed(7)
    counts = []
    for _ in range(300):
        out = withhold(relations, eligible, 0.6)
        dropped = (out != relations).any(1)
        assert not (dropped & ~eligible).any()
        assert (out[dropped] == F.one_hot(torch.zeros(1, dtype=torch.long), C).float()).all()  # NA, no relation
        counts.append(int(dropped.sum()))
    # round(r * 100), r ~ U(0, 0.6): between 0 and 60, mean 30
    assert min(counts) >= 0 and max(counts) <= 60 and abs(sum(counts) / 300 - 30) < 2.5


@pytest.mark.parametrize("source", ["pred", "gold"])
def test_training_view_withholds_only_positives_and_keeps_them_in_the_loss(source):
    model = build(train_relations=source, relation_input="multihot", noise_on="sampled", negative_ratio=1,
                  withhold_max=1.0)
    batch = make_batch()
    pairs, _, gold, is_scored, positive = stage2_inputs(model, batch)
    logits0 = 10 * gold - 5  # first predictions = the gold labels, so that withholding one changes R_0
    plain = build(train_relations=source, relation_input="multihot", noise_on="sampled", negative_ratio=1)
    plain.load_state_dict(model.state_dict())
    na = F.one_hot(torch.zeros(1, dtype=torch.long), C).float()
    withheld = torch.zeros(len(gold), dtype=torch.bool)
    for seed in range(40):
        torch.manual_seed(seed)
        noised, mask = plain.training_view(logits0, gold, pairs, is_scored, positive)
        torch.manual_seed(seed)  # the same noise and loss pairs, then the withheld positives on top
        view, mask_w = model.training_view(logits0, gold, pairs, is_scored, positive)
        assert torch.equal(mask, mask_w)
        changed = (view != noised).any(1)
        assert not (changed & ~positive).any() and (view[changed] == na).all() and mask[changed].all()
        withheld |= changed
    assert withheld.sum() >= 1


def test_checkpoint_args_without_withhold_max_build_the_model_with_it_off():
    saved = vars(flags.parse_args(["--recipe", "authors"]))
    del saved["withhold_max"]  # the flags a checkpoint written before --withhold_max records
    model = build_model(argparse.Namespace(**saved), C, tiny_encoder(), [CLS], [SEP])
    assert model.recipe.withhold_max == 0.0 and model.recipe.train_relations == "gold"


def test_loss_on_a_mask_equals_the_loss_on_those_pairs():
    torch.manual_seed(5)
    logits, labels = torch.randn(12, C), F.one_hot(torch.randint(0, C, (12,)), C).float()
    mask = bool_mask([1, 0, 0, 1, 1, 0, 1, 0, 0, 0, 1, 1])
    torch.testing.assert_close(build().loss_on(logits, labels, None, mask), at_loss(logits[mask], labels[mask]))


# ---------------------------------------------------------------- stage-2 losses
def test_authors_loss_weights_and_one_sided_target(monkeypatch):
    model = build(train_relations="gold", relation_input="multihot", noise_on="sampled", negative_ratio=2,
                  loss_weights="5,5,5,1", contrastive_target="stopgrad").train()
    batch = make_batch()
    pairs, _, gold, _, _ = stage2_inputs(model, batch)
    views = [(gold, None), (torch.roll(gold, 1, 0), None)]  # fixed views: the test recomputes everything
    monkeypatch.setattr(model, "training_view", lambda *a: views.pop(0))
    torch.manual_seed(6)
    out = model(batch, stage=2)
    assert set(out) == {"loss", "base", "inference", "inference_b", "contrastive"}
    expected = 5 * (out["base"] + out["inference"] + out["inference_b"]) + out["contrastive"]
    torch.testing.assert_close(out["loss"].detach(), expected)
    # contrastive: each view's online output against the other view's swapped pass, taken without gradient
    with torch.no_grad():
        feats, _ = model.base_forward(batch, pairs)
        online = [torch.cat(model.inference(feats, v, pairs)[:2], -1) for v in (gold, torch.roll(gold, 1, 0))]
        target = [torch.cat(model.inference(feats, v, pairs, swap=True)[:2], -1)
                  for v in (gold, torch.roll(gold, 1, 0))]
        ref = simsiam_loss(model.predictor(online[0]), target[0], model.predictor(online[1]), target[1])
    torch.testing.assert_close(out["contrastive"], ref, atol=1e-5, rtol=1e-5)
    # and the view-B AT loss is on the view-B logits
    with torch.no_grad():
        logits_b = model.inference(feats, torch.roll(gold, 1, 0), pairs)[2]
    scored = batch["scored"]
    torch.testing.assert_close(out["inference_b"], at_loss(logits_b[scored], batch["pair_labels"][scored]),
                               atol=1e-5, rtol=1e-5)


def test_paper_weights_have_no_view_b_loss():
    torch.manual_seed(7)
    out = build(weight=1.0).train()(make_batch(), stage=2)
    assert "inference_b" not in out
    torch.testing.assert_close(out["loss"].detach(), out["base"] + out["inference"] + out["contrastive"])


# ---------------------------------------------------------------- test-time score and feedback
def test_test_logits_sum_accumulates_and_feeds_back_the_running_sum():
    model = build(test_logits="sum", relation_input="multihot").eval()
    batch = make_batch()
    fed = []
    model.inference.layers[0].register_forward_pre_hook(lambda m, a: fed.append(a[1].clone()))
    passes = model.predict(batch, 3)
    last = build(relation_input="multihot").eval()
    last.load_state_dict(model.state_dict())
    pairs = Pairs.of(batch)
    with torch.no_grad():
        feats, logits0 = model.base_forward(batch, pairs)
        running = logits0
        for k in range(3):
            relations = get_label(running, model.recipe.num_labels)  # multi-hot of the running score
            torch.testing.assert_close(fed[k], relations @ model.inference.rel_emb.weight)
            running = running + model.inference(feats, relations, pairs)[2]
            torch.testing.assert_close(passes[k + 1], running, atol=1e-5, rtol=1e-5)
    assert (passes[1] - last.predict(batch, 1)[1]).abs().max() > 1e-4  # "last" scores the pass's logits alone


# ---------------------------------------------------------------- optimiser groups
def test_param_groups_weight_decay_and_stage2_encoder_only():
    model = build()
    args = flags.parse_args(["--weight_decay", "0.01", "--stage2_base_params", "encoder"])
    names = {id(p): n for n, p in model.named_parameters()}
    for stage in (1, 2):
        groups = model.param_groups(stage, args)
        for g in groups:
            for p in g["params"]:
                assert g["weight_decay"] == (0.01 if p.dim() >= 2 else 0.0), names[id(p)]
    stage2 = {names[id(p)] for g in model.param_groups(2, args) for p in g["params"]}
    assert any(n.startswith("base.encoder.") for n in stage2)
    assert not any(n.startswith("base.") and not n.startswith("base.encoder.") for n in stage2)  # head frozen
    everything = {names[id(p)] for g in model.param_groups(2, flags.parse_args([])) for p in g["params"]}
    assert "base.classifier.weight" in everything and "base.classifier.bias" in everything


# ---------------------------------------------------------------- flags
def test_recipe_preset_and_explicit_overrides():
    paper = flags.parse_args([])
    assert (paper.train_relations, paper.noise_on, paper.negative_ratio, paper.loss_weights, paper.test_logits,
            paper.weight_decay, paper.classifier_layers) == ("pred", "all", 0, "1,1,0,1", "last", 0.0, 1)
    authors = flags.parse_args(["--recipe", "authors"])
    for key, value in flags.RECIPES["authors"].items():
        assert getattr(authors, key) == value
    mixed = flags.parse_args(["--recipe", "authors", "--negative_ratio", "3", "--test_logits", "last"])
    assert (mixed.negative_ratio, mixed.test_logits, mixed.train_relations) == (3, "last", "gold")
    # an explicit flag equal to the paper default still overrides the preset
    assert flags.parse_args(["--recipe", "authors", "--weight_decay", "0.0"]).weight_decay == 0.0


@pytest.mark.parametrize("bad", ["1,1,1", "1,1,0,-1", "a,b,c,d"])
def test_bad_loss_weights_are_a_usage_error(bad, tmp_path, capsys):
    code = train.cli(["--loss_weights", bad, "--save_path", str(tmp_path / "x")])
    assert code == 2 and "--loss_weights" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_amp_auto(monkeypatch):
    helpers.cpu_instructions(monkeypatch, avx512_bf16=True)
    assert utils.resolve_amp("auto", "cpu") == "bf16"
    helpers.cpu_instructions(monkeypatch)
    assert utils.resolve_amp("auto", "cpu") == "none"
    assert utils.resolve_amp("none", "cpu") == "none" and utils.resolve_amp("bf16", "cpu") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert utils.resolve_amp("auto", "cuda") == "bf16"


def test_cpu_native_matmul_reads_the_instructions_of_each_dtype(monkeypatch):
    helpers.cpu_instructions(monkeypatch)
    assert not utils.cpu_native_matmul("bf16") and not utils.cpu_native_matmul("fp16")
    helpers.cpu_instructions(monkeypatch, avx512_bf16=True)
    assert utils.cpu_native_matmul("bf16") and not utils.cpu_native_matmul("fp16")
    helpers.cpu_instructions(monkeypatch, amx=True)
    assert utils.cpu_native_matmul("bf16") and utils.resolve_amp("auto", "cpu") == "bf16"
    helpers.cpu_instructions(monkeypatch, amx_fp16=True)
    assert utils.cpu_native_matmul("fp16") and not utils.cpu_native_matmul("bf16")


def test_describe_amp_says_why_auto_chose_and_warns_of_slow_cpu_kernels(monkeypatch):
    helpers.cpu_instructions(monkeypatch, avx512_bf16=True)
    assert utils.describe_amp("auto", "bf16", "cpu") == (
        "bf16 autocast (--amp auto: this CPU has bf16 matrix instructions)", None)
    assert utils.describe_amp("none", "none", "cpu") == ("fp32", None)
    helpers.cpu_instructions(monkeypatch)
    assert utils.describe_amp("auto", "none", "cpu") == (
        "fp32 (--amp auto: this CPU has no bf16 matrix instructions, AVX512-BF16 or AMX)", None)
    text, warning = utils.describe_amp("bf16", "bf16", "cpu")
    assert text == "bf16 autocast" and warning.startswith("--amp bf16 on a CPU without bf16 matrix instructions")
    assert "50-70x the fp32 time" in warning and warning.endswith("--amp auto picks fp32 on this CPU")
    assert "--amp fp16" in utils.describe_amp("fp16", "fp16", "cpu")[1]
    assert utils.describe_amp("bf16", "bf16", "cuda") == ("bf16 autocast", None)
    assert utils.describe_amp("auto", "none", "cuda") == (
        "fp32 (--amp auto: no bf16 on this GPU; --amp fp16 is its fast option)", None)


def test_train_warns_of_bf16_on_a_cpu_without_it(monkeypatch, tmp_path, capsys):
    helpers.cpu_instructions(monkeypatch)
    args, _ = flags.resolve_args(["--amp", "bf16", "--device", "cpu", "--dev_file", "dev.json",
                                  "--save_path", str(tmp_path / "run")])
    out, err = capsys.readouterr()
    assert args.amp == "bf16" and "device cpu, precision: bf16 autocast\n" in out
    assert err.startswith("warning: --amp bf16 on a CPU without bf16 matrix instructions")
    flags.resolve_args(["--device", "cpu", "--dev_file", "dev.json", "--save_path", str(tmp_path / "run")])
    out, err = capsys.readouterr()
    assert "precision: fp32 (--amp auto: this CPU has no bf16 matrix instructions" in out and err == ""


def test_authors_recipe_trains_both_stages(tmp_path):
    """--recipe authors end to end: a two-stage run writes its scores, and the checkpoint keeps the recipe."""
    data = helpers.write_dataset(tmp_path / "data")
    model = helpers.tiny_model(tmp_path / "model")
    with helpers.one_thread():
        code = train.cli(helpers.train_args(data, model, tmp_path / "run", tmp_path / "cache", "--recipe", "authors",
                                            stage1=1, stage2=1))
    assert code == 0
    ckpt = torch.load(tmp_path / "run" / "best.pt", weights_only=False)
    assert ckpt["args"]["test_logits"] == "sum" and ckpt["args"]["classifier_layers"] == 2
    assert math.isfinite(ckpt["dev"]["f1"])
