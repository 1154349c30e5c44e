"""Scoring for DocRED / Re-DocRED (official semantics) and for CDR / GDA (ATLOP semantics).

DocRED scores (`docred_scores`) follow the official CodaLab scorer (thunlp/DocRED code/evaluation.py):

* The submission is de-duplicated on (title, h_idx, t_idx, r). Unlike the official scorer, a
  malformed entry (missing or mistyped field, entity index outside a gold document), a malformed
  gold or train document (every field the scorer reads: title, vertexSet mention names and, in gold
  documents, sent_ids, which must index the document's sents, and labels h, t, r) or two gold
  documents with the same title raise DataError naming the file, the document and the field,
  instead of being scored silently or crashing.
* A prediction is correct when (title, r, h_idx, t_idx) is a gold fact; gold facts are the unique
  (title, r, h, t) of the gold documents' labels.
* Precision = correct / #submitted (de-duplicated), recall = correct / #gold facts.
  Predictions whose title is not a gold document can never be correct but, as in the official
  scorer (which divides by the length of the whole submission), they still count in #submitted.
  Their number is reported as num_pred_unknown_title.
* Ign F1 (official `re_f1_ignore_train_annotated`): the train facts are
  {(name of a mention of h, name of a mention of t, r)} over every label of the train documents and
  every mention pair. A correct prediction is "in train" when some (n1, n2, r), n1 a mention name of
  its head entity and n2 one of its tail entity (gold document's vertexSet), is a train fact.
  ign_precision = (correct - correct_in_train) / (#submitted - correct_in_train); the recall is the
  plain recall; ign_f1 is their harmonic mean. Without train documents no prediction is in train,
  so ign_precision equals precision and ign_f1 equals f1.
* Intra / Inter: a (gold or predicted) triple is intra-sentence when some mention of its head and
  some mention of its tail (from the gold document's vertexSet) share a sent_id, otherwise
  inter-sentence. Each part is scored on its own: precision over the predictions of that part,
  recall over the gold facts of that part. Predictions for unknown titles belong to neither part.
* Infer-F1 (paper Table 6, after Zeng et al. 2020, GAIN): the gold inference set G holds every gold
  triple that takes part in a triangle (h, r1, o), (o, r2, t), (h, r3, t) of gold triples, where
  h, o, t are three distinct entities of the same document; all three triples of each triangle belong
  to G. Recall = |P ∩ G| / |G|; precision = |P ∩ G| / |P_G|, where P_G is the set of predicted
  triples whose (title, h, t) entity pair is the entity pair of some triple in G.

Ratios whose denominator is 0 are 0 (the official scorer has no such guard and would crash; ATLOP's
copy adds 1e-5 to the Ign denominator instead). All scores are percentages (0-100).

CDR / GDA scores (`bio_scores`) are ATLOP's: precision, recall and F1 of the positive class over
all candidate pairs, without ATLOP's 1e-5 smoothing.

Command line: python evaluation.py --pred PRED.json --gold GOLD.json [--train TRAIN.json]
prints one JSON object of scores; errors print one "error: ..." line and exit with status 2.
"""
import json
import sys

import numpy as np

from utils import ArgumentParser, DataError, run_cli


def loads_json(raw):
    """Parse JSON bytes (strict UTF-8) with the json module, whose errors say where (line, column).

    ujson parses these files no faster (bench/json_speed.py: 0.93-1.11x on DocRED test.json and Re-DocRED
    train_mini.json) and is laxer (leading zeros, raw control characters, UTF-8-encoded surrogates).
    Raises UnicodeDecodeError, json.JSONDecodeError or RecursionError (nesting deeper than Python's stack).
    """
    return json.loads(raw.decode("utf-8"))


def json_error(e):
    """What to show of a loads_json error: json's own message (it says where), or that nesting is too deep."""
    if isinstance(e, RecursionError):
        return "nested too deeply"
    return str(e)


