"""DocRE-II: base module + inference module, noise injection, training losses and K-step inference.

Batch tensors (see utils.collate_fn): input_ids/attention_mask [B, L], mention_pos/mention_mask [B, N, M],
pair_mask [B, N, N] (valid pairs: real entities, s != o) and pair_index [3, P] (their coordinates, utils.Pairs).
Per-pair tensors are packed over the P valid pairs in pair_mask.nonzero() order: [P, .]; pair_labels [P, C]
are their labels and scored [S] the packed positions of the pairs that are scored (all valid pairs for
DocRED, the candidate pairs for CDR/GDA). Nothing in a training step waits for the GPU: the pair
coordinates come from the CPU and every random choice is made for all pairs at once.

Stage 2 has two readings (docs/FAITHFULNESS.md), both held by a ``Recipe``: the paper's (the defaults of
flags.py), and the one of the authors' code (--recipe authors): relations built from the gold labels, noise on
the positives and on a sample of negatives, losses on those pairs only, weights 5 : 5 : 5 : 1, a one-sided
contrastive target, and the sum of every pass's logits as the test-time score.
"""
import math
import os
import tempfile
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import AutoConfig

import prepro
from base_module import BaseModule, encoder_from_config, load_encoder
from inference_module import InferenceModule
from losses import at_loss, get_label, simclr_loss, simsiam_loss
from utils import Pairs, UsageError, default_model_path

# The authors' noise rates (their create_sample): positives r ~ U(0.2, 0.5), sampled negatives r ~ U(0.05, 0.15).
AUTHORS_NOISE_POSITIVES = (0.2, 0.5)
AUTHORS_NOISE_NEGATIVES = (0.05, 0.15)


@dataclass
class Recipe:
    """How stage 2 trains and how the K passes are scored: the flags of the two readings of the paper (flags.py
    holds their defaults, the paper's reading, and the --recipe authors preset; docs/FAITHFULNESS.md)."""
    train_relations: str  # R_0 in training: the base module's predictions ("pred"), or the gold labels ("gold")
    relation_input: str  # R_0 = emb(argmax P) ("argmax"), or "multihot": the sum of the predicted relations' emb
    noise_on: str  # "all": r ~ U(0, noise_max) of each document's valid pairs; "sampled": the authors'
    noise_max: float
    negative_ratio: int  # 0: AT losses on all scored pairs; K: positives + K x #positives sampled negatives
    loss_weights: tuple  # base AT, view-A AT, view-B AT, contrastive
    contrastive: str  # "simsiam", "simclr" (ablation w/ negative pairs) or "none"
    contrastive_target: str  # "symmetric": Eq. (14); "stopgrad": the authors' one-sided, no-grad swapped target
    temperature: float  # SimCLR only
    test_logits: str  # "last": the K-th pass's logits; "sum": base logits + every pass's logits
    num_labels: int  # at most this many relations per pair when decoding a multi-hot
    withhold_max: float  # beyond both readings: r ~ U(0, withhold_max) of the positives get R_0 = NA

    @classmethod
    def from_args(cls, args):
        # checkpoints written before --withhold_max existed do not record it: their runs had it off
        return cls(args.train_relations, args.relation_input, args.noise_on, args.noise_max, args.negative_ratio,
                   parse_loss_weights(args.loss_weights), args.contrastive, args.contrastive_target,
                   args.temperature, args.test_logits, args.num_labels, getattr(args, "withhold_max", 0.0))


def choose(eligible, group, num_groups, counts):
    """A uniformly random subset of the eligible pairs of each group: counts[g] of them (all if fewer).

    eligible [P] bool, group [P] group index in [0, num_groups) (non-decreasing), counts [num_groups] long.
    Without data-dependent shapes: each pair gets a uniformly random rank among its group's eligible pairs.
    """
    dev = group.device
    size = torch.zeros(num_groups, dtype=torch.long, device=dev).index_add_(0, group, torch.ones_like(group))
    # Sort by group, eligible pairs first in a random order: key = 3 * group + (U(0, 1) if eligible else 2).
    u = torch.rand(group.shape, device=dev, dtype=torch.float64)
    order = torch.argsort(3 * group.to(torch.float64) + torch.where(eligible, u, 2.0))
    start = torch.cumsum(size, 0) - size  # first packed index of each group
    rank = torch.empty_like(group)
    rank[order] = torch.arange(group.numel(), device=dev) - start[group[order]]
    return eligible & (rank < counts[group])


