"""Plain text -> DocRED-format documents (predict.py --text, Predictor.predict_text): sentences, words, entity
mentions and the entities they belong to, in the layout of docs/PREDICT.md.

A text holds one document, or several: a line "# Title" starts a document (text before the first such line is
a document named after the file). The entities are named one of two ways:

* ``markup`` (the default, no model): ``[mention text|TYPE]`` marks a mention of an entity of DocRED type TYPE
  (PER, ORG, LOC, TIME, NUM, MISC; any case); mentions with the same text (ignoring case and spacing) are one
  entity; ``[mention text|=Name]`` is a mention of the entity whose latest earlier mention reads Name (e.g.
  ``[She|=Ada Lovelace]``). Brackets without "|" stay text (citations such as "[12]"); ``\\[``, ``\\]``,
  ``\\|`` and ``\\\\`` are the literal characters. Words and sentences come from sentences.py's rules.
* ``spacy:NAME``: the named entities of an installed spaCy pipeline (a package name or a folder), their labels
  mapped to DocRED's types by SPACY_TYPES (labels without a counterpart, e.g. ORDINAL, are dropped); mentions
  with the same type and normalised name are one entity (case, spacing, a leading "the" and a trailing "'s"
  ignored), and a one-word PER mention that is the last word of one earlier person's name joins that person.
  The span groups of a coreference component (doc.spans["coref_clusters_*"], spacy-experimental's coref) add
  their mentions (pronouns included) to the entity they refer to. Words and sentences are spaCy's (its rule-based
  sentencizer where the pipeline sets no sentence boundaries).

Bad input raises utils.DataError, "FILE:LINE:COLUMN: what is wrong"; a missing spaCy or spaCy pipeline raises
utils.UsageError naming the install command.
"""
import bisect
import os
import re

import sentences
from utils import DataError, UsageError

TYPES = ("PER", "ORG", "LOC", "TIME", "NUM", "MISC")
# spaCy's labels (OntoNotes in the English pipelines, WikiNER's PER/LOC/ORG/MISC in several others) -> DocRED's
SPACY_TYPES = {"PERSON": "PER", "PER": "PER", "ORG": "ORG", "GPE": "LOC", "LOC": "LOC", "FAC": "LOC",
               "DATE": "TIME", "TIME": "TIME", "CARDINAL": "NUM", "QUANTITY": "NUM", "MONEY": "NUM",
               "PERCENT": "NUM", "NORP": "MISC", "EVENT": "MISC", "WORK_OF_ART": "MISC", "LAW": "MISC",
               "LANGUAGE": "MISC", "PRODUCT": "MISC", "MISC": "MISC"}
ESCAPED = "[]|\\"
TITLE = re.compile(r"#(?:[ \t]|$)")


