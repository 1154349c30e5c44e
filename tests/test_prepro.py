"""Tests for prepro.py: features, entity markers, truncation, input errors, cache, real-data counts.

Fixture documents are made up here; the real data is only read (through the
SHARED_DATA fixture) to check counts stated in its SOURCES.md.
"""
import importlib.util
import json
import logging
import os
import string
from collections import Counter

import pytest

import prepro
import utils

REL2ID_PATH = os.path.join(os.path.dirname(prepro.__file__), "meta", "rel2id.json")


@pytest.fixture(scope="module")
def rel2id():
    return prepro.load_rel2id()


def mention(sent_id, start, end, name="x"):
    return {"name": name, "pos": [start, end], "sent_id": sent_id, "type": "MISC"}


def people_doc(title="People"):
    """Four entities, two of them with two mentions; (0, 1) has two relations, one listed twice."""
    return {
        "title": title,
        "sents": [["Alice", "Smith", "was", "born", "in", "Paris", "."],
                  ["She", "moved", "to", "Berlin", "and", "then", "Paris", "again", "."],
                  ["Smith", "works", "for", "Acme", "."]],
        "vertexSet": [[mention(0, 0, 2), mention(2, 0, 1)],
                      [mention(0, 5, 6), mention(1, 6, 7)],
                      [mention(1, 3, 4)],
                      [mention(2, 3, 4)]],
        "labels": [{"h": 0, "t": 1, "r": "P19", "evidence": [0]},
                   {"h": 0, "t": 1, "r": "P551", "evidence": [0, 1]},
                   {"h": 0, "t": 1, "r": "P19", "evidence": []},
                   {"h": 0, "t": 3, "r": "P108", "evidence": [2]}],
    }


def write_json(tmp_path, obj, name="docs.json"):
    path = tmp_path / name
    path.write_text(json.dumps(obj), encoding="utf-8")
    return str(path)


def read_docred(path, tokenizer, rel2id, max_seq_length=1024):
    """DocRED-format features through the entry point train.py uses, without a cache."""
    return prepro.load_features(str(path), "docred", tokenizer, max_seq_length, rel2id)


def read_bio(path, tokenizer, dataset, max_seq_length=1024):
    """CDR or GDA features through the entry point train.py uses, without a cache."""
    return prepro.load_features(str(path), dataset, tokenizer, max_seq_length)


FEATURE_KEYS = {"title", "input_ids", "entity_pos", "hts", "labels", "num_entities", "num_class"}


def star_id(tok):
    return tok.convert_tokens_to_ids(prepro.MARKER)


def ids_of(tok, words):
    return tok(words, is_split_into_words=True, add_special_tokens=False)["input_ids"]


# ------------------------------------------------------------------ DocRED


def test_docred_feature_fields(tmp_path, tokenizer, rel2id):
    doc = people_doc()
    [f] = read_docred(write_json(tmp_path, [doc]), tokenizer, rel2id)
    assert f["title"] == "People"
    assert f["num_entities"] == 4 and f["num_class"] == len(rel2id) == 97
    assert f["input_ids"][0] == tokenizer.cls_token_id and f["input_ids"][-1] == tokenizer.sep_token_id
    assert set(f) == FEATURE_KEYS  # every field is read by utils.collate_fn or train.py
    assert [len(p) for p in f["entity_pos"]] == [2, 2, 1, 1]
    # Removing the markers gives back the plain document tokenization.
    star = star_id(tokenizer)
    plain = [w for s in doc["sents"] for w in s]
    assert [i for i in f["input_ids"][1:-1] if i != star] == ids_of(tokenizer, plain)
    assert f["input_ids"].count(star) == 2 * 6


def test_docred_marker_positions(tmp_path, tokenizer, rel2id):
    doc = people_doc()
    [f] = read_docred(write_json(tmp_path, [doc]), tokenizer, rel2id)
    star = star_id(tokenizer)
    for entity, spans in zip(doc["vertexSet"], f["entity_pos"]):
        for m, (start, end) in zip(entity, spans):
            words = doc["sents"][m["sent_id"]][m["pos"][0]:m["pos"][1]]
            assert f["input_ids"][start] == star and f["input_ids"][end] == star
            assert f["input_ids"][start + 1] == ids_of(tokenizer, words[:1])[0]
            assert f["input_ids"][start + 1:end] == ids_of(tokenizer, words)
    # "Acme" is two subwords: the span holds both, the start marker precedes the first.
    acme_start, acme_end = f["entity_pos"][3][0]
    assert acme_end - acme_start - 1 == len(tokenizer.tokenize("Acme")) == 2


