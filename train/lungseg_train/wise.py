"""WiSE-FT: a crop model's weights mixed with those of its fine-tuned successor.

    cd train && /usr/bin/python3 -m lungseg_train.wise ../models/swin-unet-small-crop \\
        /work/ft/swinft/out/swin-unet-small-crop --alpha 0.7 --version 1.1.0 \\
        --data ../.gpu/lidc_pack.npz --threads 2 --out /work/ft/swinft/wise

theta = (1 - alpha) * theta_base + alpha * theta_candidate for every floating
parameter and buffer (Wortsman et al., "Robust fine-tuning of zero-shot
models", 2022). Both folders are registry folders of the same architecture,
read back from their model.onnx (onnx_weights). The mix is exported as a
registry folder OUT/<name> with parity files; its card is the candidate's
with a `training.wise_ft` block naming both parents, the threshold chosen on
the validation bare crops (as bare_eval does), and `validation.val_bare` /
`test_bare` measured on the mix (the parents' window figures are dropped: they
describe other weights).

Why: fine-tuning a crop model on bare crops raised its bare-crop Dice but
lowered what it does tiled over real slices; the mix keeps part of each.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import numpy as np
import torch

from . import composite as C
from . import data as D
from . import models as M
from . import zctx as Z
from .bare_eval import bare_probs, scores_of
from .export import export_model, sha256_file
from .onnx_weights import load_model_folder


def mix(base: torch.nn.Module, cand: torch.nn.Module, alpha: float) -> torch.nn.Module:
    """A copy of base with (1-alpha)*base + alpha*cand in every floating tensor."""
    s0, s1 = base.state_dict(), cand.state_dict()
    if s0.keys() != s1.keys():
        raise ValueError("the two models do not have the same parameters")
    sd = {k: ((1 - alpha) * v + alpha * s1[k]) if v.is_floating_point() else v for k, v in s0.items()}
    m = copy.deepcopy(base)
    m.load_state_dict(sd)
    return m.eval()


def from_state_dict(base: torch.nn.Module, path: str) -> torch.nn.Module:
    """A copy of base with the state dict at path (every key of base, no other)."""
    m = copy.deepcopy(base)
    m.load_state_dict(torch.load(path, map_location="cpu"), strict=True)
    return m.eval()


def checkpoint_card(c0: dict, path: str) -> dict:
    """The card of a checkpoint exported through wise: the base's, with its training block replaced."""
    c = copy.deepcopy(c0)
    c["training"] = {"init": "checkpoint", "checkpoint": os.path.basename(path),
                     "sha256_checkpoint": sha256_file(path)}
    split = c0.get("training", {}).get("split")
    if split is not None:  # every checkpoint here trains on the patient split of D.split_patients
        c["training"]["split"] = split
    c.pop("version", None)
    c.pop("sha256", None)
    return c


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m lungseg_train.wise", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base", help="registry folder of the model fine-tuned from (alpha 0)")
    ap.add_argument("candidate", help="registry folder of the fine-tuned model (alpha 1), or a PyTorch state "
                    "dict (.pt, e.g. zctx's W/zctx0*.best.pt) of the base's architecture: exported as it is "
                    "(--alpha 1 only: a registry ResNet's BatchNorm is folded into its convolutions, a "
                    "checkpoint's is not, so the two do not mix)")
    ap.add_argument("--alpha", type=float, required=True)
    ap.add_argument("--width", type=int, default=0,
                    help="a .pt candidate of another width than the base's (zctx --width N): the compact "
                         "ResNet50-UNet built at that width takes its weights")
    ap.add_argument("--version", required=True, help="card version of the mix")
    ap.add_argument("--out", required=True, help="writes OUT/<name>/")
    ap.add_argument("--data", default=None)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--batch", type=int, default=16)
    a = ap.parse_args(argv)
    if not 0.0 <= a.alpha <= 1.0:
        raise SystemExit("--alpha must lie in [0, 1]")
    if a.threads:
        torch.set_num_threads(a.threads)
    ckpt = a.candidate.endswith(".pt")
    if ckpt and a.alpha != 1.0:
        raise SystemExit("a .pt candidate is exported as it is: use --alpha 1")
    if a.width and not ckpt:
        raise SystemExit("--width goes with a .pt candidate")
    m0, c0, size = load_model_folder(a.base)
    if ckpt:
        arch = Z.build(0, a.width) if a.width else m0
        m1, c1, size1 = from_state_dict(arch, a.candidate), checkpoint_card(c0, a.candidate), size
    else:
        m1, c1, size1 = load_model_folder(a.candidate)
    if c0.get("name") != c1.get("name") or size != size1:
        raise SystemExit(f"{a.base} and {a.candidate} are not the same model ({c0.get('name')}, {c1.get('name')})")
    m = m1 if ckpt else mix(m0, m1, a.alpha)  # alpha is 1 for a checkpoint
    t0 = time.time()
    parts = D.split_data(D.load(a.data))
    bv, bt = (C.bare_eval_set(parts[k]["crops"], size) for k in ("val", "test"))
    with torch.no_grad():
        sv, st = scores_of(bare_probs(m, bv, a.batch), bv), scores_of(bare_probs(m, bt, a.batch), bt)
    thr = sv.best_threshold()
    val_bare, test_bare = sv.summary(thr), st.summary(thr)
    card = copy.deepcopy(c1)
    card.pop("sha256", None)
    card["version"] = a.version
    card["threshold"] = thr
    if ckpt:
        card["description"] = (f"{c1['name']} exported from the PyTorch checkpoint {os.path.basename(a.candidate)} "
                               f"(lungseg_train.wise, alpha 1; threshold chosen on validation bare crops)")
        if a.width:
            card["description"] += f"; first-stage width {a.width} (the compact spec has 16), decoder scaled with it"
        card["parameters"] = M.count_parameters(m)
    else:
        card["description"] = (f"{c1['name']} {c0.get('version', '?')} and its fine-tuned successor mixed by weight "
                               f"(WiSE-FT, alpha {a.alpha}: {1 - a.alpha:.2f} of the first, {a.alpha:.2f} of the "
                               f"second; lungseg_train.wise). " + str(c0.get("description", "")))
    tr = dict(card.get("training") or {})
    if not ckpt:
        tr["wise_ft"] = {"alpha": a.alpha,
                         "base": {"name": c0["name"], "version": c0.get("version"), "sha256": c0.get("sha256")},
                         "candidate": {"name": c1["name"], "version": c1.get("version"), "sha256": c1.get("sha256"),
                                       "training": {k: c1.get("training", {}).get(k) for k in
                                                    ("minutes", "epochs", "best_epoch", "steps", "batch", "device",
                                                     "bare_frac", "init", "ct_backgrounds", "recipe")}}}
    card["training"] = tr
    card["validation"] = {
        "threshold_selected_on": "val bare crops, mean Dice over images with truth, thresholds 0.05..0.95",
        "val_bare": val_bare, "test_bare": test_bare, "test_bare_mean_dice": test_bare["mean_dice"],
    }
    par = np.fromfile(os.path.join(a.base if ckpt else a.candidate, "parity_input.bin"), "<f4").reshape(-1, 1, size, size)
    rep = export_model(m, c1["name"], a.out, card, par, size)
    print(f"{rep['folder']}: alpha {a.alpha} threshold {thr:.2f} val bare {val_bare['mean_dice']:.4f} "
          f"test bare {test_bare['mean_dice']:.4f} parity {rep['parity'].get('max_abs_diff_onnxruntime')} "
          f"({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
