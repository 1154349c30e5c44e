"""Property-based tests (hypothesis): damaged inputs never end in a traceback.

Valid DocRED documents, CDR `.data` lines and CodaLab submissions are mutated at random (a field deleted,
set to null, retyped, nested in a list, moved out of range, a list or string truncated, a list item
duplicated, a type swapped for a look-alike: 3 for "3", "x" for ["x"]) and fed to the readers
(prepro.load_features with the bundled tokenizer) and to the evaluator (evaluation.main on gold, train and
prediction files). Each run must give a valid result or a utils.DataError that names the file; any other
exception fails the test with the example that caused it. The damaged documents are made here.
"""
import contextlib
import copy
import io
import json
import math

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import evaluation
import prepro
import utils

SETTINGS = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
ODD_VALUES = [None, True, False, 0, 1, -1, 2 ** 63, 1.5, float("nan"), float("inf"), "", "x", "3", "P17",
              "\ud800", [], {}, [0, 1], [[0]], {"a": 1}]
ODD_TEXT = ["", " ", "\ud800", "a\udfffb", "*", "[SEP]", "\u200b", "x" * 3000, "Pa ris", "\x00"]
OPS = ["delete", "null", "retype", "nest", "out_of_range", "truncate", "duplicate", "swap_type", "odd_text"]


@pytest.fixture(scope="module")
def rel2id():
    return prepro.load_rel2id()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("damaged")


def mention(name, sent_id, start, end):
    return {"name": name, "sent_id": sent_id, "pos": [start, end], "type": "LOC"}


def valid_docs():
    """Two small, valid, labelled DocRED documents (small, so that every field is often picked)."""
    return [{"title": "Paris",
             "sents": [["Paris", "is", "in", "France", "."], ["The", "Seine", "crosses", "Paris", "."]],
             "vertexSet": [[mention("Paris", 0, 0, 1), mention("Paris", 1, 3, 4)], [mention("France", 0, 3, 4)],
                           [mention("Seine", 1, 1, 2)]],
             "labels": [{"h": 0, "t": 1, "r": "P17", "evidence": [0]},
                        {"h": 2, "t": 1, "r": "P17", "evidence": [1]}]},
            {"title": "Rome",
             "sents": [["Rome", "lies", "on", "the", "Tiber", "."]],
             "vertexSet": [[mention("Rome", 0, 0, 1)], [mention("Tiber", 0, 4, 5)]],
             "labels": [{"h": 0, "t": 1, "r": "P206", "evidence": [0]}]}]


def submission():
    return [{"title": "Paris", "h_idx": 0, "t_idx": 1, "r": "P17"},
            {"title": "Paris", "h_idx": 1, "t_idx": 0, "r": "P17"},
            {"title": "Rome", "h_idx": 0, "t_idx": 1, "r": "P206"}]


def paths(value, prefix=()):
    """Every place in a JSON value (a tuple of keys and indices), the value itself first."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, prefix + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from paths(item, prefix + (i,))


def shape(path):
    """A path with its indices blanked: every word of every sentence is one place, as is every sent_id."""
    return tuple("*" if isinstance(key, int) else key for key in path)


def damaged(value, op, odd, cut):
    """The value after one mutation ('delete' is done by the caller)."""
    if op == "odd_text":
        return ODD_TEXT[cut % len(ODD_TEXT)] if isinstance(value, str) else odd
    if op == "null":
        return None
    if op == "retype":
        return odd
    if op == "nest":
        return [value]
    if op == "out_of_range":
        if evaluation.is_int(value):
            return value + [1, 100, -value - 1, 2 ** 40][cut % 4]
        return [-1, 10 ** 6][cut % 2]
    if op == "truncate":
        return value[:cut % len(value)] if isinstance(value, (list, str)) and value else odd
    if op == "duplicate":
        return value + value[:1] if isinstance(value, list) else value
    if op == "swap_type":
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, (int, float)):
            return str(value)
        if isinstance(value, str):
            return [value]
        if isinstance(value, list):
            return {str(i): item for i, item in enumerate(value)}
        if isinstance(value, dict):
            return list(value.values())
        return 0
    raise AssertionError(op)


def mutate(data, root, max_mutations=3):
    """Apply 1..max_mutations random mutations (drawn from `data`) to a deep copy of `root`. The place is
    drawn by shape first, so that a label's r is as likely as a word, of which there are many more."""
    root = copy.deepcopy(root)
    for _ in range(data.draw(st.integers(1, max_mutations), label="mutations")):
        by_shape = {}
        for path in paths(root):
            by_shape.setdefault(shape(path), []).append(path)
        places = by_shape[data.draw(st.sampled_from(list(by_shape)), label="field")]
        path = data.draw(st.sampled_from(places), label="path")
        op = data.draw(st.sampled_from(OPS), label="op")
        odd = copy.deepcopy(data.draw(st.sampled_from(ODD_VALUES), label="odd value"))  # never shared
        cut = data.draw(st.integers(0, 50), label="cut")
        if not path:
            root = None if op == "delete" else damaged(root, op, odd, cut)
            continue
        parent = root
        for key in path[:-1]:
            parent = parent[key]
        if op == "delete":
            del parent[path[-1]]
        else:
            parent[path[-1]] = damaged(parent[path[-1]], op, odd, cut)
    return root


