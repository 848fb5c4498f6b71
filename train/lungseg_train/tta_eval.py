"""Test-time augmentation of shipped models, measured on the cards' own sets.

    cd train && /usr/bin/python3 -m lungseg_train.tta_eval ../models/unetr-small-crop \
        --data ../.gpu/lidc_pack.npz --modes none,flip4,d8

Each model folder's weights are read back from its model.onnx (onnx_weights)
and run by PyTorch on the same patient-disjoint evaluation sets that train.py
builds for the card (same seeds): for a crop model the validation and test
crop windows; for a whole-slice model the validation and test composites,
scored on the crops' own pixels too. For every mode the threshold is chosen
on validation (pooled Dice, 0.05..0.95) and the test figures are read at it,
so no test number picks anything.

Modes (probabilities averaged over the transformed copies, each mapped back):
  none   the model alone
  flip2  identity and left-right flip
  flip4  identity, left-right, up-down, both (= rotation by 180)
  d8     the eight symmetries of the square (flips and quarter turns)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Callable, List, Tuple

import torch

from . import composite as C
from . import data as D
from .onnx_weights import load_model_folder
from .train import _subset_crops, _subset_slices, predict_scores

Pair = Tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


def _rot(k: int) -> Pair:
    return (lambda x: torch.rot90(x, k, (-2, -1))), (lambda x: torch.rot90(x, -k, (-2, -1)))


def _flip(dims: Tuple[int, ...]) -> Pair:
    return (lambda x: torch.flip(x, dims)), (lambda x: torch.flip(x, dims))


def _compose(a: Pair, b: Pair) -> Pair:
    return (lambda x: b[0](a[0](x))), (lambda x: a[1](b[1](x)))


def transforms(mode: str) -> List[Pair]:
    ident = _rot(0)
    if mode == "none":
        return [ident]
    if mode == "flip2":
        return [ident, _flip((-1,))]
    if mode == "flip4":
        return [ident, _flip((-1,)), _flip((-2,)), _flip((-2, -1))]
    if mode == "d8":
        return [_rot(k) for k in range(4)] + [_compose(_flip((-1,)), _rot(k)) for k in range(4)]
    raise ValueError(f"unknown mode {mode!r} (none, flip2, flip4, d8)")


class TTA(torch.nn.Module):
    """Logit of the mean probability over the transformed copies."""

    def __init__(self, model: torch.nn.Module, mode: str):
        super().__init__()
        self.model, self.pairs = model, transforms(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.zeros_like(x)
        for fwd, back in self.pairs:
            p += torch.sigmoid(back(self.model(fwd(x))))
        p = (p / len(self.pairs)).clamp(1e-7, 1 - 1e-7)
        return torch.log(p) - torch.log1p(-p)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m lungseg_train.tta_eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", help="model folders (model.onnx + card.json)")
    ap.add_argument("--data", default=None, help="raw data folder or pack .npz (default ../shared/data)")
    ap.add_argument("--modes", default="none,flip4,d8")
    ap.add_argument("--eval-limit", type=int, default=0, help="at most this many val/test crops (0: all)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--json", default="", help="write the figures here")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    data = D.load(a.data)
    parts = D.split_data(data)
    lim = a.eval_limit or None
    out = []
    sets = {}
    for folder in a.folders:
        model, card, _ = load_model_folder(folder)
        crop = card.get("task") == "crop"
        if crop not in sets:
            canvas = C.CROP_CANVAS if crop else 256
            banks = [C.make_bank(_subset_crops(parts[k]["crops"], lim), _subset_slices(parts[k]["slices"], lim),
                                 torch.device("cpu"), canvas, not crop) for k in ("val", "test")]
            if crop:
                win = int(card["input"]["height"])
                evs = [C.crop_eval_set(banks[0], seed=1001, win=win), C.crop_eval_set(banks[1], seed=2001, win=win)]
            else:
                evs = [C.composite_eval_set(banks[0], seed=1001), C.composite_eval_set(banks[1], seed=2001)]
            sets[crop] = (banks, evs)
        (bank_v, bank_t), (ev_v, ev_t) = sets[crop]
        for mode in a.modes.split(","):
            t0 = time.time()
            m = TTA(model, mode).eval()
            sv, cv = predict_scores(m, ev_v, torch.device("cpu"), "none", a.batch, bank_v)
            thr = sv.best_threshold()
            st, ct = predict_scores(m, ev_t, torch.device("cpu"), "none", a.batch, bank_t)
            rec = {"model": card["name"], "mode": mode, "copies": len(transforms(mode)), "threshold": thr,
                   "val_dice": sv.summary(thr)["dice"], "val_crops_dice": cv.summary(thr)["dice"],
                   "test_dice": st.summary(thr)["dice"], "test_crops_dice": ct.summary(thr)["dice"],
                   "test_crops_dice_mean": ct.summary(thr)["dice_mean"], "n_val": len(sv), "n_test": len(st),
                   "seconds": round(time.time() - t0, 1)}
            out.append(rec)
            print(f"{rec['model']:28s} {mode:6s} thr {thr:.2f}  val {rec['val_dice']:.4f} (crops "
                  f"{rec['val_crops_dice']:.4f})  test {rec['test_dice']:.4f} crops {rec['test_crops_dice']:.4f} "
                  f"/ {rec['test_crops_dice_mean']:.4f}  {rec['seconds']}s", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