def test_docred_hts_and_multi_hot_labels(tmp_path, tokenizer, rel2id):
    [f] = read_docred(write_json(tmp_path, [people_doc()]), tokenizer, rel2id)
    n = 4
    assert f["hts"] == [[h, t] for h in range(n) for t in range(n) if h != t]
    assert len(f["hts"]) == len(f["labels"]) == n * (n - 1)
    by_pair = {tuple(ht): lab for ht, lab in zip(f["hts"], f["labels"])}
    assert by_pair[0, 1] == sorted([rel2id["P19"], rel2id["P551"]])
    assert by_pair[0, 3] == [rel2id["P108"]]
    assert by_pair[1, 0] == []  # direction matters
    assert sum(len(lab) for lab in f["labels"]) == 3  # the repeated P19 fact counts once
    assert all(0 not in lab for lab in f["labels"])


def test_docred_labels_optional_and_single_entity(tmp_path, tokenizer, rel2id):
    doc = people_doc()
    del doc["labels"]
    lone = {"title": "Lone", "sents": [["Rome", "."]], "vertexSet": [[mention(0, 0, 1)]]}
    f, g = read_docred(write_json(tmp_path, [doc, lone]), tokenizer, rel2id)
    assert len(f["hts"]) == 12 and all(lab == [] for lab in f["labels"])
    assert g["hts"] == [] and g["labels"] == [] and g["num_entities"] == 1


def test_overlapping_mentions_get_their_own_markers():
    # [0,3) "New York City", [0,2) "New York" nested; [3,4) adjacent; [1,4) crossing; [0,3) twice.
    words = ["New", "York", "City", "is", "big", "."]
    marked, where = prepro._insert_markers(words, [(0, 3), (0, 2), (3, 4), (1, 4), (0, 3)])
    assert marked == ["*", "*", "New", "*", "York", "*", "City", "*", "*", "is", "*", "*", "big", "."]
    assert where == {(0, 3): (0, 7), (0, 2): (1, 5), (1, 4): (3, 11), (3, 4): (8, 10)}


def test_overlapping_mentions_features(tmp_path, tokenizer, rel2id):
    doc = {"title": "Overlap", "sents": [["New", "York", "City", "is", "big", "."]],
           "vertexSet": [[mention(0, 0, 3)], [mention(0, 0, 2)], [mention(0, 3, 4)],
                         [mention(0, 1, 4)], [mention(0, 0, 3)]]}
    [f] = read_docred(write_json(tmp_path, [doc]), tokenizer, rel2id)
    pos = [spans[0] for spans in f["entity_pos"]]
    star = star_id(tokenizer)
    assert all(f["input_ids"][s] == star and f["input_ids"][e] == star for s, e in pos)
    assert pos[0] == pos[4]  # identical spans share markers
    distinct = set(pos)
    assert len(distinct) == 4 and f["input_ids"].count(star) == 8
    markers = [i for span in distinct for i in span]
    assert len(set(markers)) == len(markers)  # no marker serves two distinct mentions
    (s0, e0), (s1, e1), (s2, _) = pos[0], pos[1], pos[2]
    assert s0 < s1 < e1 < e0  # "New York" nested inside "New York City"
    assert e0 < s2  # the adjacent mention opens after "New York City" closes
    assert len(f["hts"]) == 5 * 4


def truncated_docs():
    """A document that max_seq_length=20 cuts (3 of its mentions lost) and one that fits."""
    words = ["paris"] + ["the"] * 13 + ["berlin", "london", "rome"] + ["the"] * 13 + ["rome", "paris", "."]
    long_doc = {"title": "Long", "sents": [words],
                "vertexSet": [[mention(0, 0, 1), mention(0, 31, 32)],  # second "paris" is cut off
                              [mention(0, 14, 17)],  # start marker kept, end marker cut off
                              [mention(0, 30, 31)],  # cut off entirely
                              [mention(0, 15, 16)]]}  # start marker is the first token cut off
    short_doc = {"title": "Short", "sents": [["rome", "and", "paris"]],
                 "vertexSet": [[mention(0, 0, 1)], [mention(0, 2, 3)]]}
    return [long_doc, short_doc]


