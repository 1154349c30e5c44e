"""Prediction: the scores of every pass -> decoded relations -> CodaLab format -> dev/test scores.

One path for the per-epoch dev evaluation, `train.py --evaluate_only`, the final predictions of a run, and
``Predictor``: relations of new DocRED-format documents, in memory or from the command line:

  python predict.py --checkpoint runs/x/best.pt --input docs.json --output preds.json [--num_iterations K]

writes preds.json (one entry per predicted triple: title, h_idx/t_idx, head/tail entity names, relation id and
name, and the margin of its score over the threshold class) and result.json next to it (the CodaLab format).
``--text FILE.txt`` reads plain text instead (text_input.py), ``--html PAGE.html`` adds a page of what each pass
inferred (page.py); docs/PREDICT.md has both.

  from predict import Predictor
  predictor = Predictor.from_checkpoint("runs/x/best.pt")        # device="auto", num_iterations=None (the run's K)
  triples = predictor.predict(docs)                              # per document, a list of triples
"""
import json
import os
import sys

import numpy as np
import torch

import evaluation
import page
import prepro
import text_input
from flags import check_range, with_defaults
from losses import get_label
from model import check_checkpoint, load_weights, tokenizer_and_model
from rundir import atomic_write_bytes, atomic_write_json, load_weights_only
from utils import (AMP_MODES, ArgumentParser, UsageError, autocast, collate_fn, describe_amp, move_to,
                   resolve_amp, run_cli, set_cpu_threads, some_titles)


@torch.no_grad()
def pass_scores(model, features, batch_size, device, amp, num_iterations, first_input=None):
    """The scores of passes 0..K (model.predict) of every document, in document order: per document a list of
    K + 1 tensors [pairs of its hts, C] on the CPU. Batches are bucketed by length (less padding).
    ``first_input``: feature -> [pairs of its hts, C], read by the first pass instead of the base logits (a
    diagnostic: experiments/oracle_relations.py)."""
    model.eval()
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    out = [None] * len(features)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = collate_fn([features[i] for i in idx])
        packed = packed_index(batch)
        given = None
        if first_input is not None:
            given = pack_rows(batch, [first_input(features[i]) for i in idx], packed).to(device)
        with autocast(amp, device):
            passes = model.predict(move_to(batch, device), num_iterations, first_input=given)
        passes = [p.float().cpu() for p in passes]
        for j, i in enumerate(idx):
            h, t = batch["hts"][j].unbind(1)
            out[i] = [p[packed[j, h, t]] for p in passes]
    return out


def packed_index(batch):
    """[B, N, N] long: the packed pair index (Pairs order) of each valid (b, s, o) of a collate_fn batch, else -1."""
    packed = torch.full(batch["pair_mask"].shape, -1, dtype=torch.long)
    packed[batch["pair_mask"]] = torch.arange(batch["pair_index"].size(1))
    return packed


def pack_rows(batch, rows, packed):
    """Per-document rows [pairs of its hts, C] -> one [P, C] tensor in the batch's packed pair order (pairs not in
    any document's hts: zeros). ``packed``: packed_index(batch)."""
    out = torch.zeros(batch["pair_index"].size(1), rows[0].size(1))
    for j, row in enumerate(rows):
        h, t = batch["hts"][j].unbind(1)
        out[packed[j, h, t]] = row
    return out


def decode(scores, num_labels, k=-1):
    """Multi-hot relations [pairs, C] of pass k of every document (adaptive threshold, at most num_labels)."""
    return [get_label(s[k], num_labels).numpy() for s in scores]


def score_pass(dataset, scores, features, k, num_labels, gold_docs, train_docs, id2rel):
    """Dev/test scores of pass k: the official DocRED scores (on the CodaLab entries), or CDR/GDA's F1."""
    preds = decode(scores, num_labels, k)
    if dataset == "docred":
        return evaluation.docred_scores(evaluation.to_official(preds, features, id2rel), gold_docs, train_docs)
    return evaluation.bio_scores(preds, features)


def labelled(dataset, features, gold_docs):
    if dataset == "docred":
        return any(d.get("labels") for d in gold_docs or [])
    return any(any(lab) for f in features for lab in f["labels"])


