"""Can the inference module learn to combine two stated facts into a third? A learnability check for the
synthetic mechanism test (scripts/make_demo_data.py), after experiments/oracle_relations.py found the trained
module at chance on the never-stated facts even when its first pass reads the stated facts exactly right.

    python experiments/composition_probe.py --checkpoint runs/f/paper/s1/best.pt --train dataset/demo/train.json \
        --dev dataset/demo/dev.json [--epochs 30] [--lr 1e-3] [--reinit] [--seed 1] [--json OUT]

The checkpoint's base module is frozen and its features are computed once. Its inference module (as trained, or
re-initialised with --reinit) is trained for one pass whose R_0 is each training document's stated gold facts:
the never-stated ("inferred": true) facts are left out of R_0 and kept as targets, the AT loss covers every gold
fact, and there is no noise and no contrastive loss. That is the easiest setting in which combining facts is the
only way to lower the loss further. After each epoch the dev report (scripts/demo_report.py) of that pass with
R_0 = the dev documents' stated gold facts; at the end also with R_0 = the base module's predictions, and the
report on the training documents (does the module fit what it was trained on?). If the never-stated facts'
precision within their slots (chance: 50, two countries per document; its 95% interval from resampling the
documents is printed beside it) rises well above chance, the module can combine facts and the training recipes
are what keep it from learning to; if it stays at chance here, it cannot at this size and data, whatever the
recipe.
"""
import argparse
import dataclasses
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "scripts")]  # scripts/: demo_report
import demo_report  # noqa: E402
import evaluation  # noqa: E402
import oracle_relations  # noqa: E402
import predict  # noqa: E402
import prepro  # noqa: E402
from losses import at_loss  # noqa: E402
from utils import DataError, Pairs, UsageError, autocast, collate_fn, move_to, set_seed  # noqa: E402


def cached_batches(predictor, features, docs, batch_size):
    """Per batch of documents: (pairs, frozen base features [P, e], R_0 of the stated gold facts, labels [P, C],
    scored pair indices [S])."""
    model, device, amp = predictor.model, predictor.device, predictor.amp
    by_title = {d["title"]: d for d in docs}
    model.eval()
    out = []
    for start in range(0, len(features), batch_size):
        chunk = features[start:start + batch_size]
        batch = collate_fn(chunk)
        rows = [oracle_relations.stated_relations(f, by_title[f["title"]], len(predictor.id2rel)) for f in chunk]
        given = predict.pack_rows(batch, rows, predict.packed_index(batch))
        batch = move_to(batch, device)
        pairs = Pairs.of(batch)
        with torch.no_grad(), autocast(amp, device):
            feats = model.base_forward(batch, pairs)[0].float()
        out.append((pairs, feats, model.decode(given.to(device)), batch["pair_labels"], batch["scored"]))
    return out


def reinitialise(module, rel_emb_init):
    """Fresh parameters for every layer of the inference module (the relation embedding as the run chose)."""
    for m in module.modules():
        if m is not module and hasattr(m, "reset_parameters"):
            m.reset_parameters()
    if rel_emb_init == "xavier":
        torch.nn.init.xavier_uniform_(module.rel_emb.weight)


def pass_rows(predictor, features, gold, gold_path, with_base=False):
    """demo_report rows of one pass over labelled documents: R_0 = the stated gold facts (and the base module's
    predictions with ``with_base``)."""
    labels = ["R_0 = the stated gold facts", "R_0 from the base module"]
    preds = list(zip(labels, oracle_relations.submissions(predictor, features, gold, 1, own=with_base)))
    return demo_report.report(gold, preds, gold_path=gold_path)


def probe(args):
    """Train as described above; returns (every epoch's loss and dev rows, the model)."""
    set_seed(args.seed)
    predictor = predict.Predictor.from_checkpoint(args.checkpoint, device=args.device)
    if predictor.num_iterations < 1:
        raise UsageError(f"{args.checkpoint}: a stage-1 checkpoint has no inference module to probe")
    model = predictor.model
    # the pass's own logits (not the authors' base + pass sum): the score this probe trains
    model.recipe = dataclasses.replace(model.recipe, test_logits="last")
    docs = {}
    for split in ("train", "dev"):
        path = getattr(args, split)
        docs[split] = evaluation.load_docs(path)
        if not demo_report.gold_facts(docs[split])[1]:
            raise DataError(f"{path}: no label says whether it is inferred (see scripts/make_demo_data.py)")
    features = {split: prepro.docred_features(docs[split], predictor.tokenizer, predictor.args.max_seq_length,
                                              predictor.rel2id, getattr(args, split)) for split in docs}
    train = cached_batches(predictor, features["train"], docs["train"], args.batch_size)
    if args.reinit:
        reinitialise(model.inference, predictor.args.rel_emb_init)
    for p in model.parameters():
        p.requires_grad_(False)
    params = list(model.inference.parameters())
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    history = []
    for epoch in range(args.epochs):
        model.inference.train()
        total = 0.0
        for i in torch.randperm(len(train)).tolist():
            pairs, feats, relations, labels, scored = train[i]
            with autocast(predictor.amp, predictor.device):
                logits = model.inference(feats, relations, pairs)[2]
            loss = at_loss(logits[scored], labels[scored])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
        last = epoch == args.epochs - 1
        rows = pass_rows(predictor, features["dev"], docs["dev"], args.dev, with_base=last)
        history.append({"epoch": epoch, "train_loss": total / len(train), "rows": rows})
        if last:  # does it fit the documents it was trained on?
            history[-1]["train_rows"] = pass_rows(predictor, features["train"], docs["train"], args.train)
        inferred, stated = rows[0]["inferred"], rows[0]["stated"]
        low, high = inferred["precision_ci95"]
        print(f"epoch {epoch}: train loss {total / len(train):.4f}, dev F1 {rows[0]['f1']:.2f}, stated recall / "
              f"precision {stated['recall']:.2f} / {stated['precision']:.2f}, never stated "
              f"{inferred['recall']:.2f} / {inferred['precision']:.2f} [{low:.2f}, {high:.2f}]", flush=True)
    return history, model


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="best.pt of a stage-2 run on the synthetic documents")
    p.add_argument("--train", required=True, help="training documents whose never-stated facts are marked")
    p.add_argument("--dev", required=True, help="dev documents whose never-stated facts are marked")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--reinit", action="store_true", help="train a freshly initialised inference module")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="also write every epoch's loss and report rows to this file")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.epochs < 1 or args.batch_size < 1:
            raise UsageError("--epochs and --batch_size must be at least 1")
        history, _ = probe(args)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump({"args": vars(args), "epochs": history}, fh, indent=1)
    except (DataError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("dev:\n" + demo_report.format_table(history[-1]["rows"]))
    print("train:\n" + demo_report.format_table(history[-1]["train_rows"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
