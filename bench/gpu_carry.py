"""Prepare the folder that travels to a GPU machine with no ../shared and no package registry: the Re-DocRED
mini split and an fp16 copy of the bundled encoder (about 44 MB; train.py loads it back in float32).

Usage: python bench/gpu_carry.py [--out .gpu]     (then name .gpu in the device's carry list)
Layout: .gpu/redocred/{train_mini,dev_mini}.json, .gpu/encoder/{config.json, model.safetensors, tokenizer files}.
"""
import argparse
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (puts the repository root on sys.path)

import torch  # noqa: E402

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(common.ROOT, ".gpu"))
    p.add_argument("--data", default=os.path.join(common.ROOT, "..", "shared", "data", "redocred"))
    a = p.parse_args()
    from safetensors.torch import load_file, save_file

    import utils
    src = utils.default_model_path()
    enc = os.path.join(a.out, "encoder")
    os.makedirs(enc, exist_ok=True)
    for name in ("config.json",) + TOKENIZER_FILES:
        if os.path.exists(os.path.join(src, name)):
            shutil.copy(os.path.join(src, name), enc)
    weights = load_file(os.path.join(src, "model.safetensors"))
    save_file({k: v.to(torch.float16) if v.is_floating_point() else v for k, v in weights.items()},
              os.path.join(enc, "model.safetensors"))
    data = os.path.join(a.out, "redocred")
    os.makedirs(data, exist_ok=True)
    for name in ("train_mini.json", "dev_mini.json"):
        shutil.copy(os.path.join(a.data, name), data)
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(a.out) for f in fs)
    print(f"wrote {a.out}: {total / 2 ** 20:.1f} MiB")


if __name__ == "__main__":
    main()