def read(path, ner="markup"):
    """The documents of a UTF-8 text file (see the module docstring)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:  # missing, a folder, no permission
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        before = raw[:e.start].decode("utf-8-sig", errors="replace")
        raise DataError(f"{Where(path, before)(len(before))}: not UTF-8 text") from None
    return documents(text, path, ner)


def documents(text, source="text", ner="markup"):
    """DocRED-format documents of ``text``; ``source`` names it in error messages (and names a document that has
    no title line). ner: "markup", "spacy:NAME" or a loaded spaCy pipeline."""
    where = Where(source, text)
    sections = _sections(text, source, where)
    if ner == "markup":
        found = [_markup(text, start, end, where) for _, start, end, _ in sections]
    else:
        nlp = ner if not isinstance(ner, str) else load_spacy(ner)
        found = [_spacy_entities(doc) for doc in nlp.pipe(text[start:end] for _, start, end, _ in sections)]
    docs = []
    for (title, _, _, at), (body, sents, entities) in zip(sections, found):
        if len(entities) < 2:
            how = ("mark mentions as [text|TYPE]" if ner == "markup" else
                   "the pipeline found no more; try --ner markup")
            raise DataError(f"{where(at)}: document {title!r} has {len(entities)} "
                            f"entit{'y' if len(entities) == 1 else 'ies'}: relations need two ({how})")
        docs.append(_docred(title, body, sents, entities))
    return docs


class Where:
    """Character offset in a text -> "SOURCE:LINE:COLUMN" (both from 1)."""

    def __init__(self, source, text):
        self.source = source
        self.starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def __call__(self, offset):
        line = bisect.bisect_right(self.starts, offset)
        return f"{self.source}:{line}:{offset - self.starts[line - 1] + 1}"


def _sections(text, source, where):
    """[(title, body start, body end, offset to report the document at)]; titles are unique."""
    lines = [(m.start(), m.group()) for m in re.finditer(r"[^\n]*\n?", text) if m.group()]
    heads = [(offset, line[1:].strip()) for offset, line in lines if TITLE.match(line)]
    first = heads[0][0] if heads else len(text)
    sections = []
    if text[:first].strip():
        untitled = os.path.splitext(os.path.basename(source))[0] or source
        sections.append((untitled, 0, first, len(text[:first]) - len(text[:first].lstrip())))
    elif not heads:
        raise DataError(f"{where(0)}: no text")
    seen = {}
    for i, (offset, title) in enumerate(heads):
        if not title:
            raise DataError(f"{where(offset)}: a title line needs a title after '#'")
        if title in seen:
            raise DataError(f"{where(offset)}: title {title!r} repeats the one at {where(seen[title])}")
        seen[title] = offset
        start = text.index("\n", offset) + 1 if "\n" in text[offset:] else len(text)
        end = heads[i + 1][0] if i + 1 < len(heads) else len(text)
        if not text[start:end].strip():
            raise DataError(f"{where(offset)}: document {title!r} has no text")
        sections.append((title, start, end, offset))
    return sections


# ---------------------------------------------------------------- markup
def _markup(text, start, end, where):
    """(plain text, sentences, entities) of the marked-up text[start:end]; entities are (type, [(start, end)])
    with character spans in the plain text, in order of first mention."""
    chars, i = [], start  # (character, offset in text, escaped?)
    while i < end:
        if text[i] == "\\" and i + 1 < end and text[i + 1] in ESCAPED:
            chars.append((text[i + 1], i, True))
            i += 2
        else:
            chars.append((text[i], i, False))
            i += 1
    plain, mentions, k = [], [], 0
    while k < len(chars):
        c, offset, escaped = chars[k]
        if escaped or c not in "[]":
            plain.append(c)
            k += 1
            continue
        if c == "]":
            raise DataError(f"{where(offset)}: ']' without an opening '[' (\\] is a literal bracket)")
        close = next((j for j in range(k + 1, len(chars)) if not chars[j][2] and chars[j][0] in "[]"), None)
        if close is None or chars[close][0] == "[":
            raise DataError(f"{where(offset)}: unclosed '[' (a mention is [text|TYPE] or [text|=Name]; "
                            f"\\[ is a literal bracket)")
        bars = [j for j in range(k + 1, close) if chars[j][0] == "|" and not chars[j][2]]
        if not bars:  # no mention: a citation such as [12] stays text
            plain += [ch for ch, _, _ in chars[k:close + 1]]
            k = close + 1
            continue
        words = "".join(ch for ch, _, _ in chars[k + 1:bars[-1]])
        label = "".join(ch for ch, _, _ in chars[bars[-1] + 1:close]).strip()
        label_at = next((o for ch, o, _ in chars[bars[-1] + 1:close] if not ch.isspace()), chars[close][1])
        if not words.strip():
            raise DataError(f"{where(offset)}: empty mention (a mention is [text|TYPE] or [text|=Name])")
        lead = len(words) - len(words.lstrip())
        mention_start = len(plain) + lead
        plain += list(words)
        mentions.append((mention_start, mention_start + len(words.strip()), " ".join(words.split()), label,
                         label_at, offset))
        k = close + 1
    plain = "".join(plain)
    return (plain, sentences.split(plain, [b for m in mentions for b in m[:2]]),
            _markup_entities(mentions, where))


def _markup_entities(mentions, where):
    """Group marked mentions into entities: same text, one entity; "=Name", the entity of Name's latest mention."""
    entities, named = [], {}  # named: mention text (case-folded) -> entity index, latest mention's
    for start, end, name, label, label_at, offset in mentions:
        if label.startswith("="):
            ref = " ".join(label[1:].split())
            if not ref:
                raise DataError(f"{where(label_at)}: no entity name after '='")
            e = named.get(ref.casefold())
            if e is None:
                raise DataError(f"{where(label_at)}: '={ref}' names no earlier mention")
        else:
            kind = label.upper()
            if kind not in TYPES:
                what = f"unknown entity type {label!r}" if label else "no entity type after '|'"
                raise DataError(f"{where(label_at)}: {what} (one of {', '.join(TYPES)}, or =Name)")
            e = named.get(name.casefold())
            if e is None:
                entities.append({"type": kind, "spans": [], "at": offset})
                e = len(entities) - 1
            elif entities[e]["type"] != kind:
                raise DataError(f"{where(label_at)}: {name!r} is already an entity of type {entities[e]['type']} "
                                f"({where(entities[e]['at'])}); one text names one entity")
        entities[e]["spans"].append((start, end))
        named[name.casefold()] = e
    return [(entity["type"], entity["spans"]) for entity in entities]


