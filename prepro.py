"""Turn DocRED-format JSON and CDR/GDA `.data` files into model features.

One feature dict per document:
  title         DocRED title, or the PMID for CDR/GDA
  input_ids     [CLS] + subword ids + [SEP], at most max_seq_length long
  entity_pos    per entity, (start, end) indices into input_ids of the `*` markers
                before and after each mention; a mention whose start marker was
                cut off by truncation is left out (an entity may keep none)
  hts           [h, t] entity pairs: all ordered pairs (h-major) for DocRED,
                the annotated candidate pairs (file order) for CDR/GDA
  labels        per pair, the sorted positive relation ids (>= 1); [] is Na
  num_entities, num_class

Entity markers follow ATLOP: a `*` word goes before the first and after the last
word of every mention. Each distinct mention span gets its own pair of markers,
so no mention ever overwrites another:
  * nested spans nest their markers: "* * New York * City *" for
    [New York City] and [New York] (at one word, longer spans open first and
    spans that started later close first);
  * at a word boundary closing markers come before opening ones, so adjacent
    mentions never interleave: "* A * * B *";
  * crossing spans (rare) keep their own markers, which then cross;
  * identical spans (a mention listed twice, or two entities annotated on the
    same words) share one pair of markers, since nothing in the text tells
    them apart.
When truncation cuts a mention's end marker but not its start, its end index is
clipped to the last kept subword.

Tokenization uses the fast tokenizer once per batch of documents
(is_split_into_words=True) and maps marker words to subwords with
word_to_tokens, instead of calling the tokenizer word by word.

load_features is the entry point: it reads DocRED-format JSON (DocRED,
Re-DocRED) or CDR/GDA `.data` files, checks every field it reads (bad input is
a utils.DataError naming the file, the document and the field), and caches the
features with what truncation cost, so that the truncation warning appears
whether the features were built or read from the cache. docred_features does the
same for documents already in memory (predict.Predictor).
"""
import contextlib
import gc
import hashlib
import json
import logging
import os

import transformers
import ujson

import evaluation
import rundir
import utils

# Bump when the features for unchanged inputs change: it is part of the cache key.
PREPRO_VERSION = 2
MARKER = "*"
# Documents per tokenizer call: large enough to be fast, small enough to bound
# memory on big files such as DocRED's distant-supervision set.
TOKENIZER_BATCH = 1024
PAIR_FIELDS = 17
# `.data` labels: positive class id, or None for the no-relation class.
BIO_LABELS = {
    "cdr": {"1:CID:2": 1, "1:NR:2": None},
    "gda": {"1:GDA:2": 1, "1:NR:2": None},
}
# EoG marks filtered-out candidate pairs this way; ATLOP skips them.
SKIPPED_PAIR = "not_include"
DEFAULT_REL2ID = os.path.join(os.path.dirname(os.path.abspath(__file__)), "meta", "rel2id.json")

logger = logging.getLogger(__name__)


def load_tokenizer(name_or_path, transformer_type="bert"):
    """Load a fast tokenizer set up for pre-split words.

    Byte-level BPE tokenizers (RoBERTa) only put the word-initial space marker
    on pre-split words with add_prefix_space=True; without it every word would
    be glued to the previous one.
    """
    if transformer_type not in ("bert", "roberta"):
        raise utils.UsageError(f"transformer_type must be 'bert' or 'roberta', got {transformer_type!r}")
    kwargs = {"add_prefix_space": True} if transformer_type == "roberta" else {}
    try:
        return transformers.AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    except OSError as e:
        raise utils.UsageError(f"cannot load tokenizer {name_or_path!r}: {e}") from e


def load_rel2id(path=None):
    """Read a relation map {"Na": 0, "P17": ..., ...}; default meta/rel2id.json next to this file."""
    path = path or DEFAULT_REL2ID
    try:
        rel2id = evaluation.loads_json(_read_bytes(path))
    except (ValueError, RecursionError) as e:
        raise utils.DataError(f"{path}: invalid JSON: {evaluation.json_error(e)}") from None
    if not isinstance(rel2id, dict) or not all(isinstance(v, int) for v in rel2id.values()):
        raise utils.DataError(f"{path}: expected a JSON object mapping relation names to integer ids")
    if rel2id.get("Na") != 0:
        raise utils.DataError(f"{path}: \"Na\" must map to 0 (the no-relation class)")
    if sorted(rel2id.values()) != list(range(len(rel2id))):
        raise utils.DataError(f"{path}: relation ids must be 0..{len(rel2id) - 1}, each used once")
    return rel2id


