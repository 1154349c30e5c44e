"""DistributedDataParallel on CPU: gloo, 2 processes started by torchrun (``python -m torch.distributed.run``).

What is checked (docs/DISTRIBUTED.md):
  * one optimiser step of 2 processes x batch b = one step of 1 process x batch 2b (stage 1, same documents);
  * 2 micro-batches of b with --gradient_accumulation_steps 2 = one batch of 2b (1 process), and this
    fixture is one where the loss weighting matters (equal weights per micro-batch give other parameters);
  * a 2-process run of both stages (accumulation, a training set not divisible by the world size, the
    BatchNorm predictor) exits 0 and writes one metrics.jsonl / result.json, and last.pt holds both ranks'
    RNG states; resuming it with another world size mid-epoch is refused;
  * all ranks agree on a stop request that only one of them received.

Everything is made up here: documents with different numbers of entities (so that the per-pair loss
weighting matters) and a tiny random BERT with dropout 0. Nothing needs a GPU or real data.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RELATIONS = ["P17", "P19", "P27", "P131", "P569", "P570"]
NAMES = ["Alice", "Bob", "Paris", "Berlin", "Rome", "Oslo", "Carol", "Dave", "Madrid", "Lisbon", "Vienna",
         "Prague", "Erin", "Frank", "Dublin", "Athens"]
FILLER = ["the", "city", "was", "born", "in", "near", "north", "of", "and", "a", "small", "town"]
# Flags shared by every run: tiny widths, CPU, no warm-up (the first step's LR would be 0), no clipping,
# and a large Adam epsilon with LR 1, so that the first AdamW step, g / (|g| + eps), depends on the size of
# the gradient and not only on its sign: a wrongly weighted gradient then gives visibly other parameters.
COMMON = ["--inference_dim", "16", "--num_iterations", "1", "--test_batch_size", "4", "--device", "cpu",
          "--seed", "5", "--warmup_ratio", "0", "--max_grad_norm", "1e6", "--adam_epsilon", "1",
          "--encoder_lr", "1", "--classifier_lr", "1", "--stage2_base_lr", "0.1", "--inference_lr", "0.1",
          "--dropout", "0", "--log_every", "1", "--amp", "none"]
TOL = 1e-5


# ---------------------------------------------------------------- fixtures (shared helpers of this file)
def make_doc(index, num_entities):
    """A made-up DocRED document with ``num_entities`` entities, one or two mentions each."""
    sents = [[FILLER[(index + i + j) % len(FILLER)] for j in range(10)] for i in range(3)]
    vertex_set = []
    for e in range(num_entities):
        name = NAMES[(index * 5 + e) % len(NAMES)]
        sid, pos = e % 3, 1 + 2 * (e // 3)
        sents[sid][pos] = name
        mentions = [{"name": name, "pos": [pos, pos + 1], "sent_id": sid, "type": "LOC"}]
        if e % 2:
            sid2, pos2 = (sid + 1) % 3, 9 - (e // 3)
            sents[sid2][pos2] = name
            mentions.append({"name": name, "pos": [pos2, pos2 + 1], "sent_id": sid2, "type": "LOC"})
        vertex_set.append(mentions)
    labels = [{"h": h, "t": (h + 1) % num_entities, "r": RELATIONS[(h + index) % len(RELATIONS)], "evidence": []}
              for h in range(0, num_entities, 2)]
    return {"title": f"doc {index}", "sents": sents, "vertexSet": vertex_set, "labels": labels}


def write_data(folder, train_entities, dev_entities=(3, 4)):
    """train.json / dev.json / test.json in ``folder``; the documents have the given numbers of entities."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.json").write_text(json.dumps([make_doc(i, n) for i, n in enumerate(train_entities)]))
    dev = json.dumps([make_doc(100 + i, n) for i, n in enumerate(dev_entities)])
    (folder / "dev.json").write_text(dev)
    (folder / "test.json").write_text(dev)
    return folder


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """2-layer, 32-wide random BERT with the bundled tokenizer, dropout 0."""
    import transformers

    import utils
    folder = tmp_path_factory.mktemp("tiny_bert")
    tok = transformers.AutoTokenizer.from_pretrained(utils.default_model_path())
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=512,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    transformers.BertModel(config).save_pretrained(folder)
    return str(folder)