# ---------------------------------------------------------------- spaCy
def load_spacy(ner):
    """The spaCy pipeline of ``ner`` = "spacy:NAME" (an installed package or a pipeline folder)."""
    kind, _, name = ner.partition(":")
    if kind != "spacy" or not name:
        raise UsageError(f"--ner {ner}: expected markup or spacy:NAME (e.g. spacy:en_core_web_sm)")
    try:
        import spacy
    except ImportError:
        raise UsageError(f"--ner {ner}: spaCy is not installed: pip install -r requirements-spacy.txt") from None
    try:
        nlp = spacy.load(name)
    except OSError:
        if os.path.sep in name:
            raise UsageError(f"--ner {ner}: {name} is no spaCy pipeline folder (nlp.to_disk writes one)") from None
        raise UsageError(f"--ner {ner}: no spaCy pipeline {name!r} is installed: "
                         f"python -m spacy download {name}") from None
    if not any("doc.ents" in nlp.get_pipe_meta(pipe).assigns for pipe in nlp.pipe_names):
        raise UsageError(f"--ner {ner}: the pipeline has no component that finds entities (ner, entity_ruler)")
    return nlp


def _spacy_entities(doc):
    """(text, sentences, entities) of a spaCy Doc, as _markup returns them."""
    if not doc.has_annotation("SENT_START"):
        from spacy.pipeline import Sentencizer
        doc = Sentencizer()(doc)
    sents = [[(t.text, t.idx, t.idx + len(t.text)) for t in sent if not t.is_space] for sent in doc.sents]
    entities, by_name = [], {}  # by_name: (type, normalised name) -> entity index
    for ent in doc.ents:
        kind = SPACY_TYPES.get(ent.label_)
        if kind is None:
            continue
        key = (kind, _normalised(ent.text))
        e = by_name.get(key)
        if e is None and kind == "PER" and " " not in key[1]:
            surnames = [i for i, (k, name, _) in enumerate(entities) if k == "PER" and name.split()[-1] == key[1]]
            e = surnames[0] if len(surnames) == 1 else None
        if e is None:
            entities.append((kind, key[1], []))
            e = len(entities) - 1
        entities[e][2].append((ent.start_char, ent.end_char))
        by_name[key] = e
    entities = _coreference(doc, [(kind, spans) for kind, _, spans in entities])
    return doc.text, [s for s in sents if s], entities


def _normalised(name):
    name = " ".join(name.casefold().split())
    name = re.sub(r"['’]s$", "", name)
    return name.removeprefix("the ")


def _coreference(doc, entities):
    """Add the mentions of each coreference cluster (span groups "coref_clusters_*") to the entity that its
    spans name: a cluster that holds mentions of several entities of one type merges them; one that names none
    (or entities of different types) is left out."""
    for key in sorted(k for k in doc.spans if k.startswith("coref_clusters")):
        spans = [(s.start_char, s.end_char) for s in doc.spans[key]]
        hit = sorted({e for e, (_, mentions) in enumerate(entities) for a, b in mentions for s, t in spans
                      if s <= a and b <= t or a <= s and t <= b})
        if not hit or len({entities[e][0] for e in hit}) > 1:
            continue
        merged = sorted({m for e in hit for m in entities[e][1]})
        merged += [(s, t) for s, t in spans if not any(s < b and a < t for a, b in merged)]
        first = entities[hit[0]]
        entities = [(first[0], sorted(merged)) if e == hit[0] else entity
                    for e, entity in enumerate(entities) if e not in hit[1:]]
    return entities


# ---------------------------------------------------------------- one DocRED document
def _docred(title, text, sents, entities):
    """The DocRED document: sentences of words (sentences that a mention crosses are joined), and per entity
    its mentions {"name", "sent_id", "pos", "type"} (name: the mention's own text)."""
    spans = sorted(span for _, entity_spans in entities for span in entity_spans)
    joined = []
    for sent in sents:
        if joined and any(a < sent[0][1] < b for a, b in spans):
            joined[-1] = joined[-1] + sent
        else:
            joined.append(sent)
    starts, ends = {}, {}
    for s, sent in enumerate(joined):
        for w, (_, a, b) in enumerate(sent):
            starts[a], ends[b] = (s, w), (s, w + 1)
    vertex_set = []
    for kind, entity_spans in entities:
        mentions = []
        for a, b in sorted(entity_spans):
            (s, first), (_, last) = starts[a], ends[b]
            mentions.append({"name": " ".join(text[a:b].split()), "sent_id": s, "pos": [first, last],
                             "type": kind})
        vertex_set.append(mentions)
    vertex_set.sort(key=lambda mentions: (mentions[0]["sent_id"], mentions[0]["pos"]))
    return {"title": title, "sents": [[word for word, _, _ in sent] for sent in joined], "vertexSet": vertex_set}
