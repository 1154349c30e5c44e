"""Shared test utilities: made-up DocRED-format documents and a tiny random BERT model folder.

Nothing here reads real data. ``tiny_model`` builds a 2-layer, 32-wide BERT with the bundled
tokenizer, so that train.py runs in seconds on a CPU with ``--model_name_or_path DIR --inference_dim 16``.
"""
import contextlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A few relations of meta/rel2id.json used by the made-up documents.
RELATIONS = ["P17", "P19", "P27", "P131", "P569"]
WORDS = ["the", "city", "river", "was", "born", "in", "lives", "near", "north", "of", "and", "a", "small",
         "town", "country", "founded", "by", "people", "old", "new"]
NAMES = ["Alice", "Bob", "Paris", "Berlin", "Rome", "Oslo", "Carol", "Dave", "Madrid", "Lisbon", "Vienna",
         "Prague", "Erin", "Frank", "Dublin", "Athens"]


def mention(name, sent_id, start):
    return {"name": name, "pos": [start, start + 1], "sent_id": sent_id, "type": "LOC"}


def make_doc(index, num_entities=4, labelled=True, num_sents=3, rng=None):
    """One made-up document: ``num_sents`` sentences of filler words with entity names spliced in.
    Entity e appears in sentence e % num_sents (and a second mention for even e). Labels follow a fixed
    rule (h -> h + 1 gets RELATIONS[h % 5]), so a model can fit them."""
    rng = rng or random.Random(index)
    sents = [[rng.choice(WORDS) for _ in range(8)] for _ in range(num_sents)]
    vertex_set = []
    for e in range(num_entities):
        name = NAMES[(index * 3 + e) % len(NAMES)]
        sid = e % num_sents
        pos = 1 + 2 * (e // num_sents)
        sents[sid][pos] = name
        mentions = [mention(name, sid, pos)]
        if e % 2 == 0:
            sid2 = (sid + 1) % num_sents
            pos2 = 6 - (e // num_sents)
            sents[sid2][pos2] = name
            mentions.append(mention(name, sid2, pos2))
        vertex_set.append(mentions)
    doc = {"title": f"Doc {index}", "sents": sents, "vertexSet": vertex_set}
    if labelled:
        doc["labels"] = [{"h": h, "t": h + 1, "r": RELATIONS[h % len(RELATIONS)], "evidence": []}
                         for h in range(num_entities - 1)]
    return doc


def write_docs(folder, name, docs):
    path = Path(folder) / name
    path.write_text(json.dumps(docs), encoding="utf-8")
    return str(path)


def write_dataset(folder, n_train=4, n_dev=2, n_test=2, test_labelled=True):
    """train.json / dev.json / test.json of made-up DocRED-format documents in ``folder``.
    Returns a dict of the paths (keys train, dev, test, dir)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    train = [make_doc(i) for i in range(n_train)]
    dev = [make_doc(100 + i) for i in range(n_dev)]
    test = [make_doc(200 + i, labelled=test_labelled) for i in range(n_test)]
    return {"dir": str(folder), "train": write_docs(folder, "train.json", train),
            "dev": write_docs(folder, "dev.json", dev), "test": write_docs(folder, "test.json", test)}


def run_env(tmp_path_factory, name):
    """What a module of training tests shares: a tiny encoder folder, a feature cache folder and a small dataset
    (write_dataset's defaults) under a fresh temporary folder ``name``."""
    root = tmp_path_factory.mktemp(name)
    return {"root": root, "data": write_dataset(root / "data"), "model": tiny_model(root / "model"),
            "cache": str(root / "cache")}


def tiny_model(folder, hidden_size=32):
    """A randomly initialised 2-layer BERT (hidden 32) with the bundled tokenizer, saved to ``folder``."""
    import torch
    import transformers

    import utils
    folder = Path(folder)
    if (folder / "config.json").exists():
        return str(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(utils.default_model_path())
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden_size, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=512,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    transformers.BertModel(config).save_pretrained(folder)
    return str(folder)


def train_args(data, model, save, cache, *extra, stage1=2, stage2=0, lr=None):
    """Command-line flags for a fast CPU run on ``write_dataset`` output."""
    args = ["--data_dir", data["dir"], "--train_file", "train.json", "--dev_file", "dev.json",
            "--test_file", "test.json", "--model_name_or_path", model, "--inference_dim", "16",
            "--train_batch_size", "2", "--test_batch_size", "4", "--stage1_epochs", str(stage1),
            "--stage2_epochs", str(stage2), "--save_path", str(save), "--cache_dir", str(cache),
            "--device", "cpu", "--seed", "7", "--num_iterations", "2", "--amp", "none"]
    if lr is not None:
        args += ["--encoder_lr", str(lr), "--classifier_lr", str(lr), "--stage2_base_lr", str(lr),
                 "--inference_lr", str(lr)]
    return args + list(extra)


def recipe(**flags):
    """model.Recipe of train.py's defaults (the paper's reading) with ``flags`` changed, e.g. loss_weights="5,5,5,1"."""
    import argparse

    import model
    from flags import parse_args
    return model.Recipe.from_args(argparse.Namespace(**{**vars(parse_args([])), **flags}))


def subprocess_env(**extra):
    """One torch thread: the tiny model gains nothing from more, and on a shared 2-core machine extra
    threads make every step many times slower."""
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", **extra)


@contextlib.contextmanager
def one_thread():
    """torch.set_num_threads(1) for in-process runs (same reason as subprocess_env), restored after."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cpu_instructions(monkeypatch, avx512_bf16=False, amx=False, amx_fp16=False):
    """What torch.cpu reports of the CPU's bf16 / fp16 matrix instructions (utils.cpu_native_matmul reads it)."""
    import torch
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_fp16_supported", lambda: amx_fp16, raising=False)


def run_train(args, env=None, timeout=300):
    """Run train.py as a subprocess from the repository root; returns the CompletedProcess."""
    full_env = subprocess_env(**(env or {}))
    return subprocess.run([sys.executable, "train.py", *map(str, args)], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def read_metrics(save):
    with open(Path(save) / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def make_feature(title, length, entity_pos, num_class, rels=None, seed=0, cls=1, sep=2, star=3):
    """A prepro-style feature without a tokenizer: [CLS] random ids [SEP], '*' ids at the (start, end)
    marker positions of every mention, all ordered entity pairs, labels from ``rels`` {(s, o): [ids]}."""
    import itertools

    import torch
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 100, (length,), generator=g).tolist()
    ids[0], ids[-1] = cls, sep
    for mentions in entity_pos:
        for s, e in mentions:
            ids[s] = star
            if e < length - 1:
                ids[e] = star
    n = len(entity_pos)
    hts = [[s, o] for s, o in itertools.permutations(range(n), 2)]
    rels = rels or {}
    return {"title": title, "input_ids": ids, "entity_pos": entity_pos,
            "hts": hts,
            "labels": [rels.get((s, o), []) for s, o in hts], "num_entities": n, "num_class": num_class}