def load_features(path, dataset, tokenizer, max_seq_length, rel2id=None, cache_dir=None):
    """Features of the documents in `path` ('docred': DocRED-format JSON; 'cdr', 'gda': `.data` files).

    With a cache_dir, they are read from or written to a cache file there: a
    JSON file (safe to load, unlike pickle) whose name holds a hash of
    everything the features depend on (file content, tokenizer, max_seq_length,
    dataset, PREPRO_VERSION, rel2id), so a stale cache is never read: any change
    gives a new name. Without one (None or ''), nothing is cached. rel2id
    defaults to meta/rel2id.json for DocRED. Documents longer than
    max_seq_length are truncated, with a warning (also on a cache hit).
    """
    if dataset not in ("docred", "cdr", "gda"):
        raise utils.UsageError(f"dataset must be 'docred', 'cdr' or 'gda', got {dataset!r}")
    if dataset == "docred" and rel2id is None:
        rel2id = load_rel2id()
    raw = _read_bytes(path)
    cache_path = None
    if cache_dir:
        key = _cache_key(raw, dataset, tokenizer, max_seq_length, rel2id if dataset == "docred" else None)
        cache_path = os.path.join(cache_dir, f"{os.path.basename(path)}.{dataset}.{key[:24]}.json")
    cached = _read_cache(cache_path, path) if cache_path and os.path.exists(cache_path) else None
    if cached is not None:
        features, truncation = cached
    else:
        if dataset == "docred":
            features, truncation = _docred_features(raw, path, tokenizer, rel2id, max_seq_length)
        else:
            features, truncation = _bio_features(raw, path, tokenizer, max_seq_length, dataset)
        if cache_path:
            _write_cache(cache_path, path, features, truncation)
    _warn_truncation(path, truncation, len(features), max_seq_length)
    return features


def _warn_truncation(path, truncation, num_docs, max_seq_length):
    """Warn on every load, from the cache too: a warm run must not hide that documents were cut."""
    if truncation["truncated"]:
        logger.warning("%s: %d of %d documents truncated to max_seq_length=%d; %d entity mentions lost",
                       path, truncation["truncated"], num_docs, max_seq_length, truncation["lost"])


def _read_cache(cache_path, path):
    """(features, truncation counts) from a cache file, or None when it cannot be read: it is then rebuilt."""
    try:
        features, truncation = _load_cache(cache_path)
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:  # rebuilt, never trusted
        logger.warning("%s: unreadable cache %s (%s); rebuilding it", path, cache_path, e)
        return None
    logger.info("%s: loaded %d cached documents from %s", path, len(features), cache_path)
    return features, truncation


def _write_cache(cache_path, path, features, truncation):
    cache = {"version": PREPRO_VERSION, "truncation": truncation, "features": features}
    try:
        # ujson writes it 3.3x faster than json (bench/json_speed.py); the output is ASCII.
        rundir.atomic_write_bytes(cache_path, ujson.dumps(cache).encode("utf-8"))
    except OSError as e:  # caching only saves time: carry on without it
        logger.warning("%s: cannot write cache %s: %s", path, cache_path, e)