def load_json(path):
    """Read a JSON file; a missing, unreadable or malformed file is a DataError naming it."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not a JSON file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        data = loads_json(raw)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DataError(f"{path}: invalid JSON: {json_error(e)}") from None
    return data


def load_docs(path):
    """Read a JSON file that must hold a list (documents or submission entries)."""
    data = load_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list, got {type(data).__name__}")
    return data


def to_official(preds, features, id2rel):
    """Turn per-document multi-hot predictions into CodaLab entries {"title","h_idx","t_idx","r"}.

    preds[i] is a [num_pairs, num_class] 0/1 array aligned with features[i]["hts"]; column 0 is the
    Na / threshold class and never yields an entry.
    """
    if len(preds) != len(features):
        raise DataError(f"to_official: {len(preds)} prediction arrays for {len(features)} features")
    entries = []
    for i, (pred, feature) in enumerate(zip(preds, features)):
        pred = np.asarray(pred)
        hts = feature["hts"]
        if not len(hts) and not pred.size:  # a document without candidate pairs
            continue
        if pred.ndim != 2 or pred.shape[0] != len(hts):
            raise DataError(f"to_official: feature {i} ({feature['title']!r}) has {len(hts)} pairs "
                            f"but predictions of shape {tuple(pred.shape)}")
        for pair, cls in zip(*np.nonzero(pred)):
            if cls == 0:
                continue
            if int(cls) not in id2rel:
                raise DataError(f"to_official: class id {int(cls)} is not in id2rel")
            h, t = hts[pair]
            entries.append({"title": feature["title"], "h_idx": int(h), "t_idx": int(t),
                            "r": id2rel[int(cls)]})
    return entries


def _ratio(num, den):
    return num / den if den else 0.0


def _prf(correct, num_pred, num_gold):
    """Precision, recall, F1 in percent."""
    p, r = _ratio(correct, num_pred), _ratio(correct, num_gold)
    return 100 * p, 100 * r, 100 * _ratio(2 * p * r, p + r)


def is_int(x):
    """A JSON integer: bool is an int subclass in Python, but true/false is no index."""
    return isinstance(x, int) and not isinstance(x, bool)


def _show(value, limit=60):
    """repr of a bad value, cut short: a whole nested list would bury the message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _checked_doc(doc, d, where, gold):
    """Check what the scorer reads of one document: its title, its vertexSet (every mention's name and,
    in gold documents, its sent_id, an index into the document's sents) and its labels (h and t entity
    indices, r a string). Returns (title, vertexSet, labels); a document without 'labels' has none.
    """
    if not isinstance(doc, dict):
        raise DataError(f"{where}: document {d}: expected a JSON object, got {type(doc).__name__}")
    if not isinstance(doc.get("title"), str):
        raise DataError(f"{where}: document {d}: title: missing or not a string ({_show(doc.get('title'))})")
    title, vertex_set, labels = doc["title"], doc.get("vertexSet"), doc.get("labels", [])
    at = f"{where}: document {d} ({_show(title, 80)})"
    if not isinstance(vertex_set, list):
        raise DataError(f"{at}: vertexSet: missing or not a list of entities")
    num_sents = _num_sents(doc, at) if gold else None
    for e, entity in enumerate(vertex_set):
        if not isinstance(entity, list) or not entity:
            raise DataError(f"{at}: vertexSet[{e}]: expected a non-empty list of mentions")
        for m, mention in enumerate(entity):
            _check_mention(mention, f"{at}: vertexSet[{e}][{m}]", num_sents)
    if not isinstance(labels, list):
        raise DataError(f"{at}: labels: expected a list")
    for k, lab in enumerate(labels):
        if not isinstance(lab, dict):
            raise DataError(f"{at}: labels[{k}]: expected a JSON object")
        for field in ("h", "t"):
            value = lab.get(field)
            if not is_int(value) or not 0 <= value < len(vertex_set):
                raise DataError(f"{at}: labels[{k}].{field}: {_show(value)} is not an entity index "
                                f"(vertexSet has {len(vertex_set)} entities)")
        if not isinstance(lab.get("r"), str):
            raise DataError(f"{at}: labels[{k}].r: missing or not a relation name ({_show(lab.get('r'))})")
    return title, vertex_set, labels


def _num_sents(doc, at):
    """Sentence count of a gold document: what its mentions' sent_ids index (Intra/Inter need them)."""
    sents = doc.get("sents")
    if not isinstance(sents, list) or not all(isinstance(sent, list) for sent in sents):
        raise DataError(f"{at}: sents: missing or not a list of sentences (lists of words)")
    return len(sents)


def _check_mention(mention, at, num_sents):
    """A mention needs a string name (Ign F1) and, when num_sents is given, a sent_id in range."""
    if not isinstance(mention, dict):
        raise DataError(f"{at}: expected a mention object, got {type(mention).__name__}")
    if not isinstance(mention.get("name"), str):
        raise DataError(f"{at}.name: missing or not a string ({_show(mention.get('name'))})")
    if num_sents is not None:
        sid = mention.get("sent_id")
        if not is_int(sid) or not 0 <= sid < num_sents:
            raise DataError(f"{at}.sent_id: {_show(sid)} is not a sentence id "
                            f"(the document has {num_sents} sentences)")