def flags(data, model, save, *extra):
    return ["--data_dir", str(data), "--train_file", "train.json", "--dev_file", "dev.json",
            "--test_file", "test.json", "--model_name_or_path", model, "--save_path", str(save),
            "--cache_dir", str(Path(data) / "cache"), *COMMON, *map(str, extra)]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env():
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def torchrun(args, nproc=2, timeout=150):
    """train.py under torchrun on this machine (gloo on CPU); returns the CompletedProcess."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--nnodes", "1",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "train.py", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=timeout)
    return proc


def run_single(args):
    """train.main in this process (world size 1); the signal handlers it installs are put back after."""
    import signal

    import train
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        assert train.main(args) == 0
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def weights(save):
    import rundir
    return rundir.load_checkpoint(str(Path(save) / "last.pt"))["model"]  # last.pt may refer to best.pt's weights


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point())


def assert_same(a, b, tol=TOL):
    bad = {k: float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point()
           and not torch.allclose(a[k].float(), b[k].float(), atol=tol, rtol=0)}
    assert not bad, f"parameters differ by more than {tol}: {dict(list(bad.items())[:5])}"


def assert_ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n" \
                                 f"{proc.stderr[-6000:]}"


# ---------------------------------------------------------------- tests
def test_two_processes_equal_one_process_with_double_batch(tmp_path, tiny_model):
    """Stage 1, one step: 2 ranks x 2 documents = 1 rank x 4 documents (the same 4 documents)."""
    data = write_data(tmp_path / "data", train_entities=(2, 6, 3, 5))
    one = tmp_path / "one"
    run_single(flags(data, tiny_model, one, "--train_batch_size", 4, "--stage1_epochs", 1, "--stage2_epochs", 0))
    proc = torchrun(flags(data, tiny_model, tmp_path / "two", "--train_batch_size", 2, "--stage1_epochs", 1,
                          "--stage2_epochs", 0))
    assert_ok(proc)
    w1, w2 = weights(one), weights(tmp_path / "two")
    assert_same(w1, w2)
    # The step moved the encoder (so the comparison is not between two untouched models).
    from transformers import AutoModel
    init = {"base.encoder.encoder." + k: v for k, v in AutoModel.from_pretrained(tiny_model).state_dict().items()}
    assert max_diff({k: w2[k] for k in init}, init) > 1e-2
    ckpt = torch.load(tmp_path / "two" / "last.pt", map_location="cpu", weights_only=False)
    assert ckpt["world_size"] == 2 and isinstance(ckpt["rng"], list) and len(ckpt["rng"]) == 2
    assert ckpt["global_step"] == 1


def naive_accumulation(args, micro_batches):
    """What the step would be if each micro-batch's mean loss had the same weight (the wrong weighting)."""
    from model import load_model
    from utils import move_to, set_seed
    set_seed(args.seed)
    tok = __import__("prepro").load_tokenizer(args.model_name_or_path, "bert")
    model = load_model(args, args.num_class, tok)
    groups = model.param_groups(1, args)
    model.set_trainable(groups)
    opt = torch.optim.AdamW(groups, eps=args.adam_epsilon, weight_decay=args.weight_decay)
    model.train()
    for batch in micro_batches:
        (model(move_to(batch, "cpu"), 1)["loss"] / len(micro_batches)).backward()
    opt.step()
    return model.state_dict()


def test_gradient_accumulation_equals_one_big_batch(tmp_path, tiny_model):
    """1 process: 2 micro-batches of 2 documents (--gradient_accumulation_steps 2) = one batch of 4."""
    import prepro
    import train
    from flags import parse_args
    data = write_data(tmp_path / "data", train_entities=(2, 6, 3, 5))
    big, acc = tmp_path / "big", tmp_path / "acc"
    run_single(flags(data, tiny_model, big, "--train_batch_size", 4, "--stage1_epochs", 1, "--stage2_epochs", 0))
    run_single(flags(data, tiny_model, acc, "--train_batch_size", 2, "--gradient_accumulation_steps", 2,
                     "--stage1_epochs", 1, "--stage2_epochs", 0))
    w_big, w_acc = weights(big), weights(acc)
    assert_same(w_big, w_acc)
    # The fixture is one where the weighting matters: equal weights per micro-batch give other parameters.
    args = parse_args(flags(data, tiny_model, tmp_path / "naive", "--train_batch_size", 2))
    tok = prepro.load_tokenizer(tiny_model, "bert")
    rel2id = prepro.load_rel2id()
    args.num_class = len(rel2id)
    feats, _ = train.load_split(args, "train.json", tok, rel2id, 0)
    micro = list(train.train_loader(feats, args, 0, 1, 1000 * 1 + 0))
    counts = [int(b["label_mask"].sum()) for b in micro]
    assert len(micro) == 2 and counts[0] != counts[1], counts
    naive = naive_accumulation(args, micro)
    assert max_diff(naive, w_acc) > 100 * TOL


