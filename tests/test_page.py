"""The prediction page (page.py, predict.py --html, Predictor.page / predict_text), read back with html.parser:
every predicted triple and every pass's additions and removals are on it, gold labels mark relations correct,
wrong or missed, everything is escaped, and nothing points outside the file."""
import html
import json
import os
import re
import sys
from html.parser import HTMLParser

import pytest
import torch

import helpers
import page
import predict
import train
from utils import DataError, UsageError

pytestmark = pytest.mark.filterwarnings("ignore")
NAMES = {"P17": "country", "P19": "place of birth", "P27": "country of citizenship", "P131": "located in"}


class Page(HTMLParser):
    """The elements of a page (tag, attributes) and the cells of its table rows that carry a relation."""

    def __init__(self, text):
        super().__init__()
        self.elements, self.rows, self.texts, self._row = [], {}, [], None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.elements.append((tag, attrs))
        if tag == "tr" and "data-r" in attrs:
            self._row = []
            self.rows[int(attrs["data-h"]), int(attrs["data-t"]), attrs["data-r"]] = self._row
        elif tag == "td" and self._row is not None:
            self._row.append("")

    def handle_endtag(self, tag):
        if tag == "tr":
            self._row = None

    def handle_data(self, data):
        self.texts.append(data)
        if self._row:
            self._row[-1] += data

    def relations(self, tag, **match):
        """{(h, t, r): attributes} of the elements ``tag`` carrying a relation whose attributes include ``match``."""
        return {(int(a["data-h"]), int(a["data-t"]), a["data-r"]): a for t, a in self.elements
                if t == tag and "data-r" in a and all(a.get(k) == v for k, v in match.items())}


def self_contained(text, parsed):
    """No attribute loads or links anything outside the page; no CSS url() either."""
    for _, attrs in parsed.elements:
        assert "src" not in attrs
        assert attrs.get("href", "#").startswith("#")
    assert re.findall(r"url\(([^)]*)\)", text) and all(u.startswith("#") for u in re.findall(r"url\(([^)]*)\)",
                                                                                                   text))
    assert "@import" not in text and "<link" not in text and "<iframe" not in text


DOC = {"title": 'Ada <b>"x"</b> & y', "sents": [["Ada", "(", "born", "1815", ")", "met", "<Bob>", "in", "Rome",
                                                 ",", "she", "said", '"', "hi", '"', "."]],
       "vertexSet": [[{"name": "Ada", "sent_id": 0, "pos": [0, 1], "type": "PER"},
                      {"name": "she", "sent_id": 0, "pos": [10, 11], "type": "PER"}],
                     [{"name": "<Bob>", "sent_id": 0, "pos": [6, 7], "type": "PER"}],
                     [{"name": "Rome", "sent_id": 0, "pos": [8, 9], "type": "LOC"}]]}
PASSES = [{(0, 1, "P17"): 1.0, (1, 2, "P19"): 0.5},
          {(0, 1, "P17"): 1.1, (0, 2, "P27"): 0.3},
          {(0, 1, "P17"): 1.2, (0, 2, "P27"): 0.4, (2, 0, "P131"): 0.2}]
GOLD = {(0, 1, "P17"), (0, 2, "P27"), (1, 2, "P19"), (2, 1, "P569")}


