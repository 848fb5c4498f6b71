"""Crop models on held-out bare crops (the issue-14 headline).

    cd train && /usr/bin/python3 -m lungseg_train.bare_eval ../models/resnet50-unet-small-crop \\
        --data ../.gpu/lidc_pack.npz --threads 2 --json /work/ft/baseline.json

Each folder's weights are read back from its model.onnx (onnx_weights) and run
by PyTorch on the validation and test patients' crops as they are, each
padded with air (HU -1024) into the model window by data.pad_bare_crop, only the crop's own
pixels scored. The threshold is the one with the best mean Dice over
validation crops with truth (metrics.Scores.best_threshold); test is read at
it. Also given: the test figures at the card's own threshold.
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


@torch.no_grad()
def bare_scores(model, bs: C.BareSet, batch: int = 16, forward=None) -> MX.Scores:
    """Scores of model on a BareSet (crop pixels only, with size bins)."""
    model.eval()
    f = forward or model
    sc = MX.Scores()
    for s in range(0, bs.x.shape[0], batch):
        prob = torch.sigmoid(f(bs.x[s:s + batch]).float())
        sc.add(prob, bs.y[s:s + batch], bs.valid[s:s + batch], bs.diam[s:s + batch])
    return sc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m lungseg_train.bare_eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--data", default=None)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--json", default="")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    parts = D.split_data(D.load(a.data))
    out = []
    sets = {}
    for folder in a.folders:
        model, card, size = load_model_folder(folder)
        if size not in sets:
            sets[size] = [C.bare_eval_set(parts[k]["crops"], size) for k in ("val", "test")]
        bv, bt = sets[size]
        t0 = time.time()
        sv = bare_scores(model, bv, a.batch)
        thr = sv.best_threshold()
        st = bare_scores(model, bt, a.batch)
        rec = {"model": card["name"], "threshold": thr, "card_threshold": card.get("threshold"),
               "val_bare": sv.summary(thr), "test_bare": st.summary(thr),
               "test_bare_at_card_threshold": st.summary(float(card.get("threshold", 0.5))),
               "seconds": round(time.time() - t0, 1)}
        out.append(rec)
        print(f"{rec['model']} thr {thr:.2f} (card {rec['card_threshold']})\n  val  {MX.fmt(rec['val_bare'])}\n"
              f"  test {MX.fmt(rec['test_bare'])}\n  test@card {MX.fmt(rec['test_bare_at_card_threshold'])}\n"
              f"  {rec['seconds']}s", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
