import json
import os

import numpy as np
import torch

from lungseg_train import export as E
from lungseg_train import models as M
from lungseg_train import reexport as R
from lungseg_train.onnx_weights import load_onnx_weights


def test_reexport_reads_the_weights_back_and_keeps_the_function(tmp_path, monkeypatch):
    # an export made the old way (torch's InstanceNorm2d, as the shipped UNETRs were), then re-exported
    torch.manual_seed(3)
    with monkeypatch.context() as mp:
        mp.setattr(M, "InstanceNorm2d", torch.nn.InstanceNorm2d)
        m = M.build("unetr-small", 64).eval()
    card = {"architecture": "unetr", "variant": "compact", "threshold": 0.5, "validation": {"dice": 0.5}}
    x = np.random.default_rng(1).random((2, 1, 64, 64), dtype=np.float32)
    E.export_model(m, "u", str(tmp_path), card, x, 64)
    folder = os.path.join(tmp_path, "u")
    before = np.fromfile(os.path.join(folder, "parity_output.bin"), "<f4")
    # the weights read back from the ONNX file are the model's own
    m2 = M.build("unetr-small", 64).eval()
    assert type(m2.encoder1.norm1) is M.InstanceNorm2d
    load_onnx_weights(m2, os.path.join(folder, "model.onnx"), 64)
    for k, v in m.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k
    assert R.main([folder]) == 0
    after = np.fromfile(os.path.join(folder, "parity_output.bin"), "<f4")
    assert np.abs(after - before).max() < 1e-5
    with open(os.path.join(folder, "card.json")) as f:
        c = json.load(f)
    assert c["sha256"] == E.sha256_file(os.path.join(folder, "model.onnx"))
    assert c["validation"]["dice"] == 0.5 and "reexport" in c["training"]


def test_current_exports_read_back_too(tmp_path):
    # models.InstanceNorm2d's scale and shift lose their names in the export
    torch.manual_seed(4)
    m = M.build("unetr-small", 64).eval()
    x = np.random.default_rng(2).random((1, 1, 64, 64), dtype=np.float32)
    E.export_model(m, "u", str(tmp_path), {"architecture": "unetr", "variant": "compact"}, x, 64)
    m2 = M.build("unetr-small", 64).eval()
    load_onnx_weights(m2, os.path.join(tmp_path, "u", "model.onnx"), 64)
    for k, v in m.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k