def test_two_process_training_both_stages(tmp_path, tiny_model):
    """torchrun, 2 ranks, both stages, accumulation, 5 training documents (the sampler pads to 6)."""
    data = write_data(tmp_path / "data", train_entities=(2, 6, 3, 5, 4))
    save = tmp_path / "run"
    proc = torchrun(flags(data, tiny_model, save, "--train_batch_size", 1, "--gradient_accumulation_steps", 2,
                          "--stage1_epochs", 2, "--stage2_epochs", 2))
    assert_ok(proc)
    assert len(list(tmp_path.rglob("metrics.jsonl"))) == 1
    lines = [json.loads(x) for x in (save / "metrics.jsonl").read_text().splitlines()]
    assert [(m["stage"], m["epoch"]) for m in lines] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    # ceil(5 / 2) = 3 batches per rank, in groups of 2 -> 2 optimiser steps per epoch
    assert [m["step"] for m in lines] == [2, 4, 2, 4]
    assert all(m["skipped_steps"] == 0 for m in lines)
    assert (save / "result.json").is_file() and (save / "dev_result.json").is_file()
    assert isinstance(json.loads((save / "result.json").read_text()), list)
    assert proc.stdout.count("stage 1 epoch 0:") == 1  # the epoch summary is printed by rank 0 only
    ckpt = torch.load(save / "last.pt", map_location="cpu", weights_only=False)
    assert ckpt["stage"] == 2 and ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    # The two ranks draw different noise: their saved RNG states differ.
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])

    # Resume: one more stage-2 epoch (as if the run had asked for 3), with 2 processes and with 1.
    ckpt["args"]["stage2_epochs"] = 3
    torch.save(ckpt, save / "last.pt")
    shutil.copytree(save, tmp_path / "run1")
    proc = torchrun(["--resume", str(save), "--device", "cpu"])
    assert_ok(proc)
    lines = [json.loads(x) for x in (save / "metrics.jsonl").read_text().splitlines()]
    assert [(m["stage"], m["epoch"], m["step"]) for m in lines[4:]] == [(2, 2, 6)]
    # Another world size at an epoch boundary: 1 process has ceil(5 / 1) = 5 batches = 3 steps per epoch,
    # and the LR schedule is mapped onto them (step 6 of 9 at the start of epoch 2, 9 of 9 at its end).
    run_single(["--resume", str(tmp_path / "run1"), "--device", "cpu"])
    lines = [json.loads(x) for x in (tmp_path / "run1" / "metrics.jsonl").read_text().splitlines()]
    assert [(m["stage"], m["epoch"], m["step"]) for m in lines[4:]] == [(2, 2, 9)]
    assert lines[-1]["lr"] == [0.0] * 4  # 2 groups (inference, base), each split into decay / no decay


def test_resume_with_other_world_size_mid_epoch_is_refused(tmp_path, tiny_model, capsys):
    """A last.pt written mid-epoch by 2 ranks cannot be continued by 1 (the data position would be wrong)."""
    import train
    data = write_data(tmp_path / "data", train_entities=(2, 6, 3, 5))
    save = tmp_path / "run"
    run_single(flags(data, tiny_model, save, "--train_batch_size", 2, "--stage1_epochs", 1, "--stage2_epochs", 0))
    ckpt = torch.load(save / "last.pt", map_location="cpu", weights_only=False)
    ckpt.update(world_size=2, epoch=0, step_in_epoch=1, rng=[ckpt["rng"], ckpt["rng"]])
    torch.save(ckpt, save / "last.pt")
    assert train.cli(["--resume", str(save)]) == 2
    assert "world size" in capsys.readouterr().err


def _agree_worker(rank, port, out):
    import torch.distributed as dist

    import rundir
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    run = rundir.RunDir(None, torch.device("cpu"), rank, 2)
    run.signum = 15 if rank == 1 else 0  # only rank 1 got SIGTERM
    got = run.agree_stop()
    Path(out, f"{rank}.json").write_text(json.dumps([got, run.signum]))
    dist.destroy_process_group()


def test_ranks_agree_on_a_stop_request(tmp_path):
    import torch.multiprocessing as mp
    mp.spawn(_agree_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    assert [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)] == [[True, 15], [True, 15]]


@pytest.mark.parametrize("stage,extra", [(1, []), (2, []), (2, ["--contrastive", "none"]), (2, ["--freeze_base"])])
def test_every_trainable_parameter_gets_a_gradient(tmp_path, tiny_model, stage, extra):
    """DDP (find_unused_parameters=False) waits for a gradient of every parameter that requires one."""
    import prepro
    import train
    from flags import parse_args
    from model import load_model
    from utils import move_to
    data = write_data(tmp_path / "data", train_entities=(2, 6, 3))
    args = parse_args(flags(data, tiny_model, tmp_path / "x", *extra))
    tok = prepro.load_tokenizer(tiny_model, "bert")
    rel2id = prepro.load_rel2id()
    feats, _ = train.load_split(args, "train.json", tok, rel2id, 0)
    model = load_model(args, len(rel2id), tok)
    model.set_trainable(model.param_groups(stage, args))
    model.train()
    model(move_to(__import__("utils").collate_fn(feats), "cpu"), stage)["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert any(p.requires_grad for p in model.parameters())
