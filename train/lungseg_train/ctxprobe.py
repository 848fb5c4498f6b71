"""Where a crop model loses a nodule on a real whole slice: its pixels or its context.

    cd train && /usr/bin/python3 -m lungseg_train.ctxprobe ../models/resnet50-unet-small-crop \\
        --patients LIDC-IDRI-0007,LIDC-IDRI-0008 --data ../.gpu/lidc_pack.npz --threads 2

The normalised slices of `vinibfr_lidc_norm` and the HU crops of `ctslicing_vois_hu` come from the same
native 512 grids. hucal finds, for each slice, the crop of the same patient that matches it (normalised
cross-correlation over the lung, at least hucal.MIN_NCC) and where it lies. For every matched slice the
crop model is run on four inputs, all scored inside the crop's box against the crop's mask:

    A  the HU crop alone, air-padded into the window (data.pad_bare_crop): the LIDC crop protocol
    B  the slice's own pixels (HU by hucal) in the same box, air-padded the same way
    C  a window of the slice centred on the box: the same pixels in their real lung context
    D  window C with the box replaced by the HU crop

A against B separates the two images' pixels (smoothing, HU calibration); B against C is the cost of
the real context around the nodule. B and C are also scored against the slice's own truth, and the
two truths (the slice's mask in the box against the crop's mask) against each other: the agreement of
the two annotations bounds what a model that reproduces one of them can score against the other.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import List, Sequence, Tuple

import numpy as np
import torch

from . import data as D
from . import hucal
from . import realval as RV
from .shift_probe import dice

WIN = 128


def inputs(slice_hu: np.ndarray, crop_hu: np.ndarray, y: int, x: int, win: int = WIN):
    """The four HU inputs [4, win, win] (A, B, C, D above) for a crop whose top-left lies at (y, x) of
    the slice, and where the crop's box lies in each: [(row, col)] top-lefts."""
    h, w = crop_hu.shape
    a = D.pad_bare_crop(crop_hu.astype(np.float32), win, D.OUTSIDE_HU)
    b = D.pad_bare_crop(slice_hu[y:y + h, x:x + w].astype(np.float32), win, D.OUTSIDE_HU)
    y0, x0 = D.bare_offset(h, w, win)
    # C: the window centred on the box, air beyond the slice (as segment's windows read it)
    wy, wx = y + h // 2 - win // 2, x + w // 2 - win // 2
    pad = np.full((slice_hu.shape[0] + 2 * win, slice_hu.shape[1] + 2 * win), D.OUTSIDE_HU, np.float32)
    pad[win:-win, win:-win] = slice_hu
    c = pad[wy + win:wy + 2 * win, wx + win:wx + 2 * win].copy()
    by, bx = y - wy, x - wx
    d = c.copy()
    d[by:by + h, bx:bx + w] = crop_hu
    return np.stack([a, b, c, d]), [(y0, x0), (y0, x0), (by, bx), (by, bx)]


def matches(data: D.LidcData, patients: Sequence[str]):
    """(slice index, crop index, y, x, ncc) per matched slice of the patients, indices into the
    subsets realval.real_slices builds, with those subsets."""
    keep = set(patients)
    si = [i for i, p in enumerate(data.slices.patient) if p in keep]
    ci = [i for i, p in enumerate(data.crops.patient) if p in keep]
    slices, crops = data.slices.subset(si), data.crops.subset(ci)
    cal = hucal.calibrate(crops, slices)
    by_id = {(str(p), str(s)): j for j, (p, s) in enumerate(zip(crops.patient, crops.slice_id))}  # ids repeat across patients
    out: List[Tuple[int, int, int, int, float]] = []
    for k in range(len(slices)):
        c = cal[f"{slices.patient[k]}/{slices.slice_id[k]}"]
        if c.how != "matched":
            continue
        out.append((k, by_id[(c.patient, c.crop)], c.y, c.x, c.ncc))
    return out, slices, crops


@torch.no_grad()
def probe(model, card, hu, truth, rows, crops):
    """[n, 7] per matched slice: Dice of A, B, C, D against the crop's mask, of B and C against the
    slice's truth, and the two truths' agreement."""
    norm = card.get("normalisation", {})
    cen, wid = float(norm.get("center", D.WINDOW_CENTER)), float(norm.get("width", D.WINDOW_WIDTH))
    thr = float(card.get("threshold", 0.5))
    res = []
    for k, j, y, x, _ in rows:
        ch, cm = crops.bare(j)
        h, w = ch.shape
        cm = cm > 0
        tbox = truth[k][y:y + h, x:x + w]
        xs, at = inputs(hu[k], ch, y, x)
        xt = torch.from_numpy(np.stack([D.window(a, cen, wid) for a in xs])[:, None].astype(np.float32))
        p = torch.sigmoid(model(xt).float()).numpy()[:, 0] > thr
        box = [p[i][r:r + h, c:c + w] for i, (r, c) in enumerate(at)]
        res.append([dice(box[0], cm), dice(box[1], cm), dice(box[2], cm), dice(box[3], cm),
                    dice(box[1], tbox), dice(box[2], tbox), dice(tbox, cm)])
    return np.array(res, np.float64).reshape(-1, 7)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m lungseg_train.ctxprobe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", help="crop model registry folders")
    ap.add_argument("--patients", default="LIDC-IDRI-0007,LIDC-IDRI-0008")
    ap.add_argument("--data", default=None)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--per-slice", action="store_true", help="also one row per matched slice")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    data = D.load(a.data, allow_synthetic=False)
    pats = a.patients.split(",")
    rows, slices, crops = matches(data, pats)
    ids, hu, truth, _ = RV.real_slices(data, pats)
    print(f"{len(rows)} of {len(ids)} slices of {a.patients} matched to a crop")
    for f in a.folders:
        t0 = time.time()
        model, card = RV.load_crop_model(f)
        r = probe(model, card, hu, truth, rows, crops)
        m = r.mean(0)
        print(f"{f}: threshold {card.get('threshold', 0.5)}; against the crop's mask: A crop {m[0]:.3f}, "
              f"B slice box {m[1]:.3f}, C slice window {m[2]:.3f}, D crop in the slice window {m[3]:.3f}; "
              f"against the slice's truth: B {m[4]:.3f}, C {m[5]:.3f}; the two truths agree {m[6]:.3f} "
              f"({time.time() - t0:.0f} s)", flush=True)
        if a.per_slice:
            for (k, j, _, _, ncc), q in zip(rows, r):
                print(f"  {ids[k]} ~ {crops.slice_id[j]} (ncc {ncc:.2f}): " + " ".join(f"{v:.2f}" for v in q))
    return 0


if __name__ == "__main__":
    sys.exit(main())