def test_page_shows_each_pass_and_the_gold_marks():
    text = page.render([DOC], [PASSES], [GOLD], NAMES, "test <page>")
    parsed = Page(text)
    self_contained(text, parsed)
    edges = parsed.relations("g")
    assert {k: (a["class"], a["data-passes"], a["data-gold"]) for k, a in edges.items()} == {
        (0, 1, "P17"): ("rel kept fact", "0 1 2", "1"),
        (1, 2, "P19"): ("rel removed fact", "0", "1"),
        (0, 2, "P27"): ("rel added fact", "1 2", "1"),
        (2, 0, "P131"): ("rel added nonfact", "2", "0"),
        (2, 1, "P569"): ("rel missed fact", "", "1")}
    changes = {(a["data-change"], int(a["data-k"]), int(a["data-h"]), int(a["data-t"]), a["data-r"])
               for _, a in parsed.elements if "data-change" in a}
    assert changes == {("added", 1, 0, 2, "P27"), ("removed", 1, 1, 2, "P19"), ("added", 2, 0, 2, "P27"),
                       ("added", 2, 2, 0, "P131"), ("removed", 2, 1, 2, "P19")}
    # the table: scores per pass, what the inference module did, the last pass against the gold labels
    assert {k: row[3:] for k, row in parsed.rows.items()} == {
        (0, 1, "P17"): ["1.00", "1.10", "1.20", "base module", "✓ correct"],
        (0, 2, "P27"): ["–", "0.30", "0.40", "added by pass 1", "✓ correct"],
        (1, 2, "P19"): ["0.50", "–", "–", "removed by pass 1", "missed"],
        (2, 0, "P131"): ["–", "–", "0.20", "added by pass 2", "✗ wrong"],
        (2, 1, "P569"): ["–", "–", "–", "not predicted", "missed"]}
    assert ("2 relations from the base module; after pass 2: 3 (the inference module added 2 and removed 1). "
            "Against the 4 gold relations: 2 correct, 1 wrong, 2 missed.") in parsed.texts
    # every text escaped: the title, a word, an entity name
    assert "<b>" not in text and "<Bob>" not in text and "&lt;b&gt;&quot;x&quot;&lt;/b&gt; &amp; y" in text
    assert "test &lt;page&gt;" in text


def test_page_text_spacing_and_mentions():
    text = page.render([DOC], [PASSES], [None], NAMES, "t")
    parsed = Page(text)
    words = re.search(r'<div class="text">(.*?)</div>', text).group(1)
    assert html.unescape(re.sub(r"<[^>]+>", "", words)) == 'Ada (born 1815) met <Bob> in Rome, she said "hi".'
    marks = [a["data-e"] for t, a in parsed.elements if t == "mark"]
    assert marks == ["0", "1", "2", "0"]
    # without gold labels: no gold attribute, no check or cross, nothing missed
    section = text.split("<section", 1)[1].split("</section>")[0]
    assert all("data-gold" not in a for _, a in parsed.elements)
    assert "&#10003;" not in section and "&#10007;" not in section and "missed" not in section
    assert all(row[-1] == "" for row in parsed.rows.values())


def test_page_without_inference_passes():
    text = page.render([DOC], [PASSES[:1]], [None], NAMES, "t")
    assert "K = 0: the base module alone, no inference passes." in text and "<button" not in text
    assert set(Page(text).relations("g")) == set(PASSES[0])


def test_several_documents_link_to_their_sections():
    other = dict(DOC, title="Second")
    parsed = Page(page.render([DOC, other], [PASSES, PASSES], [None, None], NAMES, "t"))
    assert [a["href"] for t, a in parsed.elements if t == "a"] == ["#doc-0", "#doc-1"]
    assert [a["id"] for t, a in parsed.elements if t == "section"] == ["doc-0", "doc-1"]


# ---------------------------------------------------------------- with a model
def biased(ckpt, rids):
    """The base module predicts P17 for every pair, each inference pass P19 instead: every pass removes all the
    base module's relations and adds as many."""
    for prefix, rel in (("base", "P17"), ("inference", "P19")):
        ckpt["model"][f"{prefix}.classifier.bias"][rids[rel]] += 1000.0
        ckpt["model"][f"{prefix}.classifier.bias"][0] += 500.0
    return ckpt


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("page")
    data = helpers.write_dataset(root / "data")
    encoder = helpers.tiny_model(root / "encoder")
    run = root / "run"
    with helpers.one_thread():
        assert train.cli(helpers.train_args(data, encoder, run, root / "cache", stage1=1, stage2=1)) == 0
    rids = json.load(open(os.path.join(helpers.ROOT, "meta", "rel2id.json")))
    torch.save(biased(torch.load(run / "best.pt", weights_only=True), rids), root / "best.pt")
    torch.save(biased(torch.load(run / "best_stage1.pt", weights_only=True), rids), root / "stage1.pt")
    return {"root": root, "data": data, "ckpt": str(root / "best.pt"), "stage1": str(root / "stage1.pt")}


