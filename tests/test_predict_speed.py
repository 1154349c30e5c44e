"""bench/predict_speed.py: its markup reads back as the documents it was written from (so the text and JSON paths
time the same documents), and a toy run writes every number the docs quote."""
import json
import os
import sys

import helpers
import make_demo_data
import text_input
import train

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import common  # noqa: E402
import predict_speed  # noqa: E402


def mentions(doc):
    """The entities as sets of (sent_id, pos, type, name), in no order."""
    return sorted(sorted((m["sent_id"], m["pos"], m["type"], m["name"]) for m in entity) for entity in doc["vertexSet"])


def test_markup_reads_back_as_the_document():
    for doc in make_demo_data.make_splits({"dev": 6}, seed=4)["dev"]:
        text = predict_speed.to_markup(doc)
        assert text.startswith(f"# {doc['title']}\n")
        back, = text_input.documents(text, "bench")
        assert back["title"] == doc["title"] and back["sents"] == doc["sents"]
        assert mentions(back) == mentions(doc)


def test_markup_escapes_brackets_and_leaves_out_what_it_cannot_write():
    doc = {"title": "T", "sents": [["[", "New", "York", "]", "|", "York", "is", "in", "New", "York", "."]],
           "vertexSet": [[{"name": "New York", "sent_id": 0, "pos": [1, 3], "type": "LOC"},
                          {"name": "New York", "sent_id": 0, "pos": [8, 10], "type": "LOC"}],
                         [{"name": "York", "sent_id": 0, "pos": [2, 3], "type": "LOC"}],  # inside New York
                         [{"name": "York", "sent_id": 0, "pos": [5, 6], "type": "PER"}],
                         [{"name": "in", "sent_id": 0, "pos": [7, 8], "type": "BLANK"}]]}
    text = predict_speed.to_markup(doc)
    assert text == "# T\n\\[ [New York|LOC] \\] \\| [York|PER] is [in|MISC] [New York|=New York] .\n"
    back, = text_input.documents(text, "bench")
    assert [[m["name"] for m in entity] for entity in back["vertexSet"]] == [["New York", "New York"], ["York"],
                                                                           ["in"]]


def test_toy_run_writes_both_paths(tmp_path, monkeypatch, capsys):
    data = helpers.write_dataset(tmp_path / "data")
    encoder = helpers.tiny_model(tmp_path / "encoder")
    with helpers.one_thread():
        assert train.cli(helpers.train_args(data, encoder, tmp_path / "run", tmp_path / "cache", stage1=1)) == 0
    docs = helpers.write_docs(tmp_path, "docs.json", make_demo_data.make_splits({"dev": 3}, seed=4)["dev"])
    monkeypatch.setattr(common, "RESULTS", str(tmp_path / "results"))
    assert predict_speed.main(["--checkpoint", str(tmp_path / "run" / "best.pt"), "--data", docs, "--docs", "2",
                               "--repeats", "2", "--starts", "1"]) == 0
    result = json.loads((tmp_path / "results" / "predict_speed.json").read_text())
    assert result["docs"] == 2 and result["data"] == docs and result["amp"] in ("bf16", "none")
    assert set(result["median_s"]) == {"text", "json", "read text only"}
    assert all(len(v) == 2 for v in result["samples_s"].values())
    assert set(result["first_prediction_s"]) == {"text", "json"} and result["first_prediction_s"]["text"] > 0
    assert set(result["loadavg_1m"]) == {"before", "after"} and "bf16 matmul" in result["machine"]["cpu"]
    out = capsys.readouterr().out
    assert "text path" in out and "json path" in out and "median of the per-repeat ratios" in out
