"""Portable checkpoints: best.pt carries what it needs to be used on another machine, offline.

Besides the weights (a state dict), the flags and the dev scores, train.py's best.pt holds

  "encoder"   the encoder's config (config.to_dict()) and its tokenizer's files (bytes), so that the model is
              rebuilt without the folder or hub name it was trained from: the encoder is built from the config
              and gets its weights from the state dict; the tokenizer is loaded from the files;
  "id2rel"    the relation ids and names of the classifier's classes;

all of types that ``torch.load(path, weights_only=True)`` accepts (tensors, dicts, lists, strings, numbers, bytes),
so loading it runs no pickled code. Checkpoints without "encoder" (written before it existed) are still read:
the encoder then comes from the checkpoint's --model_name_or_path, as before.
"""
import os
import tempfile

import torch

import prepro
from base_module import encoder_from_config
from model import build_model, load_model
from utils import UsageError, default_model_path


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


def load_tokenizer(record, transformer_type="bert"):
    """The tokenizer saved in an "encoder" entry. It keeps the name it was trained under, so that the feature
    cache (keyed on that name and the tokenizer's content) is shared with the training run's."""
    with tempfile.TemporaryDirectory() as folder:
        for name, data in record["tokenizer"].items():
            with open(os.path.join(folder, os.path.basename(name)), "wb") as f:
                f.write(data)
        tokenizer = prepro.load_tokenizer(folder, transformer_type)
    tokenizer.name_or_path = record.get("name_or_path") or tokenizer.name_or_path
    return tokenizer


def load_encoder(record, attention="eager"):
    """The encoder of an "encoder" entry, with random weights (the checkpoint's state dict replaces them), in
    float32 like base_module.load_encoder."""
    from transformers import AutoConfig
    config = dict(record["config"])
    try:
        config = AutoConfig.for_model(config.pop("model_type"), **config)
    except (KeyError, ValueError) as e:
        raise UsageError(f"the checkpoint's encoder config cannot be read ({type(e).__name__}: {e})") from e
    return encoder_from_config(config, attention).float()


def build(args, num_class, ckpt=None):
    """(tokenizer, model) for ``args``: from the checkpoint's "encoder" entry when it has one (no encoder folder
    or hub needed), else from --model_name_or_path (default: the bundled encoder), with pre-trained weights."""
    record = (ckpt or {}).get("encoder")
    if record is None:
        name = args.model_name_or_path
        if name and not os.path.isdir(name) and (os.path.isabs(name) or name.startswith((".", "~"))):
            raise UsageError(f"--model_name_or_path {name}: no such model folder")
        tokenizer = prepro.load_tokenizer(name or default_model_path(), args.transformer_type)
        return tokenizer, load_model(args, num_class, tokenizer)
    tokenizer = load_tokenizer(record, args.transformer_type)
    start = [tokenizer.cls_token_id]
    end = [tokenizer.sep_token_id] * (2 if args.transformer_type == "roberta" else 1)
    return tokenizer, build_model(args, num_class, load_encoder(record, args.attention), start, end)


def hf_encoder(model):
    """The Hugging Face encoder inside a DocREModel (its .config is what encoder_record stores)."""
    return model.base.encoder.encoder


def load_weights_only(path):
    """A checkpoint loaded with weights_only=True (no pickled code runs), on the CPU."""
    if not os.path.isfile(path):
        raise UsageError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UsageError(f"{path} is not a weights-only DocRE-II checkpoint such as best.pt "
                         f"({type(e).__name__}: {str(e).strip().splitlines()[0][:300]})") from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict) or "args" not in ckpt:
        raise UsageError(f"{path} is not a DocRE-II checkpoint with weights (best.pt, best_stage1.pt)")
    return ckpt
