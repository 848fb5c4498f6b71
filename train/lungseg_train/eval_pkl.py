"""Held-out LIDC slices as a Mendeley-layout pandas pickle, for Go replays.

    /usr/bin/python3 -m lungseg_train.eval_pkl --split test --what real --out /tmp/lidc_test_real.pkl
    /usr/bin/python3 -m lungseg_train.eval_pkl --split test --what composite --limit 240 \\
        --out /tmp/lidc_test_comp.pkl

Writes a DataFrame with the columns of the Lung-RADS dataset (label1, mask
int8, hu_array_old float32 HU, hu_array = HU x lung mask) that `lungseg
replay` reads, so the whole Go pipeline (whole-slice models and the
"+crop" cascades) is measured on patients no model was trained on. The
patients come from data.split_data, the split every card lists.

  real       the split's normalised 512x512 LIDC slices (val: patient 0008, 4
             slices; test: 0007, 24), HU inside the lung by hucal's
             per-slice calibration against the same patient's HU crops
             (--hu readme: the data README's single inverse v*775-835), a
             seeded synthetic body outside it;
  composite  the split's nodule crops, each pasted unscaled (the slice grid
             has the crop's own spacing) and unrotated at a random lung pixel
             of a seeded synthetic 512 chest, CT noise 8 HU; every --stride-th
             crop up to --limit.

The output is derived from third-party data (CC BY 3.0): write it outside
the repository (it is not shipped). label1 is "LR?" (unknown): the crops
carry no Lung-RADS class.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from . import composite as C
from . import data as D
from . import hucal


def real_rows(bank: C.Bank, seed: int):
    g = torch.Generator()
    g.manual_seed(seed)
    r = C.Rand(g, torch.device("cpu"))
    n = bank.n_real
    if n == 0:
        return np.zeros((0, 512, 512), np.float32), np.zeros((0, 512, 512), np.int8), np.zeros((0, 512, 512), np.float32)
    body, _ = C.chest_backgrounds(r, n, bank.size, body=bank.real_body, lungs=False)
    lung = bank.real_lung
    hu = torch.where(lung > 0, bank.real_hu, body)
    hu = hu + 8.0 * r.n(hu.shape) * (lung == 0).float()
    return hu[:, 0].numpy(), bank.real_mask[:, 0].numpy().astype(np.int8), lung[:, 0].numpy()


def composite_rows(bank: C.Bank, seed: int, idx: np.ndarray, chunk: int = 16):
    g = torch.Generator()
    g.manual_seed(seed)
    r = C.Rand(g, torch.device("cpu"))
    hus, masks, lungs = [], [], []
    for s in range(0, len(idx), chunk):
        ix = torch.from_numpy(idx[s:s + chunk])
        b = ix.numel()
        hu, lung = C.chest_backgrounds(r, b, bank.size)
        mask = torch.zeros_like(hu)
        hu, mask, _ = C.paste(bank, r, hu, mask, lung, ix, bank.crop_spacing[ix], False, torch.ones(b))
        hu = hu + 8.0 * r.n(hu.shape)
        hus.append(hu[:, 0].numpy())
        masks.append(mask[:, 0].numpy().astype(np.int8))
        lungs.append(lung[:, 0].float().numpy())
    return np.concatenate(hus), np.concatenate(masks), np.concatenate(lungs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="raw data folder or pack .npz (default ../shared/data)")
    ap.add_argument("--split", default="test", choices=D.SPLITS)
    ap.add_argument("--what", default="real", choices=["real", "composite"])
    ap.add_argument("--limit", type=int, default=240)
    ap.add_argument("--stride", type=int, default=0, help="every n-th crop (default: spread --limit evenly)")
    ap.add_argument("--seed", type=int, default=4242)
    ap.add_argument("--hu", default="calibrated", choices=["calibrated", "readme"],
                    help="real slices: HU by hucal's per-slice calibration against the same patient's HU crops "
                         "(default), or the data README's single inverse v*775-835")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    import pandas as pd

    data = D.load(a.data, allow_synthetic=False)
    part = D.split_data(data)[a.split]
    cal = None
    if a.what == "real" and a.hu == "calibrated":
        cal = hucal.calibrate(part["crops"], part["slices"])
        for k in sorted(cal):
            c = cal[k]
            print(f"{k}: HU = v*{c.scale:.1f} {c.offset:+.1f} ({c.how}, ncc {c.ncc:.3f})")
    bank = C.make_bank(part["crops"], part["slices"], "cpu", C.CROP_CANVAS, smooth=False, hu_cal=cal)
    if a.what == "real":
        hu, mask, lung = real_rows(bank, a.seed)
        ids = [f"{p}/{s}" for p, s in zip(part["slices"].patient, part["slices"].slice_id)]
    else:
        n = bank.n_crops
        if a.stride:
            idx = np.arange(0, n, a.stride)[:a.limit]
        else:
            idx = np.unique(np.linspace(0, n - 1, min(a.limit, n)).round().astype(np.int64))
        hu, mask, lung = composite_rows(bank, a.seed, idx)
        ids = [f"{part['crops'].patient[i]}/{part['crops'].slice_id[i]}" for i in idx]
    rows = {
        "label1": ["LR?"] * len(hu),
        "mask": [m for m in mask],
        "hu_array_old": [h.astype(np.float32) for h in hu],
        "hu_array": [(h * l).astype(np.float32) for h, l in zip(hu, lung)],
    }
    df = pd.DataFrame(rows, index=ids)
    if os.path.abspath(a.out).startswith(os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))):
        raise SystemExit("write the evaluation pickle outside the repository (it is derived from third-party data)")
    df.to_pickle(a.out)
    print(f"{a.out}: {len(df)} slices ({a.what}, {a.split}), {int((mask.reshape(len(mask), -1).sum(1) > 0).sum())} with nodule pixels")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