@contextlib.contextmanager
def _gc_paused():
    """Pause the cyclic garbage collector.

    Building ~10^5 small lists (hts, labels) triggers collection after
    collection and makes reading 2-10x slower; none of these objects form cycles.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@_gc_paused()
def _load_cache(cache_path):
    # JSON rather than pickle/torch.load: loading it cannot run code, even from a
    # shared cache folder, and with the collector paused it is as fast as pickle.
    with open(cache_path, "rb") as f:
        cache = ujson.loads(f.read())  # 1.4x faster than json here (bench/json_speed.py)
    if cache["version"] != PREPRO_VERSION or not isinstance(cache["features"], list):
        raise ValueError("not a feature cache of this version")
    features, truncation = cache["features"], cache["truncation"]
    if not all(isinstance(truncation[k], int) for k in ("truncated", "lost")):
        raise ValueError("no truncation counts")
    for feature in features:
        feature["entity_pos"] = [[tuple(span) for span in spans] for spans in feature["entity_pos"]]
    return features, truncation


def _cache_key(raw, dataset, tokenizer, max_seq_length, rel2id):
    # The backend JSON covers what name_or_path does not: vocabulary edits,
    # lower-casing, add_prefix_space. Its truncation and padding settings are
    # rewritten by every tokenizer call, so they stay out of the key.
    backend = {}
    if getattr(tokenizer, "is_fast", False):
        backend = json.loads(tokenizer.backend_tokenizer.to_str())
        backend.pop("truncation", None)
        backend.pop("padding", None)
    parts = {
        "file": hashlib.sha256(raw).hexdigest(),
        "tokenizer": tokenizer.name_or_path,
        "tokenizer_class": f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}",
        "vocab_size": len(tokenizer),
        "tokenizer_backend": hashlib.sha256(json.dumps(backend, sort_keys=True).encode("utf-8")).hexdigest(),
        "max_seq_length": max_seq_length,
        "dataset": dataset,
        "version": PREPRO_VERSION,
        "rel2id": None if rel2id is None else sorted(rel2id.items()),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()


def _read_bytes(path):
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError as e:
        raise utils.UsageError(f"{path}: no such file") from e
    except OSError as e:  # a folder, no permission, ...
        raise utils.UsageError(f"{path}: cannot read: {e.strerror or e}") from e
    if not raw.strip():
        raise utils.DataError(f"{path}: empty file")
    return raw


def _is_text(text):
    """Whether a string is Unicode text: JSON escapes can make lone surrogates (\\ud800), which the
    tokenizer cannot take and UTF-8 cannot encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _decode(raw, path):
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise utils.DataError(f"{path}: not UTF-8 text: {e}") from e


# ---------------------------------------------------------------- DocRED JSON


@_gc_paused()
def _docred_features(raw, path, tokenizer, rel2id, max_seq_length):
    """(features, truncation counts) of a DocRED-format JSON file."""
    try:
        data = evaluation.loads_json(raw)
    except UnicodeDecodeError as e:
        raise utils.DataError(f"{path}: not UTF-8 text: {e}") from None
    except (ValueError, RecursionError) as e:
        raise utils.DataError(f"{path}: not DocRED JSON (invalid JSON: {evaluation.json_error(e)})") from None
    if not isinstance(data, list):
        raise utils.DataError(f"{path}: not DocRED JSON (expected a list of documents, got {type(data).__name__})")
    return _featurize(_parse_docred_docs(data, path, rel2id), tokenizer, max_seq_length, path)


def docred_features(docs, tokenizer, max_seq_length, rel2id=None, source="input"):
    """Features of in-memory DocRED-format documents (a list of dicts, as json.load gives them; predict.Predictor).

    The same checks as for a file: bad input is a utils.DataError naming ``source``, the document (its index and
    title) and the field, e.g. 'input: document 2 ("Lisbon"): vertexSet[1][0].pos: ...'. Documents longer than
    max_seq_length are truncated, with a warning.
    """
    if not isinstance(docs, list):
        raise utils.DataError(f"{source}: expected a list of documents, got {type(docs).__name__}")
    with _gc_paused():
        parsed = _parse_docred_docs(docs, source, rel2id or load_rel2id())
        features, truncation = _featurize(parsed, tokenizer, max_seq_length, source)
    _warn_truncation(source, truncation, len(features), max_seq_length)
    return features


def _parse_docred_docs(data, path, rel2id):
    """Check and flatten a list of DocRED documents (_parse_docred_doc); titles must be unique."""
    if not data:
        raise utils.DataError(f"{path}: no documents (empty list)")
    docs = [_parse_docred_doc(doc, i, path, rel2id) for i, doc in enumerate(data)]
    # Predictions and gold facts are matched by title: two documents with one title are ambiguous.
    first = {}
    for i, doc in enumerate(docs):
        j = first.setdefault(doc["title"], i)
        if j != i:
            raise utils.DataError(f"{path}: documents {j} and {i} have the same title "
                                  f"{json.dumps(doc['title'], ensure_ascii=False)}")
    return docs


