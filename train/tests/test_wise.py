import pytest
import torch

from lungseg_train import models as M
from lungseg_train import wise as W
from lungseg_train import zctx as Z


def test_mix_interpolates_every_floating_tensor():
    torch.manual_seed(1)
    a = M.build("resnet50-unet-small", 64)
    torch.manual_seed(2)
    b = M.build("resnet50-unet-small", 64)
    for k, v in b.state_dict().items():  # buffers too (BatchNorm statistics)
        if v.is_floating_point():
            v.add_(torch.randn_like(v))
    sa = {k: v.clone() for k, v in a.state_dict().items()}
    sb = {k: v.clone() for k, v in b.state_dict().items()}
    m0, m1, mh = W.mix(a, b, 0.0).state_dict(), W.mix(a, b, 1.0).state_dict(), W.mix(a, b, 0.3).state_dict()
    n = 0
    for k, v in sa.items():
        if not v.is_floating_point():
            assert torch.equal(mh[k], v), k
            continue
        n += 1
        assert torch.equal(m0[k], v) and torch.allclose(m1[k], sb[k]), k
        assert torch.allclose(mh[k], 0.7 * v + 0.3 * sb[k], atol=1e-6), k
    assert n > 10
    for k, v in a.state_dict().items():  # the inputs are left alone
        assert torch.equal(v, sa[k]) and torch.equal(b.state_dict()[k], sb[k]), k


def test_mix_refuses_different_architectures():
    with pytest.raises(ValueError):
        W.mix(M.build("resnet50-unet-small", 64), M.build("swin-unet-small", 64), 0.5)


def test_from_state_dict_loads_a_checkpoint_and_its_card(tmp_path):
    torch.manual_seed(3)
    base = M.build("resnet50-unet-small", 64).eval()
    torch.manual_seed(4)
    other = M.build("resnet50-unet-small", 64)
    path = tmp_path / "ckpt.best.pt"
    torch.save(other.state_dict(), path)
    m = W.from_state_dict(base, str(path))
    for k, v in other.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k
    assert not torch.equal(base.state_dict()["head.weight"], other.state_dict()["head.weight"])  # base kept
    card = W.checkpoint_card({"name": "x-crop", "version": "1.1.0", "sha256": "ab", "training": {"epochs": 3}},
                             str(path))
    assert card["name"] == "x-crop" and "version" not in card and "sha256" not in card
    assert card["training"]["checkpoint"] == "ckpt.best.pt" and len(card["training"]["sha256_checkpoint"]) == 64
    assert "split" not in card["training"]  # the base had none
    split = {"train": ["A"], "val": ["B"], "test": ["C"]}
    card = W.checkpoint_card({"name": "x-crop", "training": {"epochs": 3, "split": split}}, str(path))
    assert card["training"]["split"] == split and "epochs" not in card["training"]  # heldout reads the split
    torch.save({"not": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(RuntimeError):
        W.from_state_dict(base, str(tmp_path / "bad.pt"))


def test_checkpoint_candidate_needs_alpha_one(tmp_path):
    with pytest.raises(SystemExit, match="alpha 1"):
        W.main([str(tmp_path / "no-such-folder"), str(tmp_path / "c.pt"), "--alpha", "0.5",
                "--version", "9", "--out", str(tmp_path)])


def test_width_goes_with_a_checkpoint_of_that_width(tmp_path):
    with pytest.raises(SystemExit, match="--width goes with a .pt"):
        W.main([str(tmp_path / "no-such-folder"), str(tmp_path / "reg"), "--alpha", "1", "--width", "24",
                "--version", "9", "--out", str(tmp_path)])
    wide = Z.build(0, 24)
    path = tmp_path / "wide.best.pt"
    torch.save(wide.state_dict(), path)
    with pytest.raises(RuntimeError):  # the compact base's shapes
        W.from_state_dict(M.build("resnet50-unet-small", 64), str(path))
    m = W.from_state_dict(Z.build(0, 24), str(path))
    assert torch.equal(m.state_dict()["head.weight"], wide.state_dict()["head.weight"])