def evaluate(model, features, args, device, gold_docs, train_docs, id2rel, num_iterations):
    """Scores after every pass k = 0..K of a labelled split, and the scores of every pass (for writing)."""
    scores = pass_scores(model, features, args.test_batch_size, device, args.amp, num_iterations)
    by_k = {k: score_pass(args.dataset, scores, features, k, args.num_labels, gold_docs, train_docs, id2rel)
            for k in range(num_iterations + 1)} if labelled(args.dataset, features, gold_docs) else {}
    return by_k, scores


def official(scores, features, num_labels, id2rel, k=-1):
    """The CodaLab entries (result.json) of pass k."""
    return evaluation.to_official(decode(scores, num_labels, k), features, id2rel)


def relations(logits, num_labels):
    """(pair index, class id, margin of its score over the threshold class) of every relation that one pass
    predicts for one document, from its scores [pairs, C]."""
    pred = get_label(logits, num_labels)
    return [(int(i), int(c) + 1, round(float(logits[i, c + 1] - logits[i, 0]), 4))
            for i, c in zip(*np.nonzero(pred[:, 1:].numpy()))]


def readable(scores, features, num_labels, id2rel, rel_names, docs):
    """One entry per predicted triple of the last pass: title, h_idx/t_idx, head/tail entity names (the first
    mention with a name), relation id and name, and the margin of its score over the threshold class."""
    rows = []
    for f, s in zip(features, scores):
        doc = docs.get(f["title"]) if docs else None
        for i, c, margin in relations(s[-1], num_labels):
            h, t = f["hts"][i]
            rid = id2rel[c]
            row = {"title": f["title"], "h_idx": h, "t_idx": t, "r": rid, "relation": rel_names.get(rid, rid),
                   "score": margin}
            if doc is not None:
                row["head"], row["tail"] = entity_name(doc["vertexSet"][h]), entity_name(doc["vertexSet"][t])
            rows.append(row)
    return rows


def entity_name(mentions):
    """The name of an entity: its first mention that has one (mention names are optional in new documents)."""
    return next((m["name"] for m in mentions if isinstance(m.get("name"), str)), None)


# ---------------------------------------------------------------- new documents: Predictor and the command line
def relation_map(args):
    """rel2id of the classes a run with these flags trains: DocRED's from --rel2id (default meta/rel2id.json),
    CDR's or GDA's one positive class."""
    if args.dataset == "docred":
        return prepro.load_rel2id(args.rel2id)
    return {"Na": 0, **{name: i for name, i in prepro.BIO_LABELS[args.dataset].items() if i is not None}}


def relation_names():
    """Relation id -> readable name (meta/rel_info.json, e.g. P17 -> country)."""
    with open(os.path.join(os.path.dirname(prepro.DEFAULT_REL2ID), "rel_info.json")) as fh:
        return json.load(fh)


