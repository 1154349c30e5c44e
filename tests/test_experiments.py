"""Tests for the laboratory in experiments/: summarize.py (mean ± std tables, Table 2 by K), bootstrap.py and
resampling.py (paired bootstrap equal to the official scores on the full set), plot.py (training curves, the
Figure 5 classifier-weight analysis) and runner.py (the runs behind docs/RESULTS.md, with a fake train.py).
Made-up runs and documents only."""
import json
import math
import random
import signal
import statistics
import subprocess
import sys
import tarfile
import time

import pytest
import torch

import bootstrap
import evaluation
import helpers
import plot
import resampling
import runner
import summarize


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
    counts = resampling.doc_counts(sub, gold, train)
    assert counts.shape == (len(gold), 7)
    assert counts.sum(0).tolist() == [official[k] for k in resampling.COUNTS + resampling.INFER_COUNTS]
    f1, ign, infer = resampling.f1_from_counts(counts.sum(0))
    assert math.isclose(f1, official["f1"], abs_tol=1e-9) and math.isclose(ign, official["ign_f1"], abs_tol=1e-9)
    assert math.isclose(infer, official["infer_f1"], abs_tol=1e-9)
    assert len(resampling.f1_from_counts(counts[:, :4].sum(0))) == 2  # CDR / GDA counts: no Infer-F1


def test_paired_bootstrap_difference():
    gold, train = gold_and_train()
    worse = resampling.doc_counts(submission(gold, keep=0.5, extra=2, seed=2), gold, train)
    perfect = resampling.doc_counts(submission(gold, keep=1.0, extra=0, seed=3), gold, train)
    res = resampling.paired_bootstrap(worse, perfect, samples=300, seed=0)
    assert res["b"]["f1"] == 100.0 and res["b"]["infer_f1"] == 100.0 and res["documents"] == len(gold)
    assert 0 < res["infer_f1_diff"]["ci95"][0] and res["infer_f1_diff"]["point"] == 100.0 - res["a"]["infer_f1"]
    d = res["f1_diff"]
    assert math.isclose(d["point"], 100.0 - res["a"]["f1"])
    assert 0 < d["ci95"][0] <= d["point"] <= d["ci95"][1] and d["p_b_not_better"] == 0.0 and d["std"] > 0
    same = resampling.paired_bootstrap(worse, worse, samples=50, seed=0)["f1_diff"]
    assert same["point"] == 0 and same["ci95"] == [0.0, 0.0] and same["p_b_not_better"] == 1.0
    again = resampling.paired_bootstrap(worse, perfect, samples=300, seed=0)
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


# ---------------------------------------------------------------- runner
FAKE_PYTHON = """#!/usr/bin/env bash
# stands in for `python SCRIPT ...`: records its arguments and writes what the runner looks for (a train.py run
# folder, a report's --json); with SLOW set, a run lasts that many seconds and leaves last.pt when stopped
echo "$*" >> "$CALLS"
save=; json=; prev=
for a in "$@"; do
  [ "$prev" = --save_path ] && save=$a
  [ "$prev" = --json ] && json=$a
  prev=$a
done
[ -z "$json" ] || echo {} > "$json"
[ -n "$save" ] || exit 0  # not a run: --resume, a version check, a data generator
mkdir -p "$save"
if [ -n "${SLOW:-}" ]; then
  trap 'echo {} > "$save/last.pt"; exit 143' TERM
  echo $$ >> "$CALLS.pids"
  sleep "$SLOW" & wait
fi
case " $* " in *" --evaluate_only "*) ;; *) echo {} > "$save/best.pt";; esac
echo {} > "$save/eval_scores.json"  # train.py scores every run it ends, training runs as well
"""


class Ran:
    """A runner call with the fake python: exit status, output and the recorded calls."""

    def __init__(self, proc, calls):
        self.code, self.out, self.err = proc.returncode, proc.stdout, proc.stderr
        self.calls = calls.read_text().splitlines() if calls.exists() else []

    def trained(self, root):
        """The save paths of the training runs among the calls, relative to root."""
        return [_save_path(c).split(f"{root}/")[1] for c in self.calls if _save_path(c) and "--evaluate_only" not in c]