def replace_relations(relations, gold, chosen):
    """The chosen pairs' relations become one relation that is neither one of theirs nor a gold one (from the
    classes other than theirs when that leaves none, as with 2 classes), drawn uniformly. [P, C] multi-hots."""
    not_own = 1 - relations
    allowed = not_own * (1 - gold)
    allowed = torch.where(allowed.sum(1, keepdim=True) > 0, allowed, not_own)
    # argmax of iid uniforms restricted to the allowed classes = a uniform draw among them
    replacement = F.one_hot((torch.rand_like(allowed) * allowed).argmax(1), relations.size(1)).to(relations)
    return torch.where(chosen[:, None], replacement, relations)


def paper_noise(doc, num_docs, max_rate):
    """Which pairs get noise in the paper's reading (Section 2.3): per document a rate r ~ U(0, max_rate) is
    drawn and round(r * #pairs) of its pairs are chosen uniformly. doc [P] document index in [0, num_docs)
    (non-decreasing, as pair_mask.nonzero() gives). Returns chosen [P] bool."""
    per_doc = torch.zeros(num_docs, dtype=torch.long, device=doc.device).index_add_(0, doc, torch.ones_like(doc))
    rate = torch.rand(num_docs, device=doc.device) * max_rate
    return choose(torch.ones_like(doc, dtype=torch.bool), doc, num_docs, torch.round(rate * per_doc).long())


def sample_negatives(positive, negative, ratio):
    """The authors' negative sampling: ratio x #positives of the negative pairs of the batch, uniformly. [P] bool."""
    count = (ratio * positive.sum()).reshape(1)
    return choose(negative, torch.zeros_like(positive, dtype=torch.long), 1, count)


def sampled_noise(positive, negative):
    """The authors' noise: int(r * n + 1) of the n positives, r ~ U(0.2, 0.5), and of the n (sampled) negatives,
    r ~ U(0.05, 0.15), chosen uniformly over the batch. [P] bool."""
    chosen = torch.zeros_like(positive)
    for eligible, (low, high) in ((positive, AUTHORS_NOISE_POSITIVES), (negative, AUTHORS_NOISE_NEGATIVES)):
        rate = low + (high - low) * torch.rand(1, device=positive.device)
        count = (rate * eligible.sum() + 1).long()
        chosen |= choose(eligible, torch.zeros_like(positive, dtype=torch.long), 1, count)
    return chosen


def withhold(relations, eligible, max_rate):
    """Not in the paper nor in the authors' code (--withhold_max): r ~ U(0, max_rate) of the eligible pairs of
    the batch (the positives left un-noised) get R_0 = NA while they stay targets of the losses, so that stage 2
    also trains the case that decides inference at test time: a fact the first predictions miss, to be found
    from the other relations. [P, C] multi-hots in and out."""
    rate = max_rate * torch.rand(1, device=eligible.device)
    count = torch.round(rate * eligible.sum()).long()
    chosen = choose(eligible, torch.zeros_like(eligible, dtype=torch.long), 1, count)
    none = F.one_hot(torch.zeros_like(chosen, dtype=torch.long), relations.size(1)).to(relations)
    return torch.where(chosen[:, None], none, relations)


def parse_loss_weights(text):
    """'1,1,0,1' -> (base AT, view-A AT, view-B AT, contrastive) weights."""
    try:
        weights = tuple(float(x) for x in text.split(","))
    except ValueError:
        weights = ()
    if len(weights) != 4 or not all(math.isfinite(w) and w >= 0 for w in weights):
        raise ValueError(f"4 finite non-negative numbers (base, view A, view B, contrastive) expected, got {text!r}")
    return weights


def lr_flags(stage, args):
    """The flags of the learning rates of a stage's parameter groups, in DocREModel.param_groups' order."""
    if stage == 1:
        return ["encoder_lr", "classifier_lr"]
    if args.freeze_base:
        return ["inference_lr"]
    return ["inference_lr"] + (["encoder_lr", "classifier_lr"] if args.skip_stage1 else ["stage2_base_lr"])


