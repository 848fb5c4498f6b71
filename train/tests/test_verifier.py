import json
import os

import numpy as np
import torch

from lungseg_train import verifier as V


def test_components_and_centroids_round_half_to_even():
    prob = np.zeros((20, 30), np.float32)
    prob[2:5, 2:6] = 0.9
    prob[5, 6] = 0.6  # diagonal neighbour: same component
    prob[10:12, 20:22] = 0.5  # at the threshold: in; centroid (10.5, 20.5) -> (10, 20)
    prob[15:17, 5:7] = 0.49
    lab, comps = V.components(prob, 0.5)
    assert len(comps) == 2
    ys, xs, cy, cx = comps[0]
    assert len(ys) == 13 and (cy, cx) == (3, 4)  # the same case as segment/verify's Go test
    assert comps[1][2:] == (10, 20)
    assert lab.max() == 2


def test_window_centre_is_the_go_patch():
    # Go's verify.Patch reads the PATCH x PATCH window with top-left (cy - PATCH/2, cx - PATCH/2), air outside
    hu = np.arange(40 * 40, dtype=np.float32).reshape(40, 40)
    pad = V.HARVEST
    hp = np.pad(hu, pad, mode="constant", constant_values=-1024)
    ys, xs = np.array([5, 5]), np.array([7, 8])
    w, m = V.window(hp, pad, ys, xs, 5, 7)
    x = V.net_input(w[None], m[None])[0]
    assert x.shape == (2, V.PATCH, V.PATCH)
    y0, x0 = 5 - V.PATCH // 2, 7 - V.PATCH // 2
    for y in range(V.PATCH):
        for xx in range(V.PATCH):
            sy, sx = y0 + y, x0 + xx
            raw = hu[sy, sx] if 0 <= sy < 40 and 0 <= sx < 40 else -1024.0
            want = np.clip((raw - (V.CENTER - V.WIDTH / 2)) / V.WIDTH, 0, 1)
            assert abs(float(x[0, y, xx]) - want) < 1e-6
    on = np.argwhere(x[1].numpy() > 0)
    assert sorted(map(tuple, on)) == [(V.PATCH // 2, V.PATCH // 2), (V.PATCH // 2, V.PATCH // 2 + 1)]


def test_choose_threshold_takes_the_middle_of_the_plateau():
    means = np.array([0.1, 0.2, 0.3, 0.42, 0.456, 0.453, 0.457, 0.418, 0.3, 0.2])
    assert V.choose_threshold(means) == 0.5
    assert V.choose_threshold(np.array([0.1, 0.5, 0.2, 0, 0, 0, 0, 0, 0, 0])) == 0.1


def _toy(n, g):
    """Bright discs (nodules, label 1) and thin dark-grey lines (vessels, label 0) in lung."""
    P = V.HARVEST
    hu = np.full((n, P, P), -850, np.int16)
    mask = np.zeros((n, P, P), np.uint8)
    lab = np.zeros(n, np.int8)
    yy, xx = np.mgrid[:P, :P]
    for i in range(n):
        c = P // 2
        if i % 2:
            r = g.uniform(2, 6)
            d = (yy - c) ** 2 + (xx - c) ** 2 <= r * r
            lab[i] = 1
        else:
            d = (np.abs(yy - c) <= 1) & (np.abs(xx - c) <= 10)
            if g.random() < 0.5:
                d = d.T
        hu[i][d] = 30 if lab[i] else -300
        mask[i][d] = 1
    return {"hu": hu, "mask": mask, "label": lab}


def test_training_separates_a_toy_set_and_exports(tmp_path):
    torch.set_num_threads(1)
    g = np.random.default_rng(0)
    c = _toy(256, g)
    net = V.train_net(c, np.ones(256, bool), epochs=3, seed=0)
    t = _toy(64, np.random.default_rng(1))
    p = V.judge(net, t["hu"], t["mask"])
    assert p[t["label"] == 1].min() > p[t["label"] == 0].max()
    rep = V.export(net, str(tmp_path), V.net_input(t["hu"][:4], t["mask"][:4]))
    assert len(rep["sha256"]) == 64
    par = json.load(open(tmp_path / "verifier_parity.json"))
    assert par["input_shape"] == [4, 2, V.PATCH, V.PATCH] and par["output_shape"] == [4, 1]
    assert os.path.getsize(tmp_path / "verifier_parity_input.bin") == 4 * 2 * V.PATCH * V.PATCH * 4
    import onnx

    m = onnx.load(str(tmp_path / "verifier.onnx"))
    onnx.checker.check_model(m)
    dims = [d.dim_param or d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [2, V.PATCH, V.PATCH] and isinstance(dims[0], str)
    y = np.fromfile(tmp_path / "verifier_parity_output.bin", "<f4")
    with torch.no_grad():
        np.testing.assert_allclose(y, net(V.net_input(t["hu"][:4], t["mask"][:4]))[:, 0].numpy(), atol=1e-6)


def test_verified_dice_removes_rejected_components():
    class Keep:  # accepts components whose centre HU is bright
        def __call__(self, x):
            return (x[:, 0, V.PATCH // 2, V.PATCH // 2] > 0.5).float()[:, None] * 20 - 10

    hu = np.full((1, 64, 64), -850, np.float32)
    truth = np.zeros((1, 64, 64), bool)
    prob = np.zeros((1, 64, 64), np.float32)
    hu[0, 10:15, 10:15] = 40
    truth[0, 10:15, 10:15] = True
    prob[0, 10:15, 10:15] = 0.9
    prob[0, 40:43, 30:50] = 0.9  # a false component on dark lung
    d = V.verified_dice(Keep(), prob, hu, truth, 0.5, (0.0, 0.5))
    assert d.shape == (2, 1)
    assert abs(d[0, 0] - 2 * 25 / (25 + 25 + 60)) < 1e-9 and d[1, 0] == 1.0


def test_mean_of_verifiers_is_the_logit_of_their_mean_probability(tmp_path):
    torch.manual_seed(0)
    nets = [V.Net().eval(), V.Net().eval()]
    m = V.Mean(nets).eval()
    x = torch.rand(5, 2, V.PATCH, V.PATCH)
    with torch.no_grad():
        p = (torch.sigmoid(nets[0](x)) + torch.sigmoid(nets[1](x))) / 2
        np.testing.assert_allclose(torch.sigmoid(m(x)).numpy(), p.numpy(), atol=1e-6)
    rep = V.export(m, str(tmp_path), x)  # one ONNX file, as the Go side reads it
    assert len(rep["sha256"]) == 64
    y = np.fromfile(tmp_path / "verifier_parity_output.bin", "<f4")
    np.testing.assert_allclose(1 / (1 + np.exp(-y)), p[:, 0].numpy(), atol=1e-5)


def test_a_larger_patch_is_trained_judged_and_exported_at_its_side(tmp_path):
    torch.set_num_threads(1)
    c = _toy(128, np.random.default_rng(0))
    net = V.train_net(c, np.ones(128, bool), epochs=1, seed=0, patch=V.HARVEST)
    assert net.patch == V.HARVEST
    t = _toy(16, np.random.default_rng(1))
    with torch.no_grad():  # judge reads the net's own side from the stored windows
        want = torch.sigmoid(net(V.net_input(t["hu"], t["mask"], V.HARVEST)))[:, 0].numpy()
    np.testing.assert_allclose(V.judge(net, t["hu"], t["mask"]), want, atol=1e-6)
    assert V.Mean([net, net]).patch == V.HARVEST
    V.export(net, str(tmp_path), V.net_input(t["hu"][:4], t["mask"][:4], V.HARVEST))
    par = json.load(open(tmp_path / "verifier_parity.json"))
    assert par["input_shape"] == [4, 2, V.HARVEST, V.HARVEST]


def test_real_pos_draws_that_share_of_the_nodules_from_real_slices(monkeypatch):
    import pytest

    c = _toy(96, np.random.default_rng(0))
    c["src"] = np.array(["crop"] * 92 + ["real"] * 4)
    c["label"][:] = 0
    c["label"][::2] = 1
    c["label"][92:] = 1  # 4 real nodule candidates among 50
    o = (c["hu"].shape[-1] - V.PATCH) // 2
    c["hu"][:, o, o] = V.CENTER - V.WIDTH / 2 + 10 * np.arange(96)  # each candidate's index, at the patch's corner
    drawn = []

    def spy(x, g):
        drawn.append(np.rint(x[:, 0, 0, 0].numpy() * V.WIDTH / 10).astype(int))
        return x

    monkeypatch.setattr(V, "augment", spy)
    V.train_net(c, np.ones(96, bool), epochs=1, seed=0, real_pos=0.5)
    for b in drawn:  # 16 other nodules, 32 non-nodules, 16 real nodules
        assert all(i < 92 and c["label"][i] == 1 for i in b[:16])
        assert all(c["label"][i] == 0 for i in b[16:48])
        assert all(i >= 92 for i in b[48:])
    c["src"][:] = "crop"
    with pytest.raises(ValueError):
        V.train_net(c, np.ones(96, bool), epochs=1, seed=0, real_pos=0.5)


def test_zoom_window_fits_the_component_and_averages_blocks():
    # the same cases as segment/verify's TestZoomPatch: hu[y, x] = 10y + x on 40 x 40, patch 8, margin 4
    hu = (10 * np.arange(40)[:, None] + np.arange(40)[None, :]).astype(np.float32)
    assert (V.ZOOM_MARGIN, V.ZOOM_MAX) == (4, 6)
    pad = 8 * V.ZOOM_MAX
    hp = np.pad(hu, pad, mode="constant", constant_values=-1024)
    # a vertical line x = 20, y = 5..34: box side 30 + 8 -> f = 5, window 40 at (0, 0)
    ys, xs = np.arange(5, 35), np.full(30, 20)
    lab, comps = V.components(np.isin(np.arange(1600).reshape(40, 40), ys * 40 + xs).astype(np.float32), 0.5)
    (_, _, cy, cx), = comps
    assert (cy, cx) == (20, 20) and V.zoom_factor(ys, xs, 8) == 5
    w, m = V.zoom_window(hp, pad, ys, xs, cy, cx, 8)
    assert w.shape == m.shape == (8, 8) and w.dtype == m.dtype == np.float32
    for by in range(8):
        for bx in range(8):
            assert w[by, bx] == hu[5 * by:5 * by + 5, 5 * bx:5 * bx + 5].mean()
    assert (w[0, 0], w[7, 7]) == (22.0, 407.0)
    assert m[1, 4] == m[6, 4] == np.float32(0.2) and m[0, 4] == m[7, 4] == 0 and m[:, :4].sum() == 0
    # one pixel in the corner: side 1 + 8 -> f = 2, window 16 at (-8, -8), air beyond the image
    ys, xs = np.array([0]), np.array([0])
    w, m = V.zoom_window(hp, pad, ys, xs, 0, 0, 8)
    assert V.zoom_factor(ys, xs, 8) == 2
    assert w[3, 3] == w[4, 3] == -1024 and w[4, 4] == 5.5 and w[4, 5] == 7.5
    assert m[4, 4] == 0.25 and m.sum() == 0.25
    # f = 1 (patch 16: side 2 + 8) is the native window of that side
    ys, xs = np.array([20, 21]), np.array([20, 20])
    w1, m1 = V.zoom_window(hp, pad, ys, xs, 20, 20, 16)
    w0, m0 = V.window(hp, pad, ys, xs, 20, 20, 16)
    assert np.array_equal(w1, w0.astype(np.float32)) and np.array_equal(m1, m0.astype(np.float32))
    # very large components stop at ZOOM_MAX
    assert V.zoom_factor(np.array([0, 300]), np.array([0, 0]), 8) == V.ZOOM_MAX


def test_zoom_verifier_is_trained_judged_and_exported(tmp_path):
    g = np.random.default_rng(0)
    n = 96
    hu = g.normal(-800, 30, (n, 16, 16)).astype(np.float32)
    mask = np.zeros((n, 16, 16), np.float32)
    label = (np.arange(n) % 2).astype(np.int8)
    hu[label == 1, 6:10, 6:10] = 0
    mask[:, 6:10, 6:10] = 1
    c = {"hu": hu, "mask": mask, "label": label, "src": np.array(["crop"] * n), "patient": np.array(["p"] * n)}
    net = V.train_net(c, np.ones(n, bool), epochs=2, seed=1, patch=16, zoom=True)
    assert net.zoom and net.patch == 16
    probs = np.zeros((1, 40, 40), np.float32)
    probs[0, 10:30, 18:22] = 0.9  # one component of side 20: f = 2
    d = V.verified_dice(net, probs, np.full((1, 40, 40), -800, np.int16), probs > 0.5, 0.5, (0.0,))
    assert d.shape == (1, 1) and d[0, 0] == 1.0
    rep = V.export(net, str(tmp_path), V.net_input(hu[:4], mask[:4], 16))
    assert rep["input_shape"] == [4, 2, 16, 16]