def _parse_docred_doc(doc, index, path, rel2id):
    """Check one DocRED document and flatten it to words, entity spans and labelled pairs."""
    if not isinstance(doc, dict):
        raise utils.DataError(f"{path}: document {index}: expected a JSON object, got {type(doc).__name__}")
    title = json.dumps(doc.get("title", "?"), ensure_ascii=False)
    where = f"{path}: document {index} ({title if len(title) <= 80 else title[:77] + '...'})"
    for key in ("title", "sents", "vertexSet"):
        if key not in doc:
            raise utils.DataError(f"{where}: missing key '{key}'")
    if not isinstance(doc["title"], str) or not _is_text(doc["title"]):
        raise utils.DataError(f"{where}: title: expected a string of Unicode text")
    sents = doc["sents"]
    if not isinstance(sents, list) or not all(
            isinstance(s, list) and all(isinstance(w, str) for w in s) for s in sents):
        raise utils.DataError(f"{where}: sents: expected a list of sentences, each a list of words")
    if not _is_text("".join(w for sent in sents for w in sent)):
        s, w = next((s, w) for s, sent in enumerate(sents) for w, word in enumerate(sent) if not _is_text(word))
        raise utils.DataError(f"{where}: sents[{s}][{w}]: not Unicode text (a lone surrogate such as \\ud800)")
    offsets = [0]
    for sent in sents:
        offsets.append(offsets[-1] + len(sent))

    vertex_set = doc["vertexSet"]
    if not isinstance(vertex_set, list):
        raise utils.DataError(f"{where}: vertexSet: expected a list of entities")
    entities = []
    for e, entity in enumerate(vertex_set):
        if not isinstance(entity, list) or not entity:
            raise utils.DataError(f"{where}: vertexSet[{e}]: expected a non-empty list of mentions")
        spans = []
        for m, mention in enumerate(entity):
            field = f"vertexSet[{e}][{m}]"
            if not isinstance(mention, dict) or "pos" not in mention or "sent_id" not in mention:
                raise utils.DataError(f"{where}: {field}: expected a mention with 'pos' and 'sent_id'")
            sid, pos = mention["sent_id"], mention["pos"]
            if not evaluation.is_int(sid) or not 0 <= sid < len(sents):
                raise utils.DataError(f"{where}: {field}.sent_id: {sid!r} is not a sentence id "
                                      f"(the document has {len(sents)} sentences)")
            if (not isinstance(pos, list) or len(pos) != 2 or not all(map(evaluation.is_int, pos))
                    or not 0 <= pos[0] < pos[1] <= len(sents[sid])):
                raise utils.DataError(f"{where}: {field}.pos: {pos!r} is not a span [start, end) inside "
                                      f"sentence {sid} ({len(sents[sid])} words)")
            spans.append((offsets[sid] + pos[0], offsets[sid] + pos[1]))
        entities.append(spans)

    n = len(entities)
    pair_labels = {}
    labels = doc.get("labels", [])
    if not isinstance(labels, list):
        raise utils.DataError(f"{where}: labels: expected a list")
    for k, label in enumerate(labels):
        if not isinstance(label, dict):
            raise utils.DataError(f"{where}: labels[{k}]: expected a JSON object")
        for arg in ("h", "t"):
            if not evaluation.is_int(label.get(arg)) or not 0 <= label[arg] < n:
                raise utils.DataError(f"{where}: labels[{k}].{arg}: {label.get(arg)!r} is not an entity "
                                      f"index (vertexSet has {n} entities)")
        if label["h"] == label["t"]:
            raise utils.DataError(f"{where}: labels[{k}]: head and tail are the same entity {label['h']}")
        r = label.get("r")
        if not isinstance(r, str) or r == "Na" or r not in rel2id:
            raise utils.DataError(f"{where}: labels[{k}].r: unknown relation {r!r}")
        pair_labels.setdefault((label["h"], label["t"]), set()).add(rel2id[r])

    hts = [[h, t] for h in range(n) for t in range(n) if h != t]
    positives = {pair: sorted(rels) for pair, rels in pair_labels.items()}
    return {
        "title": doc["title"],
        "words": [w for sent in sents for w in sent],
        "entities": entities,
        "extra_spans": [],
        "hts": hts,
        "labels": [positives[h, t] if (h, t) in positives else [] for h, t in hts],
        "num_class": len(rel2id),
    }


# ------------------------------------------------------------- CDR/GDA .data


@_gc_paused()
def _bio_features(raw, path, tokenizer, max_seq_length, dataset):
    """(features, truncation counts) of a CDR or GDA `.data` file."""
    docs, first_line = [], {}
    for line_no, line in enumerate(_decode(raw, path).split("\n"), start=1):
        line = line.rstrip("\r")
        if line.strip():
            docs.append(_parse_data_line(line, line_no, path, BIO_LABELS[dataset], first_line))
    return _featurize(docs, tokenizer, max_seq_length, path)


