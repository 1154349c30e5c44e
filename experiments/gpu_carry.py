"""Prepare the folder that travels to a GPU machine with no ../shared and no package registry: the Re-DocRED
mini split and an fp16 copy of an encoder (about 44 MB; train.py loads it back in float32).

Usage: python experiments/gpu_carry.py [--out .gpu]                 the bundled encoder (bench/gpu_suite.sh,
                                                                  experiments/runner.py --device gpu)
       python experiments/gpu_carry.py --stage1 RUN/best_stage1.pt  a trained stage 1 (stage-2 runs from it on a
                                                                  GPU): its encoder in fp16, its base head in fp32
       python experiments/gpu_carry.py --rebuild .gpu/stage1.pt     on the GPU machine: the stage-1 checkpoint again
                                                                  (experiments/runner.py does it when it is missing)
Layout: .gpu/redocred/{train_mini,dev_mini}.json, .gpu/encoder/{config.json, model.safetensors, tokenizer files},
with --stage1 also .gpu/stage1_head.pt. A whole stage-1 checkpoint in fp32 (91 MB) would not fit the 64 MiB
that travels; in fp16 its encoder is rounded to about 3 significant digits (stated where its runs are reported).
"""
import argparse
import os
import shutil
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
ENCODER = "base.encoder.encoder."  # the encoder's weights in a DocREModel state dict


def write_encoder(folder, weights):
    """config, tokenizer (of the bundled encoder) and the given encoder weights in fp16."""
    from safetensors.torch import save_file

    import utils
    src = utils.default_model_path()
    os.makedirs(folder, exist_ok=True)
    for name in ("config.json",) + TOKENIZER_FILES:
        if os.path.exists(os.path.join(src, name)):
            shutil.copy(os.path.join(src, name), folder)
    save_file({k: v.to(torch.float16) if v.is_floating_point() else v.contiguous() for k, v in weights.items()},
              os.path.join(folder, "model.safetensors"))


def split_stage1(ckpt_path, out):
    """A stage-1 checkpoint -> out/encoder (its encoder, fp16) + out/stage1_head.pt (the rest of the base
    module, fp32, and the flags, which now name out/encoder as the encoder)."""
    import utils
    ckpt = utils.load_checkpoint(ckpt_path)
    encoder = {k[len(ENCODER):]: v for k, v in ckpt["model"].items() if k.startswith(ENCODER)}
    head = {k: v for k, v in ckpt["model"].items() if k.startswith("base.") and not k.startswith(ENCODER)}
    write_encoder(os.path.join(out, "encoder"), encoder)
    args = {**ckpt["args"], "model_name_or_path": os.path.join(out, "encoder")}
    torch.save({"model": head, "args": args, "stage": ckpt["stage"], "epoch": ckpt["epoch"], "dev": ckpt["dev"]},
               os.path.join(out, "stage1_head.pt"))


def rebuild_stage1(path):
    """The stage-1 checkpoint again from .gpu/encoder and .gpu/stage1_head.pt next to ``path``."""
    from safetensors.torch import load_file

    import utils
    folder = os.path.dirname(os.path.abspath(path))
    head = torch.load(os.path.join(folder, "stage1_head.pt"), map_location="cpu", weights_only=False)
    encoder = load_file(os.path.join(folder, "encoder", "model.safetensors"))
    head["model"].update({ENCODER + k: v.float() if v.is_floating_point() else v for k, v in encoder.items()})
    utils.save_checkpoint(path, head)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(ROOT, ".gpu"))
    p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "redocred"))
    p.add_argument("--stage1", default=None, help="a stage-1 checkpoint to carry instead of the bundled encoder")
    p.add_argument("--rebuild", default=None, help="write the carried stage-1 checkpoint to this path")
    a = p.parse_args()
    if a.rebuild:
        rebuild_stage1(a.rebuild)
        print("wrote", a.rebuild)
        return
    if a.stage1:
        split_stage1(a.stage1, a.out)
    else:
        from safetensors.torch import load_file

        import utils
        write_encoder(os.path.join(a.out, "encoder"),
                      load_file(os.path.join(utils.default_model_path(), "model.safetensors")))
    data = os.path.join(a.out, "redocred")
    os.makedirs(data, exist_ok=True)
    for name in ("train_mini.json", "dev_mini.json"):
        shutil.copy(os.path.join(a.data, name), data)
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(a.out) for f in fs)
    print(f"wrote {a.out}: {total / 2 ** 20:.1f} MiB")


if __name__ == "__main__":
    main()
