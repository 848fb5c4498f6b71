"""Re-exports a shipped model with the current export code, without retraining.

    /usr/bin/python3 -m lungseg_train.reexport ../models/unetr-small

Reads the trained weights back out of model.onnx (initializers by parameter
name, Identity aliases of shared ones, and the Linear weights that the
exporter stores transposed as anonymous MatMul inputs, matched in graph
order and by shape), loads them into the PyTorch architecture named by the
card, and checks on the stored parity input that this PyTorch model gives the
stored PyTorch outputs (so the weights are exactly the trained ones). Then it
exports again (opset 17, onnx.checker), rewrites parity_output.bin with this
machine's PyTorch outputs, checks ONNX Runtime against them where Python has
onnxruntime, and updates card.json (sha256, a "reexport" record). Training,
validation figures and the threshold are kept: the network computes the
same function.

Used when the export of an operator changes: models.InstanceNorm2d takes its
mean and variance in two steps, which brought ONNX Runtime's logits for
unetr-small from 1.6e-4 to about 1e-5 of PyTorch's. It reads exports whose
parameters kept their names (all exports before that change); the current
InstanceNorm2d's scale and shift are folded into unnamed constants by the
exporter, so a model exported since cannot be read back this way (retrain or
keep its state_dict).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Dict

import numpy as np
import torch

from . import export as E
from . import models as M

SAME_WEIGHTS_TOL = 1e-4  # stored vs recomputed PyTorch outputs (another torch version, same weights)


def onnx_state(path: str, model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """The state_dict of model, read from the initializers of the ONNX file at path."""
    import onnx
    from onnx import numpy_helper

    mp = onnx.load(path)
    vals = {i.name: numpy_helper.to_array(i) for i in mp.graph.initializer}
    for n in mp.graph.node:
        if n.op_type == "Identity" and n.input[0] in vals:
            vals[n.output[0]] = vals[n.input[0]]
    sd = model.state_dict()
    out = {k: torch.from_numpy(np.array(vals[k])) for k in sd if k in vals}
    missing = [k for k in sd if k not in out]
    mm = [vals[n.input[1]] for n in mp.graph.node if n.op_type == "MatMul" and n.input[1] in vals]
    linear = [k for k in missing if k.endswith(".weight") and sd[k].dim() == 2]
    if len(mm) != len(linear):
        raise SystemExit(f"{path}: {len(mm)} MatMul weights for {len(linear)} unnamed Linear weights")
    for k, w in zip(linear, mm):
        if tuple(w.T.shape) != tuple(sd[k].shape):
            raise SystemExit(f"{path}: MatMul weight {w.shape} does not fit {k} {tuple(sd[k].shape)}")
        out[k] = torch.from_numpy(np.ascontiguousarray(w.T))
    left = [k for k in sd if k not in out and not k.endswith("num_batches_tracked")]
    if left:
        raise SystemExit(f"{path}: no value for {left[:5]}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", help="model folder with model.onnx, card.json, parity_*")
    ap.add_argument("--why", default="models.InstanceNorm2d: mean and variance in two steps (row, then rows), "
                                      "so ONNX Runtime's float32 sums match PyTorch's")
    a = ap.parse_args(argv)
    card_path = os.path.join(a.folder, "card.json")
    with open(card_path) as f:
        card = json.load(f)
    arch, variant = card["architecture"], card.get("variant", "compact")
    spec = [n for n, s in M.SPECS.items() if s["family"] == arch and s["variant"] == variant]
    if len(spec) != 1:
        raise SystemExit(f"no single model spec for {arch}/{variant}")
    size = int(card["input"]["height"])
    model = M.build(spec[0], size).eval()
    onnx_path = os.path.join(a.folder, "model.onnx")
    model.load_state_dict(onnx_state(onnx_path, model))
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