def test_cli_page_of_labelled_documents(env, tmp_path):
    out, html_path = tmp_path / "preds.json", tmp_path / "page.html"
    with helpers.one_thread():
        assert predict.cli(["--checkpoint", env["ckpt"], "--input", env["data"]["dev"], "--output", str(out),
                            "--html", str(html_path), "--amp", "none"]) == 0
    docs = json.load(open(env["data"]["dev"]))
    text = html_path.read_text(encoding="utf-8")
    sections = text.split("<section ")[1:]
    assert len(sections) == len(docs) == 2
    rows = json.loads(out.read_text())
    assert rows and {r["r"] for r in rows} == {"P19"}
    for doc, section in zip(docs, sections):
        parsed = Page(section)
        n = len(doc["vertexSet"])
        pairs = [(h, t) for h in range(n) for t in range(n) if h != t]
        gold = {(lab["h"], lab["t"], lab["r"]) for lab in doc["labels"]}
        final = {(r["h_idx"], r["t_idx"], r["r"]) for r in rows if r["title"] == doc["title"]}
        assert final == {(h, t, "P19") for h, t in pairs}
        edges = parsed.relations("g")
        assert all(edges[t]["data-passes"].split()[-1] == "2" for t in final)  # K = 2: every predicted triple
        for k in (1, 2):
            assert set(parsed.relations("li", **{"data-change": "added", "data-k": str(k)})) == final
            assert set(parsed.relations("li", **{"data-change": "removed", "data-k": str(k)})) == \
                {(h, t, "P17") for h, t in pairs}
        verdicts = {k: row[-1] for k, row in parsed.rows.items()}
        assert {k for k, v in verdicts.items() if v == "✓ correct"} == final & gold
        assert {k for k, v in verdicts.items() if v == "✗ wrong"} == final - gold
        assert {k for k, v in verdicts.items() if v == "missed"} == gold - final
    self_contained(text, Page(text))


MARKED = """# Ada
[Ada Lovelace|PER] was born in [London|LOC]. [She|=Ada Lovelace] worked with [Charles Babbage|PER].
"""


def test_cli_text_with_page(env, tmp_path):
    (tmp_path / "ada.txt").write_text(MARKED, encoding="utf-8")
    out, html_path = tmp_path / "preds.json", tmp_path / "page.html"
    with helpers.one_thread():
        assert predict.cli(["--checkpoint", env["ckpt"], "--text", str(tmp_path / "ada.txt"), "--output", str(out),
                            "--html", str(html_path), "--amp", "none"]) == 0
    rows = json.loads(out.read_text())
    assert {(r["head"], r["tail"]) for r in rows} == {(a, b) for a in ("Ada Lovelace", "London", "Charles Babbage")
                                                      for b in ("Ada Lovelace", "London", "Charles Babbage") if a != b}
    parsed = Page(html_path.read_text(encoding="utf-8"))
    assert {(r["h_idx"], r["t_idx"], r["r"]) for r in rows} <= set(parsed.relations("g"))
    assert [a["data-e"] for t, a in parsed.elements if t == "mark"] == ["0", "1", "0", "2"]


def test_predict_text_is_predict_on_the_built_documents(env):
    predictor = predict.Predictor.from_checkpoint(env["ckpt"], device="cpu", amp="none")
    docs, triples = predictor.predict_text(MARKED)
    assert [d["title"] for d in docs] == ["Ada"] and len(docs[0]["vertexSet"]) == 3
    assert triples == predictor.predict(docs) and len(triples[0]) == 6
    with pytest.raises(DataError, match=r"^my text:2:1: unclosed '\['"):
        predictor.predict_text("[Ada|PER] and\n[Bob", source="my text")