def test_truncation(tmp_path, tokenizer, rel2id, caplog):
    for w in ("paris", "berlin", "london", "rome", "the"):
        assert len(tokenizer.tokenize(w)) == 1  # the positions below assume one subword per word
    path = write_json(tmp_path, truncated_docs())
    with caplog.at_level(logging.WARNING, logger="prepro"):
        long_f, short_f = read_docred(path, tokenizer, rel2id, max_seq_length=20)
    assert len(long_f["input_ids"]) == 20 and long_f["input_ids"][-1] == tokenizer.sep_token_id
    # Marked tokens: * paris * the*13 -> the start marker of "berlin london rome" is token 16,
    # input_ids index 17; its first word is index 18, the last content position. The marker
    # of the nested "london" is token 18 = max_seq_length - 2, the first one cut off.
    assert long_f["entity_pos"] == [[(1, 3)], [(17, 18)], [], []]
    assert long_f["input_ids"][17] == star_id(tokenizer)
    assert long_f["input_ids"][18] == tokenizer.convert_tokens_to_ids("berlin")
    assert len(short_f["entity_pos"][1]) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "1 of 2 documents truncated" in warnings[0] and "3 entity mentions lost" in warnings[0]
    assert "docs.json" in warnings[0]


def test_truncation_warning_also_from_cache(tmp_path, tokenizer, rel2id, caplog, monkeypatch):
    """The cache keeps what truncation cost: a warm run warns exactly as the cold run did."""
    path = write_json(tmp_path, truncated_docs())
    cache = str(tmp_path / "cache")
    warnings = []
    for run in ("cold", "warm"):
        if run == "warm":
            monkeypatch.setattr(prepro, "_docred_features", lambda *a, **k: pytest.fail("cache not used"))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="prepro"):
            prepro.load_features(path, "docred", tokenizer, 20, rel2id, cache_dir=cache)
        warnings.append([r.getMessage() for r in caplog.records if r.levelno == logging.WARNING])
    assert warnings[0] == warnings[1] and len(warnings[1]) == 1
    assert "1 of 2 documents truncated to max_seq_length=20; 3 entity mentions lost" in warnings[1][0]


def test_no_truncation_no_warning(tmp_path, tokenizer, rel2id, caplog):
    with caplog.at_level(logging.WARNING, logger="prepro"):
        read_docred(write_json(tmp_path, [people_doc()]), tokenizer, rel2id)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_tokenizer_calls_do_not_grow_with_documents(tmp_path, tokenizer, rel2id, monkeypatch):
    calls = []
    original = type(tokenizer).__call__

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(tokenizer), "__call__", counting)
    read_docred(write_json(tmp_path, [people_doc()], "one.json"), tokenizer, rel2id)
    one = len(calls)
    calls.clear()
    read_docred(write_json(tmp_path, [people_doc(f"d{i}") for i in range(8)], "many.json"),
                       tokenizer, rel2id)
    assert len(calls) == one


# --------------------------------------------------------- DocRED input errors


def _set(path_in_doc, value):
    def mutate(doc):
        target = doc
        for key in path_in_doc[:-1]:
            target = target[key]
        target[path_in_doc[-1]] = value
    return mutate


def _drop(key):
    return lambda doc: doc.pop(key)


BAD_DOCS = [
    (_drop("sents"), "missing key 'sents'"),
    (_drop("vertexSet"), "missing key 'vertexSet'"),
    (_set(["vertexSet", 0, 1, "pos"], [0, 9]), "vertexSet[0][1].pos"),
    (_set(["vertexSet", 2, 0, "pos"], [4, 4]), "vertexSet[2][0].pos"),
    (_set(["vertexSet", 1, 0, "sent_id"], 3), "vertexSet[1][0].sent_id"),
    (_set(["vertexSet", 1, 0, "sent_id"], -1), "vertexSet[1][0].sent_id"),
    (_set(["vertexSet", 3], []), "vertexSet[3]"),
    (_set(["labels", 1, "h"], 4), "labels[1].h"),
    (_set(["labels", 2, "t"], -1), "labels[2].t"),
    (_set(["labels", 0, "r"], "P9999"), "labels[0].r: unknown relation 'P9999'"),
    (_set(["labels", 0, "r"], "Na"), "labels[0].r"),
    (_set(["labels", 3, "t"], 0), "labels[3]: head and tail are the same entity"),
    (_set(["sents", 1], "She moved"), "sents"),
    (_set(["labels"], {"h": 0}), "labels"),
    (_set(["labels", 0, "r"], ["P19"]), "labels[0].r: unknown relation ['P19']"),
    (_set(["labels", 0, "r"], None), "labels[0].r: unknown relation None"),
    (_set(["labels", 0], ["P19"]), "labels[0]: expected a JSON object"),
    (_set(["vertexSet", 0, 1, "sent_id"], [2]), "vertexSet[0][1].sent_id: [2] is not a sentence id"),
    (_set(["vertexSet", 0, 1, "sent_id"], True), "vertexSet[0][1].sent_id: True"),
    (_set(["vertexSet", 0, 1, "pos"], [0.0, 1]), "vertexSet[0][1].pos: [0.0, 1]"),
    (_set(["sents", 1, 3], "Ber\ud800lin"), "sents[1][3]: not Unicode text"),
    (_set(["sents", 1, 3], None), "sents: expected a list of sentences"),
]


