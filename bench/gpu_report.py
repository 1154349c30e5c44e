"""Collect the outputs of bench/gpu_suite.sh into OUT/gpu_suite.json and print them as one table.

Usage: python bench/gpu_report.py OUT
Reads OUT/gpu.json (bench/gpu.py), OUT/gpu_eca.json (bench/eca.py) and the train.py runs OUT/train_<attention>/
(timing.jsonl, metrics.jsonl, args.json); a part that is missing (a step that failed or ran out of time) is
reported as missing, not guessed.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (puts the repository root on sys.path)


def read_json(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def read_jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def train_run(folder):
    """docs/s of the last epoch of each stage (the first epoch of stage 1 includes warm-up), dev scores."""
    timing = read_jsonl(os.path.join(folder, "timing.jsonl"))
    metrics = read_jsonl(os.path.join(folder, "metrics.jsonl"))
    args = read_json(os.path.join(folder, "args.json"))
    if not timing or not args:
        return None
    n_train = len(json.load(open(os.path.join(args["data_dir"], args["train_file"]))))
    n_dev = len(json.load(open(os.path.join(args["data_dir"], args["dev_file"]))))
    if args.get("max_train_docs"):
        n_train = min(n_train, args["max_train_docs"])
    if args.get("max_eval_docs"):
        n_dev = min(n_dev, args["max_eval_docs"])
    out = {"train_docs": n_train, "dev_docs": n_dev, "epochs": timing, "dev": [m.get("dev") for m in metrics]}
    for stage in (1, 2):
        last = [t for t in timing if t["stage"] == stage]
        if last:
            t = last[-1]
            out[f"stage{stage}_train_docs_per_s"] = n_train / t["train_s"] if t["train_s"] else None
            out[f"stage{stage}_eval_docs_per_s"] = n_dev / t["eval_s"] if t["eval_s"] else None
    return out


def rows_of(suite):
    rows = []
    gpu = suite.get("gpu") or {}
    if gpu:
        rows.append(["machine", gpu["machine"].get("gpu", gpu["machine"]["device"]), "bf16 matmul ceiling TFLOP/s",
                     f"{gpu['matmul_ceiling_tflops']:.0f}"])
    extra = [row for part in ("gpu_fused", "gpu_b32")
             for row in ((suite.get(part) or {}).get("throughput") or {}).get("rows", [])]
    for r in (gpu.get("throughput") or {}).get("rows", []) + extra:
        label = f"bert-base stage {r['stage']} {r['precision']} {r['attention']} batch {r.get('batch_size', 8)}"
        label += " fused-AdamW" if r.get("fused_adamw") else ""
        rows.append(["throughput", label,
                     "ms/step | docs/s | tokens/s | TFLOP/s | MFU",
                     f"{r['ms_per_step_median']:.1f} | {r['docs_per_s']:.1f} | {r['tokens_per_s']:.0f} | "
                     f"{r['tflops']:.1f} | {100 * r['mfu_peak']:.1f}%"])
    for r in gpu.get("profile") or []:
        top = ", ".join(f"{k} {v:.1f}" for k, v in list(r["by_class_ms_per_step"].items())[:5])
        rows.append(["profile", f"stage {r['stage']} bf16 {r['attention']}", "GPU busy | ms by kernel class",
                     f"{100 * r['gpu_busy_share']:.0f}% | {top}"])
    for r in gpu.get("memory") or []:
        rows.append(["memory", f"{r['encoder']} batch {r['batch']} {r['data']}", f"peak GiB, {r['phase']}",
                     "n/a" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"])
    for r in gpu.get("maxbatch") or []:
        rows.append(["largest batch", f"{r['encoder']} stage {r['stage']}", "worst-case docs, bf16",
                     f"{r['largest_batch']}" + (" (cap)" if r["capped"] else f" (OOM at {r['first_oom_batch']})")])
    for r in (suite.get("eca") or {}).get("results", []):
        def ratio(key):
            return f"{r[key]:.1f}x" if isinstance(r.get(key), (int, float)) else str(r.get(key, "skipped"))
        project = r.get("project") or {}
        rows.append(["inference module", f"N={r['N']} D={r['D']} {r['amp']}",
                     "project ms | speed-up, memory vs naive | vs authors' algorithm",
                     (f"{1e3 * project['s']:.1f}" if isinstance(project.get("s"), float) else str(project))
                     + f" | {ratio('speedup_vs_naive')}, {ratio('memory_ratio_vs_naive')} | "
                     f"{ratio('speedup_vs_authors')}, {ratio('memory_ratio_vs_authors')}"])
    for att, run in (suite.get("train") or {}).items():
        if run is None:
            rows.append(["train.py torchrun", att, "", "missing"])
            continue
        rows.append(["train.py torchrun", f"MiniLM Re-DocRED mini {att}",
                     "docs/s: stage-1 train | stage-2 train | eval K=3",
                     " | ".join("n/a" if run.get(k) is None else f"{run[k]:.1f}" for k in
                                ("stage1_train_docs_per_s", "stage2_train_docs_per_s", "stage2_eval_docs_per_s"))])
    return rows


def main():
    out = sys.argv[1]
    parts = ("gpu", "gpu_fused", "gpu_b32")
    suite = {part: read_json(os.path.join(out, f"{part}.json")) for part in parts}
    suite.update({"eca": read_json(os.path.join(out, "gpu_eca.json")),
                  "train": {att: train_run(os.path.join(out, f"train_{att}")) for att in ("eager", "sdpa")}})
    with open(os.path.join(out, "suite.log")) as f:
        suite["exit_codes"] = [line.strip() for line in f if line.startswith("=== ") and ": exit " in line]
    rows = rows_of(suite)
    print(common.fmt_table(["section", "configuration", "metric", "value"], rows))
    for line in suite["exit_codes"]:
        print(line)
    with open(os.path.join(out, "gpu_suite.json"), "w") as f:
        json.dump(suite, f, indent=1)
    print("wrote", os.path.join(out, "gpu_suite.json"))


if __name__ == "__main__":
    main()
