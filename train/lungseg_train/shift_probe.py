"""How much a crop model's outline depends on where its window sits, on real slices.

    cd train && /usr/bin/python3 -m lungseg_train.eval_pkl --split test --what real --out /tmp/test_real.pkl
    /usr/bin/python3 -m lungseg_train.shift_probe ../models/resnet50-unet-small-crop --pkl /tmp/test_real.pkl

A crop model sees one 128 window. In the cascade that window is centred on a
detector candidate, in tiling on a fixed grid: either way the nodule lands
somewhere within a few tens of pixels of the centre. For each slice of an
eval_pkl pickle with truth, this runs the model on the windows centred at the
truth's bounding-box centre moved by (dy, dx) for dy, dx in -R..R step S,
air beyond the image, the card's HU window and threshold, and scores each
window's own pixels against the truth there. The defaults, R 21 and S 7,
stay within the ±24 px a crop model is trained on and reach seven of the
eight residues mod 8: a step of 8 would only visit the positions where a
network with stride-2 stages sees the same pixel phase, and hide how it
answers between them.

Per model it prints the mean Dice over slices and offsets, the centred
window's mean, the mean over slices of each slice's worst and best offset,
and the mean per-slice standard deviation. A model that outlines a nodule
only from some offsets has a large spread: its tiled or cascaded result then
depends on where the windows happened to fall, not on the nodule.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from . import data as D
from .onnx_weights import load_model_folder

WIN = 128


def window_at(hu: np.ndarray, cy: int, cx: int, win: int = WIN) -> tuple:
    """The win x win window of hu centred at (cy, cx) (top-left cy-win//2,
    cx-win//2, as cascade.WindowOf), air beyond the image; and its top-left."""
    y0, x0 = cy - win // 2, cx - win // 2
    out = np.full((win, win), D.OUTSIDE_HU, np.float32)
    ya, yb, xa, xb = max(0, y0), min(hu.shape[0], y0 + win), max(0, x0), min(hu.shape[1], x0 + win)
    if ya < yb and xa < xb:
        out[ya - y0:yb - y0, xa - x0:xb - x0] = hu[ya:yb, xa:xb]
    return out, y0, x0


def truth_window(mask: np.ndarray, y0: int, x0: int, win: int = WIN) -> np.ndarray:
    out = np.zeros((win, win), bool)
    ya, yb, xa, xb = max(0, y0), min(mask.shape[0], y0 + win), max(0, x0), min(mask.shape[1], x0 + win)
    if ya < yb and xa < xb:
        out[ya - y0:yb - y0, xa - x0:xb - x0] = mask[ya:yb, xa:xb]
    return out


def dice(p: np.ndarray, t: np.ndarray) -> float:
    s = int(p.sum()) + int(t.sum())
    return 1.0 if s == 0 else 2.0 * float((p & t).sum()) / s


@torch.no_grad()
def probe(model, card, slices, radius: int = 21, step: int = 7, batch: int = 16) -> dict:
    """slices: [(hu [H,W] float32, mask [H,W] bool)] with truth. Returns
    {"offsets", "dice": [n_slices][n_offsets], "summary"}."""
    norm = card.get("normalisation", {})
    c, w = float(norm.get("center", D.WINDOW_CENTER)), float(norm.get("width", D.WINDOW_WIDTH))
    thr = float(card.get("threshold", 0.5))
    offs = [(dy, dx) for dy in range(-radius, radius + 1, step) for dx in range(-radius, radius + 1, step)]
    table = []
    for hu, m in slices:
        ys, xs = np.nonzero(m)
        cy, cx = (int(ys.min()) + int(ys.max())) // 2, (int(xs.min()) + int(xs.max())) // 2
        wins, truths = [], []
        for dy, dx in offs:
            a, y0, x0 = window_at(hu, cy + dy, cx + dx)
            wins.append(D.window(a, c, w))
            truths.append(truth_window(m, y0, x0))
        x = torch.from_numpy(np.stack(wins)[:, None].astype(np.float32))
        p = torch.cat([torch.sigmoid(model(x[s:s + batch]).float()) for s in range(0, len(x), batch)])[:, 0].numpy()
        table.append([dice(p[k] > thr, truths[k]) for k in range(len(offs))])
    d = np.asarray(table)
    centre = offs.index((0, 0))
    summary = {"slices": int(d.shape[0]), "offsets": len(offs), "mean": float(d.mean()),
               "centred": float(d[:, centre].mean()), "worst": float(d.min(1).mean()),
               "best": float(d.max(1).mean()), "sd": float(d.std(1).mean())}
    return {"offsets": offs, "dice": d.tolist(), "summary": summary}


def read_pkl(path: str):
    import pandas as pd

    df = pd.read_pickle(path)
    out = []
    for i in range(len(df)):
        m = np.asarray(df.iloc[i]["mask"]) > 0
        if m.any():
            out.append((np.asarray(df.iloc[i]["hu_array"], np.float32), m))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m lungseg_train.shift_probe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", help="crop model registry folders")
    ap.add_argument("--pkl", required=True, help="an eval_pkl pickle (real slices)")
    ap.add_argument("--radius", type=int, default=21)
    ap.add_argument("--step", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default="")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    slices = read_pkl(a.pkl)
    out = {}
    for f in a.folders:
        model, card, size = load_model_folder(f)
        if size != WIN:
            print(f"{f}: window {size}, not a {WIN} crop model", file=sys.stderr)
            return 2
        r = probe(model, card, slices, a.radius, a.step)
        out[card["name"]] = r
        s = r["summary"]
        print(f"{card['name']} ({s['slices']} slices x {s['offsets']} offsets, threshold {card.get('threshold')}): "
              f"mean {s['mean']:.3f}, centred {s['centred']:.3f}, per-slice worst {s['worst']:.3f} best "
              f"{s['best']:.3f}, sd {s['sd']:.3f}", flush=True)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