class Predictor:
    """A trained model that predicts the relations of DocRED-format documents held in memory.

    Documents are dicts as in DocRED's JSON files: "title" (unique), "sents" (lists of words) and "vertexSet"
    (per entity, its mentions: "sent_id", "pos" = [first word, last word + 1) in that sentence, and optionally
    "name" and "type"); "labels" are not needed (and ignored). Bad input raises utils.DataError naming the
    document (index and title) and the field.
    """

    def __init__(self, model, tokenizer, args, id2rel, device, amp, num_iterations, batch_size):
        self.model, self.tokenizer, self.args, self.id2rel = model, tokenizer, args, id2rel
        self.device, self.amp, self.num_iterations, self.batch_size = device, amp, num_iterations, batch_size
        self.rel2id = {name: i for i, name in id2rel.items()}
        self.rel_names = relation_names()

    @classmethod
    def from_checkpoint(cls, path, device="auto", num_iterations=None, batch_size=None, amp="auto"):
        """Load best.pt (or best_stage1.pt) of a run, with ``torch.load(weights_only=True)``. A checkpoint that
        carries its encoder (see model.py, portable checkpoints) needs neither the encoder folder nor a model
        hub. device: "auto" (a GPU when there is one), "cpu", "cuda" or a torch.device; num_iterations: K
        (default: the run's; always 0 for a stage-1 checkpoint, whose inference module is untrained); batch_size:
        documents per forward pass (default: the run's --test_batch_size); amp: as train.py's --amp."""
        ckpt = load_weights_only(path)
        args = with_defaults(ckpt["args"])  # flags newer than the checkpoint: their defaults, as train.py does
        k = args.num_iterations if num_iterations is None else num_iterations
        check_range("num_iterations", k, 0, integer=True)
        if ckpt.get("stage") == 1:
            k = 0
        batch_size = args.test_batch_size if batch_size is None else batch_size
        check_range("batch_size", batch_size, 1, integer=True)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise UsageError(f"device must be auto, cpu, cuda or a torch.device, got {device!r}") from e
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError("device cuda: no CUDA device is available")
        amp = resolve_amp(amp, device.type)
        check_checkpoint(args, ckpt, path)
        if ckpt.get("id2rel"):
            id2rel = {int(i): name for i, name in ckpt["id2rel"].items()}
        else:
            id2rel = {i: name for name, i in relation_map(args).items()}
        tokenizer, model = tokenizer_and_model(args, len(id2rel), ckpt)
        # A stage-1 checkpoint is used for its base module only (K = 0): the inference module it may store is
        # untrained, and one written for another machine (experiments/gpu_carry.py) stores none.
        load_weights(model, ckpt["model"], path, "base." if ckpt.get("stage") == 1 else "")
        model.to(device).eval()
        return cls(model, tokenizer, args, id2rel, device, amp, k, batch_size)

    def features(self, docs, source="input"):
        """prepro features of the documents (labels dropped): the checks and messages of prepro."""
        if isinstance(docs, list):
            docs = [{k: v for k, v in d.items() if k != "labels"} if isinstance(d, dict) else d for d in docs]
        return prepro.docred_features(docs, self.tokenizer, self.args.max_seq_length, self.rel2id, source)

    def scores(self, docs, source="input"):
        """(features, the scores of passes 0..K of every document): pass_scores, batched by length."""
        features = self.features(docs, source)
        return features, pass_scores(self.model, features, self.batch_size, self.device, self.amp,
                                     self.num_iterations)

    def predict(self, docs, source="input"):
        """Per document, in input order, the list of its predicted triples: {"h_idx", "t_idx", "head", "tail",
        "r", "relation", "score"}: entity indices into vertexSet, entity names (the first mention with a name,
        None without one), the relation id (e.g. "P17") and name ("country"), and the margin of the relation's
        score over the threshold class (> 0). Documents with fewer than two entities get []. ``source`` names
        the input in error messages."""
        features, scores = self.scores(docs, source)
        rows = readable(scores, features, self.args.num_labels, self.id2rel, self.rel_names,
                        {d["title"]: d for d in docs})
        by_title = {}
        for row in rows:
            by_title.setdefault(row.pop("title"), []).append(row)
        return [by_title.get(d["title"], []) for d in docs]

    def predict_text(self, text, ner="markup", source="text"):
        """The relations of plain text (text_input.py): (the DocRED-format documents built from it, per document
        its triples as ``predict`` returns them). ner: "markup" (mentions marked [text|TYPE] and [text|=Name]),
        "spacy:NAME" or a loaded spaCy pipeline. "# Title" lines start documents. Bad text raises
        utils.DataError "SOURCE:LINE:COLUMN: ..."."""
        docs = text_input.documents(text, source, ner)
        return docs, self.predict(docs, source)

    def passes(self, features, scores):
        """Per document, per pass k = 0..K, the relations it predicts: {(h, t, relation id): margin of the
        relation's score over the threshold class}."""
        return [[{(*f["hts"][i], self.id2rel[c]): margin for i, c, margin in relations(logits, self.args.num_labels)}
                 for logits in s] for f, s in zip(features, scores)]

    def gold(self, docs, source="input"):
        """Per document, its gold relations {(h, t, relation id)} (the labels, checked as training data is), or
        None for a document without "labels"."""
        if not any(isinstance(d, dict) and "labels" in d for d in docs):
            return [None] * len(docs)
        features = prepro.docred_features(docs, self.tokenizer, self.args.max_seq_length, self.rel2id, source)
        return [{(h, t, self.id2rel[c]) for (h, t), labels in zip(f["hts"], f["labels"]) for c in labels}
                if "labels" in d else None for d, f in zip(docs, features)]

    def page(self, docs, source="input", scored=None):
        """The HTML page of the documents (page.py): text, relations, graph, and what each inference pass added
        and removed, against the gold labels where a document has them. scored: (features, scores) of
        ``self.scores(docs)`` when the caller has them already."""
        features, scores = scored or self.scores(docs, source)
        return page.render(docs, self.passes(features, scores), self.gold(docs, source), self.rel_names,
                           f"{os.path.basename(source)}: relations (K = {self.num_iterations})")

    def official(self, features, scores):
        """The CodaLab entries (result.json) of the final pass."""
        return official(scores, features, self.args.num_labels, self.id2rel)