@pytest.mark.parametrize("mutate,field", BAD_DOCS)
def test_bad_document_names_file_doc_and_field(tmp_path, tokenizer, rel2id, mutate, field):
    bad = people_doc("Second Doc")
    mutate(bad)
    path = write_json(tmp_path, [people_doc(), bad], "bad_dev.json")
    with pytest.raises(utils.DataError) as err:
        read_docred(path, tokenizer, rel2id)
    message = str(err.value)
    assert "bad_dev.json" in message and 'document 1 ("Second Doc")' in message
    assert field in message


def test_title_that_is_no_text(tmp_path, tokenizer, rel2id):
    """A lone surrogate (JSON "\\ud800") would crash the tokenizer or the UTF-8 result.json later."""
    bad = people_doc("Bad \ud800 title")
    with pytest.raises(utils.DataError, match=r"docs\.json: document 1 .*title: expected a string of Unicode text"):
        read_docred(write_json(tmp_path, [people_doc(), bad]), tokenizer, rel2id)


@pytest.mark.parametrize("content,message", [
    (b'[{"title": "a"},]', "not DocRED JSON (invalid JSON: Expecting value: line 1 column 17 (char 16))"),
    (b'[{"title": "a"}\n{"title": "b"}]', "not DocRED JSON (invalid JSON: Expecting ',' delimiter: line 2 column 1"),
    (b'[{"title": "\xff"}]', "not UTF-8 text: 'utf-8' codec can't decode byte 0xff in position 12"),
    (b'[{"title": "\xed\xa0\x80"}]', "not UTF-8 text"),
    (b'[' * 100000 + b']' * 100000, "not DocRED JSON (invalid JSON: nested too deeply)"),
], ids=["trailing-comma", "missing-comma", "not-utf8", "encoded-surrogate", "deep-nesting"])
def test_broken_json_says_where(tmp_path, tokenizer, rel2id, content, message):
    path = tmp_path / "broken.json"
    path.write_bytes(content)
    with pytest.raises(utils.DataError) as err:
        read_docred(path, tokenizer, rel2id)
    assert str(err.value).startswith(f"{path}: {message}"), str(err.value)


def test_unreadable_path_is_usage_error(tmp_path, tokenizer, rel2id):
    with pytest.raises(utils.UsageError, match="cannot read"):
        read_docred(tmp_path, tokenizer, rel2id)


def test_missing_title(tmp_path, tokenizer, rel2id):
    bad = people_doc()
    del bad["title"]
    with pytest.raises(utils.DataError, match=r"docs\.json: document 1 .*missing key 'title'"):
        read_docred(write_json(tmp_path, [people_doc(), bad]), tokenizer, rel2id)


@pytest.mark.parametrize("content,message", [
    ("", "empty file"),
    ("  \n", "empty file"),
    ("[]", "no documents"),
    ('[{"title": "a"', "not DocRED JSON"),
    ('{"title": "a", "sents": []}', "not DocRED JSON"),
    ("1234\tsome text .\t1:CID:2\tL2R", "not DocRED JSON"),
    ('["just a string"]', "document 0: expected a JSON object"),
])
def test_bad_docred_file(tmp_path, tokenizer, rel2id, content, message):
    path = tmp_path / "weird.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(utils.DataError, match="weird.json") as err:
        read_docred(str(path), tokenizer, rel2id)
    assert message in str(err.value)


def test_missing_file_is_usage_error(tmp_path, tokenizer, rel2id):
    with pytest.raises(utils.UsageError, match="no such file"):
        read_docred(str(tmp_path / "absent.json"), tokenizer, rel2id)


# ------------------------------------------------------------------ CDR / GDA


def entity_fields(eid, etype, spans, sent_ids):
    return [eid, "|".join("m" for _ in spans), etype,
            ":".join(str(s) for s, _ in spans), ":".join(str(e) for _, e in spans),
            ":".join(map(str, sent_ids))]


def pair_fields(label, direction, first, second):
    return [label, direction, "NON-CROSS", "0-1", "2-3"] + entity_fields(*first) + entity_fields(*second)