def test_stage1_page_has_no_passes(env):
    predictor = predict.Predictor.from_checkpoint(env["stage1"], device="cpu", amp="none")
    text = predictor.page(json.load(open(env["data"]["test"])), "test.json")
    assert "K = 0: the base module alone, no inference passes." in text
    assert {a["data-passes"] for a in Page(text).relations("g").values()} == {"0", ""}  # predicted, missed


def test_page_errors_write_nothing(env, tmp_path, capsys):
    docs = json.load(open(env["data"]["dev"]))
    docs[1]["labels"][0]["r"] = "P9999"
    bad = helpers.write_docs(tmp_path, "bad.json", docs)
    out, html_path = tmp_path / "o" / "p.json", tmp_path / "o" / "p.html"
    argv = ["--checkpoint", env["ckpt"], "--output", str(out), "--amp", "none"]
    assert predict.cli(argv + ["--input", bad, "--html", str(html_path)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == \
        f"error: {bad}: document 1 (\"Doc 101\"): labels[0].r: unknown relation 'P9999'"
    assert not (tmp_path / "o").exists()
    with pytest.raises(UsageError, match="the same file as"):
        predict.main(argv + ["--input", env["data"]["dev"], "--html", str(out)])
    (tmp_path / "old.html").write_text("keep")
    with pytest.raises(UsageError, match="already exists: pass --overwrite"):
        predict.main(argv + ["--input", env["data"]["dev"], "--html", str(tmp_path / "old.html")])
    assert (tmp_path / "old.html").read_text() == "keep" and not (tmp_path / "o").exists()


FAKE_CHROMIUM = """#!{python}
import sys
from PIL import Image
args = sys.argv[1:]
open({log!r}, "w").write("\\n".join(args))
width, height = map(int, next(a for a in args if a.startswith("--window-size=")).split("=")[1].split(","))
img = Image.new("RGB", (width, height), "white")
img.paste((0, 0, 0), (10, 10, 50, 100))  # the page's content ends at row 100
img.save(next(a for a in args if a.startswith("--screenshot=")).split("=", 1)[1])
"""


def test_render_page_runs_chromium_headless_and_cuts_the_picture(env, tmp_path):
    """scripts/render_page.py with a stand-in for Chromium that draws a box: the flags it gets, the page it
    reads (the one --html keeps), and the picture cut 24 pixels below the content."""
    from PIL import Image

    import render_page
    fake = tmp_path / "chromium"
    fake.write_text(FAKE_CHROMIUM.format(python=sys.executable, log=str(tmp_path / "args")))
    fake.chmod(0o755)
    png, kept = tmp_path / "page.png", tmp_path / "page.html"
    with helpers.one_thread():
        assert render_page.main(["--checkpoint", env["ckpt"], "--input", env["data"]["dev"], "--doc", "1",
                                 "--png", str(png), "--html", str(kept), "--chromium", str(fake),
                                 "--width", "300", "--height", "500"]) == 0
    args = (tmp_path / "args").read_text().splitlines()
    assert args[:len(render_page.CHROMIUM_FLAGS)] == render_page.CHROMIUM_FLAGS
    assert args[-1] == kept.resolve().as_uri() and "--window-size=300,500" in args
    assert any(a.startswith("--user-data-dir=") for a in args)
    with Image.open(png) as img:
        assert img.size == (300, 124)
    parsed = Page(kept.read_text(encoding="utf-8"))
    assert [a["id"] for t, a in parsed.elements if t == "section"] == ["doc-0"]
    assert "Doc 101" in parsed.texts
    with pytest.raises(UsageError, match=r"^--doc 5: .*dev.json has documents 0\.\.1$"):
        render_page.main(["--checkpoint", env["ckpt"], "--input", env["data"]["dev"], "--doc", "5", "--png", "x"])
    with pytest.raises(UsageError, match="^no-such-browser: not found; on Debian: apt-get install -y chromium$"):
        render_page.main(["--checkpoint", env["ckpt"], "--input", env["data"]["dev"], "--png", str(png),
                          "--chromium", "no-such-browser"])