def _index_gold(gold_docs, where):
    """Map title -> (doc index, vertexSet) and collect the unique gold facts (title, r, h, t)."""
    if not isinstance(gold_docs, list):
        raise DataError(f"{where}: expected a list of documents, got {type(gold_docs).__name__}")
    docs, facts = {}, set()
    for d, doc in enumerate(gold_docs):
        title, vertex_set, labels = _checked_doc(doc, d, where, gold=True)
        if title in docs:
            # Predictions are matched by title, so two gold documents with one title are ambiguous.
            raise DataError(f"{where}: document {d}: title {title!r} repeats document {docs[title][0]}")
        docs[title] = (d, vertex_set)
        facts.update((title, lab["r"], lab["h"], lab["t"]) for lab in labels)
    return docs, facts


def _train_facts(train_docs, where):
    """(head mention name, tail mention name, r) for every train label and mention pair."""
    if not isinstance(train_docs, list):
        raise DataError(f"{where}: expected a list of documents, got {type(train_docs).__name__}")
    facts = set()
    for d, doc in enumerate(train_docs):
        _, vertex_set, labels = _checked_doc(doc, d, where, gold=False)
        for lab in labels:
            for m1 in vertex_set[lab["h"]]:
                for m2 in vertex_set[lab["t"]]:
                    facts.add((m1["name"], m2["name"], lab["r"]))
    if not facts:
        # Silently scoring Ign F1 = F1 would hide a wrong --train file (e.g. test.json).
        raise DataError(f"{where} has no relation labels: it cannot serve as train data for Ign F1")
    return facts


def _dedup_submission(submission, where, docs):
    """Check every entry and return the unique (title, h_idx, t_idx, r) keys in first-seen order."""
    if not isinstance(submission, list):
        raise DataError(f"{where}: expected a list of predictions, got {type(submission).__name__}")
    keys = {}
    for i, x in enumerate(submission):
        if not isinstance(x, dict):
            raise DataError(f"{where}: entry {i}: not an object")
        key = (x.get("title"), x.get("h_idx"), x.get("t_idx"), x.get("r"))
        if type(key[0]) is not str or type(key[1]) is not int or type(key[2]) is not int \
                or type(key[3]) is not str:
            for field, value in zip(("title", "h_idx", "t_idx", "r"), key):
                if not (isinstance(value, str) if field in ("title", "r") else is_int(value)):
                    raise DataError(f"{where}: entry {i}: bad or missing field {field!r}")
        if key[0] in docs:
            # The official scorer would just score such a prediction as wrong, but an entity index
            # outside the document is a bug in whatever wrote the file, so say so.
            n = len(docs[key[0]][1])
            for field, value in (("h_idx", key[1]), ("t_idx", key[2])):
                if not 0 <= value < n:
                    raise DataError(f"{where}: entry {i}: field {field!r} = {value} is out of range "
                                    f"for {key[0]!r} ({n} entities)")
        keys[key] = None
    return list(keys)


def _inference_pairs(gold_facts):
    """Entity pairs (title, h, t) of gold triples that take part in a triangle of gold triples."""
    out_edges, in_edges = {}, {}
    for title, _, h, t in gold_facts:
        if h != t:
            out_edges.setdefault((title, h), set()).add(t)
            in_edges.setdefault((title, t), set()).add(h)
    pairs = set()
    for (title, h), tails in out_edges.items():
        for t in tails:
            # o with (h, o) and (o, t) gold, distinct from h and t, closes the triangle h -> o -> t.
            for o in (tails & in_edges.get((title, t), set())) - {h, t}:
                pairs.update({(title, h, t), (title, h, o), (title, o, t)})
    return pairs


