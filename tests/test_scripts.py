"""Tests for the experiment tools (Issue 7): scripts/summarize.py (mean ± std tables, Table 2 by K),
scripts/bootstrap.py (paired bootstrap equal to the official scores on the full set) and scripts/plot.py
(training curves, the Figure 5 classifier-weight analysis). Made-up runs and documents only."""
import json
import math
import random
import statistics
import sys

import torch

import evaluation
import helpers

sys.path.insert(0, str(helpers.ROOT / "scripts"))
import bootstrap  # noqa: E402
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


def test_summarize_errors(tmp_path, capsys):
    assert summarize.main([str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    run = write_run(tmp_path / "dev_only", [], {"dev": {"f1": 1.0}})
    assert summarize.main(["--split", "test", run]) == 2
    assert "no 'test' scores" in capsys.readouterr().err
    assert summarize.main(["--by_k", run]) == 2
    assert "no 'dev_by_k'" in capsys.readouterr().err


# ---------------------------------------------------------------- bootstrap
def gold_and_train():
    gold = [helpers.make_doc(i, num_entities=5) for i in range(12)]
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
    counts = bootstrap.doc_counts(sub, gold, train)
    assert counts.shape == (len(gold), 4)
    assert counts.sum(0).tolist() == [official[k] for k in bootstrap.COUNTS]
    f1, ign = bootstrap.f1_from_counts(counts.sum(0))
    assert math.isclose(f1, official["f1"], abs_tol=1e-9) and math.isclose(ign, official["ign_f1"], abs_tol=1e-9)


def test_paired_bootstrap_difference():
    gold, train = gold_and_train()
    worse = bootstrap.doc_counts(submission(gold, keep=0.5, extra=2, seed=2), gold, train)
    perfect = bootstrap.doc_counts(submission(gold, keep=1.0, extra=0, seed=3), gold, train)
    res = bootstrap.paired_bootstrap(worse, perfect, samples=300, seed=0)
    assert res["b"]["f1"] == 100.0 and res["documents"] == len(gold)
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
    stray = helpers.write_docs(tmp_path, "stray.json", [{"title": "Nowhere", "h_idx": 0, "t_idx": 1, "r": "P17"}])
    assert bootstrap.main(["--gold", paths["gold"], "--a", paths["a"], "--b", stray]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "stray.json" in err and "'Nowhere'" in err


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


def test_plot_weights_names_the_classifier_layout():
    """The Figure 5 split assumes W_c takes [F_NI, R_NI] (Eq. 12): its input is twice the inference width."""
    import inference_module
    m = inference_module.InferenceModule(8, 16, 5, 1, 1, 0.0, "eca", True)
    assert m.classifier.weight.shape == (5, 32)