# Words: s0 "nausea and aspirin cause headache ." (0-5), s1 "aspirin also relieves headache
# and fever ." (6-12), s2 "ibuprofen too ." (13-15).
CDR_TEXT = "nausea and aspirin cause headache .|aspirin also relieves headache and fever .|ibuprofen too ."
ASPIRIN = ("C1", "Chemical", [(2, 3), (6, 7)], [0, 1])
HEADACHE = ("D1", "Disease", [(4, 5), (9, 10)], [0, 1])
NAUSEA = ("D0", "Disease", [(0, 1)], [0])
FEVER = ("D2", "Disease", [(11, 12)], [1])
IBUPROFEN = ("C2", "Chemical", [(13, 14)], [2])


def cdr_line(positive="1:CID:2", pmid="1001"):
    pairs = [pair_fields(positive, "L2R", ASPIRIN, HEADACHE),
             pair_fields("1:NR:2", "R2L", ASPIRIN, NAUSEA),
             pair_fields("not_include", "L2R", IBUPROFEN, FEVER),
             pair_fields("1:NR:2", "L2R", ASPIRIN, FEVER)]
    return "\t".join([pmid, CDR_TEXT] + [x for p in pairs for x in p])


def second_line(positive="1:CID:2", pmid="1002"):
    text = "rome fever .|rome again ."
    return "\t".join([pmid, text] + pair_fields(positive, "L2R", ("C9", "Chemical", [(0, 1), (3, 4)], [0, 1]),
                                                ("D9", "Disease", [(1, 2)], [0])))


def write_data(tmp_path, lines, name="train.data"):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def test_cdr_features(tmp_path, tokenizer):
    f, g = read_bio(write_data(tmp_path, [cdr_line(), second_line()]), tokenizer, "cdr")
    assert f["title"] == "1001" and g["title"] == "1002"
    assert f["num_class"] == 2 and f["num_entities"] == 4  # ibuprofen is only in a not_include pair
    # Entities in order of first appearance: aspirin, headache, nausea, fever. R2L puts entity 2 first.
    assert f["hts"] == [[0, 1], [2, 0], [0, 3]]
    assert f["labels"] == [[1], [], []]
    assert set(f) == FEATURE_KEYS
    words = CDR_TEXT.replace("|", " ").split(" ")
    star = star_id(tokenizer)
    for (_, _, spans, _), pos in zip((ASPIRIN, HEADACHE, NAUSEA, FEVER), f["entity_pos"]):
        assert len(pos) == len(spans)
        for (ws, we), (s, e) in zip(spans, pos):
            assert f["input_ids"][s] == star and f["input_ids"][e] == star
            assert f["input_ids"][s + 1:e] == ids_of(tokenizer, words[ws:we])
    # Like ATLOP, the not_include-only entity is still marked in the text.
    ibu = ids_of(tokenizer, ["ibuprofen"])
    i = f["input_ids"].index(ibu[0])
    assert f["input_ids"][i - 1] == star and f["input_ids"][i + len(ibu)] == star
    assert f["input_ids"].count(star) == 2 * 7
    assert g["hts"] == [[0, 1]] and g["labels"] == [[1]]
    assert [len(p) for p in g["entity_pos"]] == [2, 1]


def test_gda_features(tmp_path, tokenizer):
    path = write_data(tmp_path, [cdr_line("1:GDA:2"), second_line("1:NR:2")], "test.data")
    f, g = read_bio(path, tokenizer, "gda")
    assert f["labels"] == [[1], [], []] and g["labels"] == [[]]
    with pytest.raises(utils.DataError, match=r"test\.data: line 1 \(PMID 1001\): pair 0: unknown label '1:GDA:2'"):
        read_bio(path, tokenizer, "cdr")


def _replace_field(line, index, value):
    fields = line.split("\t")
    fields[index] = value
    return "\t".join(fields)


