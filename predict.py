"""Prediction: the scores of every pass -> decoded relations -> CodaLab format -> dev/test scores.

One path for the per-epoch dev evaluation, `train.py --evaluate_only` and the final predictions of a run.
"""
import numpy as np
import torch

import evaluation
from losses import get_label
from utils import autocast, collate_fn, move_to


@torch.no_grad()
def pass_scores(model, features, batch_size, device, amp, num_iterations):
    """The scores of passes 0..K (model.predict) of every document, in document order: per document a list of
    K + 1 tensors [pairs of its hts, C] on the CPU. Batches are bucketed by length (less padding)."""
    model.eval()
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    out = [None] * len(features)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = collate_fn([features[i] for i in idx])
        with autocast(amp, device):
            passes = model.predict(move_to(batch, device), num_iterations)
        packed = torch.full(batch["pair_mask"].shape, -1, dtype=torch.long)  # (b, s, o) -> packed pair index
        packed[batch["pair_mask"]] = torch.arange(batch["pair_index"].size(1))
        passes = [p.float().cpu() for p in passes]
        for j, i in enumerate(idx):
            h, t = batch["hts"][j].unbind(1)
            out[i] = [p[packed[j, h, t]] for p in passes]
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


def readable(scores, features, num_labels, id2rel, rel_names, docs):
    """One entry per predicted triple of the last pass: title, h_idx/t_idx, head/tail entity names (the first
    mention with a name), relation id and name, and the margin of its score over the threshold class."""
    rows = []
    for f, s in zip(features, scores):
        final = s[-1]
        pred = get_label(final, num_labels)
        doc = docs.get(f["title"]) if docs else None
        for i, r in zip(*np.nonzero(pred[:, 1:].numpy())):
            h, t = f["hts"][i]
            rid = id2rel[int(r) + 1]
            row = {"title": f["title"], "h_idx": h, "t_idx": t, "r": rid, "relation": rel_names.get(rid, rid),
                   "score": round(float(final[i, r + 1] - final[i, 0]), 4)}
            if doc is not None:
                row["head"], row["tail"] = entity_name(doc["vertexSet"][h]), entity_name(doc["vertexSet"][t])
            rows.append(row)
    return rows


def entity_name(mentions):
    """The name of an entity: its first mention that has one (mention names are optional in new documents)."""
    return next((m["name"] for m in mentions if isinstance(m.get("name"), str)), None)
