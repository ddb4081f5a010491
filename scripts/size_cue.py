#!/usr/bin/env python3
"""Does a model name objects by their size? A diagnostic for the embedded model.

For every two-shape scene of a dataset, `ditlens segment` labels the image with the present
classes; the scene counts as *right* when each object's pixels mostly get its own name,
*swapped* when each gets the other's, *same* otherwise. The size rule says "the larger visible
object is the shape whose typical area is larger" (typical areas: medians over another
dataset). A model that reads outlines is right whether or not the size rule holds; a model that
reads size is right where it holds and swapped where it does not.

    python3 scripts/size_cue.py held_out probe_train [--model DIR] [--layer 3]

numpy + pillow only; never needed to build or test.
"""

import argparse
import os
import subprocess

import numpy as np
from PIL import Image


def classes(d):
    with open(os.path.join(d, "classes.txt")) as f:
        return f.read().split()


def label(d, name):
    return np.array(Image.open(os.path.join(d, "labels", name)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", help="scenes to segment")
    ap.add_argument("reference", help="scenes whose median areas are the typical areas")
    ap.add_argument("--model", help="model folder (default: the embedded model)")
    ap.add_argument("--layer", type=int)
    ap.add_argument("--ditlens", default="target/release/ditlens")
    a = ap.parse_args()
    cls = classes(a.dataset)
    bg = cls.index("background")
    areas = {}
    for name in os.listdir(os.path.join(a.reference, "labels")):
        lab = label(a.reference, name)
        for c in np.unique(lab):
            if c not in (255, bg):
                areas.setdefault(int(c), []).append(int((lab == c).sum()))
    typical = {c: float(np.median(v)) for c, v in areas.items()}
    print("typical visible area (pixels):", {cls[c]: int(v) for c, v in sorted(typical.items())})
    out = os.path.join("/tmp", f"size_cue_{os.getpid()}.png")
    rows = []
    for name in sorted(os.listdir(os.path.join(a.dataset, "labels"))):
        lab = label(a.dataset, name)
        shapes = [int(c) for c in np.unique(lab) if c not in (255, bg)]
        if len(shapes) != 2 or any(c not in typical for c in shapes):
            continue
        cmd = [a.ditlens, "segment", "--image", os.path.join(a.dataset, "images", name),
               "--classes", ",".join([cls[c] for c in shapes] + ["background"]), "--out", out]
        if a.model:
            cmd += ["--model", a.model]
        if a.layer is not None:
            cmd += ["--layer", str(a.layer)]
        subprocess.run(cmd, check=True, capture_output=True)
        pred = np.array(Image.open(out))
        x, y = shapes
        own_x, other_x = (pred[lab == x] == 0).mean(), (pred[lab == x] == 1).mean()
        own_y, other_y = (pred[lab == y] == 1).mean(), (pred[lab == y] == 0).mean()
        right = own_x > other_x and own_y > other_y
        swapped = other_x > own_x and other_y > own_y
        rule = ((lab == x).sum() > (lab == y).sum()) == (typical[x] > typical[y])
        rows.append((right, swapped, not right and not swapped, rule))
    os.remove(out) if os.path.exists(out) else None
    r = np.array(rows, dtype=bool)
    if len(r) == 0:
        raise SystemExit("no two-shape scenes in " + a.dataset)
    print(f"{len(r)} two-shape scenes: right {r[:, 0].mean():.2f}, swapped {r[:, 1].mean():.2f}, "
          f"same name for both {r[:, 2].mean():.2f}")
    print(f"the size rule holds in {r[:, 3].mean():.2f} of all scenes, "
          f"{r[r[:, 0], 3].mean():.2f} of the right ones, {r[r[:, 1], 3].mean():.2f} of the swapped ones")


if __name__ == "__main__":
    main()