def write(folder, name, obj):
    path = folder / name
    path.write_text(json.dumps(obj), encoding="utf-8")  # NaN and lone surrogates as JSON writes them
    return str(path)


def check_features(features, num_class):
    """What utils.collate_fn and the model rely on."""
    for f in features:
        n, length = f["num_entities"], len(f["input_ids"])
        assert isinstance(f["title"], str) and length >= 2
        assert len(f["entity_pos"]) == n and len(f["hts"]) == len(f["labels"])
        assert all(0 < s <= e < length for spans in f["entity_pos"] for s, e in spans)
        assert all(0 <= h < n and 0 <= t < n and h != t for h, t in f["hts"])
        assert all(0 < r < num_class for rels in f["labels"] for r in rels)


def expect_data_error(run, path):
    """run() returns normally or raises a DataError that names the file."""
    try:
        result = run()
    except utils.DataError as e:
        assert str(path) in str(e), str(e)
        event("DataError")
        return None
    event("valid result")
    return result


# ------------------------------------------------------------------ readers


@settings(max_examples=300, **SETTINGS)
@given(data=st.data())
def test_docred_reader_takes_damaged_documents(data, tokenizer, rel2id, folder):
    docs = mutate(data, valid_docs())
    max_seq_length = data.draw(st.sampled_from([8, 24, 1024]), label="max_seq_length")
    path = write(folder, "damaged.json", docs)
    features = expect_data_error(
        lambda: prepro.load_features(path, "docred", tokenizer, max_seq_length, rel2id), path)
    if features is not None:
        check_features(features, len(rel2id))
        assert len(features) == len(docs) and all(len(f["input_ids"]) <= max_seq_length for f in features)


@settings(max_examples=100, **SETTINGS)
@given(data=st.data())
def test_readers_take_damaged_bytes(data, tokenizer, rel2id, folder):
    """The file itself cut short or with a byte changed: DocRED JSON and CDR/GDA `.data` alike."""
    dataset = data.draw(st.sampled_from(["docred", "cdr", "gda"]), label="dataset")
    raw = (json.dumps(valid_docs()) if dataset == "docred" else "\n".join(bio_lines()) + "\n").encode("utf-8")
    cut = data.draw(st.integers(0, len(raw)), label="cut")
    byte = data.draw(st.integers(0, 255), label="byte")
    raw = raw[:cut] + bytes([byte]) + raw[cut + 1:] if data.draw(st.booleans(), label="replace") else raw[:cut]
    path = folder / f"bytes.{dataset}"
    path.write_bytes(raw)
    features = expect_data_error(
        lambda: prepro.load_features(str(path), dataset, tokenizer, 64, rel2id if dataset == "docred" else None),
        path)
    if features is not None:
        check_features(features, len(rel2id) if dataset == "docred" else 2)


def entity(eid, etype, spans, sent_ids):
    return [eid, "|".join("m" for _ in spans), etype, ":".join(str(s) for s, _ in spans),
            ":".join(str(e) for _, e in spans), ":".join(map(str, sent_ids))]


def pair(label, direction, first, second):
    return [label, direction, "NON-CROSS", "0-1", "2-3"] + entity(*first) + entity(*second)