def build_parser():
    p = ArgumentParser(description="Predict the relations of DocRED-format documents or of plain text with "
                                            "a trained checkpoint: writes OUTPUT and result.json (CodaLab) next to "
                                            "it, and with --html a page of what each pass inferred.")
    p.add_argument("--checkpoint", required=True, help="best.pt of a run")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="JSON list of DocRED-format documents (no labels needed)")
    source.add_argument("--text", help="UTF-8 text: one document, or several each after a '# Title' line; "
                                       "entities marked [mention|TYPE] and [mention|=Name], or found by --ner")
    p.add_argument("--ner", help="how --text names its entities: markup (default) or spacy:PIPELINE "
                                 "(e.g. spacy:en_core_web_sm; pip install -r requirements-spacy.txt)")
    p.add_argument("--output", required=True, help="predictions file (one entry per predicted triple)")
    p.add_argument("--html", help="also write this self-contained page: text, relations, graph, and the relations "
                                  "each inference pass added and removed")
    p.add_argument("--num_iterations", type=int, default=None, help="K (default: the run's)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch_size", type=int, default=None, help="documents per forward pass (default: the run's)")
    p.add_argument("--amp", choices=AMP_MODES, default="auto")
    p.add_argument("--overwrite", action="store_true", help="allow replacing OUTPUT, the result.json next to it "
                                                             "or the --html page")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    set_cpu_threads(0)  # the cores not busy with other work now
    result_path = os.path.join(os.path.dirname(args.output), "result.json")
    if os.path.abspath(args.output) == os.path.abspath(result_path):
        raise UsageError(f"--output {args.output}: result.json is the CodaLab file written next to the output; "
                         f"name the output otherwise (e.g. preds.json)")
    existing = [p for p in (args.output, result_path) if os.path.exists(p)]
    if existing and not args.overwrite:
        raise UsageError(f"{', '.join(existing)} already exist(s): pass --overwrite to replace")
    folders = [p for p in (args.output, result_path) if os.path.isdir(p)]
    if folders:  # refused before anything is written: not the output written and then result.json failing
        raise UsageError(f"--output {args.output}: {folders[0]} is a folder, not a file")
    if args.html:
        check_page_path(args.html, (args.output, result_path), args.overwrite)
    if args.ner and not args.text:
        raise UsageError("--ner names the entities of --text; the documents of --input list their own")
    source = args.text or args.input
    docs = text_input.read(args.text, args.ner or "markup") if args.text else evaluation.load_docs(args.input)
    predictor = Predictor.from_checkpoint(args.checkpoint, args.device, args.num_iterations, args.batch_size,
                                          args.amp)
    warning = describe_amp(args.amp, predictor.amp, predictor.device.type)[1]
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    features, scores = predictor.scores(docs, source=source)
    empty = [f["title"] for f in features if not f["hts"]]
    if empty:
        print(f"warning: {source}: {len(empty)} document(s) with fewer than 2 entities get no predictions: "
              f"{some_titles(empty)}", file=sys.stderr)
    rows = readable(scores, features, predictor.args.num_labels, predictor.id2rel, predictor.rel_names,
                    {d["title"]: d for d in docs})
    html = predictor.page(docs, source, (features, scores)) if args.html else None  # checks the labels first
    atomic_write_json(args.output, rows, indent=1)
    atomic_write_json(result_path, predictor.official(features, scores))
    if html is not None:
        atomic_write_bytes(args.html, html.encode("utf-8"))
    print(f"{len(rows)} triples in {len(docs)} documents (K = {predictor.num_iterations}): {args.output}, "
          f"{result_path}{f', {args.html}' if html is not None else ''}")
    return 0


def check_page_path(path, others, overwrite):
    """--html: not one of the other outputs, not a folder, and not replaced without --overwrite."""
    same = [p for p in others if os.path.abspath(p) == os.path.abspath(path)]
    if same:
        raise UsageError(f"--html {path}: the same file as {same[0]}; name the page otherwise (e.g. preds.html)")
    if os.path.isdir(path):
        raise UsageError(f"--html {path}: is a folder, not a file")
    if os.path.exists(path) and not overwrite:
        raise UsageError(f"{path} already exists: pass --overwrite to replace")


def cli(argv=None):
    """Expected failures end with one `error:` line and their status, as with train.py (utils.run_cli)."""
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