def _save_path(call):
    """The --save_path of one recorded call ("" where it has none)."""
    return call.split("--save_path ")[1].split()[0] if "--save_path" in call else ""


def runner_env(tmp_path, **env):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "python").write_text(FAKE_PYTHON)
    (bin_dir / "python").chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(tmp_path / "calls.txt"), **env}


def run_runner(tmp_path, *argv, jobs=1, **env):
    """experiments/runner.py ARGV (--jobs JOBS) with `python` replaced by FAKE_PYTHON."""
    argv = [*map(str, argv), *(["--jobs", str(jobs)] if jobs else [])]
    proc = subprocess.run([sys.executable, str(helpers.ROOT / "experiments" / "runner.py"), *argv],
                          capture_output=True, text=True, env=runner_env(tmp_path, **env), timeout=120)
    return Ran(proc, tmp_path / "calls.txt")


def checkpoint(tmp_path):
    path = tmp_path / "ckpt.pt"
    path.write_text("{}")
    return path


def test_runner_stage_2_runs_in_the_given_order_and_skips_finished_ones(tmp_path):
    ckpt, out = checkpoint(tmp_path), tmp_path / "ev"
    ran = run_runner(tmp_path, out, "authors/no_fusion/5", "paper/full/3", "--stage1", ckpt, "--inference_lr", "1e-3")
    assert ran.code == 0, ran.err
    trains = [c for c in ran.calls if "--evaluate_only" not in c]
    assert len(ran.calls) == 4 and len(trains) == 2
    assert f"--load_path {ckpt} --recipe authors --seed 5 --stage2_epochs 6" in trains[0] and "--no_fusion" in trains[0]
    assert "--recipe paper --seed 3" in trains[1] and "--no_fusion" not in trains[1]
    assert all(c.endswith("--inference_lr 1e-3") for c in trains)
    assert f"--load_path {out}/authors/no_fusion/s5/best.pt --num_iterations 4" in ran.calls[1]
    assert (out / "paper" / "full" / "s3" / "eval_k4" / "eval_scores.json").is_file()
    again = run_runner(tmp_path, out, "paper/full/3", "paper/full/4", "--stage1", ckpt)  # s3 is done: only s4 runs
    assert again.code == 0 and again.calls[:4] == ran.calls and len(again.calls) == 6
    assert f"done: {out}/paper/full/s3" in again.out and "--recipe paper --seed 4" in again.calls[4]
    assert again.calls[5].endswith(f"{out}/paper/full/s4/eval_k4 --overwrite")
    # --seeds: the names without their seed, seed by seed
    (tmp_path / "x").mkdir()
    ran = run_runner(tmp_path / "x", tmp_path / "x" / "ev", "paper/full", "paper/ni1", "--seeds", 7, 8, "--stage1",
                     ckpt)
    assert ran.code == 0, ran.err
    assert ran.trained(tmp_path / "x" / "ev") == ["paper/full/s7", "paper/ni1/s7", "paper/full/s8", "paper/ni1/s8"]
    assert "--num_inference_layers 1" in ran.calls[2]


def test_runner_trains_and_scores_in_one_precision(tmp_path):
    ran = run_runner(tmp_path, tmp_path / "ev", "authors/full/1", "--stage1", checkpoint(tmp_path))
    assert ran.code == 0, ran.err
    assert len(ran.calls) == 2 and all("--amp auto" in c for c in ran.calls)
    (tmp_path / "fp32").mkdir()
    ran = run_runner(tmp_path / "fp32", tmp_path / "fp32" / "ev", "authors/full/1", "--stage1", checkpoint(tmp_path),
                     "--amp", "none")
    assert ran.code == 0, ran.err
    assert len(ran.calls) == 2 and all("--amp none" in c and "--amp auto" not in c for c in ran.calls)


