"""Plain text -> DocRED documents (text_input.py, sentences.py): the rule-based words and sentences, the markup,
its errors (FILE:LINE:COLUMN, status 2 from predict.py, nothing written), and the spaCy path on a blank English
pipeline with an EntityRuler (no model download)."""
import json

import pytest
import spacy  # requirements-spacy.txt, part of requirements-dev.txt

import predict
import sentences
import text_input
from utils import DataError, UsageError


def words(text, bounds=()):
    return [[w for w, _, _ in sent] for sent in sentences.split(text, bounds)]


@pytest.mark.parametrize("text, expected", [
    ("Dr. Ada Lovelace met Mr. Babbage. They talked.", [["Dr.", "Ada", "Lovelace", "met", "Mr.", "Babbage", "."],
                                                        ["They", "talked", "."]]),
    ("J. R. R. Tolkien wrote it. It sold well.", [["J.", "R.", "R.", "Tolkien", "wrote", "it", "."],
                                                  ["It", "sold", "well", "."]]),
    ("Pi is 3.14, e.g. in Rome. It is 1,000 km away.", [["Pi", "is", "3.14", ",", "e.g.", "in", "Rome", "."],
                                                       ["It", "is", "1,000", "km", "away", "."]]),
    ('He said "Go." Then he left!', [["He", "said", '"', "Go", ".", '"'], ["Then", "he", "left", "!"]]),
    ("Was it? Yes... It was (see Fig. 2). the end", [["Was", "it", "?"], ["Yes", "..."],
                                                     ["It", "was", "(", "see", "Fig.", "2", ")", ".", "the", "end"]]),
    ("He works for Acme Inc. The firm grew.", [["He", "works", "for", "Acme", "Inc", "."],
                                              ["The", "firm", "grew", "."]]),
    ("A well-known O'Brien's note\n\nnew paragraph", [["A", "well-known", "O'Brien's", "note"], ["new", "paragraph"]]),
    ("in the U.S. army", [["in", "the", "U.S.", "army"]]),
], ids=["titles", "initials", "numbers", "quotes", "marks", "inc", "paragraph", "letters-with-points"])
def test_rule_based_words_and_sentences(text, expected):
    assert words(text) == expected


def test_bounds_split_words_and_offsets_are_exact():
    text = "Lovelace's notes"
    assert words(text, [8]) == [["Lovelace", "'s", "notes"]]
    for sent in sentences.split("Dr. Ada, 3.14 and U.S. ... done", [4]):
        for word, start, end in sent:
            assert "Dr. Ada, 3.14 and U.S. ... done"[start:end] == word


ADA = """# Ada Lovelace
[Ada Lovelace|PER] was born in [London|loc] in [1815|TIME]. [She|=Ada Lovelace] worked with [Charles
Babbage|PER] on the engine [3]. [Lovelace|=Ada Lovelace]'s notes \\[sic\\] cite [london|LOC].

# Paris
[Paris|LOC] is in [France|LOC]. [It|=Paris] is large.
"""


def test_markup_builds_docred_documents():
    docs = text_input.documents(ADA, "ada.txt")
    assert docs[0] == {
        "title": "Ada Lovelace",
        "sents": [["Ada", "Lovelace", "was", "born", "in", "London", "in", "1815", "."],
                  ["She", "worked", "with", "Charles", "Babbage", "on", "the", "engine", "[", "3", "]", "."],
                  ["Lovelace", "'s", "notes", "[", "sic", "]", "cite", "london", "."]],
        "vertexSet": [
            [{"name": "Ada Lovelace", "sent_id": 0, "pos": [0, 2], "type": "PER"},
             {"name": "She", "sent_id": 1, "pos": [0, 1], "type": "PER"},
             {"name": "Lovelace", "sent_id": 2, "pos": [0, 1], "type": "PER"}],
            [{"name": "London", "sent_id": 0, "pos": [5, 6], "type": "LOC"},
             {"name": "london", "sent_id": 2, "pos": [7, 8], "type": "LOC"}],
            [{"name": "1815", "sent_id": 0, "pos": [7, 8], "type": "TIME"}],
            [{"name": "Charles Babbage", "sent_id": 1, "pos": [3, 5], "type": "PER"}]]}
    assert docs[1]["title"] == "Paris" and [len(e) for e in docs[1]["vertexSet"]] == [2, 1]


