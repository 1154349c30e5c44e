"""Tests for the experiment tools (Issue 7): scripts/summarize.py (mean ± std tables, Table 2 by K),
scripts/bootstrap.py (paired bootstrap equal to the official scores on the full set) and scripts/plot.py
(training curves, the Figure 5 classifier-weight analysis). Made-up runs and documents only."""
import json
import math
import random
import signal
import statistics
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import evaluation
import helpers

sys.path.insert(0, str(helpers.ROOT / "scripts"))
import bootstrap  # noqa: E402
import demo_report  # noqa: E402
import plot  # noqa: E402
import summarize  # noqa: E402


def write_run(folder, lines, eval_scores=None):
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(ln) + "\n" for ln in lines))
    if eval_scores is not None:
        (folder / "eval_scores.json").write_text(json.dumps(eval_scores))
    return str(folder)


def stage2_lines(best_f1, base_f1, later_f1):
    """Stage 1 epoch, the best stage-2 epoch, then a worse stage-2 epoch (not kept as best.pt)."""
    return [{"stage": 1, "epoch": 0, "train_loss": 3.0, "dev": {"f1": 20.0, "ign_f1": 19.0}, "best": True},
            {"stage": 2, "epoch": 0, "train_loss": 2.0, "dev": {"f1": best_f1, "ign_f1": best_f1 - 1},
             "dev_base": {"f1": base_f1, "ign_f1": base_f1 - 1}, "best": True},
            {"stage": 2, "epoch": 1, "train_loss": 1.5, "dev": {"f1": later_f1, "ign_f1": later_f1 - 1},
             "dev_base": {"f1": 0.0, "ign_f1": 0.0}, "best": False}]


def test_summarize_mean_std_of_best_epochs(tmp_path, capsys):
    a = write_run(tmp_path / "a", stage2_lines(60.0, 58.0, 10.0))
    b = write_run(tmp_path / "b", stage2_lines(62.0, 59.0, 11.0))
    assert summarize.main([a, b, "--metrics", "f1", "ign_f1"]) == 0
    out = capsys.readouterr().out.splitlines()
    sd = statistics.stdev([60.0, 62.0])
    assert out[2] == f"| full model (K passes) | 2 | 61.00 ± {sd:.2f} | 60.00 ± {sd:.2f} |"
    assert out[3] == f"| base module (K = 0) | 2 | 58.50 ± {statistics.stdev([58.0, 59.0]):.2f} | 57.50 ± 0.71 |"


def test_summarize_groups_and_stage1_row(tmp_path):
    full = write_run(tmp_path / "full", stage2_lines(61.0, 58.0, 1.0))
    ablation = write_run(tmp_path / "abl", stage2_lines(59.5, 58.0, 1.0))
    stage1 = write_run(tmp_path / "s1", [{"stage": 1, "epoch": 0, "dev": {"f1": 57.25}, "best": True}])
    text = summarize.table(summarize.parse_groups([f"ATLOP=={stage1}", f"ours={full}", f"w/o x={ablation}"]),
                           ["f1"], model="full")
    # 'ATLOP=' ends in '=': the label is split at the last '=', a label may hold '='
    assert text.splitlines()[2:] == ["| ATLOP= | 1 | 57.25 |", "| ours | 1 | 61.00 |", "| w/o x | 1 | 59.50 |"]


def epoch_lines(stage1, stage2):
    """metrics.jsonl lines: dev F1 after each stage-1 epoch, then each stage-2 epoch."""
    return ([{"stage": 1, "epoch": e, "dev": {"f1": f}} for e, f in enumerate(stage1)] +
            [{"stage": 2, "epoch": e, "dev": {"f1": f}} for e, f in enumerate(stage2)])