@pytest.mark.parametrize("bad_line,message", [
    (cdr_line("1:CID:2", "1002") + "\textra", "expected PMID, text and 17 fields per candidate pair"),
    ("\t".join(cdr_line(pmid="1002").split("\t")[:-1]), "got 69 tab-separated fields"),
    ("1002\tjust text", "got 2 tab-separated fields"),
    (_replace_field(cdr_line(pmid="1002"), 2 + 8, "2:x"), "pair 0 entity 1 (C1): mention starts"),
    (_replace_field(cdr_line(pmid="1002"), 2 + 9, "3"), "2 mention starts, 1 ends"),
    (_replace_field(cdr_line(pmid="1002"), 2 + 10, "0:7"), "sentence id 7 out of range"),
    (_replace_field(cdr_line(pmid="1002"), 2 + 15, "5:14"), "mention [9, 14) is not inside sentence 1"),
    (_replace_field(cdr_line(pmid="1002"), 2 + 1, "UP"), "direction must be L2R or R2L"),
    (_replace_field(cdr_line(pmid="1002"), 2 + 17 + 11, "C1"), "entity C1 has other mentions"),
    (_replace_field(cdr_line(pmid="1001"), 2, "1:CID:2"), "PMID already used on line 1"),
], ids=["extra-field", "missing-field", "no-pairs", "non-integer", "count-mismatch", "sentence-id",
        "outside-sentence", "direction", "inconsistent-entity", "duplicate-pmid"])
def test_bad_data_line(tmp_path, tokenizer, bad_line, message):
    path = write_data(tmp_path, [cdr_line(), bad_line], "dev_filter.data")
    with pytest.raises(utils.DataError) as err:
        read_bio(path, tokenizer, "cdr")
    text = str(err.value)
    assert "dev_filter.data: line 2 (PMID 100" in text and message in text


def test_bad_data_file(tmp_path, tokenizer):
    with pytest.raises(utils.DataError, match="empty file"):
        read_bio(write_data(tmp_path, []), tokenizer, "gda")
    json_path = write_json(tmp_path, [people_doc()])
    with pytest.raises(utils.DataError, match=r"docs\.json: line 1 .*not a \.data file"):
        read_bio(json_path, tokenizer, "cdr")


# ---------------------------------------------------------------------- cache


class CountingReader:
    """Wraps prepro's internal reader to count the files actually parsed."""

    def __init__(self, monkeypatch, name):
        self.calls = 0
        self.inner = getattr(prepro, name)
        monkeypatch.setattr(prepro, name, self)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


def test_cache_hit(tmp_path, rel2id, monkeypatch):
    # A tokenizer never used before: its first call changes its backend's
    # truncation settings, which must not change the cache key.
    tokenizer = prepro.load_tokenizer(utils.default_model_path(), "bert")
    path = write_json(tmp_path, [people_doc(), people_doc("Other")])
    cache = str(tmp_path / "cache")
    cold = prepro.load_features(path, "docred", tokenizer, 512, rel2id, cache_dir=cache)
    direct = read_docred(path, tokenizer, rel2id, 512)
    assert len(os.listdir(cache)) == 1

    def fail(*args, **kwargs):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(prepro, "_docred_features", fail)
    warm = prepro.load_features(path, "docred", tokenizer, 512, rel2id, cache_dir=cache)
    assert warm == cold == direct
    assert type(warm[0]["entity_pos"][0][0]) is tuple


def test_cache_invalidation(tmp_path, tokenizer, rel2id, monkeypatch):
    reader = CountingReader(monkeypatch, "_docred_features")
    cache = str(tmp_path / "cache")
    path = write_json(tmp_path, [people_doc()])
    prepro.load_features(path, "docred", tokenizer, 512, rel2id, cache_dir=cache)
    prepro.load_features(path, "docred", tokenizer, 512, rel2id, cache_dir=cache)
    assert reader.calls == 1
    prepro.load_features(path, "docred", tokenizer, 256, rel2id, cache_dir=cache)
    assert reader.calls == 2  # other max_seq_length
    other_map = dict(rel2id)
    other_map["P17"], other_map["P131"] = rel2id["P131"], rel2id["P17"]
    prepro.load_features(path, "docred", tokenizer, 512, other_map, cache_dir=cache)
    assert reader.calls == 3  # other rel2id
    write_json(tmp_path, [people_doc("Changed")])
    changed = prepro.load_features(path, "docred", tokenizer, 512, rel2id, cache_dir=cache)
    assert reader.calls == 4 and changed[0]["title"] == "Changed"  # other content
    assert len(os.listdir(cache)) == 4


def test_corrupt_cache_is_rebuilt(tmp_path, tokenizer, rel2id, caplog):
    cache = tmp_path / "cache"
    path = write_json(tmp_path, [people_doc()])
    cold = prepro.load_features(path, "docred", tokenizer, 512, rel2id, cache_dir=str(cache))
    [cache_file] = cache.iterdir()
    cache_file.write_bytes(b"[{\"title\": ")
    with caplog.at_level(logging.WARNING, logger="prepro"):
        again = prepro.load_features(path, "docred", tokenizer, 512, rel2id, cache_dir=str(cache))
    assert again == cold and "unreadable cache" in caplog.text


