"""Crop models on held-out bare crops (the issue-14 headline).

    cd train && /usr/bin/python3 -m lungseg_train.bare_eval ../models/resnet50-unet-small-crop \\
        --data ../.gpu/lidc_pack.npz --threads 2 --json /work/ft/baseline.json

Each folder's weights are read back from its model.onnx (onnx_weights) and run
by PyTorch on the validation and test patients' crops as they are, each
padded with air (HU -1024) into the model window by data.pad_bare_crop, only the crop's own
pixels scored. The threshold is the one with the best mean Dice over
validation crops with truth (metrics.Scores.best_threshold); test is read at
it. Also given: the test figures at the card's own threshold.

    --modes none,flip4   test-time augmentation (tta_eval.transforms: none,
                         flip2, flip4, d8), one row per folder and mode
    --ensemble           one more row per mode: the folders' probabilities
                         averaged (same window size), threshold chosen on
                         validation like the others
    --oracle             also the test mean if every crop had its own best
                         threshold (metrics.Scores.oracle_mean): the most any
                         threshold rule could give these probabilities
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from . import composite as C
from . import data as D
from . import metrics as MX
from .onnx_weights import load_model_folder
from .tta_eval import TTA, transforms


@torch.no_grad()
def bare_scores(model, bs: C.BareSet, batch: int = 16, forward=None) -> MX.Scores:
    """Scores of model on a BareSet (crop pixels only, with size bins)."""
    return scores_of(bare_probs(model, bs, batch, forward=forward), bs)


@torch.no_grad()
def bare_probs(model, bs: C.BareSet, batch: int = 16, mode: str = "none", forward=None) -> torch.Tensor:
    """[N,1,W,W] probabilities of model on a BareSet, averaged over the
    copies of test-time augmentation mode (tta_eval.transforms)."""
    model.eval()
    f = forward or model
    if mode != "none":
        f = TTA(f, mode)
    return torch.cat([torch.sigmoid(f(bs.x[s:s + batch]).float()) for s in range(0, bs.x.shape[0], batch)])


def scores_of(prob: torch.Tensor, bs: C.BareSet, batch: int = 64) -> MX.Scores:
    sc = MX.Scores()
    for s in range(0, prob.shape[0], batch):
        sc.add(prob[s:s + batch], bs.y[s:s + batch], bs.valid[s:s + batch], bs.diam[s:s + batch])
    return sc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m lungseg_train.bare_eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--data", default=None)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--json", default="")
    ap.add_argument("--modes", default="none", help="test-time augmentation: none, flip2, flip4, d8 (comma list)")
    ap.add_argument("--ensemble", action="store_true", help="also the folders' mean probability, per mode")
    ap.add_argument("--oracle", action="store_true", help="also the test mean at each crop's own best threshold")
    a = ap.parse_args(argv)
    modes = [m for m in a.modes.split(",") if m]
    for m in modes:
        transforms(m)  # refuse an unknown mode before any work
    if a.threads:
        torch.set_num_threads(a.threads)
    parts = D.split_data(D.load(a.data))
    out = []
    sets = {}
    sums = {}  # (size, mode) -> [val prob sum, test prob sum, names]

    def report(name, mode, pv, pt, bv, bt, card_thr, t0):
        sv, st = scores_of(pv, bv), scores_of(pt, bt)
        thr = sv.best_threshold()
        rec = {"model": name, "tta": mode, "threshold": thr, "card_threshold": card_thr,
               "val_bare": sv.summary(thr), "test_bare": st.summary(thr),
               "seconds": round(time.time() - t0, 1)}
        if card_thr is not None:
            rec["test_bare_at_card_threshold"] = st.summary(float(card_thr))
        if a.oracle:
            rec["test_bare_oracle_mean"] = st.oracle_mean()
        out.append(rec)
        at_card = f"\n  test@card {MX.fmt(rec['test_bare_at_card_threshold'])}" if card_thr is not None else ""
        oracle = f"\n  test, each crop at its own best threshold: mean {rec['test_bare_oracle_mean']:.4f}" if a.oracle else ""
        print(f"{name} tta {mode} thr {thr:.2f} (card {card_thr})\n  val  {MX.fmt(rec['val_bare'])}\n"
              f"  test {MX.fmt(rec['test_bare'])}{at_card}{oracle}\n  {rec['seconds']}s", flush=True)

    for folder in a.folders:
        model, card, size = load_model_folder(folder)
        if size not in sets:
            sets[size] = [C.bare_eval_set(parts[k]["crops"], size) for k in ("val", "test")]
        bv, bt = sets[size]
        for mode in modes:
            t0 = time.time()
            pv, pt = bare_probs(model, bv, a.batch, mode), bare_probs(model, bt, a.batch, mode)
            report(card["name"], mode, pv, pt, bv, bt, card.get("threshold", 0.5), t0)
            if a.ensemble:
                acc = sums.setdefault((size, mode), [0, 0, []])
                acc[0], acc[1] = acc[0] + pv, acc[1] + pt
                acc[2].append(card["name"])
    for (size, mode), (sv_, st_, names) in sums.items():
        if len(names) > 1:
            bv, bt = sets[size]
            report("mean(" + ",".join(names) + ")", mode, sv_ / len(names), st_ / len(names), bv, bt, None,
                   time.time())
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
