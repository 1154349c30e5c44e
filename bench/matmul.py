"""One matrix product at the model's own shapes, in fp32, bf16 and fp16, interleaved: whether this machine's
reduced precisions are fast enough to use. On CPUs torch multiplies bf16 matrices quickly only with AVX512-BF16
or AMX, and fp16 ones only with AMX-FP16; elsewhere a fallback kernel runs, and --amp auto picks fp32.

Usage: python bench/matmul.py [--shapes 512x384x1536,1764x1024x512] [--dtypes fp32,bf16,fp16] [--repeats 5]
                              [--device cpu|cuda] [--threads 1]
Shapes are MxKxN (an MxK by KxN product). The defaults: the encoder's feed-forward layer on a 512-token window
of the bundled MiniLM (width 384, 1536 inside) and the inference module's first projection on the 42 x 42 pairs
of a 42-entity document (1024 -> 512, Table 7's widths). Each repeat times every dtype once, in turn, so that a
change of load hits them alike; reported are the median time, GFLOP/s and the time over fp32's (the ratio of
the medians and the median of the per-repeat ratios). Writes bench/results/matmul.json.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (puts the repository root on sys.path)

import torch  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_shape(text):
    try:
        m, k, n = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--shapes: {text!r} is not MxKxN (e.g. 512x384x1536)")
    return m, k, n


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="512x384x1536,1764x1024x512")
    p.add_argument("--dtypes", default="fp32,bf16,fp16")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--calls", type=int, default=3, help="products per timed sample")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="matmul.json")
    a = p.parse_args(argv)
    dtypes = a.dtypes.split(",")
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown or dtypes[0] != "fp32":
        raise SystemExit(f"--dtypes: a comma list from {', '.join(DTYPES)} starting with fp32, got {a.dtypes!r}")
    common.set_threads(a.threads)
    device = torch.device(a.device)
    print(f"device {device}, torch threads {torch.get_num_threads()}, cpu {common.cpu_model()}")
    rows, results = [], []
    for shape in (parse_shape(s) for s in a.shapes.split(",")):
        m, k, n = shape
        gen = torch.Generator().manual_seed(0)
        x, w = torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)
        pairs = {d: (x.to(device, DTYPES[d]), w.to(device, DTYPES[d])) for d in dtypes}
        samples = {d: [] for d in dtypes}
        for d in dtypes:  # warm-up: first-call kernel selection and allocations
            pairs[d][0] @ pairs[d][1]
        for _ in range(a.repeats):
            for d in dtypes:
                common.sync(device)
                t0 = time.perf_counter()
                for _ in range(a.calls):
                    pairs[d][0] @ pairs[d][1]
                common.sync(device)
                samples[d].append((time.perf_counter() - t0) / a.calls)
        base = statistics.median(samples["fp32"])
        for d in dtypes:
            med = statistics.median(samples[d])
            per_repeat = statistics.median(s / b for s, b in zip(samples[d], samples["fp32"]))
            gflops = 2 * m * k * n / med / 1e9
            rows.append([f"{m}x{k}x{n}", d, f"{med * 1e3:.2f}", f"{gflops:.1f}", f"{med / base:.2f}x",
                         f"{per_repeat:.2f}x"])
            results.append({"shape": [m, k, n], "dtype": d, "median_s": med, "samples_s": samples[d],
                            "gflops": gflops, "time_over_fp32": med / base, "time_over_fp32_per_repeat": per_repeat})
    print(common.fmt_table(["M x K x N", "dtype", "ms", "GFLOP/s", "time / fp32", "per repeat"], rows))
    path = common.write_json(a.out, {"machine": common.machine_info(device), "command": " ".join(["python"] + sys.argv),
                                     "config": vars(a), "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
