import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch

from lungseg_train import export as E
from lungseg_train import models as M

ORT_NODE = os.environ.get("LUNGSEG_ORT_NODE_PATH", "")  # a node_modules folder holding onnxruntime-node


def _has_ort():
    try:
        import onnxruntime  # noqa: F401
        return True
    except Exception:
        return False


@pytest.mark.parametrize("name", ["resnet50-unet-small", "swin-unet-small"])
def test_export_writes_checked_model_card_and_parity(tmp_path, name):
    torch.manual_seed(0)
    m = M.build(name, img_size=64)
    x = np.random.default_rng(0).random((2, 1, 64, 64)).astype(np.float32)
    rep = E.export_model(m, name, str(tmp_path), {"architecture": "x", "threshold": 0.4}, x, size=64)
    folder = tmp_path / name
    assert rep["onnx"]["input_dims"] == ["batch", 1, 64, 64]
    assert rep["onnx"]["opset"] == 17
    assert rep["onnx"]["input"] == "input" and rep["onnx"]["output"] == "logits"
    card = json.loads((folder / "card.json").read_text())
    assert card["sha256"] == E.sha256_file(str(folder / "model.onnx"))
    assert card["input"] == {"channels": 1, "height": 64, "width": 64}
    assert card["normalisation"] == {"kind": "window", "center": -600.0, "width": 1500.0}
    xin = np.fromfile(folder / "parity_input.bin", "<f4").reshape(2, 1, 64, 64)
    assert np.array_equal(xin, x)
    want = m.eval()(torch.from_numpy(x)).detach().numpy()
    got = np.fromfile(folder / "parity_output.bin", "<f4").reshape(2, 1, 64, 64)
    assert np.allclose(got, want, atol=1e-5)
    if _has_ort():
        assert rep["parity"]["max_abs_diff_onnxruntime"] <= 1e-4
        assert rep["parity"]["max_abs_diff_batch1"] <= 1e-4
    elif ORT_NODE and shutil.which("node"):
        script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "ort_parity.js")
        r = subprocess.run(["node", script, str(folder)], env=dict(os.environ, NODE_PATH=ORT_NODE),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr


def test_saved_checkpoint_reexports(tmp_path):
    torch.manual_seed(1)
    m = M.build("resnet50-unet-small", img_size=64)
    folder = tmp_path / "failed" / "resnet50-unet-small"
    folder.mkdir(parents=True)
    card = {"name": "resnet50-unet-small", "architecture": "resnet50-unet", "threshold": 0.3}
    torch.save({"model": "resnet50-unet-small", "size": 64, "state_dict": m.state_dict(), "card": card},
               folder / "state_dict.pt")
    x = np.random.default_rng(2).random((1, 1, 64, 64)).astype("<f4")
    x.tofile(folder / "parity_input.bin")
    rep = E.export_checkpoint(str(folder / "state_dict.pt"), str(tmp_path / "out"))
    out = tmp_path / "out" / "resnet50-unet-small"
    assert json.loads((out / "card.json").read_text())["threshold"] == 0.3
    got = np.fromfile(out / "parity_output.bin", "<f4").reshape(1, 1, 64, 64)
    want = m.eval()(torch.from_numpy(x)).detach().numpy()
    assert np.allclose(got, want, atol=1e-5)
    assert rep["onnx"]["input_dims"] == ["batch", 1, 64, 64]


def test_json_safe_makes_strict_json():
    v = E.json_safe({"a": float("nan"), "b": [np.float32(1.5), np.int64(3), float("inf")], "c": {"d": 0.25}})
    assert json.loads(json.dumps(v, allow_nan=False)) == {"a": None, "b": [1.5, 3, None], "c": {"d": 0.25}}
