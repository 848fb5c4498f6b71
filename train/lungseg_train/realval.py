"""Crop models tiled over real whole slices, as the Go pipeline tiles them.

    cd train && /usr/bin/python3 -m lungseg_train.realval ../models/resnet50-unet-small-crop \\
        --patients LIDC-IDRI-0007 --data ../.gpu/lidc_pack.npz --threads 2

A crop model alone on a slice larger than its window (segment.Tile): the
slice is covered by 128 windows at 0, 64, 128, ... and n-128 on each axis,
air (-1024 HU) beyond the image, each window normalised by the card's HU
window, and the windows' probabilities blended with a Gaussian of sd 16 px
about each window's centre (segment.TileWeights). The map is thresholded at
the card's threshold (or --threshold) and kept inside the slice's lung mask
dilated by --lung-margin px (the Go pipeline removes what lies outside its
lung field); each slice's Dice against its truth, averaged over the slices
with truth, is the figure `lungseg replay` reports as "Dice mean".

The slices are the normalised vinibfr_lidc_norm slices of the named patients
with HU by hucal's per-slice calibration and a seeded synthetic body outside
the lung, exactly as eval_pkl --what real builds them for the Go replay. Any
patient can be named: the test patient 0007 reproduces the README's real-slice
column (up to the lung field and the 256 grid Go publishes tiled maps at), and
a training patient can be left out of a run (train.py --real-val-patients) to
give that run a real-slice validation set.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import composite as C
from . import data as D
from . import hucal
from . import metrics as MX

WIN = 128
STRIDE = 64
SIGMA = 1.0 / 8  # of the window's side, as segment.TileSigma


def tile_origins(n: int, w: int, stride: int) -> List[int]:
    """segment.TileOrigins: 0, stride, ... while the window fits, then n - w."""
    o, p = [], 0
    while p + w < n:
        o.append(p)
        p += stride
    o.append(n - w)
    return o


def tile_weights(h: int, w: int) -> np.ndarray:
    """segment.TileWeights: a Gaussian about the window's centre, 1 there."""
    def axis(n):
        c, sd = (n - 1) / 2.0, n * SIGMA
        d = (np.arange(n) - c) / sd
        return np.exp(-d * d / 2)
    return np.outer(axis(h), axis(w)).astype(np.float32)


@torch.no_grad()
def tile_probs(model, hu: np.ndarray, center: float, width: float, win: int = WIN, stride: int = STRIDE,
               batch: int = 16, forward=None) -> np.ndarray:
    """The tiled probability map [H,W] of a crop model on one slice of HU."""
    h, w = hu.shape
    ph, pw = max(h, win), max(w, win)
    y0, x0 = (ph - h) // 2, (pw - w) // 2
    pad = np.full((ph, pw), D.OUTSIDE_HU, np.float32)
    pad[y0:y0 + h, x0:x0 + w] = hu
    wins = [(y, x) for y in tile_origins(ph, win, stride) for x in tile_origins(pw, win, stride)]
    x = np.stack([D.window(pad[y:y + win, xx:xx + win], center, width) for y, xx in wins])[:, None]
    xt = torch.from_numpy(x.astype(np.float32))
    fwd = forward or model
    p = torch.cat([torch.sigmoid(fwd(xt[s:s + batch]).float()) for s in range(0, len(xt), batch)])[:, 0].numpy()
    wt = tile_weights(win, win)
    num = np.zeros((ph, pw), np.float32)
    den = np.zeros((ph, pw), np.float32)
    for k, (y, xx) in enumerate(wins):
        num[y:y + win, xx:xx + win] += wt * p[k]
        den[y:y + win, xx:xx + win] += wt
    return (num / den)[y0:y0 + h, x0:x0 + w]


def dilate(mask: np.ndarray, r: int) -> np.ndarray:
    if r <= 0:
        return mask.astype(bool)
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    return (F.max_pool2d(t, 2 * r + 1, 1, r)[0, 0] > 0).numpy()