def bio_lines():
    """Two valid CDR lines (GDA lines differ only in the label names)."""
    drug, pain, fever = ("C1", "Chemical", [(0, 1), (5, 6)], [0, 1]), ("D1", "Disease", [(2, 3)], [0]), \
        ("D2", "Disease", [(7, 8)], [1])
    first = ["11", "aspirin causes pain .|aspirin cures fever ."] + pair("1:CID:2", "L2R", drug, pain) \
        + pair("1:NR:2", "R2L", drug, fever) + pair("not_include", "L2R", pain, fever)
    second = ["12", "ibuprofen and headache ."] + pair("1:NR:2", "L2R", ("C2", "Chemical", [(0, 1)], [0]),
                                                      ("D3", "Disease", [(2, 3)], [0]))
    return ["\t".join(first), "\t".join(second)]


@settings(max_examples=200, **SETTINGS)
@given(data=st.data())
def test_cdr_gda_reader_takes_damaged_lines(data, tokenizer, folder):
    dataset = data.draw(st.sampled_from(["cdr", "gda"]), label="dataset")
    lines = [line.split("\t") for line in bio_lines()]
    if dataset == "gda":
        lines = [[{"1:CID:2": "1:GDA:2"}.get(x, x) for x in fields] for fields in lines]
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        fields = lines[data.draw(st.integers(0, len(lines) - 1), label="line")]
        i = data.draw(st.integers(0, len(fields) - 1), label="field")
        op = data.draw(st.sampled_from(["delete", "empty", "replace", "swap", "duplicate", "truncate"]), label="op")
        if op == "delete":
            del fields[i]
        elif op == "empty":
            fields[i] = ""
        elif op == "replace":
            fields[i] = data.draw(st.sampled_from(["-1", "999", "0:1", "1:x", "2", "L2R", "1:CID:2", "1:GDA:2",
                                                   "not_include", "C1", "|", " ", "a b", "9" * 5000]), label="value")
        elif op == "swap":
            j = data.draw(st.integers(0, len(fields) - 1), label="other")
            fields[i], fields[j] = fields[j], fields[i]
        elif op == "duplicate":
            fields[i:i] = fields[i:i + 17]
        else:
            fields[i] = fields[i][:data.draw(st.integers(0, max(len(fields[i]) - 1, 0)), label="cut")]
        if not fields:
            lines.remove(fields)
        if not lines:
            break
    path = folder / f"damaged.{dataset}.data"
    path.write_text("".join("\t".join(fields) + "\n" for fields in lines), encoding="utf-8")
    features = expect_data_error(lambda: prepro.load_features(str(path), dataset, tokenizer, 64), path)
    if features is not None:
        check_features(features, 2)


# ---------------------------------------------------------------- evaluator


def run_evaluation(folder, pred, gold, train=None):
    """evaluation.main on the three files: (exit status, scores or the error line)."""
    args = ["--pred", write(folder, "pred.json", pred), "--gold", write(folder, "gold.json", gold)]
    if train is not None:
        args += ["--train", write(folder, "train.json", train)]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = evaluation.main(args)
    return status, (json.loads(out.getvalue()) if status == 0 else err.getvalue())


def check_outcome(status, result, damaged_file):
    event(f"exit status {status}")
    if status == 2:
        assert result.startswith("error: ") and damaged_file in result and result.count("\n") == 1, result
        return
    assert status == 0
    for key, value in result.items():
        assert math.isfinite(value) and value >= 0, (key, value)
        if not key.startswith("num_"):
            assert value <= 100, (key, value)
    assert result["num_correct"] <= min(result["num_pred"], result["num_gold"])


@settings(max_examples=200, **SETTINGS)
@given(data=st.data())
def test_evaluator_takes_damaged_gold(data, folder):
    status, result = run_evaluation(folder, submission(), mutate(data, valid_docs()))
    check_outcome(status, result, "gold.json")


@settings(max_examples=150, **SETTINGS)
@given(data=st.data())
def test_evaluator_takes_damaged_train(data, folder):
    status, result = run_evaluation(folder, submission(), valid_docs(), mutate(data, valid_docs()))
    check_outcome(status, result, "train.json")


@settings(max_examples=150, **SETTINGS)
@given(data=st.data())
def test_evaluator_takes_damaged_predictions(data, folder):
    status, result = run_evaluation(folder, mutate(data, submission()), valid_docs())
    check_outcome(status, result, "pred.json")


def test_mutations_reach_every_field():
    """The mutation engine can pick every field of the documents (a guard against a vacuous property)."""
    fields = {path[-1] for path in paths(valid_docs()) if path and isinstance(path[-1], str)}
    assert fields == {"title", "sents", "vertexSet", "labels", "name", "sent_id", "pos", "type", "h", "t", "r",
                      "evidence"}
