"""Our stage-1 step and prediction pass against ATLOP's own code (wzhouad/ATLOP) on the same batches and encoder.

ATLOP's model.py, long_seq.py and losses.py are imported, unchanged, from a checkout of its repository
(--atlop_dir); nothing of them is part of this repository, and without it the bench says what to fetch and exits
2. Its DocREModel gets a copy of our encoder (the same weights) and the same documents in its own input format.
Three contenders:
  atlop            ATLOP's code: grouped bilinear of emb/block, then Linear(emb*block -> classes)
  ours_atlop       train.py's model with --pair_features atlop --emb_size emb --block_size block: ATLOP's head,
                   the same function as ATLOP's code; its head starts from ATLOP's initial weights, and the bench
                   first checks that the two give the same logits and loss on every batch (fp32)
  ours_bilinear    train.py's model with --pair_features bilinear: the DocRE-II authors' head, Linear(emb*block ->
                   emb) + ReLU, then Linear(emb -> classes); at emb 768 its first layer has 8x the weights of
                   ATLOP's head, so this is not the same function
Timed, interleaved batch by batch (the contenders' order rotating between repeats), in every precision of --amp:
  train            a full optimiser step: forward with the loss, backward, gradient clipping, AdamW (ATLOP: its
                   train.py's two parameter groups; ours: train.py's stage-1 groups and AdamW)
  eval_k0, eval_kK ATLOP's evaluation forward (no labels: logits and its decoding) against our model.predict at
                   K = 0 and K = --k (ATLOP has no inference module: its one pass is the K = 0 baseline)
Reported: seconds per batch (median of the repeats), ATLOP's time over each contender's (its speed relative to
ATLOP's) as the ratio of the medians and per repeat, FLOPs counted by torch.utils.flop_counter (in all and in
the relation head), parameter counts, the load average of every repeat, and with --profile the self time of
one training step per component (common.component_profile).

Usage: python bench/peers.py --atlop_dir PATH [--batches 5] [--batch_size 4] [--repeats 3] [--amp none,bf16]
                             [--threads 1] [--emb_size 768] [--block_size 64] [--k 3] [--phases train,eval]
                             [--contenders atlop,ours_atlop,ours_bilinear] [--ours_adamw foreach|fused] [--profile]
                             [--data PATH] [--out peers.json]
Data: as bench/step.py (the first batches*batch_size documents of Re-DocRED train_mini). Writes
bench/results/peers.json.
"""
import argparse
import copy
import importlib.util
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (puts the repository root on sys.path)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import flags  # noqa: E402
import prepro  # noqa: E402
from model import load_model  # noqa: E402
from step import Runner  # noqa: E402

ATLOP_FILES = ("long_seq", "losses", "model")  # in import order: model.py imports the other two by these names
FETCH = ("bench/peers.py needs a checkout of ATLOP's code: git clone https://github.com/wzhouad/ATLOP <dir>, "
         "then --atlop_dir <dir> (its model.py also imports opt_einsum: pip install opt_einsum)")


def load_atlop(folder):
    """ATLOP's DocREModel class from its checkout. Its modules are named like two of ours (model, losses): they
    are imported under those names only while its model.py runs, then ours are put back."""
    missing = [f"{name}.py" for name in ATLOP_FILES if not os.path.isfile(os.path.join(folder or "", f"{name}.py"))]
    if not folder or missing:
        print(f"error: {FETCH}" + (f" ({', '.join(missing)} not in {folder})" if folder else ""), file=sys.stderr)
        raise SystemExit(2)
    saved = {name: sys.modules.pop(name, None) for name in ATLOP_FILES}
    try:
        for name in ATLOP_FILES:
            spec = importlib.util.spec_from_file_location(name, os.path.join(folder, f"{name}.py"))
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        return module.DocREModel
    except ImportError as e:
        print(f"error: {folder}: {e}; {FETCH}", file=sys.stderr)
        raise SystemExit(2)
    finally:
        for name, ours in saved.items():
            if ours is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = ours