def _parse_data_line(line, line_no, path, label_map, first_line):
    """One `.data` line: PMID, text ('|' between sentences), then 17 fields per candidate pair.

    Pair fields: label, direction, CROSS/NON-CROSS, two distance fields, then
    for each of the two entities: id, mention names, type, mention starts,
    mention ends, sentence ids (':'-separated word indices into the document).
    As in ATLOP, the direction field orders the pair: L2R is (entity1,
    entity2), R2L is (entity2, entity1); entities are numbered in order of
    first appearance. Mentions of entities that only occur in `not_include`
    pairs still get markers (ATLOP marks every mention on the line), but those
    entities are not in the entity list.
    """
    fields = line.split("\t")
    pmid = fields[0]
    where = f"{path}: line {line_no} (PMID {pmid})"
    if len(fields) < 2 + PAIR_FIELDS or (len(fields) - 2) % PAIR_FIELDS:
        raise utils.DataError(f"{where}: expected PMID, text and {PAIR_FIELDS} fields per candidate pair; "
                              f"got {len(fields)} tab-separated fields (not a .data file?)")
    if pmid in first_line:
        raise utils.DataError(f"{where}: PMID already used on line {first_line[pmid]}")
    first_line[pmid] = line_no
    # split(" ") rather than split(): mention indices count every ' '-separated word.
    sents = [s.split(" ") for s in fields[1].split("|")]
    offsets = [0]
    for sent in sents:
        offsets.append(offsets[-1] + len(sent))

    ent_index, entities, extra_spans = {}, [], []
    hts, labels, seen_pairs = [], [], set()
    for p, start in enumerate(range(2, len(fields), PAIR_FIELDS)):
        group = fields[start:start + PAIR_FIELDS]
        label, direction = group[0], group[1]
        first = _parse_data_entity(group[5:11], f"{where}: pair {p} entity 1", sents, offsets)
        second = _parse_data_entity(group[11:17], f"{where}: pair {p} entity 2", sents, offsets)
        if label == SKIPPED_PAIR:
            extra_spans.extend(first[1] + second[1])
            continue
        if label not in label_map:
            raise utils.DataError(f"{where}: pair {p}: unknown label {label!r} "
                                  f"(expected {', '.join(label_map)} or {SKIPPED_PAIR})")
        if direction not in ("L2R", "R2L"):
            raise utils.DataError(f"{where}: pair {p}: direction must be L2R or R2L, got {direction!r}")
        head, tail = (first, second) if direction == "L2R" else (second, first)
        ids = []
        for eid, spans in (head, tail):
            if eid not in ent_index:
                ent_index[eid] = len(entities)
                entities.append(spans)
            elif entities[ent_index[eid]] != spans:
                raise utils.DataError(f"{where}: pair {p}: entity {eid} has other mentions than in an earlier pair")
            ids.append(ent_index[eid])
        if ids[0] == ids[1]:
            raise utils.DataError(f"{where}: pair {p}: both entities are {head[0]}")
        if tuple(ids) in seen_pairs:
            raise utils.DataError(f"{where}: pair {p}: the pair ({head[0]}, {tail[0]}) is listed twice")
        seen_pairs.add(tuple(ids))
        hts.append(ids)
        labels.append([] if label_map[label] is None else [label_map[label]])
    return {
        "title": pmid,
        "words": [w for sent in sents for w in sent],
        "entities": entities,
        "extra_spans": extra_spans,
        "hts": hts,
        "labels": labels,
        "num_class": 2,
    }


def _parse_data_entity(fields, where, sents, offsets):
    """(id, [(start, end) word spans]) from the 6 fields of one entity; each span must lie inside its sentence."""
    eid, _names, _type, starts, ends, sent_ids = fields
    try:
        starts, ends, sent_ids = ([int(x) for x in f.split(":")] for f in (starts, ends, sent_ids))
    except ValueError as e:
        raise utils.DataError(f"{where} ({eid}): mention starts, ends and sentence ids must be "
                              f"':'-separated integers") from e
    if not len(starts) == len(ends) == len(sent_ids):
        raise utils.DataError(f"{where} ({eid}): {len(starts)} mention starts, {len(ends)} ends and "
                              f"{len(sent_ids)} sentence ids")
    for s, e, sid in zip(starts, ends, sent_ids):
        if not 0 <= sid < len(sents):
            raise utils.DataError(f"{where} ({eid}): sentence id {sid} out of range ({len(sents)} sentences)")
        if not offsets[sid] <= s < e <= offsets[sid + 1]:
            raise utils.DataError(f"{where} ({eid}): mention [{s}, {e}) is not inside sentence {sid} "
                                  f"(words {offsets[sid]}..{offsets[sid + 1] - 1})")
    return eid, list(zip(starts, ends))


