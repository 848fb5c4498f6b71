"""Re-exports a shipped model with the current export code, without retraining.

    /usr/bin/python3 -m lungseg_train.reexport ../models/unetr-small

Reads the trained weights back out of model.onnx (onnx_weights, the loader
the bench's PyTorch side uses), loads them into the PyTorch architecture
named by the card, and checks on the stored parity input that this PyTorch model gives the
stored PyTorch outputs (so the weights are exactly the trained ones). Then it
exports again (opset 17, onnx.checker), rewrites parity_output.bin with this
machine's PyTorch outputs, checks ONNX Runtime against them where Python has
onnxruntime, and updates card.json (sha256, a "reexport" record). Training,
validation figures and the threshold are kept: the network computes the
same function.

Used when the export of an operator changes: models.InstanceNorm2d takes its
mean and variance in two steps, which brought ONNX Runtime's logits for
unetr-small from 1.6e-4 to about 1e-5 of PyTorch's.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch

from . import export as E
from .onnx_weights import load_model_folder

SAME_WEIGHTS_TOL = 1e-4  # stored vs recomputed PyTorch outputs (another torch version, same weights)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", help="model folder with model.onnx, card.json, parity_*")
    ap.add_argument("--why", default="models.InstanceNorm2d: mean and variance in two steps (row, then rows), "
                                      "so ONNX Runtime's float32 sums match PyTorch's")
    a = ap.parse_args(argv)
    card_path = os.path.join(a.folder, "card.json")
    onnx_path = os.path.join(a.folder, "model.onnx")
    model, card, size = load_model_folder(a.folder)
    x = np.fromfile(os.path.join(a.folder, "parity_input.bin"), "<f4").reshape(-1, 1, size, size)
    y_old = np.fromfile(os.path.join(a.folder, "parity_output.bin"), "<f4").reshape(x.shape[0], 1, size, size)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).numpy()
    same = float(np.abs(y - y_old).max())
    print(f"{card['name']}: PyTorch with the weights read back vs the stored PyTorch outputs: max |diff| {same:.3g}")
    if not same <= SAME_WEIGHTS_TOL:
        raise SystemExit("the weights read back do not reproduce the stored outputs; not re-exporting")
    tmp = os.path.join(a.folder, "model.onnx.new")
    exporter = E.export_onnx(model, tmp, size)
    chk = E.check_onnx(tmp)
    os.replace(tmp, onnx_path)
    par = E.write_parity(model, a.folder, x, onnx_path)
    card["sha256"] = E.sha256_file(onnx_path)
    card.setdefault("training", {})["reexport"] = {
        "torch": torch.__version__, "exporter": exporter, "opset": chk["opset"],
        "stored_vs_recomputed_pytorch_max_abs_diff": same, "why": a.why,
        "note": "weights read back from the previous model.onnx; same function; validation figures kept"}
    val = card.setdefault("validation", {})
    if "max_abs_diff_onnxruntime" in par:
        val["parity_max_abs_diff_onnxruntime"] = par["max_abs_diff_onnxruntime"]
    else:
        val.pop("parity_max_abs_diff_onnxruntime", None)  # measured by the Go parity test instead
    with open(card_path, "w") as f:
        json.dump(E.json_safe(card), f, indent=2, allow_nan=False)
        f.write("\n")
    print(f"{card['name']}: re-exported ({chk['bytes'] / 1e6:.1f} MB), sha256 {card['sha256'][:12]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
