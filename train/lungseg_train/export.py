"""ONNX export, parity files and card.json for one model.

Layout written under an output root:

    <root>/<name>/model.onnx          opset 17, input "input" [N,1,256,256], output "logits"
    <root>/<name>/card.json           read by pkg/model (Go)
    <root>/<name>/parity_input.bin    float32 little-endian, shape in parity.json
    <root>/<name>/parity_output.bin   PyTorch (CPU, fp32) logits for those inputs
    <root>/<name>/parity.json

The export always runs on a CPU fp32 copy of the model, so the parity
output is what ONNX Runtime on a CPU should reproduce to ~1e-5.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import os
import warnings
from typing import Dict, Optional

import numpy as np
import torch

from . import data as D

OPSET = 17
MAX_MODEL_BYTES = 25_000_000  # the shipping budget for one model.onnx
CARD_VERSION = "1.0.0"


def cpu_copy(model: torch.nn.Module) -> torch.nn.Module:
    m = copy.deepcopy(model).cpu().float().eval()
    return m.to(memory_format=torch.contiguous_format)


def export_onnx(model: torch.nn.Module, path: str, size: int = 256, opset: int = OPSET) -> str:
    """TorchScript-based export (dynamo=False where that keyword exists)."""
    m = cpu_copy(model)
    x = torch.rand(2, 1, size, size)
    kw = dict(opset_version=opset, input_names=["input"], output_names=["logits"],
              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, do_constant_folding=True)
    has_dynamo = "dynamo" in inspect.signature(torch.onnx.export).parameters
    if has_dynamo:
        kw["dynamo"] = False
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            try:
                torch.onnx.export(m, (x,), path, **kw)
                return "torchscript"
            except Exception as e:  # noqa: BLE001
                if not has_dynamo:
                    raise
                # a torch without the TorchScript exporter: torch.export-based one
                print(f"export: TorchScript exporter failed ({type(e).__name__}: {e}); trying dynamo=True",
                      flush=True)
                kw.pop("dynamic_axes")
                kw["dynamo"] = True
                kw["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=1024)},)
                torch.onnx.export(m, (x,), path, **kw)
                return "dynamo"


def check_onnx(path: str) -> Dict[str, object]:
    import onnx

    mp = onnx.load(path)
    onnx.checker.check_model(mp)
    g = mp.graph
    inp = g.input[0]
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    ops = sorted({n.op_type for n in g.node})
    opset = max((o.version for o in mp.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return {"input": inp.name, "input_dims": dims, "output": g.output[0].name, "opset": int(opset),
            "ops": ops, "bytes": os.path.getsize(path)}


def onnxruntime_run(path: str, x: np.ndarray) -> Optional[np.ndarray]:
    """Runs the model with onnxruntime's CPU provider if the module exists."""
    try:
        import onnxruntime as ort  # type: ignore
    except Exception:
        return None
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x.astype(np.float32)})[0]


def json_safe(obj):
    """Replaces NaN/inf with None (strict JSON, as Go's encoding/json wants) and numpy scalars with Python ones."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if np.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_parity(model: torch.nn.Module, folder: str, inputs: np.ndarray, onnx_path: str) -> Dict[str, object]:
    """Writes parity_input.bin / parity_output.bin / parity.json; checks ORT when available."""
    x = np.ascontiguousarray(inputs.astype("<f4"))
    with torch.no_grad():
        y = cpu_copy(model)(torch.from_numpy(x.astype(np.float32))).numpy().astype("<f4")
    x.tofile(os.path.join(folder, "parity_input.bin"))
    y.tofile(os.path.join(folder, "parity_output.bin"))
    info: Dict[str, object] = {"input_shape": list(x.shape), "output_shape": list(y.shape), "dtype": "float32",
                               "byte_order": "little", "input_name": "input", "output_name": "logits",
                               "tolerance": 1e-4, "torch": torch.__version__}
    got = onnxruntime_run(onnx_path, x)
    if got is not None:
        import onnxruntime as ort  # type: ignore
        info["onnxruntime"] = ort.__version__
        info["max_abs_diff_onnxruntime"] = float(np.abs(got - y).max())
        # a single image must give the same logits as inside the batch (dynamic batch axis)
        one = onnxruntime_run(onnx_path, x[:1])
        info["max_abs_diff_batch1"] = float(np.abs(one - y[:1]).max())
    with open(os.path.join(folder, "parity.json"), "w") as f:
        json.dump(json_safe(info), f, indent=2, allow_nan=False)
    return info


def export_model(model: torch.nn.Module, name: str, out_root: str, card: Dict[str, object],
                 parity_inputs: np.ndarray, size: int = 256) -> Dict[str, object]:
    """Exports model, writes parity files and card.json; returns a report."""
    folder = os.path.join(out_root, name)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "model.onnx")
    exporter = export_onnx(model, path, size)
    chk = check_onnx(path)
    chk["exporter"] = exporter
    par = write_parity(model, folder, parity_inputs, path)
    c = dict(card)
    c.update({
        "name": name,
        "input": {"channels": 1, "height": size, "width": size},
        "normalisation": {"kind": "window", "center": D.WINDOW_CENTER, "width": D.WINDOW_WIDTH},
        "output": "logits",
        "input_name": "input",
        "output_name": "logits",
        "sha256": sha256_file(path),
    })
    c.setdefault("version", CARD_VERSION)
    val = dict(c.get("validation") or {})
    if "max_abs_diff_onnxruntime" in par:
        val["parity_max_abs_diff_onnxruntime"] = par["max_abs_diff_onnxruntime"]
    c["validation"] = val
    with open(os.path.join(folder, "card.json"), "w") as f:
        json.dump(json_safe(c), f, indent=2, allow_nan=False)
        f.write("\n")
    return {"folder": folder, "onnx": chk, "parity": par, "bytes": chk["bytes"],
            "fits_budget": chk["bytes"] <= MAX_MODEL_BYTES, "sha256": c["sha256"]}


def export_checkpoint(ckpt_path: str, out_root: str) -> Dict[str, object]:
    """Re-exports a state_dict.pt that train.py saved when its export failed."""
    from . import models as M

    ck = torch.load(ckpt_path, map_location="cpu")
    size = int(ck.get("size", 256))
    model = M.build(ck["model"], size)
    model.load_state_dict(ck["state_dict"])
    card = ck["card"]
    pin = os.path.join(os.path.dirname(ckpt_path), "parity_input.bin")
    if os.path.isfile(pin):
        x = np.fromfile(pin, "<f4").reshape(-1, 1, size, size)
    else:
        x = np.random.default_rng(0).random((2, 1, size, size)).astype(np.float32)
    return export_model(model, card["name"], out_root, card, x, size)


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python3 -m lungseg_train.export",
                                 description="Export a saved state_dict.pt (from a failed export) to ONNX + card.")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--out", required=True, help="output root; writes OUT/<name>/")
    a = ap.parse_args(argv)
    rep = export_checkpoint(a.checkpoint, a.out)
    print(json.dumps({k: v for k, v in rep.items() if k != "onnx"}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