def build_model(args, num_class, encoder, start_ids, end_ids):
    """The model that the flags describe (train.py's argparse namespace, or any object with those fields)."""
    # checkpoints written before --pair_features / --encoder_window existed do not record them: their base
    # module was "fnn" with the encoder's own window
    pair_form, block = getattr(args, "pair_features", "fnn"), getattr(args, "block_size", 64)
    window = getattr(args, "encoder_window", 0)
    try:
        base = BaseModule(encoder, start_ids, end_ids, num_class, emb_size=args.emb_size or None,
                          window=window or None, pair_form=pair_form, block_size=block)
    except ValueError as e:  # BaseModule checks the block size against the width, the window against the encoder
        raise UsageError(f"--pair_features {pair_form} --block_size {block} --encoder_window {window}: {e}") from e
    inference = InferenceModule(base.feat_dim, args.inference_dim, num_class, args.num_inference_layers,
                                args.eca_heads_per_line, args.dropout, args.eca, not args.no_fusion,
                                args.classifier_layers, args.rel_emb_init)
    return DocREModel(base, inference, Recipe.from_args(args), args.freeze_base)


def special_tokens(tokenizer, transformer_type):
    """(start, end) token ids around each encoder window: [CLS] ... [SEP], or RoBERTa's <s> ... </s></s>."""
    return [tokenizer.cls_token_id], [tokenizer.sep_token_id] * (2 if transformer_type == "roberta" else 1)


def load_model(args, num_class, tokenizer):
    """build_model on the encoder the flags name (--model_name_or_path, default the bundled one)."""
    start, end = special_tokens(tokenizer, args.transformer_type)
    try:
        encoder = load_encoder(encoder_path(args.model_name_or_path), args.attention)
    except OSError as e:
        raise UsageError(f"cannot load encoder {args.model_name_or_path!r}: {e}") from e
    return build_model(args, num_class, encoder, start, end)


def load_weights(model, state, path, prefix=""):
    """Load (a prefix of) a state dict; a shape mismatch means another encoder or number of classes."""
    target = getattr(model, prefix.rstrip(".")) if prefix else model
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        target.load_state_dict(state)
    except RuntimeError as e:
        first = " ".join(str(e).strip().splitlines()[0:3])
        raise UsageError(f"{path} does not fit this model (other encoder or number of classes?): {first[:400]}") \
            from e


