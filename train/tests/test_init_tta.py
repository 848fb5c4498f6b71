import os

import numpy as np
import pytest
import torch

from lungseg_train import export as E
from lungseg_train import models as M
from lungseg_train import train as T
from lungseg_train import tta_eval as TT


def _export(tmp_path, name, size=64, seed=5):
    torch.manual_seed(seed)
    m = M.build(name, size).eval()
    x = np.random.default_rng(seed).random((1, 1, size, size), dtype=np.float32)
    E.export_model(m, "m", str(tmp_path), {"architecture": M.SPECS[name]["family"], "variant": "compact"}, x, size)
    return m, os.path.join(tmp_path, "m", "model.onnx")


def test_init_from_onnx_continues_from_the_same_weights(tmp_path):
    m, path = _export(tmp_path, "swin-unet-small")
    torch.manual_seed(99)  # a different start, which the init must replace
    m2 = M.build("swin-unet-small", 64)
    rep = T.load_init(m2, path, 64)
    assert rep["kind"] == "onnx" and rep["sha256"] == E.sha256_file(path)
    for k, v in m.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k


def test_init_refuses_onnx_with_folded_batchnorm(tmp_path):
    _, path = _export(tmp_path, "resnet50-unet-small")
    with pytest.raises(SystemExit, match="BatchNorm"):
        T.load_init(M.build("resnet50-unet-small", 64), path, 64)


def test_init_from_checkpoint(tmp_path):
    torch.manual_seed(6)
    m = M.build("resnet50-unet-small", 64)
    p = tmp_path / "ck.pt"
    torch.save({"model": "resnet50-unet-small", "state_dict": m.state_dict()}, p)
    m2 = M.build("resnet50-unet-small", 64)
    assert T.load_init(m2, str(p), 64)["kind"] == "checkpoint"
    for k, v in m.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k


@pytest.mark.parametrize("mode,n", [("none", 1), ("flip2", 2), ("flip4", 4), ("d8", 8)])
def test_tta_maps_each_copy_back(mode, n):
    pairs = TT.transforms(mode)
    assert len(pairs) == n
    x = torch.arange(2 * 5 * 5, dtype=torch.float32).view(2, 1, 5, 5)
    seen = set()
    for fwd, back in pairs:
        assert torch.equal(back(fwd(x)), x)
        seen.add(fwd(x).numpy().tobytes())
    assert len(seen) == n  # all different transforms


def test_tta_of_an_equivariant_model_is_the_model():
    # a per-pixel model commutes with every flip and turn, so TTA changes nothing;
    # a model that looks at the left edge does not
    pix = torch.nn.Conv2d(1, 1, 1)
    x = torch.randn(3, 1, 8, 8)
    assert torch.allclose(TT.TTA(pix, "d8")(x), pix(x), atol=1e-5)

    class Edge(torch.nn.Module):
        def forward(self, x):
            return x[..., :1].expand_as(x)

    assert not torch.allclose(TT.TTA(Edge(), "flip2")(x), Edge()(x), atol=1e-3)


def test_init_records_the_earlier_training(tmp_path):
    import json
    _, path = _export(tmp_path, "swin-unet-small")
    card = {"name": "m", "sha256": E.sha256_file(path), "validation": {"dice": 0.4},
            "training": {"device": "H100", "minutes": 5.2, "epochs": 29, "recipe": {"name": "dicebce", "lr": 5e-4}}}
    with open(os.path.join(os.path.dirname(path), "card.json"), "w") as f:
        json.dump(card, f)
    rep = T.load_init(M.build("swin-unet-small", 64), path, 64)
    prev = rep["from_card"]
    assert prev["name"] == "m" and prev["sha256"] == rep["sha256"]
    assert prev["training"]["device"] == "H100" and prev["training"]["minutes"] == 5.2
    assert prev["training"]["recipe"]["lr"] == 5e-4 and prev["training"]["val_dice"] == 0.4