def test_runner_control_and_a_stage_1_checkpoint_per_seed(tmp_path):
    out = tmp_path / "ev"
    ran = run_runner(tmp_path, out, "paper/control/7", "authors/control/8", "paper/full/8", "--stage1",
                     "s1/s{seed}/best_stage1.pt")
    assert ran.code == 0, ran.err
    trains = [c for c in ran.calls if "--evaluate_only" not in c]
    assert len(trains) == 3
    # each run loads the stage 1 of its own seed; the control keeps only the base loss, at the recipe's weight
    assert "--load_path s1/s7/best_stage1.pt --recipe paper --seed 7" in trains[0]
    assert trains[0].endswith("--loss_weights 1,0,0,0 --contrastive none --num_iterations 0")
    assert "--load_path s1/s8/best_stage1.pt --recipe authors --seed 8" in trains[1]
    assert trains[1].endswith("--loss_weights 5,0,0,0 --contrastive none --num_iterations 0")
    assert "--load_path s1/s8/best_stage1.pt --recipe paper --seed 8" in trains[2]
    assert "--loss_weights" not in trains[2] and "--num_iterations" not in trains[2]
    # and is scored like every other run, at K = 0..4 (its passes untrained: K = 0 is the model)
    assert sum(f"--load_path {out}/paper/control/s7/best.pt --num_iterations 4" in c for c in ran.calls) == 1


def test_runner_trains_a_stage_1_per_seed_of_the_runs_given(tmp_path):
    """Without --stage1 a stage-2 run starts from its seed's stage 1, trained first (once per seed); on a "GPU"
    at toy size (--tiny: a CPU smoke test) in --amp auto, with the log, Figure 5's halves and the runs in the
    bundle, without checkpoints."""
    out, bundle = tmp_path / "runs", tmp_path / "back"
    ran = run_runner(tmp_path, out, "paper/full/67", "authors/no_fusion/66", "paper/full/66", "--preset", "plateau",
                     "--device", "gpu", "--tiny", "--bundle", bundle)
    assert ran.code == 0, ran.err
    assert ran.trained(out) == ["stage1/s67", "paper/full/s67", "stage1/s66", "authors/no_fusion/s66",
                                "paper/full/s66"]
    trains = [c for c in ran.calls if _save_path(c) and "--evaluate_only" not in c]
    assert all("--stage1_epochs 1 --stage2_epochs 0 --num_iterations 0 --classifier_lr 1e-3" in trains[i]
               and "--model_name_or_path .gpu/encoder" in trains[i] for i in (0, 2))
    assert f"--load_path {out}/stage1/s67/best_stage1.pt --recipe paper --seed 67 --stage2_epochs 1" in trains[1]
    assert f"--load_path {out}/stage1/s66/best_stage1.pt --recipe authors --seed 66" in trains[3]
    assert all("--amp auto" in c and "--data_dir .gpu/redocred" in c and "--max_train_docs 8" in c
               for c in ran.calls if _save_path(c))
    assert ran.calls[-1] == f"experiments/plot.py halves {out}/paper/full/s67/best.pt " \
                            f"{out}/authors/no_fusion/s66/best.pt {out}/paper/full/s66/best.pt"
    log = (bundle / "runner.log").read_text()
    assert "5 runs, 1 at a time, budget 540 s: stage1/67 paper/full/67 stage1/66" in log
    assert f"finished: {out}" in log and "no nvidia-smi" in log
    with tarfile.open(bundle / "runs.tar.gz") as tar:
        names = tar.getnames()
    assert "runs/paper/full/s66/eval_k4/eval_scores.json" in names and "runs/paper/full/s66.log" in names
    assert not [n for n in names if n.endswith(".pt")] and (out / "paper" / "full" / "s66" / "best.pt").is_file()


def test_runner_lanes_run_a_seed_after_its_stage_1_one_run_at_a_time(tmp_path):
    """--lanes: each seed's stage 1, then its own runs in list order; a second call trains nothing."""
    out = tmp_path / "p32"
    ran = run_runner(tmp_path, out, "authors/full/66", "authors/no_fusion/67", "paper/full/66", "--preset",
                     "plateau_cpu")
    assert ran.code == 0, ran.err
    assert ran.trained(out) == ["stage1/s66", "authors/full/s66", "paper/full/s66", "stage1/s67",
                                "authors/no_fusion/s67"]
    stage1 = [c for c in ran.calls if "/stage1/s" in _save_path(c)]
    assert len(stage1) == 2 and all("--stage1_epochs 32 --stage2_epochs 0" in c for c in stage1)
    assert all("--amp auto" in c and "--threads 1" in c for c in ran.calls)
    assert f"--load_path {out}/stage1/s67/best_stage1.pt --recipe authors --seed 67" in ran.calls[-2]
    assert "--no_fusion" in ran.calls[-2] and "--inference_lr 1e-3" in ran.calls[-2]
    assert ran.calls[-1].endswith(f"--load_path {out}/authors/no_fusion/s67/best.pt --num_iterations 4 --save_path "
                                  f"{out}/authors/no_fusion/s67/eval_k4 --overwrite")
    (tmp_path / "calls.txt").unlink()
    assert run_runner(tmp_path, out, "authors/full/66", "authors/no_fusion/67", "--preset", "plateau_cpu").calls == []


