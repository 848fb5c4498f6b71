"""Smoke test: a few training steps of each compact model, export, checks.

    cd train && /usr/bin/python3 -m lungseg_train.smoke [--data PATH] [--keep DIR]

Runs on CPU in a few minutes: 128x128 inputs, batch 2, 2 steps per model,
a handful of crops and slices (real data when ../shared/data or a pack is
there, synthetic phantoms otherwise). For each model it checks that the
ONNX file passes onnx.checker with a dynamic batch axis, that card.json has
the fields pkg/model reads and the file's sha256, that the parity files
have the sizes parity.json declares, and (where onnxruntime is importable)
that ONNX Runtime reproduces the PyTorch logits within 1e-4.
Ends with "smoke: N passed, N failed".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback

import numpy as np

from . import data as D
from . import export as E
from . import models as M
from . import train as T

REQUIRED = ["name", "architecture", "version", "input", "normalisation", "threshold", "output",
            "input_name", "output_name", "sha256", "parameters", "training", "validation"]


def check_folder(folder: str, name: str, size: int) -> list:
    errs = []
    with open(os.path.join(folder, "card.json")) as f:
        card = json.load(f)
    for k in REQUIRED:
        if k not in card:
            errs.append(f"card lacks {k}")
    if card.get("name") != name:
        errs.append(f"card name {card.get('name')!r} != {name!r}")
    if card.get("input") != {"channels": 1, "height": size, "width": size}:
        errs.append(f"card input {card.get('input')}")
    n = card.get("normalisation", {})
    if (n.get("kind"), n.get("center"), n.get("width")) != ("window", -600.0, 1500.0):
        errs.append(f"card normalisation {n}")
    if not 0 < float(card.get("threshold", 0)) < 1:
        errs.append(f"threshold {card.get('threshold')}")
    if card.get("output") != "logits" or card.get("input_name") != "input" or card.get("output_name") != "logits":
        errs.append("card output/input_name/output_name")
    if card.get("sha256") != E.sha256_file(os.path.join(folder, "model.onnx")):
        errs.append("sha256 mismatch")
    chk = E.check_onnx(os.path.join(folder, "model.onnx"))
    if chk["input"] != "input" or chk["output"] != "logits" or chk["opset"] != E.OPSET:
        errs.append(f"onnx io/opset {chk['input']} {chk['output']} {chk['opset']}")
    if chk["input_dims"] != ["batch", 1, size, size]:
        errs.append(f"onnx input dims {chk['input_dims']}")
    with open(os.path.join(folder, "parity.json")) as f:
        par = json.load(f)
    for kind in ("input", "output"):
        want = int(np.prod(par[f"{kind}_shape"])) * 4
        got = os.path.getsize(os.path.join(folder, f"parity_{kind}.bin"))
        if got != want:
            errs.append(f"parity_{kind}.bin has {got} bytes, want {want}")
    y = np.fromfile(os.path.join(folder, "parity_output.bin"), "<f4")
    if not np.isfinite(y).all():
        errs.append("parity output not finite")
    for k in ("max_abs_diff_onnxruntime", "max_abs_diff_batch1"):
        if k in par and not par[k] <= 1e-4:
            errs.append(f"{k} = {par[k]}")
    return errs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="raw folder or pack (default ../shared/data, else phantoms)")
    ap.add_argument("--models", default=",".join(M.COMPACT))
    ap.add_argument("--crop-models", default="resnet50-unet-small",
                    help="also train these as crop models (--task crop, 64x64 windows)")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--keep", default="", help="write the exported models here instead of a temp folder")
    a = ap.parse_args(argv)
    t0 = time.time()
    path = a.data or D.default_data_path()
    if os.path.isfile(path):
        data = D.load_pack(path)
    elif os.path.isfile(os.path.join(path, "lidc", "MANIFEST.csv")):
        data = D.load_raw(path, max_patients=24)
    else:
        data = D.synthetic_phantoms()
    print(f"smoke: data {data.source}: {len(data.crops)} crops, {len(data.slices)} slices "
          f"({time.time() - t0:.1f}s)", flush=True)
    out = a.keep or tempfile.mkdtemp(prefix="lungseg-smoke-")
    passed, failed = 0, 0
    try:
        jobs = [(m, m, a.size, []) for m in a.models.split(",") if m]
        jobs += [(m + "-crop", m, 64, ["--task", "crop", "--name", m + "-crop"])
                 for m in a.crop_models.split(",") if m]
        for name, model, size, extra in jobs:
            t1 = time.time()
            args = T.parser().parse_args([
                "--model", model, "--recipe", "dicebce", "--minutes", "2", "--max-steps", "2",
                "--batch", "2", "--epoch-samples", "2", "--crop-limit", "16", "--eval-limit", "3",
                "--size", str(size), "--out", out, "--device", "cpu", "--threads", "2", "--lr", "1e-3"] + extra)
            args.loaded_data = data
            try:
                s = T.run(args)
                errs = check_folder(os.path.join(out, name), name, size)
                if extra:
                    card = s["card"]
                    if (card.get("task"), card.get("detector")) != ("crop", model) or \
                            card.get("cascade", {}).get("window") != size:
                        errs.append(f"crop card task/detector/cascade {card.get('task')} {card.get('detector')} "
                                    f"{card.get('cascade')}")
                if s["card"]["training"]["steps"] != 2:
                    errs.append(f"trained {s['card']['training']['steps']} steps, want 2")
                for h in s["history"]:
                    if not np.isfinite(h["loss"]):
                        errs.append(f"loss not finite at epoch {h['epoch']}")
            except Exception:
                errs = [traceback.format_exc()]
            dt = time.time() - t1
            if errs:
                failed += 1
                print(f"smoke: FAIL {name} ({dt:.0f}s): " + "; ".join(errs), flush=True)
            else:
                passed += 1
                par = s["export"]["parity"].get("max_abs_diff_onnxruntime", "n/a (no onnxruntime)")
                print(f"smoke: ok {name} ({dt:.0f}s): onnx {s['export']['bytes'] / 1e6:.1f} MB, "
                      f"ORT parity {par}", flush=True)
    finally:
        if not a.keep:
            shutil.rmtree(out, ignore_errors=True)
    print(f"smoke: total {time.time() - t0:.0f}s")
    print(f"smoke: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