def test_summarize_by_epoch_means_and_paired_differences(tmp_path, capsys):
    a = [write_run(tmp_path / f"a{i}", epoch_lines([10.0, 20.0], s2))
         for i, s2 in enumerate([[50.0, 52.0], [54.0, 50.0], [52.0, 51.0]])]
    b = [write_run(tmp_path / f"b{i}", epoch_lines([0.0], s2))
         for i, s2 in enumerate([[51.0, 53.0], [55.0, 52.0], [52.5, 51.0]])]
    assert summarize.main(["--by_epoch", "2", f"ctrl={','.join(a)}", f"full={','.join(b)}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| f1 | runs | epoch 1 | epoch 2 | mean over epochs |"
    assert lines[2] == "| ctrl | 3 | 52.00 ± 2.00 | 51.00 ± 1.00 | 51.50 ± 0.50 |"
    assert lines[3].startswith("| full | 3 | 52.83 ± 2.02 | 52.00 ± 1.00 | ")
    # paired by position: epoch-1 differences 1.0, 1.0, 0.5; their resampled means lie in [0.5, 1.0]
    diff = lines[4].split(" | ")
    assert diff[0] == "| full minus ctrl" and diff[1] == "3"
    assert diff[2].startswith("+0.83 [") and diff[3].startswith("+1.00 [")  # epoch 2: 1.0, 2.0, 0.0
    lo, hi = (float(x) for x in diff[2][len("+0.83 ["):-1].split(", "))
    assert 0.5 <= lo <= 0.84 <= hi <= 1.0
    lo, hi = (float(x) for x in diff[3][len("+1.00 ["):-1].split(", "))
    assert 0.0 <= lo < 1.0 < hi <= 2.0
    assert summarize.main(["--by_epoch", "1", *a[:2]]) == 0  # stage 1, one unlabelled group: no difference row
    assert capsys.readouterr().out.splitlines()[2:] == ["| runs | 2 | 10.00 ± 0.00 | 20.00 ± 0.00 | 15.00 ± 0.00 |"]


def test_summarize_by_epoch_base_module_scores(tmp_path, capsys):
    """--by_epoch with --model base reads "dev_base" (the base module, K = 0) of the same epochs."""
    lines = [{"stage": 2, "epoch": e, "dev": {"f1": full}, "dev_base": {"f1": base}}
             for e, (full, base) in enumerate([(50.0, 58.0), (57.0, 59.0)])]
    run = write_run(tmp_path / "r", lines)
    assert summarize.main(["--by_epoch", "2", run]) == 0
    assert capsys.readouterr().out.splitlines()[2] == "| runs | 1 | 50.00 | 57.00 | 53.50 |"
    assert summarize.main(["--by_epoch", "2", "--model", "base", run]) == 0
    assert capsys.readouterr().out.splitlines()[2] == "| runs | 1 | 58.00 | 59.00 | 58.50 |"
    no_base = write_run(tmp_path / "s1", epoch_lines([], [50.0]))
    assert summarize.main(["--by_epoch", "2", "--model", "base", no_base]) == 2
    assert f'{no_base}: a stage-2 epoch without "dev_base" scores in metrics.jsonl' in capsys.readouterr().err


def test_summarize_by_epoch_refuses_unpairable_groups(tmp_path, capsys):
    a = [write_run(tmp_path / f"a{i}", epoch_lines([1.0], [50.0, 51.0])) for i in range(2)]
    short = write_run(tmp_path / "short", epoch_lines([1.0], [50.0]))
    assert summarize.main(["--by_epoch", "2", f"x={','.join(a)}", f"y={a[0]}"]) == 2
    assert "y and x: different numbers of runs, cannot pair them" in capsys.readouterr().err
    assert summarize.main(["--by_epoch", "2", f"x={a[0]},{short}"]) == 2
    assert "group x: runs with different numbers of stage-2 epochs" in capsys.readouterr().err
    stage1_only = write_run(tmp_path / "s1", epoch_lines([1.0], []))
    assert summarize.main(["--by_epoch", "2", stage1_only]) == 2
    assert f"{stage1_only}: no stage-2 epochs in metrics.jsonl" in capsys.readouterr().err


def test_summarize_test_split_and_by_k(tmp_path, capsys):
    by_k = {str(k): {"f1": 50.0 + k, "ign_f1": 49.0 + k} for k in range(5)}
    r1 = write_run(tmp_path / "r1", [], {"test": by_k["4"], "test_by_k": by_k, "dev": by_k["4"], "dev_by_k": by_k})
    by_k2 = {k: {m: v + 2 for m, v in s.items()} for k, s in by_k.items()}
    r2 = write_run(tmp_path / "r2", [], {"test": by_k2["4"], "test_by_k": by_k2, "dev_by_k": by_k2})
    assert summarize.main([f"CDR={r1},{r2}", "--split", "test", "--metrics", "f1"]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert rows == ["| CDR: full model (K passes) | 2 | 55.00 ± 1.41 |", "| CDR: base module (K = 0) | 2 | 51.00 ± 1.41 |"]
    assert summarize.main(["--by_k", f"N_I 2={r1},{r2}", f"N_I 1={r1}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| f1 | runs | K = 0 | K = 1 | K = 2 | K = 3 | K = 4 |"
    assert lines[2] == "| N_I 2 | 2 | " + " | ".join(f"{51 + k:.2f} ± 1.41" for k in range(5)) + " |"
    assert lines[3] == "| N_I 1 | 1 | " + " | ".join(f"{50 + k:.2f}" for k in range(5)) + " |"
    r3 = write_run(tmp_path / "r3", [], {"test": by_k2["4"], "test_by_k": by_k2, "dev_by_k": by_k})
    assert summarize.main(["--by_k", "--split", "test", f"CDR={r2},{r3}"]) == 0  # CDR: passes on test
    assert capsys.readouterr().out.splitlines()[2] == \
        "| CDR | 2 | " + " | ".join(f"{52 + k:.2f} ± 0.00" for k in range(5)) + " |"


def test_summarize_errors(tmp_path, capsys):
    assert summarize.main([str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    run = write_run(tmp_path / "dev_only", [], {"dev": {"f1": 1.0}})
    assert summarize.main(["--split", "test", run]) == 2
    assert "no 'test' scores" in capsys.readouterr().err
    assert summarize.main(["--by_k", run]) == 2
    assert "no 'dev_by_k'" in capsys.readouterr().err
    assert summarize.main(["--by_k", "--split", "test", run]) == 2
    err = capsys.readouterr().err
    assert "no 'test_by_k'" in err and "labelled --test_file" in err


# ---------------------------------------------------------------- bootstrap
def gold_and_train():
    gold = [helpers.make_doc(i, num_entities=5) for i in range(12)]
    for doc in gold[::2]:  # 0 -> 1 -> 2 and 0 -> 2: a triangle, so these documents have an inference set
        doc["labels"].append({"h": 0, "t": 2, "r": "P17", "evidence": []})
    gold.append(helpers.make_doc(50, num_entities=3, labelled=False))  # a document without labels
    train = [helpers.make_doc(i + 3, num_entities=5) for i in range(4)]  # shares entity names with gold docs
    return gold, train


def submission(gold, keep, extra, seed):
    """Gold facts kept with probability ``keep`` plus ``extra`` wrong facts per document."""
    rng = random.Random(seed)
    sub = [{"title": d["title"], "h_idx": lab["h"], "t_idx": lab["t"], "r": lab["r"]}
           for d in gold for lab in d.get("labels", []) if rng.random() < keep]
    for d in gold:
        for _ in range(extra):
            sub.append({"title": d["title"], "h_idx": 0, "t_idx": 2, "r": "P569"})  # 0 -> 2 is never gold
    return sub


def test_bootstrap_counts_reproduce_official_scores():
    gold, train = gold_and_train()
    sub = submission(gold, keep=0.7, extra=1, seed=1)
    official = evaluation.docred_scores(sub, gold, train)
    assert official["num_correct_in_train"] > 0  # Ign F1 differs from F1 here
    assert 0 < official["num_correct_infer"] < official["num_pred_infer"] and official["num_gold_infer"] == 18
    counts = bootstrap.doc_counts(sub, gold, train)
    assert counts.shape == (len(gold), 7)
    assert counts.sum(0).tolist() == [official[k] for k in bootstrap.COUNTS + bootstrap.INFER_COUNTS]
    f1, ign, infer = bootstrap.f1_from_counts(counts.sum(0))
    assert math.isclose(f1, official["f1"], abs_tol=1e-9) and math.isclose(ign, official["ign_f1"], abs_tol=1e-9)
    assert math.isclose(infer, official["infer_f1"], abs_tol=1e-9)
    assert len(bootstrap.f1_from_counts(counts[:, :4].sum(0))) == 2  # CDR / GDA counts: no Infer-F1


def test_paired_bootstrap_difference():
    gold, train = gold_and_train()
    worse = bootstrap.doc_counts(submission(gold, keep=0.5, extra=2, seed=2), gold, train)
    perfect = bootstrap.doc_counts(submission(gold, keep=1.0, extra=0, seed=3), gold, train)
    res = bootstrap.paired_bootstrap(worse, perfect, samples=300, seed=0)
    assert res["b"]["f1"] == 100.0 and res["b"]["infer_f1"] == 100.0 and res["documents"] == len(gold)
    assert 0 < res["infer_f1_diff"]["ci95"][0] and res["infer_f1_diff"]["point"] == 100.0 - res["a"]["infer_f1"]
    d = res["f1_diff"]
    assert math.isclose(d["point"], 100.0 - res["a"]["f1"])
    assert 0 < d["ci95"][0] <= d["point"] <= d["ci95"][1] and d["p_b_not_better"] == 0.0 and d["std"] > 0
    same = bootstrap.paired_bootstrap(worse, worse, samples=50, seed=0)["f1_diff"]
    assert same["point"] == 0 and same["ci95"] == [0.0, 0.0] and same["p_b_not_better"] == 1.0
    again = bootstrap.paired_bootstrap(worse, perfect, samples=300, seed=0)
    assert again == res  # seeded


def test_bootstrap_cli(tmp_path, capsys):
    gold, train = gold_and_train()
    paths = {name: helpers.write_docs(tmp_path, f"{name}.json", docs) for name, docs in
             (("gold", gold), ("train", train), ("a", submission(gold, 0.6, 1, 4)), ("b", submission(gold, 0.9, 0, 5)))}
    assert bootstrap.main(["--gold", paths["gold"], "--train", paths["train"], "--a", paths["a"], "--b", paths["b"],
                           "--samples", "100"]) == 0
    res = json.loads(capsys.readouterr().out)
    official = evaluation.docred_scores(json.load(open(paths["b"])), gold, train)
    assert math.isclose(res["b"]["ign_f1"], official["ign_f1"]) and res["samples"] == 100
    assert math.isclose(res["b"]["infer_f1"], official["infer_f1"])
    # two seeds: every metric, each seed's difference and the interval of their mean
    assert bootstrap.main(["--gold", paths["gold"], "--a", paths["a"], paths["b"], "--b", paths["b"], paths["b"],
                           "--samples", "100"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["seeds"] == 2 and set(res["per_seed_diff"]) == {"f1", "ign_f1", "infer_f1"}
    assert res["per_seed_diff"]["infer_f1"][1] == 0.0 < res["per_seed_diff"]["infer_f1"][0]
    assert math.isclose(res["infer_f1_diff"]["point"], res["per_seed_diff"]["infer_f1"][0] / 2)
    stray = helpers.write_docs(tmp_path, "stray.json", [{"title": "Nowhere", "h_idx": 0, "t_idx": 1, "r": "P17"}])
    assert bootstrap.main(["--gold", paths["gold"], "--a", paths["a"], "--b", stray]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "stray.json" in err and "'Nowhere'" in err


def write_counts(path, titles, by_k):
    path.write_text(json.dumps({"titles": titles, "counts_by_k": by_k}))
    return str(path)


def test_bootstrap_counts_files_of_cdr(tmp_path, capsys):
    """train.py's <split>_counts.json (CDR / GDA): the passes named by --ka / --kb, over seeds."""
    titles = [f"pmid{i}" for i in range(30)]
    base = [[1, 2, 2]] * 30  # per document: 1 correct of 2 predicted, 2 gold -> F1 50
    better = [[2, 2, 2]] * 30  # F1 100
    runs = [write_counts(tmp_path / f"s{i}.json", titles, {"0": base, "3": better}) for i in range(2)]
    assert bootstrap.main(["--a", *runs, "--ka", "0", "--b", *runs, "--kb", "3", "--samples", "50"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["seeds"] == 2 and res["documents"] == 30
    assert math.isclose(res["a"]["f1"], 50.0) and math.isclose(res["b"]["f1"], 100.0)
    assert res["f1_diff"]["ci95"] == [50.0, 50.0] and res["per_seed_diff"]["f1"] == [50.0, 50.0]
    assert "infer_f1_diff" not in res and set(res["a"]) == {"f1", "ign_f1"}
    other = write_counts(tmp_path / "other.json", titles[::-1], {"0": base, "3": better})
    broken = tmp_path / "broken.json"
    broken.write_text('{"titles": [')
    for argv, words in ((["--a", runs[0], "--ka", "0", "--b", other, "--kb", "3"], ["other.json", "other documents"]),
                        (["--a", runs[0], "--ka", "5", "--b", runs[0], "--kb", "3"], ["s0.json", "no pass 5", "0, 3"]),
                        (["--a", runs[0], "--ka", "0", "--b", runs[0]], ["--ka and --kb"]),
                        (["--a", runs[0], "--b", runs[0]], ["--gold is required"]),
                        (["--a", str(broken), "--ka", "0", "--b", runs[0], "--kb", "3"],
                         ["broken.json", "invalid JSON"])):
        assert bootstrap.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and all(w in err for w in words), err


# ---------------------------------------------------------------- plots
def test_plot_curves_and_weights(tmp_path, capsys):
    run = write_run(tmp_path / "run", stage2_lines(61.0, 58.0, 60.0))
    out = tmp_path / "curves.png"
    assert plot.main(["curves", run, "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stage2_only = write_run(tmp_path / "s2", stage2_lines(61.0, 58.0, 60.0)[1:])
    chained = tmp_path / "chained.png"
    assert plot.main(["curves", stage2_only, "--stage1", run, "--out", str(chained)]) == 0
    assert chained.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    torch.manual_seed(0)
    d = 6
    w_with = torch.cat([torch.full((4, d), 0.5), torch.full((4, d), -0.25)], 1)  # [C, 2D]: F half, R half
    w_without = torch.randn(4, 2 * d)
    for name, w in (("with.pt", w_with), ("without.pt", w_without)):
        torch.save({"model": {"inference.classifier.weight": w}}, tmp_path / name)
    assert plot.classifier_halves(tmp_path / "with.pt") == (0.5, 0.25)
    f, r = plot.classifier_halves(tmp_path / "without.pt")
    assert math.isclose(f, float(w_without[:, :d].abs().mean()), rel_tol=1e-6)
    assert math.isclose(r, float(w_without[:, d:].abs().mean()), rel_tol=1e-6)
    fig = tmp_path / "fig5.png"
    assert plot.main(["weights", "--with", str(tmp_path / "with.pt"), "--without", str(tmp_path / "without.pt"),
                      "--out", str(fig)]) == 0
    printed = json.loads(capsys.readouterr().out.splitlines()[-2])
    assert printed["w/ contrastive"] == [0.5, 0.25]
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_epochs_bands_over_seeds(tmp_path, capsys):
    """`plot.py epochs`: per group the mean and the standard deviation over its runs after every epoch."""
    short = [write_run(tmp_path / f"a{i}", epoch_lines(s1, [])) for i, s1 in enumerate([[10.0, 30.0], [20.0, 50.0]])]
    long = [write_run(tmp_path / "b", epoch_lines([5.0, 25.0, 45.0], [60.0]))]
    bands = plot.epoch_bands(summarize.parse_groups([f"16={','.join(short)}", f"32={long[0]}"]), stage=1)
    assert [(label, n) for label, n, _, _ in bands] == [("16", 2), ("32", 1)]
    assert bands[0][2].tolist() == [15.0, 40.0]
    assert bands[0][3].tolist() == pytest.approx([statistics.stdev([10.0, 20.0]), statistics.stdev([30.0, 50.0])])
    assert bands[1][2].tolist() == [5.0, 25.0, 45.0] and bands[1][3].tolist() == [0.0, 0.0, 0.0]
    out = tmp_path / "epochs.png"
    assert plot.main(["epochs", "--stage", "1", f"16={','.join(short)}", f"32={long[0]}", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot.main(["epochs", "--stage", "1", f"x={short[0]},{long[0]}", "--out", str(out)]) == 2
    assert "group x: runs with different numbers of stage-1 epochs" in capsys.readouterr().err
    assert plot.main(["epochs", "--stage", "2", short[0], "--out", str(out)]) == 2
    assert f"{short[0]}: no stage-2 epochs in metrics.jsonl" in capsys.readouterr().err


def test_plot_weights_names_the_classifier_layout():
    """The Figure 5 split assumes W_c takes [F_NI, R_NI] (Eq. 12): its input is twice the inference width."""
    import inference_module
    m = inference_module.InferenceModule(8, 16, 5, 1, 1, 0.0, "eca", True)
    assert m.classifier.weight.shape == (5, 32)


def test_plot_halves_of_one_and_two_layer_classifiers(tmp_path, capsys):
    """`plot.py halves`: mean |W| over the first D and the last D inputs of the classifier's first layer."""
    w1 = torch.cat([torch.full((5, 4), 0.5), torch.full((5, 4), -0.25)], 1)  # [C, 2D], D = 4
    w2 = torch.cat([torch.full((3, 4), -2.0), torch.full((3, 4), 1.0)], 1)   # [D', 2D] then a second layer
    paths = []
    for name, state in (("one", {"inference.classifier.weight": w1}),
                        ("two", {"inference.classifier.0.weight": w2, "inference.classifier.3.weight": w1})):
        paths.append(str(tmp_path / f"{name}.pt"))
        torch.save({"model": state}, paths[-1])
    assert plot.main(["halves", *paths]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {paths[0]: {"F": 0.5, "R": 0.25}, paths[1]: {"F": 2.0, "R": 1.0}}


# ---------------------------------------------------------------- demo report
def report_gold():
    """Two documents: 4 stated and 3 inferred facts in all; one fact listed twice (counted once)."""
    vertex = [[{"name": n, "sent_id": 0, "pos": [0, 1], "type": "LOC"}] for n in ("A", "B", "C", "D")]
    d0 = {"title": "d0", "sents": [["w"]], "vertexSet": vertex, "labels": [
        {"h": 0, "t": 1, "r": "P19", "inferred": False},
        {"h": 1, "t": 2, "r": "P17"},  # no key: stated
        {"h": 0, "t": 2, "r": "P27", "inferred": True},
        {"h": 0, "t": 2, "r": "P27", "inferred": True}]}
    d1 = {"title": "d1", "sents": [["w"]], "vertexSet": vertex, "labels": [
        {"h": 0, "t": 1, "r": "P159", "inferred": False},
        {"h": 1, "t": 3, "r": "P17", "inferred": False},
        {"h": 0, "t": 3, "r": "P17", "inferred": True},
        {"h": 2, "t": 3, "r": "P27", "inferred": True}]}
    return [d0, d1]


def report_preds():
    k0 = [{"title": "d0", "h_idx": 0, "t_idx": 1, "r": "P19"}, {"title": "d0", "h_idx": 1, "t_idx": 2, "r": "P17"},
          {"title": "d1", "h_idx": 0, "t_idx": 1, "r": "P159"}, {"title": "d1", "h_idx": 0, "t_idx": 2, "r": "P17"}]
    k3 = k0 + [{"title": "d0", "h_idx": 0, "t_idx": 2, "r": "P27"}, {"title": "d1", "h_idx": 0, "t_idx": 3, "r": "P17"},
               {"title": "d1", "h_idx": 0, "t_idx": 3, "r": "P17"}]  # a duplicate entry counts once
    return k0, k3


def test_demo_report_numbers():
    gold = report_gold()
    k0, k3 = report_preds()
    rows = demo_report.report(gold, [("K=0", k0), ("K=3", k3)])
    assert [r["label"] for r in rows] == ["K=0", "K=3"]
    a, b = rows
    # precision within the slots, with its interval over resampled documents: 3/3 in both documents -> 100
    # in every resample; the one prediction in an inferred fact's slot (d1, P17, head 0) names the wrong country
    assert a["stated"] == {"recall": 75.0, "correct": 3, "gold": 4, "precision": 100.0, "predicted": 3,
                           "precision_ci95": [100.0, 100.0]}
    assert a["inferred"] == {"recall": 0.0, "correct": 0, "gold": 3, "precision": 0.0, "predicted": 1,
                             "precision_ci95": [0.0, 0.0]}
    assert (a["num_correct"], a["num_pred"], a["num_gold"]) == (3, 4, 7)
    assert math.isclose(a["precision"], 75.0) and math.isclose(a["recall"], 300 / 7)
    assert b["stated"] == a["stated"]
    assert math.isclose(b["inferred"]["recall"], 200 / 3) and b["inferred"]["correct"] == 2
    assert math.isclose(b["inferred"]["precision"], 200 / 3) and b["inferred"]["predicted"] == 3
    assert (b["num_correct"], b["num_pred"]) == (5, 6)
    official = evaluation.docred_scores(k3, gold)
    assert all(math.isclose(b[k], official[k]) for k in ("precision", "recall", "f1"))
    assert b["by_relation"]["P27"] == {"recall": 50.0, "correct": 1, "gold": 2, "predicted": 1, "precision": 100.0}
    assert b["by_relation"]["P17"] == {"recall": 100 * 2 / 3, "correct": 2, "gold": 3, "predicted": 3,
                                       "precision": 100 * 2 / 3}
    # K=3's inferred slots: d0 1/1, d1 1/2 -> resamples give 1/2, 2/3 or 2/2: the interval spans 50 to 100
    assert b["inferred"]["precision_ci95"] == [50.0, 100.0]
    table = demo_report.format_table(rows).splitlines()
    assert table[2] == ("| K=0 | 75.00 | 42.86 | 54.55 | 75.00 (3/4) | 100.00 (3/3) [100.00, 100.00] | 0.00 (0/3) | "
                        "0.00 (0/1) [0.00, 0.00] |")
    assert table[3] == ("| K=3 | 83.33 | 71.43 | 76.92 | 75.00 (3/4) | 100.00 (3/3) [100.00, 100.00] | 66.67 (2/3) | "
                        "66.67 (2/3) [50.00, 100.00] |")


def test_demo_report_precision_interval():
    same = np.tile([3.0, 4.0, 5.0, 0.0], (6, 1))  # every document 3 of 4: no spread
    assert demo_report.precision_interval(same) == [75.0, 75.0]
    mixed = np.array([[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]] * 20)  # 20 of 40 right
    low, high = demo_report.precision_interval(mixed, samples=2000)
    assert 30 < low < 50 < high < 70
    # several runs (training seeds): identical runs give the one run's interval; runs that disagree widen it
    assert demo_report.precision_interval(np.stack([mixed] * 3)) == demo_report.precision_interval(mixed)
    right, wrong = np.tile([1.0, 1.0, 1.0, 0.0], (40, 1)), np.tile([0.0, 1.0, 1.0, 0.0], (40, 1))
    assert demo_report.precision_interval(right) == [100.0, 100.0]
    low, high = demo_report.precision_interval(np.stack([right, wrong]), samples=2000)
    assert low == 0.0 and high == 100.0  # the seeds drawn decide: both wrong, both right, or one each (50)
    low, high = demo_report.precision_interval(np.stack([right, right, wrong] * 2), samples=2000)
    assert 0 < low < 200 / 3 < high


def test_demo_report_unmarked_gold_and_cli(tmp_path, capsys):
    gold = report_gold()
    for doc in gold:
        for lab in doc["labels"]:
            lab.pop("inferred", None)  # DocRED / Re-DocRED: no label says whether it is stated
    k0, k3 = report_preds()
    paths = {name: helpers.write_docs(tmp_path, f"{name}.json", docs)
             for name, docs in (("gold", gold), ("k0", k0), ("k3", k3))}
    out = tmp_path / "report.json"
    assert demo_report.main(["--gold", paths["gold"], "--pred", f"K=0 (base module)={paths['k0']}",
                             "--pred", paths["k3"], "--json", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| predictions | precision | recall | F1 |" and lines[1] == "|---|---|---|---|"
    assert lines[2] == "| K=0 (base module) | 75.00 | 42.86 | 54.55 |"
    assert lines[3].startswith(f"| {paths['k3']} | 83.33 |")  # a bare path labels itself
    rows = json.loads(out.read_text())
    assert rows[0]["stated"] is None and rows[0]["inferred"] is None and rows[1]["num_correct"] == 5
    # --max_docs 1: the first gold document alone (3 unique facts) and the predictions for it
    assert demo_report.main(["--gold", paths["gold"], "--pred", f"a={paths['k0']}", "--max_docs", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[2] == "| a | 100.00 | 66.67 | 80.00 |"


def test_demo_report_errors(tmp_path, capsys):
    gold = helpers.write_docs(tmp_path, "gold.json", report_gold())
    k0 = helpers.write_docs(tmp_path, "k0.json", report_preds()[0])
    cases = [(["--gold", str(tmp_path / "nope.json"), "--pred", k0], "nope.json"),
             (["--gold", gold, "--pred", f"K=0={tmp_path / 'missing.json'}"], "missing.json"),
             (["--gold", gold, "--pred", helpers.write_docs(tmp_path, "obj.json", {"title": "d0"})], "obj.json"),
             (["--gold", gold, "--pred", helpers.write_docs(tmp_path, "bad.json", [{"title": "d0", "h_idx": 0}])],
              "bad.json"),
             (["--gold", gold, "--pred", helpers.write_docs(tmp_path, "str.json", ["d0 0 1 P17"])], "str.json"),
             (["--gold", k0, "--pred", k0], "k0.json")]  # a submission given as the gold file: no labels
    for argv, name in cases:
        assert demo_report.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and name in err, err
    proc = subprocess.run([sys.executable, str(helpers.ROOT / "scripts" / "demo_report.py"), "--gold", gold,
                           "--pred", str(tmp_path / "missing.json")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1


def test_run_demo_script_parses():
    for name in ("run_demo.sh", "evidence_gpu.sh", "whole_runs_gpu.sh", "plateau_gpu.sh", "far_gpu.sh",
                 "gpu_lib.sh", "run_queue.sh"):
        subprocess.run(["bash", "-n", str(helpers.ROOT / "scripts" / name)], check=True)


def _running(pid):
    """The process exists and is no zombie (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_run_until_stops_its_runs_when_the_script_is_stopped(tmp_path):
    """run_until starts its command in a process session of its own; a SIGTERM to the calling script (a time
    limit, Ctrl-C) stops that command too, so that no run is left going, holding its folder's lock."""
    script = tmp_path / "s.sh"
    script.write_text(f"""set -u
OUT={tmp_path}; LOG={tmp_path}/log
source {helpers.ROOT}/scripts/gpu_lib.sh
run_until 600 true {tmp_path}/cmd.log bash -c 'echo $$ > {tmp_path}/pid; sleep 60'
echo not reached > {tmp_path}/after
""")
    proc = subprocess.Popen(["bash", str(script)])
    pid_file = tmp_path / "pid"
    for _ in range(200):
        if pid_file.exists() and pid_file.read_text().strip():
            break
        time.sleep(0.05)
    inner = int(pid_file.read_text())
    assert _running(inner)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    for _ in range(100):
        if not _running(inner):
            break
        time.sleep(0.05)
    assert not _running(inner) and not (tmp_path / "after").exists()


FAKE_TRAIN = """#!/usr/bin/env bash
# stands in for `python train.py ...`: records its flags, writes what evidence.sh looks for
echo "$*" >> "$CALLS"
save=; prev=
for a in "$@"; do [ "$prev" = --save_path ] && save=$a; prev=$a; done
[ -n "$save" ] || exit 0  # not a run (the GPU scripts' version and package checks)
mkdir -p "$save"
case " $* " in *" --evaluate_only "*) ;; *) echo {} > "$save/best.pt";; esac
echo {} > "$save/eval_scores.json"  # train.py scores every run it ends, training runs as well
"""


def run_faked(tmp_path, script, args, runs, **env):
    """scripts/SCRIPT ARGS with `python` replaced by FAKE_TRAIN: (exit status, stderr, the recorded calls)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "python").write_text(FAKE_TRAIN)
    (bin_dir / "python").chmod(0o755)
    calls = tmp_path / "calls.txt"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(calls), "JOBS": "1", "RUNS": runs, **env}
    proc = subprocess.run(["bash", str(helpers.ROOT / "scripts" / script), *args], capture_output=True, text=True,
                          env=env)
    return proc.returncode, proc.stderr, calls.read_text().splitlines() if calls.exists() else []


def run_evidence(tmp_path, runs, *seeds, **env):
    return run_faked(tmp_path, "evidence.sh", ["ckpt.pt", str(tmp_path / "ev"), *seeds], runs, **env)


def test_evidence_runs_in_the_given_order_and_skips_finished_ones(tmp_path):
    code, err, calls = run_evidence(tmp_path, "authors/no_fusion/5 paper/full/3")
    assert code == 0, err
    trains = [c for c in calls if "--evaluate_only" not in c]
    assert len(calls) == 4 and len(trains) == 2
    assert "--recipe authors --seed 5" in trains[0] and "--no_fusion" in trains[0]
    assert "--recipe paper --seed 3" in trains[1] and "--no_fusion" not in trains[1]
    assert f"--load_path {tmp_path}/ev/authors/no_fusion/s5/best.pt --num_iterations 4" in calls[1]
    assert (tmp_path / "ev" / "paper" / "full" / "s3" / "eval_k4" / "eval_scores.json").is_file()
    code, err, again = run_evidence(tmp_path, "paper/full/3 paper/full/4")  # s3 is done: only s4 runs
    assert code == 0 and again[:4] == calls and len(again) == 6
    assert "--recipe paper --seed 4" in again[4]
    assert again[5].endswith(f"{tmp_path}/ev/paper/full/s4/eval_k4 --overwrite")
    # without RUNS: RECIPES x VARIANTS x the seeds given, seed by seed
    (tmp_path / "x").mkdir()
    code, err, calls = run_evidence(tmp_path / "x", "", "7", "8", RECIPES="paper", VARIANTS="full ni1")
    assert code == 0, err
    assert _trained(calls, tmp_path / "x" / "ev") == ["paper/full/s7", "paper/ni1/s7", "paper/full/s8", "paper/ni1/s8"]


def _save_path(call):
    """The --save_path of one faked train.py call ("" where it has none)."""
    return call.split("--save_path ")[1].split()[0] if "--save_path" in call else ""


def _trained(calls, root):
    """The save paths of the training runs among CALLS, relative to ROOT."""
    return [_save_path(c).split(f"{root}/")[1] for c in calls if _save_path(c) and "--evaluate_only" not in c]


def test_evidence_trains_and_evaluates_in_one_precision(tmp_path):
    code, err, calls = run_evidence(tmp_path, "authors/full/1")
    assert code == 0, err
    assert len(calls) == 2 and all("--amp auto" in c for c in calls)
    (tmp_path / "fp32").mkdir()
    code, err, calls = run_evidence(tmp_path / "fp32", "authors/full/1", AMP="none")
    assert code == 0, err
    assert len(calls) == 2 and all("--amp none" in c and "--amp auto" not in c for c in calls)


def test_evidence_control_and_a_stage_1_per_seed(tmp_path):
    code, err, calls = run_faked(tmp_path, "evidence.sh", ["s1/s{seed}/best_stage1.pt", str(tmp_path / "ev")],
                                 "paper/control/7 authors/control/8 paper/full/8")
    assert code == 0, err
    trains = [c for c in calls if "--evaluate_only" not in c]
    assert len(trains) == 3
    # each run loads the stage 1 of its own seed; the control keeps only the base loss, at the recipe's weight
    assert "--load_path s1/s7/best_stage1.pt --recipe paper --seed 7" in trains[0]
    assert trains[0].endswith("--loss_weights 1,0,0,0 --contrastive none --num_iterations 0")
    assert "--load_path s1/s8/best_stage1.pt --recipe authors --seed 8" in trains[1]
    assert trains[1].endswith("--loss_weights 5,0,0,0 --contrastive none --num_iterations 0")
    assert "--load_path s1/s8/best_stage1.pt --recipe paper --seed 8" in trains[2]
    assert "--loss_weights" not in trains[2] and "--num_iterations" not in trains[2]
    # and is evaluated like every other run, at K = 0..4 (its passes untrained: K = 0 is the model)
    assert sum(f"--load_path {tmp_path}/ev/paper/control/s7/best.pt --num_iterations 4" in c for c in calls) == 1


def test_plateau_gpu_trains_a_stage_1_per_seed_of_the_runs_given(tmp_path):
    """RUNS instead of SEEDS x KINDS: a stage 1 for each seed among the runs (once), then exactly those stage-2
    runs in their order, each from its own seed's stage 1; TINY (a CPU smoke test) trains with --amp auto."""
    code, err, calls = run_faked(tmp_path, "plateau_gpu.sh", [str(tmp_path / "out")],
                                 "paper/full/67 authors/no_fusion/66\npaper/full/66", TINY="1",
                                 RUNS_DIR=str(tmp_path / "runs"))
    assert code == 0, err
    runs = [c for c in calls if "--save_path" in c and "--evaluate_only" not in c]
    saved = _trained(calls, tmp_path / "runs")
    assert sorted(saved[:2]) == ["stage1/s66", "stage1/s67"]
    assert saved[2:] == ["paper/full/s67", "authors/no_fusion/s66", "paper/full/s66"]
    assert all("--stage1_epochs 1 --stage2_epochs 0" in c for c in runs[:2])
    assert f"--load_path {tmp_path}/runs/stage1/s67/best_stage1.pt --recipe paper --seed 67" in runs[2]
    assert f"--load_path {tmp_path}/runs/stage1/s66/best_stage1.pt --recipe authors --seed 66" in runs[3]
    assert all("--amp auto" in c for c in runs) and (tmp_path / "out" / "runs.tar.gz").is_file()
    log = (tmp_path / "out" / "plateau.log").read_text()
    assert "for seeds 66 67, then" in log and "stage 2 done: 3" in log


def test_plateau_cpu_runs_a_lane_per_seed_stage_1_first(tmp_path):
    """Each seed's lane: its 32-epoch stage 1, then its own runs (in RUNS' order) from that checkpoint; a second
    call finds everything finished and trains nothing."""
    out = tmp_path / "p32"
    code, err, calls = run_faked(tmp_path, "plateau_cpu.sh", [str(out)],
                                 "authors/full/66 authors/no_fusion/67\npaper/full/66", LANES="1")
    assert code == 0, err
    assert _trained(calls, out) == ["stage1/s66", "authors/full/s66", "paper/full/s66", "stage1/s67",
                                    "authors/no_fusion/s67"]
    stage1 = [c for c in calls if "/stage1/s" in _save_path(c)]
    assert len(stage1) == 2
    assert all("--stage1_epochs 32 --stage2_epochs 0 --num_iterations 0 --classifier_lr 1e-3" in c for c in stage1)
    assert all("--amp auto" in c and "--threads 1" in c for c in calls)
    assert f"--load_path {out}/stage1/s67/best_stage1.pt --recipe authors --seed 67" in calls[-2]
    assert "--no_fusion" in calls[-2] and "--inference_lr 1e-3" in calls[-2] and "--stage2_epochs 6" in calls[-2]
    assert calls[-1].endswith(f"--load_path {out}/authors/no_fusion/s67/best.pt --num_iterations 4 --save_path "
                              f"{out}/authors/no_fusion/s67/eval_k4 --overwrite")
    (tmp_path / "calls.txt").unlink()
    code, err, again = run_faked(tmp_path, "plateau_cpu.sh", [str(out)], "authors/full/66 authors/no_fusion/67")
    assert code == 0 and again == []


@pytest.mark.parametrize("lanes", ["1", "2"])
def test_plateau_cpu_default_runs_and_a_stopped_stage_1(tmp_path, lanes):
    """SEEDS x KINDS by default (E's two runs, then D's); a stage 1 that left last.pt is resumed, and one that still
    does not finish stops its lane with a message and exit status 1, the other lane going on."""
    out = tmp_path / "p32"
    (out / "stage1" / "s5").mkdir(parents=True)
    (out / "stage1" / "s5" / "last.pt").write_text("{}")
    code, err, calls = run_faked(tmp_path, "plateau_cpu.sh", [str(out)], "", SEEDS="5 6", LANES=lanes)
    assert code == 1 and err.count("unfinished") == 1 and f"lane of seed 5 unfinished: {out}/lane_s5.log" in err
    assert f"train.py --resume {out}/stage1/s5 --threads 1" in calls
    assert "stage 1 of seed 5 unfinished" in (out / "lane_s5.log").read_text()
    assert _trained(calls, out) == ["stage1/s6", "authors/full/s6", "authors/no_fusion/s6", "paper/full/s6",
                                    "paper/control/s6"]


def test_train_or_resume_skips_a_finished_run_and_resumes_a_stopped_one(tmp_path):
    """scripts/run_queue.sh's rule, shared by every script that trains: DIR/eval_scores.json means finished (no
    call), DIR/last.pt without it means stopped (--resume), neither means a new run saving into DIR."""
    for name, files in (("done", ["last.pt", "eval_scores.json"]), ("stopped", ["last.pt"]), ("new", [])):
        (tmp_path / name).mkdir()
        for f in files:
            (tmp_path / name / f).write_text("{}")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(FAKE_TRAIN)
    (bin_dir / "python").chmod(0o755)
    script = f"""source {helpers.ROOT}/scripts/run_queue.sh
for d in done stopped new; do train_or_resume {tmp_path}/$d 3 --seed 9 --amp none || exit 1; done"""
    subprocess.run(["bash", "-c", script], check=True, cwd=tmp_path,
                   env={"PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(tmp_path / "calls.txt")})
    assert (tmp_path / "calls.txt").read_text().splitlines() == [
        f"train.py --resume {tmp_path}/stopped --threads 3",
        f"train.py --save_path {tmp_path}/new --overwrite --seed 9 --amp none"]


def test_plateau_cpu_checks_the_run_names_before_training(tmp_path):
    code, err, calls = run_faked(tmp_path, "plateau_cpu.sh", [str(tmp_path / "p32")],
                                 "authors/full/66 paper/bogus/67")
    assert code == 2 and "not RECIPE/VARIANT/SEED with a known variant and a numeric seed: paper/bogus/67" in err
    assert calls == []


@pytest.mark.parametrize("runs,seeds,message", [
    ("paper/bogus/1", (), "not RECIPE/VARIANT/SEED with a known variant and a numeric seed: paper/bogus/1"),
    ("paper/full", (), "not RECIPE/VARIANT/SEED with a known variant and a numeric seed: paper/full"),
    ("paper/full/1 paper", (), "not RECIPE/VARIANT/SEED with a known variant and a numeric seed: paper\n"),
    ("paper/full/x", (), "not RECIPE/VARIANT/SEED with a known variant and a numeric seed: paper/full/x"),
    ("", (), "usage: bash scripts/evidence.sh STAGE1_CKPT OUT SEED"),
])
def test_evidence_bad_runs(tmp_path, runs, seeds, message):
    code, err, calls = run_evidence(tmp_path, runs, *seeds)
    assert code == 2 and message in err and calls == []


def test_whole_runs_train_both_stages_per_seed_and_evaluate(tmp_path):
    out = tmp_path / "whole"
    code, err, calls = run_faked(tmp_path, "whole_runs.sh", [str(out)], "bf16/3 fp32/3 nopre/4", STAGE2_EPOCHS="2")
    assert code == 0, err
    trains = [c for c in calls if "--evaluate_only" not in c]
    assert len(trains) == 3 and len(calls) == 3 + 2 + 2 + 1  # nopre has no stage-1 checkpoint to evaluate
    assert "--amp bf16 --recipe authors --seed 3 --stage1_epochs 16 --stage2_epochs 2" in trains[0]
    assert "--amp none --recipe authors --seed 3 --stage1_epochs 16 --stage2_epochs 2" in trains[1]
    assert "--seed 4 --skip_stage1 --stage2_epochs 18" in trains[2] and "--stage1_epochs" not in trains[2]
    stage1_eval = f"--amp none --evaluate_only --load_path {out}/fp32/s3/best_stage1.pt --num_iterations 0"
    assert sum(stage1_eval in c for c in calls) == 1
    assert calls[-1].endswith(f"--load_path {out}/nopre/s4/best.pt --num_iterations 4 --save_path "
                              f"{out}/nopre/s4/eval_k4 --overwrite")
    assert all("--classifier_lr 1e-3 --inference_lr 1e-3" in c for c in trains)
    code, err, again = run_faked(tmp_path, "whole_runs.sh", [str(out)], "nopre/4 bf16/5")  # nopre/4 is done
    assert code == 0 and again[:len(calls)] == calls and len(again) == len(calls) + 3
    assert "--seed 5 --stage1_epochs 16 --stage2_epochs 6" in again[len(calls)]


def test_whole_runs_control_trains_the_base_module_alone_in_stage_2(tmp_path):
    out = tmp_path / "whole"
    code, err, calls = run_faked(tmp_path, "whole_runs.sh", [str(out)], "ctrl/7 bf16/7")
    assert code == 0, err
    ctrl, full = [c for c in calls if "--evaluate_only" not in c]
    assert ("--amp bf16 --recipe authors --seed 7 --stage1_epochs 16 --stage2_epochs 6 --loss_weights 5,0,0,0 "
            "--contrastive none --num_iterations 0") in ctrl
    assert "--loss_weights" not in full and "--contrastive" not in full and "--num_iterations" not in full
    assert sum(f"--load_path {out}/ctrl/s7/best_stage1.pt --num_iterations 0" in c for c in calls) == 1
    assert sum(f"--load_path {out}/ctrl/s7/best.pt --num_iterations 4" in c for c in calls) == 1
    (tmp_path / "paper").mkdir()  # the paper recipe's control keeps the paper's base weight, 1
    code, err, calls = run_faked(tmp_path / "paper", "whole_runs.sh", [str(tmp_path / "paper" / "whole")], "ctrl/7",
                                 RECIPE="paper")
    assert code == 0, err
    assert ("--recipe paper --seed 7 --stage1_epochs 16 --stage2_epochs 6 --loss_weights 1,0,0,0 "
            "--contrastive none --num_iterations 0") in calls[0]


@pytest.mark.parametrize("runs,message", [
    ("bf16/1 fp16/2", "not KIND/SEED with KIND bf16, fp32, nopre or ctrl: fp16/2"),
    ("bf16/x", "not KIND/SEED with a numeric SEED: bf16/x"),
    ("nopre", "not KIND/SEED with a numeric SEED: nopre"),
    ("", "RUNS=\"KIND/SEED ...\""),
])
def test_whole_runs_bad_runs(tmp_path, runs, message):
    code, err, calls = run_faked(tmp_path, "whole_runs.sh", [str(tmp_path / "whole")], runs)
    assert code != 0 and message in err and calls == []


# ---------------------------------------------------------------- synthetic demo data
def check_demo_doc(doc):
    """The generator's contract for one labelled document (see scripts/make_demo_data.py)."""
    vs, sents, labels = doc["vertexSet"], doc["sents"], doc["labels"]
    types = [e[0]["type"] for e in vs]
    assert all(e for e in vs)  # every entity is mentioned
    for e in vs:
        for m in e:
            assert sents[m["sent_id"]][m["pos"][0]:m["pos"][1]] == m["name"].split() == e[0]["name"].split()
    sent_ids = [{m["sent_id"] for m in e} for e in vs]
    stated = {(lab["h"], lab["t"], lab["r"]) for lab in labels if not lab["inferred"]}
    for lab in labels:
        h, t, r = lab["h"], lab["t"], lab["r"]
        assert isinstance(lab["inferred"], bool)
        # exactly the citizenships and the organisations' countries are inferred
        assert lab["inferred"] == (r == "P27" or (r == "P17" and types[h] == "ORG"))
        if not lab["inferred"]:  # stated: one sentence mentions both, and it is the evidence
            assert lab["evidence"] == sorted(sent_ids[h] & sent_ids[t]) and len(lab["evidence"]) == 1
            continue
        # never stated: no sentence mentions head and tail (by the annotation), and no sentence that holds the
        # head's name holds a word of the tail's name (by the text, whatever the annotation says)
        assert not sent_ids[h] & sent_ids[t]
        head_words, tail_words = set(vs[h][0]["name"].split()), set(vs[t][0]["name"].split())
        for sent in sents:
            assert not (head_words <= set(sent) and tail_words & set(sent))
        # but it follows from two stated facts: head -> city (P19 / P159) and city -> country (P17)
        first = {"P27": "P19", "P17": "P159"}[r]
        bridges = [x for x in range(len(vs)) if (h, x, first) in stated and (x, t, "P17") in stated]
        assert len(bridges) == 1
        assert lab["evidence"] == sorted(sent_ids[h] & sent_ids[bridges[0]] | sent_ids[bridges[0]] & sent_ids[t])
    # one inferred fact per person and per organisation
    inferred_heads = sorted(lab["h"] for lab in labels if lab["inferred"])
    assert inferred_heads == [e for e, kind in enumerate(types) if kind in ("PER", "ORG")]


def test_demo_data_marks_inferred_facts_and_never_states_them():
    import make_demo_data
    for counts in ({}, {"countries": 3, "cities": 4, "orgs": 3, "people": 4, "assign": "even"},
                   {"countries": 1, "cities": 3, "orgs": 1, "people": 5, "assign": "random"}):
        docs = make_demo_data.make_splits({"train": 40, "dev": 10}, seed=5, **counts)
        titles = [d["title"] for split in docs.values() for d in split]
        assert len(set(titles)) == len(titles) == 50
        for split in docs.values():
            for doc in split:
                check_demo_doc(doc)
    even = make_demo_data.make_doc(random.Random(0), 0, countries=2, cities=4, orgs=2, people=4, assign="even")
    births = sorted(lab["t"] for lab in even["labels"] if lab["r"] == "P19")
    assert len(set(births)) == 4  # as many cities as people: each born in another city


def test_demo_data_gap_keeps_the_two_hops_apart(tokenizer):
    """--gap N: the sentences stating first hops come first, the cities' countries last, and between them
    filler that mentions no entity and is at least N tokens of the bundled tokenizer long (one per word), so
    no window of N tokens holds both facts a never-stated one follows from."""
    import make_demo_data
    assert set(make_demo_data.FILLER) and all(
        len(tokenizer.tokenize(text)) == len(text.split()) for text in make_demo_data.FILLER)
    for gap in (1, 40):
        for doc in make_demo_data.make_splits({"train": 30}, seed=3, gap=gap, people=3)["train"]:
            check_demo_doc(doc)
            mentioned = {m["sent_id"] for e in doc["vertexSet"] for m in e}
            relation_of = {s: lab["r"] for lab in doc["labels"] if not lab["inferred"] for s in lab["evidence"]}
            kinds = ["city" if relation_of.get(i) == "P17" else "hop" if i in mentioned else "filler"
                     for i in range(len(doc["sents"]))]
            first, last = kinds.index("filler"), len(kinds) - 1 - kinds[::-1].index("filler")
            assert set(kinds[:first]) == {"hop"} and set(kinds[first:last + 1]) == {"filler"}
            assert set(kinds[last + 1:]) == {"city"} and kinds.count("city") == 2
            filler = [w for sent in doc["sents"][first:last + 1] for w in sent[:-1]]
            assert len(tokenizer.tokenize(" ".join(filler))) >= gap
            assert len(filler) < gap + max(len(t.split()) for t in make_demo_data.FILLER)  # no more than needed
    with pytest.raises(ValueError, match="gap >= 0"):
        make_demo_data.make_doc(random.Random(0), 0, gap=-1)


def test_demo_data_files_score_and_load(tmp_path, tokenizer, capsys):
    import make_demo_data
    import prepro
    out = tmp_path / "demo"
    assert make_demo_data.main(["--out", str(out), "--train", "6", "--dev", "4", "--test", "3", "--seed", "2"]) == 0
    dev = json.loads((out / "dev.json").read_text())
    assert all("labels" not in d for d in json.loads((out / "test.json").read_text()))
    # scorer and reader ignore the extra "inferred" key: the gold facts as predictions score F1 100
    gold_as_pred = [{"title": d["title"], "h_idx": lab["h"], "t_idx": lab["t"], "r": lab["r"]}
                    for d in dev for lab in d["labels"]]
    scores = evaluation.docred_scores(gold_as_pred, dev, json.loads((out / "train.json").read_text()))
    assert scores["f1"] == 100.0 and scores["num_gold"] == len(gold_as_pred)
    feats = prepro.load_features(str(out / "dev.json"), "docred", tokenizer, 512, cache_dir=str(tmp_path / "c"))
    assert sum(1 for f in feats for lab in f["labels"] if lab) == len(gold_as_pred)  # no two facts share a pair
    with pytest.raises(SystemExit):
        make_demo_data.main(["--out", str(out), "--countries", "3", "--cities", "2"])
    assert "cities >= countries" in capsys.readouterr().err


def test_demo_report_over_seeds(tmp_path, capsys):
    """--runs: per-kind F1 from recall and in-slot precision, averaged over seeds, with the seeds x documents
    bootstrap of the difference; the base module's predictions are read from run_demo.sh's k0/ folder or from
    a train.py stage 2's dev_result_k0.json; run folders whose full models use different K are refused."""
    gold = helpers.write_docs(tmp_path, "gold.json", report_gold())
    k0, k3 = report_preds()
    runs = []
    for seed, k in ((1, 3), (2, 3), (3, 2)):
        run = tmp_path / f"s{seed}"
        (run / "k0").mkdir(parents=True)
        if seed == 2:  # train.py's layout: dev_result_k0.json wins over a k0/ folder beside it (a decoy here)
            helpers.write_docs(run, "dev_result_k0.json", k0)
            helpers.write_docs(run / "k0", "dev_result.json", k3)
        else:
            helpers.write_docs(run / "k0", "dev_result.json", k0)
        helpers.write_docs(run, "dev_result.json", k3)
        helpers.write_docs(run, "eval_scores.json", {"dev_by_k": {str(i): 0.0 for i in range(k + 1)}})
        runs.append(str(run))
    out = tmp_path / "seeds.json"
    assert demo_report.main(["--gold", gold, "--runs", *runs[:2], "--json", str(out)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| facts | seeds | F1 K=0 | F1 K=3 |")
    rows = {r["facts"]: r for r in json.loads(out.read_text())}
    # stated: recall 3/4 and precision 3/3 at both K; inferred: 0/3 and 0/1 at K=0, 2/3 and 2/3 at K=3
    assert rows["stated"]["recall"] == [75.0, 75.0] and rows["stated"]["precision"] == [100.0, 100.0]
    assert math.isclose(rows["stated"]["f1"][0], 100 * 2 * 0.75 / 1.75)
    assert rows["inferred"]["f1"][0] == 0.0 and math.isclose(rows["inferred"]["f1"][1], 200 / 3)
    assert rows["inferred"]["f1_diff"]["point"] == rows["inferred"]["f1"][1]
    assert rows["stated"]["f1_diff"]["ci95"] == [0.0, 0.0]  # identical predictions at both K
    assert math.isclose(rows["all"]["f1"][1], evaluation.docred_scores(k3, report_gold())["f1"])
    assert rows["all"]["seeds"] == 2
    assert demo_report.main(["--gold", gold, "--runs", *runs]) == 2
    assert "different numbers of passes: [2, 3]" in capsys.readouterr().err