@pytest.mark.parametrize("jobs", [1, 2])
def test_runner_lanes_of_the_preset_and_a_stopped_stage_1(tmp_path, jobs):
    """The preset's SEEDS x KINDS; a stage 1 that left last.pt is resumed, and one that still does not finish
    leaves its seed's runs unstarted (named, exit status 1), the other lane going on."""
    out = tmp_path / "p32"
    (out / "stage1" / "s5").mkdir(parents=True)
    (out / "stage1" / "s5" / "last.pt").write_text("{}")
    ran = run_runner(tmp_path, out, "--preset", "plateau_cpu", "--seeds", 5, 6, jobs=jobs)
    assert ran.code == 1 and f"train.py --resume {out}/stage1/s5 --threads 1" in ran.calls
    assert f"stage1/5 unfinished (see {out}/stage1/s5.log): authors/full/5 not started" in ran.out
    assert ran.err == "unfinished (see DIR.log): " + " ".join(
        f"{out}/{r}/s5" for r in ("stage1", "authors/full", "authors/no_fusion", "paper/full", "paper/control")) + "\n"
    assert ran.trained(out) == ["stage1/s6", "authors/full/s6", "authors/no_fusion/s6", "paper/full/s6",
                                "paper/control/s6"]


def test_runner_skips_a_finished_run_and_resumes_a_stopped_one(tmp_path):
    """The one rule of every run: FOLDER/eval_scores.json means trained (no call; a stage-2 run is still scored),
    FOLDER/last.pt without it means stopped (--resume), neither means a new run saving into FOLDER."""
    out = tmp_path / "w"
    for kind, files in (("bf16", ["last.pt", "eval_scores.json"]), ("fp32", ["last.pt"]), ("nopre", [])):
        (out / kind / "s9").mkdir(parents=True)
        for f in files:
            (out / kind / "s9" / f).write_text("{}")
    ran = run_runner(tmp_path, out, "bf16/9", "fp32/9", "nopre/9", "--threads", 3)
    trains = [c for c in ran.calls if "--evaluate_only" not in c]
    assert trains == [f"train.py --resume {out}/fp32/s9 --threads 3", trains[1]]
    assert trains[1].startswith(f"train.py --save_path {out}/nopre/s9 --overwrite --dataset docred")
    assert ran.code == 1 and ran.err == f"unfinished (see DIR.log): {out}/fp32/s9\n"  # the fake leaves it stopped
    assert sum(f"--load_path {out}/bf16/s9/best.pt" in c for c in ran.calls) == 1