def docred_scores(submission, gold_docs, train_docs=None, *, pred_path=None, gold_path=None,
                  train_path=None):
    """Official DocRED scores (percent) of a CodaLab submission against labelled gold documents.

    The *_path arguments only name the inputs in error messages. See the module docstring for the
    exact definitions.
    """
    gold_where = gold_path or "gold documents"
    docs, gold = _index_gold(gold_docs, gold_where)
    if not gold:
        raise DataError(f"{gold_where} has no relation labels: it cannot be scored (DocRED test "
                        "labels are hidden; submit result.json to CodaLab)")
    train = _train_facts(train_docs, train_path or "train documents") if train_docs is not None else set()
    preds = _dedup_submission(submission, pred_path or "submission", docs)

    sents = {title: [{m["sent_id"] for m in entity} for entity in vertex_set]
             for title, (_, vertex_set) in docs.items()}

    def intra(title, h, t):
        """Whether some mention of h and some mention of t share a sentence."""
        return not sents[title][h].isdisjoint(sents[title][t])

    infer_pairs = _inference_pairs(gold)
    correct = in_train = unknown = 0
    part_pred, part_correct = {True: 0, False: 0}, {True: 0, False: 0}
    infer_pred = infer_correct = 0
    for title, h, t, rel in preds:
        if title not in docs:
            unknown += 1
            continue
        is_correct = (title, rel, h, t) in gold
        part = intra(title, h, t)
        part_pred[part] += 1
        is_infer = (title, h, t) in infer_pairs
        infer_pred += is_infer
        if not is_correct:
            continue
        correct += 1
        part_correct[part] += 1
        infer_correct += is_infer
        vertex_set = docs[title][1]
        if train and any((m1["name"], m2["name"], rel) in train
                         for m1 in vertex_set[h] for m2 in vertex_set[t]):
            in_train += 1

    part_gold = {True: 0, False: 0}
    infer_gold = 0
    for title, _, h, t in gold:
        part_gold[intra(title, h, t)] += 1
        infer_gold += (title, h, t) in infer_pairs

    p, r, f1 = _prf(correct, len(preds), len(gold))
    ign_p = 100 * _ratio(correct - in_train, len(preds) - in_train)
    scores = {"precision": p, "recall": r, "f1": f1,
              "ign_f1": _ratio(2 * ign_p * r, ign_p + r), "ign_precision": ign_p}
    for name, part in (("intra", True), ("inter", False)):
        scores.update(zip((f"{name}_precision", f"{name}_recall", f"{name}_f1"),
                          _prf(part_correct[part], part_pred[part], part_gold[part])))
    scores.update(zip(("infer_precision", "infer_recall", "infer_f1"),
                      _prf(infer_correct, infer_pred, infer_gold)))
    scores.update(num_pred=len(preds), num_gold=len(gold), num_correct=correct,
                  num_correct_in_train=in_train, num_pred_unknown_title=unknown,
                  num_gold_intra=part_gold[True], num_gold_inter=part_gold[False],
                  num_gold_infer=infer_gold, num_pred_infer=infer_pred, num_correct_infer=infer_correct)
    return scores


def bio_doc_counts(preds, features):
    """Per-document counts of CDR / GDA's positive class: [len(features), 3] int array of (#correct, #predicted,
    #gold) over each document's candidate pairs; bio_scores are their sums' precision, recall and F1.

    features[i]["labels"][k] lists the positive class ids of pair features[i]["hts"][k] (empty:
    negative); preds[i] is the matching [num_pairs, 2] 0/1 array.
    """
    if len(preds) != len(features):
        raise DataError(f"bio_scores: {len(preds)} prediction arrays for {len(features)} features")
    counts = np.zeros((len(features), 3), dtype=np.int64)
    for i, (pred, feature) in enumerate(zip(preds, features)):
        pred = np.asarray(pred)
        labels = feature["labels"]
        if not len(feature["hts"]) and not pred.size and not len(labels):
            continue
        if pred.ndim != 2 or pred.shape[0] != len(feature["hts"]) or len(labels) != len(feature["hts"]):
            raise DataError(f"bio_scores: feature {i} ({feature.get('title')!r}) has "
                            f"{len(feature['hts'])} pairs, {len(labels)} labels and predictions of "
                            f"shape {tuple(pred.shape)}")
        pred_pos = pred[:, 1] != 0
        gold_pos = np.array([1 in lab for lab in labels], dtype=bool)
        counts[i] = (pred_pos & gold_pos).sum(), pred_pos.sum(), gold_pos.sum()
    return counts


def bio_scores(preds, features):
    """CDR / GDA precision, recall, F1 (percent) of the positive class (id 1) over all candidate pairs
    (bio_doc_counts summed over the documents)."""
    tp, num_pred, num_gold = (int(c) for c in bio_doc_counts(preds, features).sum(0))
    p, r, f1 = _prf(tp, num_pred, num_gold)
    return {"precision": p, "recall": r, "f1": f1,
            "num_pred": num_pred, "num_gold": num_gold, "num_correct": tp}


def score_files(argv=None):
    parser = ArgumentParser(prog="evaluation.py", description="Score a DocRED CodaLab submission (result.json).")
    parser.add_argument("--pred", required=True, help="submission: JSON list of {title,h_idx,t_idx,r}")
    parser.add_argument("--gold", required=True, help="labelled gold documents (DocRED JSON)")
    parser.add_argument("--train", help="train documents, for Ign F1 (without it Ign F1 equals F1)")
    args = parser.parse_args(argv)
    scores = docred_scores(load_docs(args.pred), load_docs(args.gold), load_docs(args.train) if args.train else None,
                           pred_path=args.pred, gold_path=args.gold, train_path=args.train)
    first = ("precision", "recall", "f1", "ign_f1", "intra_f1", "inter_f1", "infer_f1")
    ordered = {k: scores[k] for k in first}
    ordered.update(scores)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in ordered.items()}))
    return 0


def main(argv=None):
    """The command line: the scores as one JSON object; expected failures end with one `error:` line and their
    status (utils.run_cli)."""
    return run_cli(score_files, argv)


if __name__ == "__main__":
    sys.exit(main())
