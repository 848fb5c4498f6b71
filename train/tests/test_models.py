import pytest
import torch
import torchvision

from lungseg_train import models as M


def test_window_partition_inverts():
    x = torch.randn(2, 16, 24, 5)
    w = M.window_partition(x, 8)
    assert w.shape == (2 * 2 * 3, 64, 5)
    assert torch.equal(M.window_reverse(w, 8, 16, 24), x)


def test_shifted_block_mask_separates_regions():
    blk = M.SwinBlock(8, (16, 16), 2, 8, 4)
    m = blk.attn_mask
    assert m.shape == (4, 64, 64)
    assert torch.all(torch.diagonal(m, dim1=1, dim2=2) == 0)
    assert (m[0] == 0).all()  # the top-left window holds one region only
    assert (m[3] == -100).any()  # the wrapped corner window mixes regions
    unshifted = M.SwinBlock(8, (8, 8), 2, 8, 4)
    assert unshifted.shift == 0 and unshifted.attn_mask is None


def test_relative_position_index_covers_table():
    a = M.WindowAttention(8, 4, 2)
    assert a.rel_index.min() == 0 and a.rel_index.max() == (2 * 4 - 1) ** 2 - 1
    assert a.rel_index.numel() == 16 * 16


@pytest.mark.parametrize("name", M.COMPACT)
def test_compact_models_map_input_to_logits(name):
    torch.manual_seed(0)
    m = M.build(name, img_size=64).eval()
    x = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        y = m(x)
        y1 = m(x[1:2])
    assert y.shape == (3, 1, 64, 64)
    assert torch.isfinite(y).all()
    assert torch.allclose(y[1:2], y1, atol=1e-5)  # no mixing across the batch


def test_full_models_have_the_report_sizes():
    sw = M.build("swin-unet")
    assert abs(M.count_parameters(sw) - 27.1e6) / 27.1e6 < 0.02  # Swin-UNet (Cao et al.): 27.1M
    un = M.build("unetr")
    h, mlp, depth, tokens = 768, 3072, 12, 256
    per_block = 4 * h * h + 4 * h + 2 * h * mlp + mlp + h + 4 * h
    vit = depth * per_block + 16 * 16 * h + h + tokens * h + 2 * h
    enc = sum(p.numel() for n, p in un.named_parameters() if n.startswith(("blocks.", "patch_embed.", "pos", "norm.")))
    assert enc == vit
    rn = M.build("resnet50-unet")
    ref = torchvision.models.resnet50(weights=None)
    ref_n = sum(p.numel() for n, p in ref.named_parameters() if not n.startswith("fc.")) - 64 * 2 * 7 * 7
    assert sum(p.numel() for p in rn.encoder.parameters()) == ref_n


def test_compact_resnet_is_resnet50_layout_at_quarter_width():
    enc = M.resnet_encoder(16)
    assert [len(getattr(enc, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    assert [getattr(enc, f"layer{i}")[-1].conv3.out_channels for i in range(1, 5)] == [64, 128, 256, 512]


def test_flops_grow_with_size():
    small = M.count_flops(M.build("resnet50-unet-small", 64), 64)
    assert small > 0
    assert M.count_flops(M.build("resnet50-unet-small", 128), 128) == pytest.approx(4 * small, rel=0.01)


def test_encoder_weights_load_from_local_file(tmp_path):
    ref = torchvision.models.resnet50(weights=None)
    p = tmp_path / "r50.pth"
    torch.save(ref.state_dict(), p)
    m = M.build("resnet50-unet")
    rep = m.load_encoder_weights(str(p))
    assert rep["missing"] == [] and rep["unexpected"] == []
    assert torch.allclose(m.encoder.conv1.weight, ref.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(m.encoder.layer3[2].conv2.weight, ref.layer3[2].conv2.weight)


def test_instance_norm_is_torchs_with_two_step_reductions():
    a = M.InstanceNorm2d(8, affine=True)
    torch.nn.init.normal_(a.weight)
    torch.nn.init.normal_(a.bias)
    b = torch.nn.InstanceNorm2d(8, affine=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 8, 64, 48) * 3 + 5
    assert float((a(x) - b(x)).abs().max()) < 1e-5
    assert set(a.state_dict()) == {"weight", "bias"}