@pytest.mark.parametrize("argv,message", [
    (["paper/bogus/1"], "not a run name: 'paper/bogus/1'"),
    (["paper/full"], "not a run name: 'paper/full'"),
    (["paper/full/1", "paper"], "not a run name: 'paper';"),
    (["paper/full/x"], "not a run name: 'paper/full/x'"),
    (["fp16/2"], "not a run name: 'fp16/2'"),
    (["paper/full/1", "--seeds", "2"], "not a run name: 'paper/full/1/2'"),
    ([], "no runs: name them, or a --preset"),
    (["stage1_eval"], "stage1_eval needs --stage1: one checkpoint, no {seed}"),
    (["paper/full/1", "--stage1", "nowhere/x.pt"], "--stage1 nowhere/x.pt: no such checkpoint, nor a carried "
                                                   "nowhere/stage1_head.pt"),
    (["bf16/1", "--device", "gpu"], "--device gpu needs --bundle"),
])
def test_runner_refuses_bad_runs_before_training(tmp_path, capsys, argv, message):
    assert runner.main([str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_runner_refuses_the_demo_beside_re_docred(tmp_path, monkeypatch, capsys):
    """scripts/run_demo.sh trains on dataset/redocred where it is present, not on the synthetic documents."""
    (tmp_path / "dataset" / "redocred").mkdir(parents=True)
    (tmp_path / "dataset" / "redocred" / "train_mini.json").write_text("[]")
    monkeypatch.setattr(runner, "ROOT", str(tmp_path))
    assert runner.main([str(tmp_path / "f"), "paper/1"]) == 2
    assert "dataset/redocred is present" in capsys.readouterr().err


def test_runner_whole_runs_train_both_stages_per_seed_and_score_them(tmp_path):
    out = tmp_path / "whole"
    ran = run_runner(tmp_path, out, "bf16/3", "fp32/3", "nopre/4", "--stage2_epochs", 2)
    assert ran.code == 0, ran.err
    trains = [c for c in ran.calls if "--evaluate_only" not in c]
    assert len(trains) == 3 and len(ran.calls) == 3 + 2 + 2 + 1  # nopre has no stage-1 checkpoint to score
    assert "--amp bf16 --recipe authors --seed 3 --stage1_epochs 16 --stage2_epochs 2" in trains[0]
    assert "--amp none --recipe authors --seed 3 --stage1_epochs 16 --stage2_epochs 2" in trains[1]
    assert "--seed 4 --skip_stage1 --stage2_epochs 18" in trains[2] and "--stage1_epochs" not in trains[2]
    stage1_eval = f"--amp none --evaluate_only --load_path {out}/fp32/s3/best_stage1.pt --num_iterations 0"
    assert sum(stage1_eval in c for c in ran.calls) == 1
    assert ran.calls[-1].endswith(f"--load_path {out}/nopre/s4/best.pt --num_iterations 4 --save_path "
                                  f"{out}/nopre/s4/eval_k4 --overwrite")
    assert all("--classifier_lr 1e-3 --inference_lr 1e-3" in c for c in trains)
    again = run_runner(tmp_path, out, "nopre/4", "bf16/5")  # nopre/4 is done
    assert again.code == 0 and again.calls[:len(ran.calls)] == ran.calls and len(again.calls) == len(ran.calls) + 3
    assert "--seed 5 --stage1_epochs 16 --stage2_epochs 6" in again.calls[len(ran.calls)]


def test_runner_whole_control_trains_the_base_module_alone_in_stage_2(tmp_path):
    out = tmp_path / "whole"
    ran = run_runner(tmp_path, out, "ctrl/7", "bf16/7")
    assert ran.code == 0, ran.err
    ctrl, full = [c for c in ran.calls if "--evaluate_only" not in c]
    assert ("--amp bf16 --recipe authors --seed 7 --stage1_epochs 16 --stage2_epochs 6 --loss_weights 5,0,0,0 "
            "--contrastive none --num_iterations 0") in ctrl
    assert "--loss_weights" not in full and "--contrastive" not in full and "--num_iterations" not in full
    assert sum(f"--load_path {out}/ctrl/s7/best_stage1.pt --num_iterations 0" in c for c in ran.calls) == 1
    assert sum(f"--load_path {out}/ctrl/s7/best.pt --num_iterations 4" in c for c in ran.calls) == 1
    (tmp_path / "paper").mkdir()  # the paper recipe's control keeps the paper's base weight, 1
    ran = run_runner(tmp_path / "paper", tmp_path / "paper" / "whole", "ctrl/7", "--recipe", "paper")
    assert ran.code == 0, ran.err
    assert ("--recipe paper --seed 7 --stage1_epochs 16 --stage2_epochs 6 --loss_weights 1,0,0,0 "
            "--contrastive none --num_iterations 0") in ran.calls[0]


def _running(pid):
    """The process exists and is no zombie (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_runner_budget_stops_the_runs_and_the_same_command_resumes_them(tmp_path):
    """At the deadline the runs still going get SIGTERM (they save last.pt), no run starts any more, and the
    unfinished ones are named; the next call resumes the stopped ones and starts the others."""
    out = tmp_path / "ev"
    argv = [out, "paper/full/1", "paper/full/2", "paper/full/3", "--stage1", checkpoint(tmp_path)]
    start = time.monotonic()
    ran = run_runner(tmp_path, *argv, "--budget", 1, jobs=2, SLOW="60")
    assert time.monotonic() - start < 20 and ran.code == 1
    assert "budget reached: stopping the runs still going" in ran.out
    assert sorted(ran.trained(out)) == ["paper/full/s1", "paper/full/s2"]  # s3 never started
    assert all((out / "paper" / "full" / f"s{s}" / "last.pt").is_file() for s in (1, 2))
    assert not any(_running(int(pid)) for pid in (tmp_path / "calls.txt.pids").read_text().split())
    assert ran.err == f"unfinished (see DIR.log): {out}/paper/full/s1 {out}/paper/full/s2 {out}/paper/full/s3\n"
    again = run_runner(tmp_path, *argv)
    assert again.calls[len(ran.calls):len(ran.calls) + 2] == [f"train.py --resume {out}/paper/full/s{s} --threads 1"
                                                               for s in (1, 2)]
    assert again.trained(out)[-1] == "paper/full/s3"


def test_runner_stopped_by_a_signal_stops_its_runs(tmp_path):
    """SIGTERM to the runner (a time limit, Ctrl-C: SIGINT alike) reaches every run it started, which saves
    last.pt; no run is left going, holding its folder's lock."""
    out = tmp_path / "ev"
    proc = subprocess.Popen([sys.executable, str(helpers.ROOT / "experiments" / "runner.py"), str(out),
                             "paper/full/1", "--stage1", str(checkpoint(tmp_path))],
                            env=runner_env(tmp_path, SLOW="60"), stdout=subprocess.PIPE, text=True)
    pids = tmp_path / "calls.txt.pids"
    for _ in range(200):
        if pids.exists() and pids.read_text().strip():
            break
        time.sleep(0.05)
    inner = int(pids.read_text())
    assert _running(inner)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert not _running(inner) and (out / "paper" / "full" / "s1" / "last.pt").is_file()
    assert "signal 15: stopping the runs" in proc.stdout.read()


def test_runner_far_preset_writes_its_documents_and_trains_on_them(tmp_path):
    out = tmp_path / "far"
    ran = run_runner(tmp_path, out, "--preset", "far", "--seeds", 2, "--device", "gpu", "--tiny", "--bundle",
                     tmp_path / "back")
    assert ran.code == 0, ran.err
    assert f"scripts/make_demo_data.py --out {out}/data --test 0 --train 1000 --dev 200 --gap 512 --seed 1 " \
           "--train 8 --dev 4" in ran.calls
    assert ran.trained(out) == ["stage1/s2", "paper/full/s2", "authors/withhold/s2"]
    stage1, paper, withhold = [c for c in ran.calls if _save_path(c) and "--evaluate_only" not in c]
    assert all(f"--data_dir {out}/data --train_file train.json --dev_file dev.json --test_file  " in c
               for c in (stage1, paper, withhold))
    assert stage1.endswith("--seed 2 --encoder_lr 1e-4 --pair_features bilinear")
    assert "--stage1_epochs 1 --stage2_epochs 0" in stage1 and "--stage2_epochs 1" in paper
    assert "--recipe authors" in withhold and withhold.endswith("--withhold_max 1.0 --inference_lr 1e-3")


def test_runner_evidence_preset_scores_the_carried_stage_1_and_rebuilds_it(tmp_path):
    """The GPU evidence: a carried stage-1 checkpoint (its head beside the encoder) is rebuilt before any run;
    then the checkpoint itself is scored on dev, then D (both recipes' full model) seed by seed, then E."""
    carried = tmp_path / "carried"
    carried.mkdir()
    (carried / "stage1_head.pt").write_text("{}")
    out = tmp_path / "gpu_ev"
    argv = [out, "--preset", "evidence", "--seeds", 66, 67, "--stage1", carried / "stage1.pt", "--device", "gpu",
            "--tiny", "--bundle", tmp_path / "back"]
    ran = run_runner(tmp_path, *argv)  # the fake rebuilds nothing
    assert ran.code == 1 and ran.calls[-1] == f"experiments/gpu_carry.py --rebuild {carried}/stage1.pt"
    assert f"no {carried}/stage1.pt after experiments/gpu_carry.py --rebuild" in ran.out
    (carried / "stage1.pt").write_text("{}")
    ran = run_runner(tmp_path, *argv)
    assert ran.code == 0, ran.err
    assert ran.trained(out) == ["paper/full/s66", "authors/full/s66", "paper/full/s67", "authors/full/s67"] + [
        f"authors/{v}/s{s}" for s in (66, 67) for v in ("no_contrastive", "no_fusion", "no_eca", "freeze_base")]
    scored = [c for c in ran.calls if f"--save_path {out}/stage1_eval " in c]
    assert scored == [f"train.py --evaluate_only --load_path {carried}/stage1.pt --dataset docred --data_dir "
                      ".gpu/redocred --train_file train_mini.json --dev_file dev_mini.json --test_file  --threads 1 "
                      f"--max_train_docs 8 --max_eval_docs 8 --amp auto --save_path {out}/stage1_eval --overwrite"]
    assert ran.calls.index(scored[0]) < min(i for i, c in enumerate(ran.calls) if "--recipe" in c)
    assert all("--inference_lr 1e-3" in c and "--stage2_epochs 1" in c for c in ran.calls if "--recipe" in c)


FAKE_DEMO = """#!/usr/bin/env bash
# stands in for scripts/run_demo.sh: records its arguments and data, writes the run's report and checkpoint
echo "run_demo.sh $* DEMO_DIR=$DEMO_DIR" >> "$CALLS"
mkdir -p "$SAVE" && echo {} > "$SAVE/demo_report.json" && echo {} > "$SAVE/best.pt"
"""


def test_runner_demo_runs_seed_by_seed_then_reports_each_recipe(tmp_path, monkeypatch, capsys):
    """RECIPE/SEED runs scripts/run_demo.sh (here a fake, in a repository of its own: the real one's
    dataset/redocred may be present) after writing the synthetic documents; then the reports of each recipe."""
    root = tmp_path / "root"
    (root / "scripts").mkdir(parents=True)
    (root / "scripts" / "run_demo.sh").write_text(FAKE_DEMO)
    for name, value in runner_env(tmp_path).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(runner, "ROOT", str(root))
    monkeypatch.chdir(tmp_path)
    out, demo, calls = tmp_path / "f", tmp_path / "demo", tmp_path / "calls.txt"
    assert runner.main([str(out), "paper", "authors", "--seeds", "1", "2", "--demo_dir", str(demo), "--jobs", "1",
                        "--threads", "1"]) == 0
    lines = calls.read_text().splitlines()
    assert lines[0] == f"scripts/make_demo_data.py --out {demo}"
    assert lines[1:5] == [f"run_demo.sh --seed {s} --recipe {r} --threads 1 DEMO_DIR={demo}"
                          for s in (1, 2) for r in ("paper", "authors")]
    assert lines[5:] == [line for r in ("paper", "authors") for line in (
        f"scripts/demo_report.py --gold {demo}/dev.json --runs {out}/{r}/s1 {out}/{r}/s2 --json {out}/{r}/seeds.json",
        f"experiments/oracle_relations.py --gold {demo}/dev.json --checkpoint {out}/{r}/s1/best.pt "
        f"{out}/{r}/s2/best.pt --json {out}/{r}/oracle.json")]
    assert "## paper (2 seeds)" in capsys.readouterr().out
    calls.unlink()
    assert runner.main([str(out), "paper/2", "authors/3", "--demo_dir", str(demo), "--jobs", "1"]) == 0
    assert calls.read_text().splitlines()[1:] == [
        f"run_demo.sh --seed 3 --recipe authors --threads 1 DEMO_DIR={demo}",  # paper/2 is done
        f"scripts/demo_report.py --gold {demo}/dev.json --runs {out}/paper/s2 --json {out}/paper/seeds.json",
        f"experiments/oracle_relations.py --gold {demo}/dev.json --checkpoint {out}/paper/s2/best.pt --json "
        f"{out}/paper/oracle.json",
        f"scripts/demo_report.py --gold {demo}/dev.json --runs {out}/authors/s3 --json {out}/authors/seeds.json",
        f"experiments/oracle_relations.py --gold {demo}/dev.json --checkpoint {out}/authors/s3/best.pt --json "
        f"{out}/authors/oracle.json"]