def test_cache_for_cdr_and_dataset_check(tmp_path, tokenizer, monkeypatch):
    reader = CountingReader(monkeypatch, "_bio_features")
    path = write_data(tmp_path, [cdr_line(), second_line()])
    cache = str(tmp_path / "cache")
    first = prepro.load_features(path, "cdr", tokenizer, 512, cache_dir=cache)
    assert prepro.load_features(path, "cdr", tokenizer, 512, cache_dir=cache) == first
    assert reader.calls == 1
    with pytest.raises(utils.UsageError, match="dataset must be"):
        prepro.load_features(path, "chemprot", tokenizer, 512, cache_dir=cache)


@pytest.mark.parametrize("cache_dir", [None, ""])
def test_without_cache_dir_nothing_is_written(tmp_path, tokenizer, rel2id, monkeypatch, cache_dir):
    data = tmp_path / "data"
    data.mkdir()
    path = write_json(data, [people_doc()])
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "usercache"))
    [f] = prepro.load_features(path, "docred", tokenizer, 512, rel2id, cache_dir=cache_dir)
    assert f["title"] == "People"
    assert sorted(os.listdir(tmp_path)) == ["data", "work"]
    assert os.listdir(data) == ["docs.json"] and os.listdir(work) == []


def test_cache_of_another_layout_is_rebuilt(tmp_path, tokenizer, rel2id, caplog):
    """A cache file that parses but is not this version's layout (a bare feature list, as caches without
    truncation counts were) is rebuilt, never trusted."""
    path = write_json(tmp_path, [people_doc()])
    cache = tmp_path / "cache"
    cold = prepro.load_features(path, "docred", tokenizer, 512, rel2id, cache_dir=str(cache))
    [cache_file] = cache.iterdir()
    cache_file.write_text(json.dumps([dict(cold[0], title="Stale")]))
    with caplog.at_level(logging.WARNING, logger="prepro"):
        again = prepro.load_features(path, "docred", tokenizer, 512, rel2id, cache_dir=str(cache))
    assert again == cold and "unreadable cache" in caplog.text
    assert json.loads(cache_file.read_text())["features"][0]["title"] == "People"


# ------------------------------------------------------------------ tokenizers


def tiny_roberta(tmp_path):
    """A byte-level BPE tokenizer with a made-up vocabulary, saved like a pretrained one."""
    from transformers import RobertaTokenizer
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
    chars = string.ascii_letters + "*."
    for token in ["Ġ"] + list(chars) + ["Ġ" + c for c in chars]:
        vocab.setdefault(token, len(vocab))
    merges = [("Ġ", c) for c in chars]
    RobertaTokenizer(vocab=vocab, merges=merges).save_pretrained(str(tmp_path / "roberta"))
    return str(tmp_path / "roberta")


def test_roberta_tokenizer(tmp_path, rel2id):
    folder = tiny_roberta(tmp_path)
    tok = prepro.load_tokenizer(folder, "roberta")
    path = write_json(tmp_path, [people_doc()])
    [f] = read_docred(path, tok, rel2id)
    assert f["input_ids"][0] == tok.cls_token_id == 0 and f["input_ids"][-1] == tok.sep_token_id == 2
    star = tok.convert_tokens_to_ids("Ġ*")
    for spans in f["entity_pos"]:
        for s, e in spans:
            assert f["input_ids"][s] == star and f["input_ids"][e] == star
    # Words keep their leading-space marker: "Ġ" + letters.
    s, e = f["entity_pos"][1][0]
    assert tok.convert_ids_to_tokens(f["input_ids"][s + 1:e]) == ["ĠP", "a", "r", "i", "s"]

    import transformers
    glued = transformers.AutoTokenizer.from_pretrained(folder)  # without add_prefix_space
    with pytest.raises(utils.UsageError, match="add_prefix_space=True"):
        read_docred(path, glued, rel2id)


def test_load_tokenizer_checks_type():
    with pytest.raises(utils.UsageError, match="transformer_type"):
        prepro.load_tokenizer(utils.default_model_path(), "xlnet")


def test_max_seq_length_too_small(tmp_path, tokenizer, rel2id):
    with pytest.raises(utils.UsageError, match="max_seq_length"):
        read_docred(write_json(tmp_path, [people_doc()]), tokenizer, rel2id, max_seq_length=2)


# ----------------------------------------------------------------- relation map


