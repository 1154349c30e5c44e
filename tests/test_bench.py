"""bench/matmul.py: the file it writes, and its named errors."""
import json
import os
import re
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import common  # noqa: E402
import matmul  # noqa: E402


def test_matmul_times_every_shape_and_dtype_against_fp32(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(common, "RESULTS", str(tmp_path))
    matmul.main(["--shapes", "8x16x4,3x5x7", "--dtypes", "fp32,bf16", "--repeats", "2", "--calls", "1",
                 "--out", "m.json"])
    res = json.load(open(tmp_path / "m.json"))
    got = [(r["shape"], r["dtype"]) for r in res["results"]]
    assert got == [([8, 16, 4], "fp32"), ([8, 16, 4], "bf16"), ([3, 5, 7], "fp32"), ([3, 5, 7], "bf16")]
    for r in res["results"]:
        assert len(r["samples_s"]) == 2 and r["median_s"] > 0
        assert r["gflops"] == pytest.approx(2 * r["shape"][0] * r["shape"][1] * r["shape"][2] / r["median_s"] / 1e9)
        if r["dtype"] == "fp32":
            assert r["time_over_fp32"] == 1.0 and r["time_over_fp32_per_repeat"] == 1.0
    assert "bf16 matmul: " in res["machine"]["cpu"] and "time / fp32" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--shapes", "8x16"], "--shapes: '8x16' is not MxKxN"),
    (["--dtypes", "bf16,fp32"], "starting with fp32, got 'bf16,fp32'"),
    (["--dtypes", "fp32,int8"], "--dtypes: a comma list from fp32, bf16, fp16"),
])
def test_matmul_names_bad_flags(argv, message):
    with pytest.raises(SystemExit, match=re.escape(message)):
        matmul.main(argv)
