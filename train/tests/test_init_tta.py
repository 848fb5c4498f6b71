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


def _bn_stats(m, seed=3):
    # non-trivial running statistics and affine parameters, so the folding matters
    g = torch.Generator().manual_seed(seed)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            c = mod.num_features
            mod.running_mean.copy_(0.1 * torch.randn(c, generator=g))
            mod.running_var.copy_(0.5 + torch.rand(c, generator=g))
            mod.weight.data.copy_(1 + 0.2 * torch.randn(c, generator=g))
            mod.bias.data.copy_(0.1 * torch.randn(c, generator=g))


def test_init_from_onnx_with_folded_batchnorm_is_the_onnx_network_with_frozen_bn(tmp_path):
    torch.manual_seed(5)
    m = M.build("resnet50-unet-small", 64)
    _bn_stats(m)
    m.eval()
    x = np.random.default_rng(5).random((2, 1, 64, 64), dtype=np.float32)
    E.export_model(m, "m", str(tmp_path), {"architecture": "resnet50-unet", "variant": "compact"}, x, 64)
    path = os.path.join(tmp_path, "m", "model.onnx")
    torch.manual_seed(99)
    m2 = M.build("resnet50-unet-small", 64)
    rep = T.load_init(m2, path, 64)
    assert rep["kind"] == "onnx" and rep["frozen_bn"] is True
    want = np.fromfile(os.path.join(tmp_path, "m", "parity_output.bin"), "<f4").reshape(2, 1, 64, 64)
    with torch.no_grad():
        got = m2.eval()(torch.from_numpy(x)).numpy()
    assert np.abs(got - want).max() < 1e-4
    # frozen BN: training mode keeps every BatchNorm in eval, so a step changes no running statistic
    # and the forward pass in training mode is the eval one
    T.set_train(m2, frozen_bn=True)
    bns = [mod for mod in m2.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    assert bns and all(not b.training for b in bns) and m2.training
    before = [b.running_mean.clone() for b in bns]
    out = m2(torch.from_numpy(x))
    assert np.abs(out.detach().numpy() - want).max() < 1e-4
    out.mean().backward()
    assert all(torch.equal(a, b.running_mean) for a, b in zip(before, bns))
    assert bns[0].weight.grad is not None  # affine parameters still learn


SHIPPED = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                       "models", "resnet50-unet-small-crop")


@pytest.mark.skipif(not os.path.exists(os.path.join(SHIPPED, "parity_output.bin")), reason="no shipped model")
def test_init_from_the_shipped_resnet_crop_model_reproduces_its_parity_outputs():
    import json
    with open(os.path.join(SHIPPED, "parity.json")) as f:
        par = json.load(f)
    x = np.fromfile(os.path.join(SHIPPED, "parity_input.bin"), "<f4").reshape(par["input_shape"])
    want = np.fromfile(os.path.join(SHIPPED, "parity_output.bin"), "<f4").reshape(par["output_shape"])
    size = x.shape[-1]
    m = M.build("resnet50-unet-small", size)
    assert T.load_init(m, os.path.join(SHIPPED, "model.onnx"), size)["frozen_bn"]
    with torch.no_grad():
        got = m.eval()(torch.from_numpy(x)).numpy()
    assert np.abs(got - want).max() < 1e-4


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