def test_untitled_text_is_one_document_named_after_the_file(tmp_path):
    path = tmp_path / "news.txt"
    path.write_text("\ufeff[Rome|LOC] is in [Italy|LOC].\n", encoding="utf-8")
    assert text_input.read(str(path)) == [{"title": "news", "sents": [["Rome", "is", "in", "Italy", "."]],
                                           "vertexSet": [[{"name": "Rome", "sent_id": 0, "pos": [0, 1],
                                                           "type": "LOC"}],
                                                         [{"name": "Italy", "sent_id": 0, "pos": [3, 4],
                                                           "type": "LOC"}]]}]


def test_a_mention_keeps_its_sentence_whole():
    doc = text_input.documents("[Mr. X. Y|PER] met [Z. Q|PER]. Then he left.", "t")[0]
    assert doc["sents"] == [["Mr.", "X.", "Y", "met", "Z.", "Q", "."], ["Then", "he", "left", "."]]
    split = text_input.documents("They met [Bob. Then Tom|PER] and [Ann|PER].", "t")[0]
    assert len(split["sents"]) == 1 and split["vertexSet"][0][0]["pos"] == [2, 6]


BAD = [
    ("", "f.txt:1:1: no text"),
    ("  \n\n", "f.txt:1:1: no text"),
    ("[Ada|PER] met\n[Bob and [Carl|PER].", "f.txt:2:1: unclosed '[' (a mention is [text|TYPE] or [text|=Name]; "
                                              "\\[ is a literal bracket)"),
    ("[Ada|PER] met [Bob|PER", "f.txt:1:15: unclosed '[' (a mention is [text|TYPE] or [text|=Name]; "
                               "\\[ is a literal bracket)"),
    ("x\n [Ada|PERSON] met [Bob|PER].", "f.txt:2:7: unknown entity type 'PERSON' (one of PER, ORG, LOC, TIME, NUM, "
                                        "MISC, or =Name)"),
    ("[Ada|] met [Bob|PER].", "f.txt:1:6: no entity type after '|' (one of PER, ORG, LOC, TIME, NUM, MISC, "
                              "or =Name)"),
    ("[She|=Ada] met [Ada|PER] and [Bob|PER].", "f.txt:1:6: '=Ada' names no earlier mention"),
    ("[Ada|PER] met [him|=] and [Bob|PER].", "f.txt:1:20: no entity name after '='"),
    ("[Ada|PER] met [ |PER] and [Bob|PER].", "f.txt:1:15: empty mention (a mention is [text|TYPE] or [text|=Name])"),
    ("[Ada|PER] met Bob].", "f.txt:1:18: ']' without an opening '[' (\\] is a literal bracket)"),
    ("[Paris|LOC] and\n[paris|PER].", "f.txt:2:8: 'paris' is already an entity of type LOC (f.txt:1:1); one text "
                                      "names one entity"),
    ("# One\n[Ada|PER] alone.", "f.txt:1:1: document 'One' has 1 entity: relations need two (mark mentions as "
                                "[text|TYPE])"),
    ("No markup at all.", "f.txt:1:1: document 'f' has 0 entities: relations need two (mark mentions as "
                          "[text|TYPE])"),
    ("# A\n[a|PER] [b|PER]\n#\n", "f.txt:3:1: a title line needs a title after '#'"),
    ("# A\n[a|PER] [b|PER]\n# B\n\n", "f.txt:3:1: document 'B' has no text"),
    ("# A\n[a|PER] [b|PER]\n# A\n[a|PER] [b|PER]", "f.txt:3:1: title 'A' repeats the one at f.txt:1:1"),
]


@pytest.mark.parametrize("text, message", BAD, ids=[m.split(": ", 1)[1][:30] for _, m in BAD])
def test_markup_errors_name_line_and_column(text, message):
    with pytest.raises(DataError) as e:
        text_input.documents(text, "f.txt")
    assert str(e.value) == message