def load_make_meta():
    spec = importlib.util.spec_from_file_location(
        "make_meta", os.path.join(os.path.dirname(prepro.__file__), "meta", "make_meta.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_meta_files_match_generator(tmp_path):
    load_make_meta().main([str(tmp_path)])
    meta = os.path.dirname(REL2ID_PATH)
    for name in ("rel2id.json", "rel_info.json"):
        assert (tmp_path / name).read_bytes() == open(os.path.join(meta, name), "rb").read()


def test_rel2id_layout():
    rel2id = prepro.load_rel2id()
    assert rel2id == json.load(open(REL2ID_PATH))
    assert len(rel2id) == 97 and rel2id["Na"] == 0
    by_number = sorted((k for k in rel2id if k != "Na"), key=lambda k: int(k[1:]))
    assert [rel2id[k] for k in by_number] == list(range(1, 97))
    rel_info = json.load(open(os.path.join(os.path.dirname(REL2ID_PATH), "rel_info.json")))
    assert set(rel_info) == set(rel2id) - {"Na"}
    assert rel_info["P17"] == "country"
    assert rel_info["P131"] == "located in the administrative territorial entity"


@pytest.mark.parametrize("bad", [{"Na": 1, "P17": 0}, {"Na": 0, "P17": 2}, {"P17": 0}, ["Na"]])
def test_load_rel2id_rejects_bad_maps(tmp_path, bad):
    with pytest.raises(utils.DataError, match="rel2id.json"):
        prepro.load_rel2id(write_json(tmp_path, bad, "rel2id.json"))


# ---------------------------------------------------------------- real data


DOCRED_FILES = [  # (file, documents, relation facts), as stated in SOURCES.md
    ("docred/test.json", 1000, 0),
    ("redocred/dev_revised.json", 500, 17284),
    ("redocred/train_mini.json", 400, 13957),
    ("redocred/dev_mini.json", 100, 3327),
]


@pytest.mark.parametrize("name,n_docs,n_facts", DOCRED_FILES)
def test_real_docred_files(SHARED_DATA, tokenizer, rel2id, name, n_docs, n_facts):
    path = SHARED_DATA / name
    raw = json.loads(path.read_text(encoding="utf-8"))
    features = read_docred(str(path), tokenizer, rel2id)
    assert len(features) == len(raw) == n_docs
    facts = {(i, lab["h"], lab["t"], lab["r"]) for i, doc in enumerate(raw) for lab in doc.get("labels", [])}
    assert len(facts) == n_facts
    assert sum(len(lab) for f in features for lab in f["labels"]) == n_facts
    n_pairs = sum(len(doc["vertexSet"]) * (len(doc["vertexSet"]) - 1) for doc in raw)
    assert sum(len(f["hts"]) for f in features) == n_pairs
    star = star_id(tokenizer)
    for f, doc in zip(features, raw):
        assert f["title"] == doc["title"] and len(f["input_ids"]) <= 1024
        assert len(f["entity_pos"]) == len(doc["vertexSet"])
        assert all(len(spans) <= len(entity) for spans, entity in zip(f["entity_pos"], doc["vertexSet"]))
        assert all(f["input_ids"][s] == star and f["input_ids"][e] == star
                   for spans in f["entity_pos"] for s, e in spans)


@pytest.mark.parametrize("name,dataset,n_pos,n_neg", [
    ("cdr/train_filter.data", "cdr", 1038, 4202),
    ("cdr/dev_filter.data", "cdr", 1012, 4075),
    ("cdr/test_filter.data", "cdr", 1066, 4138),
    ("gda/test.data", "gda", 1502, 3720),
])
def test_real_bio_files(SHARED_DATA, tokenizer, name, dataset, n_pos, n_neg):
    features = read_bio(SHARED_DATA / name, tokenizer, dataset)
    assert len(features) == (1000 if name.startswith("gda") else 500)
    labels = Counter(tuple(lab) for f in features for lab in f["labels"])
    assert labels == {(1,): n_pos, (): n_neg}
    assert all(len(f["hts"]) == len(f["labels"]) for f in features)


def test_meta_matches_shared_relation_files(SHARED_DATA):
    meta = os.path.dirname(REL2ID_PATH)
    ours = json.load(open(REL2ID_PATH))
    shared = json.loads((SHARED_DATA / "docred" / "rel2id.json").read_text())
    assert set(ours) == set(shared) and ours["Na"] == shared["Na"] == 0
    our_info = json.load(open(os.path.join(meta, "rel_info.json")))
    shared_info = json.loads((SHARED_DATA / "docred" / "rel_info.json").read_text())
    assert our_info == shared_info
