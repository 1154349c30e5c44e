"""A one-thread CPU load to measure beside: products of a 384 x 384 by a 384 x 4096 matrix in a loop, the shape
of the bundled encoder's work, for --seconds (0: until killed). Prints the products per second when it ends, so
that what the load itself lost beside the measured run can be read too.

Usage: python bench/load.py [--seconds 0] [--threads 1]
Used by docs/PERFORMANCE.md section 6: start it in the background, time the run beside it, then kill it.
"""
import argparse
import signal
import sys
import time

import torch


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=0.0, help="how long to run (0: until SIGTERM or SIGINT)")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    x, w = torch.randn(384, 384), torch.randn(384, 4096)
    start, count = time.perf_counter(), 0
    try:
        while not a.seconds or time.perf_counter() - start < a.seconds:
            x @ w
            count += 1
    except KeyboardInterrupt:
        pass
    finally:
        elapsed = time.perf_counter() - start
        print(f"load: {count} products in {elapsed:.1f} s ({count / elapsed:.1f}/s, {torch.get_num_threads()} "
              f"thread(s))", flush=True)


if __name__ == "__main__":
    main()