@pytest.mark.parametrize("text, message", BAD[2:6] + BAD[11:12], ids=["unclosed", "unclosed-end", "type",
                                                                      "no-type", "one-entity"])
def test_cli_bad_text_is_one_error_line_status_2_and_nothing_written(tmp_path, capsys, text, message):
    """The text is read before the checkpoint: this one does not even exist."""
    path = tmp_path / "f.txt"
    path.write_text(text, encoding="utf-8")
    out, page = tmp_path / "out" / "p.json", tmp_path / "out" / "p.html"
    status = predict.cli(["--checkpoint", str(tmp_path / "none.pt"), "--text", str(path), "--output", str(out),
                          "--html", str(page)])
    assert status == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {tmp_path}/{message}"]
    assert not (tmp_path / "out").exists()


def test_cli_reading_errors(tmp_path, capsys):
    (tmp_path / "latin1.txt").write_bytes("[Zürich|LOC]\n[Bern|LOC] caf\xe9".encode("latin-1"))
    argv = ["--checkpoint", "none.pt", "--output", str(tmp_path / "p.json"), "--text"]
    assert predict.cli(argv + [str(tmp_path / "latin1.txt")]) == 2
    assert predict.cli(argv + [str(tmp_path / "missing.txt")]) == 2
    assert predict.cli(argv[:-1] + ["--input", str(tmp_path / "x.json"), "--ner", "markup"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {tmp_path}/latin1.txt:1:3: not UTF-8 text",  # the ü of Zürich
        f"error: {tmp_path}/missing.txt: cannot read: No such file or directory",
        "error: --ner names the entities of --text; the documents of --input list their own"]
    assert not (tmp_path / "p.json").exists()


# ---------------------------------------------------------------- spaCy
PATTERNS = [{"label": "PERSON", "pattern": "Ada Lovelace"}, {"label": "PERSON", "pattern": "Lovelace"},
            {"label": "PERSON", "pattern": "Charles Babbage"}, {"label": "GPE", "pattern": "London"},
            {"label": "GPE", "pattern": [{"LOWER": "the"}, {"LOWER": "london"}]},
            {"label": "DATE", "pattern": "1815"}, {"label": "ORDINAL", "pattern": "first"},
            {"label": "WORK_OF_ART", "pattern": "Notes"}]
NEWS = ("Ada Lovelace was born in London in 1815. Lovelace wrote the first program with Charles Babbage.\n\n"
        "The London of 1815 was large. She wrote Notes.")


def ruler_pipeline():
    nlp = spacy.blank("en")
    nlp.add_pipe("entity_ruler").add_patterns(PATTERNS)
    return nlp


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("spacy") / "ruler"
    ruler_pipeline().to_disk(folder)
    return str(folder)


def test_spacy_entities_types_names_and_sentences(pipeline_folder):
    doc = text_input.documents(NEWS, "news.txt", f"spacy:{pipeline_folder}")[0]
    assert doc["sents"] == [["Ada", "Lovelace", "was", "born", "in", "London", "in", "1815", "."],
                            ["Lovelace", "wrote", "the", "first", "program", "with", "Charles", "Babbage", "."],
                            ["The", "London", "of", "1815", "was", "large", "."], ["She", "wrote", "Notes", "."]]
    names = [[(m["name"], m["type"], m["sent_id"], m["pos"]) for m in entity] for entity in doc["vertexSet"]]
    assert names == [  # "first" (ORDINAL) has no DocRED type; "the London" is London; "Lovelace" is Ada Lovelace
        [("Ada Lovelace", "PER", 0, [0, 2]), ("Lovelace", "PER", 1, [0, 1])],
        [("London", "LOC", 0, [5, 6]), ("The London", "LOC", 2, [0, 2])],
        [("1815", "TIME", 0, [7, 8]), ("1815", "TIME", 2, [3, 4])],
        [("Charles Babbage", "PER", 1, [6, 8])],
        [("Notes", "MISC", 3, [2, 3])]]


@spacy.Language.component("test_coref")
def coref(doc):
    """Stands in for a coreference component: clusters as spacy-experimental's coref writes them."""
    at = {t.text: t.i for t in reversed(doc)}  # each word's first token
    doc.spans["coref_clusters_1"] = [doc[0:2], doc[at["She"]:at["She"] + 1]]
    doc.spans["coref_clusters_2"] = [doc[at["Charles"]:at["Charles"] + 2], doc[at["London"]:at["London"] + 1]]
    doc.spans["coref_clusters_3"] = [doc[at["born"]:at["born"] + 1]]
    return doc


def test_spacy_coreference_clusters_join_entities():
    """A coreference component's clusters add pronouns to the entity they name; a cluster over entities of two
    types (Charles Babbage and London) or over no entity ("born") changes nothing."""
    nlp = ruler_pipeline()
    nlp.add_pipe("test_coref")
    doc = text_input.documents(NEWS, "news.txt", nlp)[0]
    assert [[(m["name"], m["sent_id"]) for m in entity] for entity in doc["vertexSet"]] == [
        [("Ada Lovelace", 0), ("Lovelace", 1), ("She", 3)], [("London", 0), ("The London", 2)],
        [("1815", 0), ("1815", 2)], [("Charles Babbage", 1)], [("Notes", 3)]]


def test_spacy_coreference_merges_entities_of_one_type():
    @spacy.Language.component("test_coref_merge")
    def merge(doc):
        doc.spans["coref_clusters_1"] = [doc[0:2], doc[15:17]]  # Ada Lovelace ... Charles Babbage: one person
        return doc

    nlp = ruler_pipeline()
    nlp.add_pipe("test_coref_merge")
    doc = text_input.documents(NEWS, "news.txt", nlp)[0]
    assert [[m["name"] for m in entity] for entity in doc["vertexSet"]][0] == ["Ada Lovelace", "Lovelace",
                                                                                "Charles Babbage"]
    assert len(doc["vertexSet"]) == 4


def test_spacy_missing_package_or_pipeline(monkeypatch, tmp_path):
    with pytest.raises(UsageError) as e:
        text_input.load_spacy("spacy:xx_no_such_pipeline")
    assert str(e.value) == ("--ner spacy:xx_no_such_pipeline: no spaCy pipeline 'xx_no_such_pipeline' is "
                            "installed: python -m spacy download xx_no_such_pipeline")
    spacy.blank("en").to_disk(tmp_path / "blank")
    with pytest.raises(UsageError, match="the pipeline has no component that finds entities"):
        text_input.load_spacy(f"spacy:{tmp_path / 'blank'}")
    with pytest.raises(UsageError, match="expected markup or spacy:NAME"):
        text_input.load_spacy("stanza:en")
    monkeypatch.setitem(__import__("sys").modules, "spacy", None)  # as if spaCy were not installed
    with pytest.raises(UsageError) as e:
        text_input.load_spacy("spacy:en_core_web_sm")
    assert str(e.value) == "--ner spacy:en_core_web_sm: spaCy is not installed: pip install -r requirements-spacy.txt"


def test_cli_spacy_pipeline_missing_is_one_error_line(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("Ada met Bob.", encoding="utf-8")
    assert predict.cli(["--checkpoint", "none.pt", "--text", str(tmp_path / "a.txt"), "--ner",
                        "spacy:xx_no_such_pipeline", "--output", str(tmp_path / "p.json")]) == 2
    assert capsys.readouterr().err == ("error: --ner spacy:xx_no_such_pipeline: no spaCy pipeline "
                                       "'xx_no_such_pipeline' is installed: python -m spacy download "
                                       "xx_no_such_pipeline\n")
    assert not (tmp_path / "p.json").exists()


def test_spacy_text_with_one_entity_is_an_error(pipeline_folder):
    with pytest.raises(DataError) as e:
        text_input.documents("Only London here.", "one.txt", f"spacy:{pipeline_folder}")
    assert str(e.value) == ("one.txt:1:1: document 'one' has 1 entity: relations need two (the pipeline found no "
                            "more; try --ner markup)")


def test_documents_are_json(pipeline_folder):
    """What --text builds passes through JSON unchanged (it is what --input would read)."""
    for docs in (text_input.documents(ADA, "ada.txt"), text_input.documents(NEWS, "n", f"spacy:{pipeline_folder}")):
        assert json.loads(json.dumps(docs)) == docs