class AtlopEncoder(nn.Module):
    """The encoder as ATLOP's long_seq.py calls it: output[0] the states, output[-1][-1] the last layer's attention.
    Transformers 5 returns cross_attentions = () last in the output of an encoder-only model, where ATLOP expects
    the attentions, so this gives it (states, attentions)."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, **kwargs):
        out = self.encoder(**kwargs)
        return out.last_hidden_state, out.attentions


def atlop_inputs(features, num_class):
    """ATLOP's batch (its collate_fn) for our features: entity positions without the [CLS] offset (ATLOP adds it),
    one multi-hot label list per pair in the order of hts (class 0 = no relation)."""
    length = max(len(f["input_ids"]) for f in features)
    ids = [f["input_ids"] + [0] * (length - len(f["input_ids"])) for f in features]
    mask = [[1.0] * len(f["input_ids"]) + [0.0] * (length - len(f["input_ids"])) for f in features]
    labels = []
    for f in features:
        rows = []
        for rels in f["labels"]:
            row = [0] * num_class
            for r in rels or [0]:
                row[r] = 1
            rows.append(row)
        labels.append(rows)
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask), "labels": labels,
            "entity_pos": [[[(s - 1, e - 1) for s, e in ent] for ent in f["entity_pos"]] for f in features],
            "hts": [f["hts"] for f in features]}


class AtlopRunner:
    """ATLOP's training step (its train.py: loss, backward, clipping, AdamW with the encoder at --encoder_lr and the
    new layers at 1e-4, eps 1e-6) and its evaluation forward. torch's AdamW stands in for the transformers one that
    ATLOP imports (gone in transformers 5); both models use the same class."""

    def __init__(self, model, args, amp):
        self.model, self.args, self.amp = model, args, amp
        new = ("extractor", "bilinear")
        groups = [{"params": [p for n, p in model.named_parameters() if not any(k in n for k in new)]},
                  {"params": [p for n, p in model.named_parameters() if any(k in n for k in new)], "lr": 1e-4}]
        self.opt = torch.optim.AdamW(groups, lr=args.encoder_lr, eps=args.adam_epsilon, weight_decay=0.0)

    def train_step(self, batch):
        self.model.train()
        with common.autocast("cpu", self.amp):
            loss = self.model(**batch)[0]
        loss.backward()
        with torch.profiler.record_function(common.COMPONENT + "gradient clipping"):
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.max_grad_norm)
        with torch.profiler.record_function(common.COMPONENT + "optimiser"):
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)

    def evaluate(self, batch):
        self.model.eval()
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with torch.no_grad(), common.autocast("cpu", self.amp):
            return self.model(**inputs)[0]


def build(a, atlop_class):
    """({contender: model}, our flags, tokenizer): the same encoder weights in all three (deep copies, so that
    each trains its own). ATLOP's head is initialised after torch.manual_seed(0) and copied into ours_atlop, whose
    extractors and classifier have the same shapes and layout ([h, c] -> emb; emb*block -> classes)."""
    tokenizer = common.load_tokenizer()
    rel2id = prepro.load_rel2id()
    shared = ["--emb_size", str(a.emb_size), "--block_size", str(a.block_size), "--num_iterations", str(a.k)]
    args = {form: flags.parse_args(["--pair_features", form] + shared) for form in ("atlop", "bilinear")}
    torch.manual_seed(0)
    models = {"ours_bilinear": load_model(args["bilinear"], len(rel2id), tokenizer)}
    torch.manual_seed(0)
    models["ours_atlop"] = load_model(args["atlop"], len(rel2id), tokenizer)
    encoder = copy.deepcopy(models["ours_atlop"].base.encoder.encoder)
    config = copy.deepcopy(encoder.config)  # the fields ATLOP's train.py sets on the encoder's config
    config.transformer_type, config.num_labels = "bert", len(rel2id)
    config.cls_token_id, config.sep_token_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    torch.manual_seed(0)
    models["atlop"] = atlop_class(config, AtlopEncoder(encoder), emb_size=a.emb_size, block_size=a.block_size,
                                  num_labels=args["atlop"].num_labels)  # ATLOP's train.py passes --num_labels
    base, atlop = models["ours_atlop"].base, models["atlop"]
    for ours_layer, atlop_layer in ((base.head_extractor, atlop.head_extractor),
                                    (base.tail_extractor, atlop.tail_extractor), (base.classifier, atlop.bilinear)):
        ours_layer.load_state_dict(atlop_layer.state_dict())
    return models, args["atlop"], tokenizer


def same_function(ours, atlop, batches, atlop_batches):
    """ATLOP's logits and loss against ours_atlop's (stage 1, fp32, before any step) on every batch: the largest
    absolute difference of the logits and of the losses, and the number of logits compared. Both list the pairs
    of a document in the same order (every ordered pair of its entities, head-major). Neither forward returns its
    logits with the loss: a hook on each classifier (ours ``base.classifier``, ATLOP's ``bilinear``) keeps them."""
    kept = {"ours": [], "atlop": []}
    hooks = [layer.register_forward_hook(lambda module, inputs, output, got=got: got.append(output))
             for layer, got in ((ours.base.classifier, kept["ours"]), (atlop.bilinear, kept["atlop"]))]
    ours.eval()
    atlop.eval()
    worst_logit, worst_loss, count = 0.0, 0.0, 0
    try:
        with torch.no_grad():
            for batch, atlop_batch in zip(batches, atlop_batches):
                for got in kept.values():
                    got.clear()
                loss, theirs_loss = ours(batch, 1)["loss"], atlop(**atlop_batch)[0]
                logits, theirs = kept["ours"][0], kept["atlop"][0]
                worst_logit = max(worst_logit, (theirs - logits).abs().max().item())
                worst_loss = max(worst_loss, abs(theirs_loss.item() - loss.item()))
                count += logits.numel()
    finally:
        for hook in hooks:
            hook.remove()
    return {"max_abs_logit_diff": worst_logit, "max_abs_loss_diff": worst_loss, "logits": count}


def count_params(module):
    return sum(p.numel() for p in module.parameters())


def flops_of(fn, head):
    """FLOPs counted by FlopCounterMode in one call of fn(): in all, and in the relation head (the base module's
    modules named in ``head``; FlopCounterMode names them from the first module called, DocREModel or
    BaseModule)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
        fn()
    def in_head(name):
        parts = name.split(".")
        return len(parts) > 1 and parts[-2] in ("DocREModel", "base", "BaseModule") and parts[-1] in head
    return {"total": fc.get_total_flops(),
            "head": sum(sum(counts.values()) for name, counts in fc.get_flop_counts().items() if in_head(name))}


CONTENDERS = ("atlop", "ours_atlop", "ours_bilinear")
HEADS = {"atlop": ("bilinear",), "ours_atlop": ("classifier",), "ours_bilinear": ("pair_fnn", "classifier")}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--atlop_dir", default=None, help="a checkout of github.com/wzhouad/ATLOP (read, never changed)")
    p.add_argument("--batches", type=int, default=5)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1, help="untimed passes over all batches")
    p.add_argument("--amp", default="none,bf16", help="comma list of precisions: none (fp32), bf16")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--emb_size", type=int, default=768, help="ATLOP's emb_size (ours: --emb_size)")
    p.add_argument("--block_size", type=int, default=64)
    p.add_argument("--k", type=int, default=3, help="K of our second prediction pass")
    p.add_argument("--data", default=None, help="DocRED-format file (default: Re-DocRED train_mini)")
    p.add_argument("--phases", default="train,eval", help="comma list: train, eval")
    p.add_argument("--contenders", default=",".join(CONTENDERS), help=f"comma list from {', '.join(CONTENDERS)}")
    p.add_argument("--ours_adamw", choices=("foreach", "fused"), default="foreach",
                   help="our AdamW: train.py's multi-tensor one, or the fused one (other rounding: section 6)")
    p.add_argument("--profile", action="store_true", help="self time per component of one step of each model")
    p.add_argument("--out", default="peers.json")
    a = p.parse_args(argv)
    atlop_class = load_atlop(a.atlop_dir)  # first: without a checkout, say what to fetch and exit 2
    common.set_threads(a.threads)
    models, args, tokenizer = build(a, atlop_class)
    num_class = models["atlop"].config.num_labels
    feats, source = common.load_docs(tokenizer, a.batches * a.batch_size, a.data)
    batches = common.make_batches(feats, a.batches, a.batch_size)
    atlop_batches = [atlop_inputs(feats[i * a.batch_size:(i + 1) * a.batch_size], num_class)
                     for i in range(a.batches)]
    stats = common.batch_stats(batches)
    amps, contenders = a.amp.split(","), a.contenders.split(",")
    runners = {}
    for amp in amps:
        runners[(amp, "atlop")] = AtlopRunner(models["atlop"], args, amp)
        for who in CONTENDERS[1:]:
            runners[(amp, who)] = Runner(models[who], args, "cpu", amp, a.k, fused=a.ours_adamw == "fused")
    print(f"data: {source}; {stats['docs']} docs in {a.batches} batches of {a.batch_size}: {stats['tokens']} "
          f"tokens, {stats['entities']} entities, {stats['pairs']} pairs (max N {stats['max_entities']}, max L "
          f"{stats['max_len']})")
    print(f"torch threads {torch.get_num_threads()}, cpu {common.cpu_model()}, load average "
          f"{os.getloadavg()[0]:.2f}")

    def calls(amp, who, i):
        """{phase: callable} of a contender on batch i. ATLOP's one evaluation pass is phase eval_k0."""
        r, out = runners[(amp, who)], {}
        if who == "atlop":
            if "train" in a.phases:
                out["train"] = lambda: r.train_step(atlop_batches[i])
            if "eval" in a.phases:
                out["eval_k0"] = lambda: r.evaluate(atlop_batches[i])
            return out
        if "train" in a.phases:
            out["train"] = lambda: r.train_step(batches[i], 1)
        if "eval" in a.phases:
            out["eval_k0"] = lambda: r.evaluate(batches[i], 0)
            out[f"eval_k{a.k}"] = lambda: r.evaluate(batches[i], a.k)
        return out

    check = {}
    if {"atlop", "ours_atlop"} <= set(contenders):  # before any training step changes either model's weights
        check = same_function(models["ours_atlop"], models["atlop"], batches, atlop_batches)
        print(f"same function: ATLOP's code and ours_atlop (same weights, fp32) differ by at most "
              f"{check['max_abs_logit_diff']:.2e} in {check['logits']} logits and {check['max_abs_loss_diff']:.2e} "
              f"in the loss of a batch")
    params = {who: {"stage 1": count_params(m if who == "atlop" else m.base),
                    "head": count_params(m.bilinear) if who == "atlop" else sum(
                        count_params(getattr(m.base, name)) for name in HEADS[who]),
                    "inference module": 0 if who == "atlop" else count_params(m.inference)}
              for who, m in models.items()}
    flops = {}
    for who in contenders:
        for ph in calls(amps[0], who, 0):
            per_batch = [flops_of(calls(amps[0], who, i)[ph], HEADS[who]) for i in range(a.batches)]
            flops[f"{who}/{ph}"] = {k: sum(f[k] for f in per_batch) for k in per_batch[0]}

    for _ in range(a.warmup):
        for amp in amps:
            for i in range(a.batches):
                for who in contenders:
                    for fn in calls(amp, who, i).values():
                        fn()

    # samples[(who, amp, phase)][r]: seconds over all batches in repeat r. Batch by batch, every contender runs
    # each phase in turn, in an order rotated from one repeat to the next, so that load hits all alike.
    samples, loads = {}, []
    for r in range(a.repeats):
        loads.append(os.getloadavg()[0])
        order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
        for amp in amps:
            for i in range(a.batches):
                for who in order:
                    for ph, fn in calls(amp, who, i).items():
                        t0 = time.perf_counter()
                        fn()
                        samples.setdefault((who, amp, ph), [0.0] * a.repeats)[r] += time.perf_counter() - t0
        print(f"repeat {r + 1}/{a.repeats} done (load average {loads[-1]:.2f})", flush=True)
    loads.append(os.getloadavg()[0])

    med = {k: statistics.median(v) for k, v in samples.items()}
    timing = {f"{who}/{amp}/{ph}": {"median_s_per_batch": m / a.batches,
                                    "samples_s_all_batches": samples[(who, amp, ph)]}
              for (who, amp, ph), m in med.items()}
    rows, ratios = [], {}
    for (who, amp, ph), m in sorted(med.items(), key=lambda kv: (amps.index(kv[0][1]), kv[0][2], kv[0][0])):
        f = flops.get(f"{who}/{ph}", {})
        rows.append([amp, ph, who, f"{m / a.batches:.3f}", f"{f.get('total', 0) / a.batches / 1e9:.1f}",
                     f"{f.get('head', 0) / a.batches / 1e9:.1f}", f"{f.get('total', 0) / m / 1e9:.1f}"])
        base = ("atlop", amp, "eval_k0" if ph.startswith("eval") else ph)
        if who != "atlop" and base in med:
            per = [x / y for x, y in zip(samples[base], samples[(who, amp, ph)])]
            ratios[f"{who}/{amp}/{ph}"] = {"atlop_time_over_this": med[base] / m, "per_repeat": per,
                                           "median_of_repeats": statistics.median(per)}
    print()
    print(common.fmt_table(["amp", "phase", "model", "s / batch (median)", "GFLOP / batch", "head GFLOP / batch",
                            "GFLOP/s"], rows))
    print()
    print(common.fmt_table(["model/amp/phase (ATLOP: its one evaluation pass)", "ATLOP's time / this",
                            "per repeat"],
                           [[k, f"{v['atlop_time_over_this']:.2f}x", " ".join(f"{x:.2f}" for x in v["per_repeat"])]
                            for k, v in ratios.items()]))
    print("\nparameters (M): " + "; ".join(f"{who}: " + ", ".join(f"{part} {n / 1e6:.2f}" for part, n in p.items())
                                          for who, p in params.items()))

    prof = {}
    if a.profile:
        scopes = {who: atlop_scopes(m) if who == "atlop" else common.docre_scopes(m) for who, m in models.items()}
        for amp in amps:
            for who in contenders:
                result = common.component_profile(calls(amp, who, 0)["train"], scopes[who])
                prof[f"{who}/{amp}/train"] = result
                print(f"\n{who}, {amp}, training step on batch 0: {result['total_ms']:.0f} ms of self time")
                print(common.component_table(result))

    res = {"machine": common.machine_info("cpu"), "command": " ".join(["python"] + sys.argv),
           "config": vars(a), "data": {"source": source, **stats}, "load_average_1m_per_repeat": loads,
           "same_function": check, "params": params, "flops": flops, "timing": timing, "ratios": ratios, "profile": prof}
    print("\nwrote", common.write_json(a.out, res))


def atlop_scopes(model):
    """ATLOP's components: its forward's own ops are the pair features (extractors, bilinear product) and turning
    the label lists into a tensor; get_hrt pools mentions and localized context in one loop; its bilinear
    Linear(emb*block -> classes) is its classifier."""
    return [(model, "forward", "pair features"), (model, "encode", "encoder"),
            (model, "get_hrt", "mention pooling + localized context pooling"),
            (model.bilinear, "forward", "base classifier"), (model.loss_fnt, "forward", "losses, noise, decoding"),
            (model.loss_fnt, "get_label", "losses, noise, decoding")]


if __name__ == "__main__":
    main()