def real_slices(data: D.LidcData, patients: Sequence[str], seed: int = 4242):
    """(ids, hu [N,H,W], truth [N,H,W] bool, lung [N,H,W] bool) of the named
    patients' normalised slices, built as eval_pkl --what real builds them."""
    keep = set(patients)
    si = [i for i, p in enumerate(data.slices.patient) if p in keep]
    ci = [i for i, p in enumerate(data.crops.patient) if p in keep]
    slices, crops = data.slices.subset(si), data.crops.subset(ci)
    if len(si) == 0:
        raise ValueError(f"no whole slices of {sorted(keep)}")
    cal = hucal.calibrate(crops, slices)
    bank = C.make_bank(crops, slices, "cpu", C.CROP_CANVAS, smooth=False, hu_cal=cal)
    from .eval_pkl import real_rows
    hu, mask, lung = real_rows(bank, seed)
    ids = [f"{p}/{s}" for p, s in zip(slices.patient, slices.slice_id)]
    return ids, hu, mask > 0, lung > 0


def probs_of(model, hu: np.ndarray, card: Dict, batch: int = 16, forward=None, stride: int = STRIDE) -> np.ndarray:
    norm = card.get("normalisation", {})
    c, w = float(norm.get("center", D.WINDOW_CENTER)), float(norm.get("width", D.WINDOW_WIDTH))
    return np.stack([tile_probs(model, h, c, w, stride=stride, batch=batch, forward=forward) for h in hu])


def scores(prob: np.ndarray, truth: np.ndarray, lung: Optional[np.ndarray], spacing_mm: float = 0.7,
           lung_margin: int = 8) -> MX.Scores:
    """Scores of tiled maps, predictions outside the dilated lung removed."""
    if lung is not None:
        keep = np.stack([dilate(l, lung_margin) for l in lung])
        prob = np.where(keep, prob, 0.0)
    diam = MX.diameters_mm(truth.astype(np.uint8), np.full(len(truth), spacing_mm, np.float32))
    sc = MX.Scores()
    sc.add(torch.from_numpy(prob[:, None].astype(np.float32)), torch.from_numpy(truth[:, None].astype(np.float32)),
           diam=torch.from_numpy(diam))
    return sc


def load_crop_model(folder: str):
    """(model in eval mode, card) of a registry crop model folder; exits when its window is not WIN."""
    from .onnx_weights import load_model_folder
    model, card, size = load_model_folder(folder)
    if size != WIN:
        raise SystemExit(f"{folder}: window {size}, not a {WIN} crop model")
    return model.eval(), card


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m lungseg_train.realval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", help="crop model registry folders")
    ap.add_argument("--patients", default="LIDC-IDRI-0007", help="comma-separated patients with whole slices")
    ap.add_argument("--data", default=None)
    ap.add_argument("--threshold", type=float, default=None, help="default: the card's")
    ap.add_argument("--lung-margin", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--stride", type=int, default=STRIDE, help="tile stride in px (Go: 64)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    data = D.load(a.data, allow_synthetic=False)
    ids, hu, truth, lung = real_slices(data, a.patients.split(","))
    print(f"{len(ids)} slices of {a.patients}, {int(truth.reshape(len(ids), -1).any(1).sum())} with truth")
    for f in a.folders:
        t0 = time.time()
        model, card = load_crop_model(f)
        p = probs_of(model, hu, card, stride=a.stride)
        thr = float(card.get("threshold", 0.5)) if a.threshold is None else a.threshold
        sc = scores(p, truth, lung, lung_margin=a.lung_margin)
        s = sc.summary(thr)
        bt = sc.best_threshold()
        bins = " ".join(f"{b['mean_dice']:.3f}({b['n']})" if b["n"] else "-" for b in s["by_size"].values())
        print(f"{f}: threshold {thr:.2f} mean {s['mean_dice']:.3f} (n {s['n_nonempty']}) by size {bins} "
              f"pooled {s['dice']:.3f}; at these slices' own best threshold {bt:.2f} (not a selection: "
              f"chosen on the slices scored) {sc.summary(bt)['mean_dice']:.3f} ({time.time() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
