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


def test_peers_without_atlop_checkout_says_what_to_fetch_and_exits_2(tmp_path, capsys):
    """bench/peers.py times ATLOP's own code, which is not part of this repository: without a checkout it says
    where to get one and exits 2, before loading anything."""
    import peers
    for argv, named in (([], ""), (["--atlop_dir", str(tmp_path)], "long_seq.py, losses.py, model.py not in")):
        with pytest.raises(SystemExit) as e:
            peers.main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "git clone https://github.com/wzhouad/ATLOP" in err and "--atlop_dir" in err and named in err


def test_peers_gives_atlop_its_own_input_format():
    """ATLOP adds the [CLS] offset to entity positions itself and reads one multi-hot label row per pair of hts."""
    import peers
    feats = [{"input_ids": [101, 5, 6, 102], "entity_pos": [[(1, 2)], [(2, 3), (1, 3)]], "hts": [[0, 1], [1, 0]],
              "labels": [[2], []]},
             {"input_ids": [101, 7, 102], "entity_pos": [[(1, 2)], []], "hts": [[0, 1], [1, 0]],
              "labels": [[], [1, 3]]}]
    batch = peers.atlop_inputs(feats, 4)
    assert batch["input_ids"].tolist() == [[101, 5, 6, 102], [101, 7, 102, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["entity_pos"] == [[[(0, 1)], [(1, 2), (0, 2)]], [[(0, 1)], []]]
    assert batch["labels"] == [[[0, 0, 1, 0], [1, 0, 0, 0]], [[1, 0, 0, 0], [0, 1, 0, 1]]]
    assert batch["hts"] == [[[0, 1], [1, 0]], [[0, 1], [1, 0]]]


def test_component_profile_puts_each_backward_op_with_its_forward_component():
    """The backward pass runs outside every scope; its ops go to the component whose forward op made the node."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.lin = torch.nn.Embedding(50, 8), torch.nn.Linear(8, 3)

        def forward(self, x):
            return self.lin(self.emb(x)).tanh().sum()

    net, x = Net(), torch.randint(0, 50, (6,))

    def step():
        net.zero_grad(set_to_none=True)
        net(x).backward()

    result = common.component_profile(step, [(net, "forward", "rest"), (net.emb, "forward", "embedding"),
                                             (net.lin, "forward", "linear")])
    parts = result["components"]
    assert {"rest", "embedding", "linear"} <= set(parts)
    assert "aten::embedding_dense_backward" in parts["embedding"]["ops"] and parts["embedding"]["backward_ms"] > 0
    assert "aten::addmm" in parts["linear"]["ops"] and "aten::mm" in parts["linear"]["ops"]
    assert parts["linear"]["gemm_gflop"] > 0 and "aten::tanh_backward" in parts["rest"]["ops"]
    assert "forward" not in vars(net) and "forward" not in vars(net.lin)  # the scopes are gone
    assert result["total_ms"] == pytest.approx(sum(p["forward_ms"] + p["backward_ms"] for p in parts.values()))
