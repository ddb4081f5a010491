#!/usr/bin/env python3
"""Linear probe: how well each block's image-token Q/K/V tell an object's shape apart.

A diagnostic for the embedded model (numpy + pillow only; never needed to build or test).
Tokens whose 4x4-pixel patch (or the model's patch) is at least 3/4 one object are labelled
with that object's shape; a ridge classifier (one-vs-rest, standardised features) is fitted on
one dataset's tokens and scored on another's. Chance is the majority shape's share.

Captures come from `ditlens probe`, one per image, with the present classes as the prompt:

    ditlens make-dataset --count 300 --seed 4242 --size 64 --out probe_train
    for f in probe_train/images/*.png; do
      n=$(basename "$f" .png)
      ditlens probe --image "$f" --prompt "<classes present in labels/$n.png>" \
        --steps-to-keep 20 --qkv-layers all --out probe_train_caps/$n.safetensors
    done
    # the same for the held-out set, then:
    python3 scripts/shape_probe.py probe_train probe_train_caps held_out held_out_caps
"""

import argparse
import json
import os
import struct

import numpy as np
from PIL import Image


def load_safetensors(path):
    """Every F32 tensor of a safetensors file, as numpy arrays."""
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__" or info["dtype"] != "F32":
            continue
        a, b = info["data_offsets"]
        raw = data[8 + n + a : 8 + n + b]
        out[name] = np.frombuffer(raw, dtype=np.float32).reshape(info["shape"])
    return out


def token_features(dataset, captures, step, grid):
    """(features by name, shape label per kept token) over a dataset's images."""
    feats, labels = {}, []
    for name in sorted(os.listdir(os.path.join(dataset, "labels"))):
        lab = np.array(Image.open(os.path.join(dataset, "labels", name))).astype(int)
        patch = lab.shape[0] // grid
        cap = load_safetensors(os.path.join(captures, name[:-4] + ".safetensors"))
        keep, ys = [], []
        for ty in range(grid):
            for tx in range(grid):
                p = lab[ty * patch : (ty + 1) * patch, tx * patch : (tx + 1) * patch].ravel()
                vals, counts = np.unique(p, return_counts=True)
                j = np.argmax(counts)
                if vals[j] not in (0, 255) and counts[j] * 4 >= 3 * p.size:
                    keep.append(ty * grid + tx)
                    ys.append(vals[j] - 1)
        if not keep:
            continue
        labels += ys
        img = np.array(Image.open(os.path.join(dataset, "images", name)).convert("RGB"))
        img = img.astype(np.float32) / 255
        pix = img.reshape(grid, patch, grid, patch, 3).transpose(0, 2, 1, 3, 4)
        feats.setdefault("pixels", []).append(pix.reshape(grid * grid, -1)[keep])
        block = 0
        while f"step.{step}.block.{block}.attn.q_img" in cap:
            for kind in "qkv":
                t = cap[f"step.{step}.block.{block}.attn.{kind}_img"][0]
                feats.setdefault(f"block {block} {kind}", []).append(t[keep])
            block += 1
    return {k: np.concatenate(v) for k, v in feats.items()}, np.array(labels)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("train_dataset")
    ap.add_argument("train_captures")
    ap.add_argument("test_dataset")
    ap.add_argument("test_captures")
    ap.add_argument("--step", type=int, default=20)
    ap.add_argument("--grid", type=int, default=16)
    ap.add_argument("--ridge", type=float, default=10.0)
    a = ap.parse_args()
    xtr, ytr = token_features(a.train_dataset, a.train_captures, a.step, a.grid)
    xte, yte = token_features(a.test_dataset, a.test_captures, a.step, a.grid)
    classes = int(max(ytr.max(), yte.max())) + 1
    chance = np.bincount(yte, minlength=classes).max() / len(yte)
    print(f"tokens: {len(ytr)} fit, {len(yte)} scored; chance {chance:.3f}")
    print(f"{'features':<12} {'fit':>6} {'scored':>7}")
    for name, x in xtr.items():
        mean, std = x.mean(0), x.std(0) + 1e-6
        a_fit = np.c_[(x - mean) / std, np.ones(len(x))]
        a_test = np.c_[(xte[name] - mean) / std, np.ones(len(xte[name]))]
        w = np.linalg.solve(
            a_fit.T @ a_fit + a.ridge * np.eye(a_fit.shape[1]), a_fit.T @ np.eye(classes)[ytr]
        )
        fit = ((a_fit @ w).argmax(1) == ytr).mean()
        scored = ((a_test @ w).argmax(1) == yte).mean()
        print(f"{name:<12} {fit:6.3f} {scored:7.3f}")


if __name__ == "__main__":
    main()