class DocREModel(nn.Module):
    """The whole model of Fig. 2. ``forward`` returns the training losses of a stage; ``predict`` runs Fig. 2's
    K loop."""

    def __init__(self, base: BaseModule, inference: InferenceModule, recipe: Recipe, freeze_base=False):
        super().__init__()
        self.base, self.inference = base, inference
        self.recipe = recipe
        self.freeze_base = freeze_base
        width = 2 * inference.rel_emb.embedding_dim
        self.predictor = None
        if self.recipe.contrastive != "none":
            # MLP(.) of Eq. (14): the SimSiam predictor (the projection head in the SimCLR ablation),
            # Linear-BN-ReLU-Linear with a bottleneck as in SimSiam.
            self.predictor = nn.Sequential(nn.Linear(width, width // 2), nn.BatchNorm1d(width // 2), nn.ReLU(),
                                           nn.Linear(width // 2, width))

    def param_groups(self, stage, args):
        """Optimiser groups. Stage 1: encoder at encoder_lr, base head at classifier_lr. Stage 2: inference
        module and predictor at inference_lr, base module (or its encoder only, --stage2_base_params encoder)
        at stage2_base_lr (the stage-1 rates with --skip_stage1). Weight decay on weight matrices only."""
        enc = list(self.base.encoder.parameters())
        enc_ids = {id(p) for p in enc}
        head = [p for p in self.base.parameters() if id(p) not in enc_ids]
        rest = [p for n, p in self.named_parameters() if not n.startswith("base.")]
        if stage == 1:
            groups = [enc, head]
        elif args.freeze_base:
            groups = [rest]
        elif args.skip_stage1:
            groups = [rest, enc, head]
        else:
            groups = [rest, enc + head if args.stage2_base_params == "all" else enc]
        return [{"params": [p for p in params if (p.dim() >= 2) == decay], "lr": getattr(args, flag),
                 "weight_decay": args.weight_decay if decay else 0.0}
                for params, flag in zip(groups, lr_flags(stage, args), strict=True) for decay in (True, False)]

    def set_trainable(self, groups):
        """Only the parameters being optimised, and reached by the stage's loss, require grad, so that DDP
        (find_unused_parameters=False) never waits for a gradient that is not coming. Parameters the forward
        pass never uses (the encoder's pooler) stay in the optimiser, which skips them: no gradient."""
        live = {id(p) for g in groups for p in g["params"]}
        dead = {id(p) for p in self.base.unused_parameters()}
        for p in self.parameters():
            p.requires_grad_(id(p) in live and id(p) not in dead)

    def base_forward(self, batch, pairs):
        return self.base(batch["input_ids"], batch["attention_mask"], batch["mention_pos"], batch["mention_mask"],
                         pairs)

    def decode(self, scores):
        """The relations fed back as R_0: argmax ids [P], or the predicted multi-hot [P, C] (adaptive threshold)."""
        if self.recipe.relation_input == "multihot":
            return get_label(scores.detach().float(), self.recipe.num_labels)
        return scores.argmax(-1)

    def forward(self, batch, stage):
        """Training losses. Stage 1: L_R of the base module. Stage 2: w_base L_R(base) + w_A L_R(view A)
        + w_B L_R(view B) + w_C L_C (paper: 1, 1, 0, 1; the authors: 5, 5, 5, 1)."""
        pairs = Pairs.of(batch)
        scored, labels = batch["scored"], batch["pair_labels"]  # [S], [P, C]
        if stage == 1:
            _, logits0 = self.base_forward(batch, pairs)
            loss = at_loss(logits0[scored], labels[scored])
            return {"loss": loss, "base": loss.detach()}
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_base):
            feats, logits0 = self.base_forward(batch, pairs)
        r, w = self.recipe, self.recipe.loss_weights
        is_scored = torch.zeros_like(labels[:, 0], dtype=torch.bool).index_fill_(0, scored, True)
        gold = torch.where(is_scored[:, None], labels, F.one_hot(torch.zeros_like(pairs.b), labels.size(1)).to(labels))
        positive = is_scored & (gold[:, 0] == 0)
        view_a, loss_a = self.training_view(logits0, gold, pairs, is_scored, positive)
        f_a, r_a, logits_a = self.inference(feats, view_a, pairs)  # R-bar_0^(0) -> M-bar_NI
        out = {"inference": self.loss_on(logits_a, labels, scored, loss_a)}
        if not self.freeze_base and w[0]:
            # The paper keeps L_R on the base module in stage 2 ("in addition to L_R"), as does the authors' code.
            out["base"] = self.loss_on(logits0, labels, scored, self.loss_pairs(is_scored, positive))
        if (self.predictor is not None and len(pairs.b) > 1) or w[2]:  # BatchNorm needs two pairs or more
            view_b, loss_b = self.training_view(logits0, gold, pairs, is_scored, positive)  # R-hat_0^(0)
            # The paper's second view swaps the inputs: (R-hat, F_0) through the same module (Fig. 4); in the
            # authors' code both views run (F, R), and their swapped passes are no-grad targets.
            symmetric = r.contrastive_target == "symmetric"
            f_b, r_b, logits_b = self.inference(feats, view_b, pairs, swap=symmetric)
            if w[2]:
                out["inference_b"] = self.loss_on(logits_b, labels, scored, loss_b)
            if self.predictor is not None and len(pairs.b) > 1:
                m_a = torch.cat([f_a, r_a], dim=-1)  # M-bar_NI: [P, 2D]
                m_b = torch.cat([f_b, r_b], dim=-1)  # M-hat_NI: [P, 2D]
                p_a, p_b = self.predictor(m_a), self.predictor(m_b)
                if r.contrastive == "simclr":
                    out["contrastive"] = simclr_loss(p_a, p_b, pairs.b, r.temperature)
                elif symmetric:
                    out["contrastive"] = simsiam_loss(p_a, m_a, p_b, m_b)
                else:
                    with torch.no_grad():
                        t_a = torch.cat(self.inference(feats, view_a, pairs, swap=True)[:2], dim=-1)
                        t_b = torch.cat(self.inference(feats, view_b, pairs, swap=True)[:2], dim=-1)
                    out["contrastive"] = simsiam_loss(p_a, t_a, p_b, t_b)  # D(p_a, sg t_b) + D(p_b, sg t_a)
        weights = {"base": w[0], "inference": w[1], "inference_b": w[2], "contrastive": w[3]}
        loss = sum(weights[k] * v for k, v in out.items())
        out = {k: v.detach() for k, v in out.items()}
        out["loss"] = loss
        return out

    def loss_pairs(self, is_scored, positive):
        """Which pairs an AT loss covers: None = every scored pair; else a [P] bool mask of the positives and
        negative_ratio x #positives sampled negatives (the authors' negative sampling, one sample per loss)."""
        if not self.recipe.negative_ratio:
            return None
        return positive | sample_negatives(positive, is_scored & ~positive, self.recipe.negative_ratio)

    def training_view(self, logits0, gold, pairs, is_scored, positive):
        """R_0 of one view of stage-2 training with its noise (Section 2.3), and the pairs its AT loss covers.

        The clean relations are the base module's predictions (paper) or the gold labels (authors); the noised
        pairs are r ~ U(0, noise_max) of every document's valid pairs (paper), or the authors' choice among the
        positives and the negatives of the view's loss pairs. Returns (ids [P] or multi-hot [P, C], mask or None).
        """
        r = self.recipe
        if r.train_relations == "gold":
            clean = gold
        elif r.relation_input == "multihot":
            clean = get_label(logits0.detach().float(), r.num_labels)
        else:
            clean = F.one_hot(logits0.detach().argmax(-1), gold.size(1)).to(gold)
        loss_mask = self.loss_pairs(is_scored, positive)
        if r.noise_on == "all":
            chosen = paper_noise(pairs.b, pairs.mask.size(0), r.noise_max)
        else:
            negatives = (is_scored if loss_mask is None else loss_mask) & ~positive
            chosen = sampled_noise(positive, negatives)
        noisy = replace_relations(clean, gold * is_scored[:, None], chosen)
        if r.withhold_max:
            noisy = withhold(noisy, positive & ~chosen, r.withhold_max)
        return (noisy if r.relation_input == "multihot" else noisy.argmax(-1)), loss_mask

    @staticmethod
    def loss_on(logits, labels, scored, mask):
        """AT loss on the scored pairs (mask None) or on the pairs of a [P] bool mask (a weighted mean: no sync)."""
        if mask is None:
            return at_loss(logits[scored], labels[scored])
        return at_loss(logits, labels, weight=mask.float())

    @torch.no_grad()
    def predict(self, batch, num_iterations, first_input=None):
        """Iterative inference (Fig. 2). Returns the scores [P, C] of every pass: P^(0) (the base logits),
        P^(1), ..., P^(K); pass k+1 reads R_0^(k) = decode(scores of pass k), the first pass decode(first_input)
        when it is given. Scores are each pass's logits (paper) or the base logits plus every pass's logits so far
        (--test_logits sum, the authors')."""
        pairs = Pairs.of(batch)
        feats, logits = self.base_forward(batch, pairs)
        return [logits] + self.inference.iterate(feats, logits, pairs, num_iterations, self.decode,
                                                 accumulate=self.recipe.test_logits == "sum", first_input=first_input)


# ---------------------------------------------------------------- portable checkpoints
# best.pt carries what it needs to be used on another machine, offline. Besides the weights (a state dict), the
# flags and the dev scores it holds "encoder" (the encoder's config, config.to_dict(), and its tokenizer's files
# as bytes: the model is rebuilt without the folder or hub name it was trained from) and "id2rel" (the relation
# ids and names of the classes), all of types that torch.load(path, weights_only=True) accepts, so loading it runs
# no pickled code. Checkpoints without "encoder" are still read: their encoder comes from --model_name_or_path.

def encoder_record(tokenizer, config):
    """The "encoder" entry of best.pt: {"config": dict, "tokenizer": {file name: bytes}, "name_or_path": str}."""
    files = {}
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    files[name] = f.read()
    return {"config": config.to_dict(), "tokenizer": files, "name_or_path": tokenizer.name_or_path}


def tokenizer_from_record(record, transformer_type="bert"):
    """The tokenizer saved in an "encoder" entry. It keeps the name it was trained under, so that the feature
    cache (keyed on that name and the tokenizer's content) is shared with the training run's."""
    with tempfile.TemporaryDirectory() as folder:
        for name, data in record["tokenizer"].items():
            with open(os.path.join(folder, os.path.basename(name)), "wb") as f:
                f.write(data)
        tokenizer = prepro.load_tokenizer(folder, transformer_type)
    tokenizer.name_or_path = record.get("name_or_path") or tokenizer.name_or_path
    return tokenizer


def encoder_from_record(record, attention="eager"):
    """The encoder of an "encoder" entry, with random weights (the checkpoint's state dict replaces them), in
    float32 like base_module.load_encoder."""
    config = dict(record["config"])
    try:
        config = AutoConfig.for_model(config.pop("model_type"), **config)
    except (KeyError, ValueError) as e:
        raise UsageError(f"the checkpoint's encoder config cannot be read ({type(e).__name__}: {e})") from e
    return encoder_from_config(config, attention).float()


def tokenizer_and_model(args, num_class, ckpt=None):
    """(tokenizer, model) for ``args``: from the checkpoint's "encoder" entry when it has one (no encoder folder
    or hub needed), else from --model_name_or_path (default: the bundled encoder), with pre-trained weights."""
    record = (ckpt or {}).get("encoder")
    if record is None:
        path = encoder_path(args.model_name_or_path)
        try:
            tokenizer = prepro.load_tokenizer(path, args.transformer_type)
        except UsageError:
            raise
        except ValueError as e:  # e.g. no tokenizer file that the fast tokenizer can be built from
            raise UsageError(f"--model_name_or_path {path}: cannot load its tokenizer ({first_line(e)})") from e
        return tokenizer, load_model(args, num_class, tokenizer)
    tokenizer = tokenizer_from_record(record, args.transformer_type)
    start, end = special_tokens(tokenizer, args.transformer_type)
    return tokenizer, build_model(args, num_class, encoder_from_record(record, args.attention), start, end)


# --transformer_type of the encoder families whose config.json model_type says which one they are.
TOKENIZER_FAMILY = {"bert": "bert", "distilbert": "bert", "electra": "bert", "roberta": "roberta",
                    "xlm-roberta": "roberta", "camembert": "roberta", "longformer": "roberta"}


def check_checkpoint(args, ckpt, path):
    """A checkpoint's recorded flags (``args``) and relations must fit its weights: --transformer_type the family of
    the encoder it carries (or of --model_name_or_path's, check_encoder), its relation names (id2rel) the classes
    of its classifier. Every loader (train.py, Predictor) checks it here, so that each refuses a misfit with the
    same message; weights of another shape than the recorded encoder config's are load_weights' refusal."""
    record = ckpt.get("encoder")
    if record is None:
        check_encoder(args)
        return
    model_type = record["config"].get("model_type")
    family = TOKENIZER_FAMILY.get(model_type)
    if family and family != args.transformer_type:
        raise UsageError(f"{path} does not fit its weights: it records --transformer_type {args.transformer_type}, "
                         f"but its encoder is a {model_type} model (--transformer_type {family})")
    classifier = ckpt["model"].get("base.classifier.weight")
    if ckpt.get("id2rel") and classifier is not None and len(ckpt["id2rel"]) != classifier.shape[0]:
        raise UsageError(f"{path} does not fit its weights: it names {len(ckpt['id2rel'])} relations (id2rel), "
                         f"but its classifier has {classifier.shape[0]} classes")


def check_encoder(args):
    """--model_name_or_path must name a model (a config.json that loads) of --transformer_type's family. Checked
    before the save path is touched and any data is read."""
    path = encoder_path(args.model_name_or_path)
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as e:  # a missing or broken file, an unknown model type, a field of the wrong type, ...
        raise UsageError(f"--model_name_or_path {path}: not a model: cannot load its config.json "
                         f"({type(e).__name__}: {first_line(e)})") from e
    family = TOKENIZER_FAMILY.get(config.model_type)
    if family and family != args.transformer_type:
        # The family decides the special tokens around a document and how words are tokenized: the wrong one
        # runs, but on inputs the encoder never saw in pre-training.
        raise UsageError(f"--transformer_type {args.transformer_type} does not fit {path}, a {config.model_type} "
                         f"model: use --transformer_type {family}")


def encoder_path(name):
    """The folder or hub name of --model_name_or_path; None means the bundled encoder (checkpoints record None, so
    that they load on any machine). A path that looks local must exist (not be taken for a hub name)."""
    if name and not os.path.isdir(name) and (os.path.isabs(name) or name.startswith((".", "~"))):
        raise UsageError(f"--model_name_or_path {name}: no such model folder")
    return name or default_model_path()


def first_line(e):
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else ""


def hf_encoder(model):
    """The Hugging Face encoder inside a DocREModel (its .config is what encoder_record stores)."""
    return model.base.encoder.encoder