# ------------------------------------------------------ markers and subwords


def _insert_markers(words, spans):
    """Words with `*` inserted around every distinct span, and span -> (start, end) marker word indices."""
    opens, closes = {}, {}
    for span in set(spans):
        opens.setdefault(span[0], []).append(span)
        closes.setdefault(span[1], []).append(span)
    marked, start_of, marker_words = [], {}, {}
    prev = 0
    for b in sorted(opens.keys() | closes.keys()):
        marked.extend(words[prev:b])
        prev = b
        # Spans that started later are inner ones: they close first.
        for span in sorted(closes.get(b, ()), reverse=True):
            marker_words[span] = (start_of[span], len(marked))
            marked.append(MARKER)
        # Longer spans are outer ones: they open first.
        for span in sorted(opens.get(b, ()), key=lambda sp: -sp[1]):
            start_of[span] = len(marked)
            marked.append(MARKER)
    marked.extend(words[prev:])
    return marked, marker_words


def _check_tokenizer(tokenizer):
    if not getattr(tokenizer, "is_fast", False):
        raise utils.UsageError("a fast (Rust) tokenizer is needed: words are mapped to subwords with word_ids")
    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
        raise utils.UsageError(f"tokenizer {tokenizer.name_or_path!r} has no CLS/SEP (or <s>/</s>) token")
    # Pre-split words must tokenize as the same words joined by spaces; byte-level
    # BPE loaded without add_prefix_space=True fails this and would glue words.
    probe = [MARKER, "a", MARKER]
    split = tokenizer(probe, is_split_into_words=True, add_special_tokens=False)["input_ids"]
    joined = tokenizer(" ".join(probe), add_special_tokens=False)["input_ids"]
    if split != joined:
        raise utils.UsageError(f"tokenizer {tokenizer.name_or_path!r} does not tokenize pre-split words like "
                               f"running text; load RoBERTa-style tokenizers with add_prefix_space=True "
                               f"(prepro.load_tokenizer(path, 'roberta') does)")


def _featurize(docs, tokenizer, max_seq_length, path):
    """Mark, tokenize (one call per batch of documents), truncate and assemble the features.

    Returns (features, truncation): truncation counts the documents cut to
    max_seq_length and the entity mentions lost with them, for the warning.
    """
    _check_tokenizer(tokenizer)
    if max_seq_length < 3:
        raise utils.UsageError(f"max_seq_length must be at least 3, got {max_seq_length}")
    limit = max_seq_length - 2  # room left for [CLS] and [SEP]
    features, truncated, lost = [], 0, 0
    for b in range(0, len(docs), TOKENIZER_BATCH):
        batch = docs[b:b + TOKENIZER_BATCH]
        marked = [_insert_markers(d["words"], [s for ent in d["entities"] for s in ent] + d["extra_spans"])
                  for d in batch]
        encoding = tokenizer([words for words, _ in marked], is_split_into_words=True,
                             add_special_tokens=False, verbose=False)
        for i, (doc, (_, marker_words)) in enumerate(zip(batch, marked)):
            ids = encoding["input_ids"][i]
            token_of = {}
            for span, (start_word, end_word) in marker_words.items():
                start_tok = encoding.word_to_tokens(i, start_word)
                end_tok = encoding.word_to_tokens(i, end_word)
                if start_tok is None or end_tok is None:
                    raise utils.UsageError(f"tokenizer {tokenizer.name_or_path!r} drops the {MARKER!r} marker")
                token_of[span] = (start_tok.start, end_tok.start)
            entity_pos = []
            for spans in doc["entities"]:
                kept = []
                for span in spans:
                    start, end = token_of[span]
                    if start >= limit:
                        lost += 1
                        continue
                    # +1 for [CLS]; an end marker cut off is clipped to the last kept subword.
                    kept.append((start + 1, min(end, limit - 1) + 1))
                entity_pos.append(kept)
            truncated += len(ids) > limit
            features.append({
                "title": doc["title"],
                "input_ids": [tokenizer.cls_token_id] + ids[:limit] + [tokenizer.sep_token_id],
                "entity_pos": entity_pos,
                "hts": doc["hts"],
                "labels": doc["labels"],
                "num_entities": len(doc["entities"]),
                "num_class": doc["num_class"],
            })
    logger.info("%s: %d documents, %d entity pairs, %d with a relation", path, len(features),
                sum(len(f["hts"]) for f in features), sum(bool(x) for f in features for x in f["labels"]))
    return features, {"truncated": truncated, "lost": lost}
