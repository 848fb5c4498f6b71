import numpy as np
import torch

from lungseg_train import data as D
from lungseg_train import realval as R


class Bright(torch.nn.Module):
    """Pointwise: logits positive where the windowed HU is above soft tissue's. Every window that
    covers a pixel gives it the same value, so a tiled map must equal the model run on the whole slice."""

    def forward(self, x):
        return 50.0 * (x - float(D.window(np.float32(-200.0))))


class LeftHalf(Bright):
    """Bright only in the window's left half: where the tiles fall shows in the map."""

    def forward(self, x):
        z = super().forward(x)
        z[..., 64:] = -50.0
        return z


def test_tile_origins_match_go():
    # segment.TileOrigins: 0, stride, ... while the window fits, then n - w
    assert R.tile_origins(512, 128, 64) == [0, 64, 128, 192, 256, 320, 384]
    assert R.tile_origins(130, 128, 64) == [0, 2]
    assert R.tile_origins(128, 128, 64) == [0]


def test_tile_weights():
    w = R.tile_weights(128, 128)
    assert w.shape == (128, 128)
    assert np.allclose(w, w[::-1, ::-1]) and np.allclose(w, w.T)
    c = np.exp(-((0.5 / 16) ** 2) / 2) ** 2  # the centre lies between pixels 63 and 64
    assert abs(w[63, 63] - c) < 1e-6 and abs(w[64, 64] - c) < 1e-6
    assert 0 < w[0, 64] < 1e-3  # small at an edge, never 0


def test_tile_probs_pointwise_model_is_the_whole_slice_map():
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1000, 200, (300, 200)).astype(np.float32)  # not a multiple of the stride
    p = R.tile_probs(Bright(), hu, D.WINDOW_CENTER, D.WINDOW_WIDTH)
    want = torch.sigmoid(Bright()(torch.from_numpy(D.window(hu)[None, None].astype(np.float32))))[0, 0].numpy()
    assert p.shape == hu.shape
    assert np.abs(p - want).max() < 1e-5


def test_tile_probs_small_slice_padded_with_air():
    hu = np.full((60, 80), 100.0, np.float32)  # smaller than the window: centred in air
    p = R.tile_probs(Bright(), hu, D.WINDOW_CENTER, D.WINDOW_WIDTH)
    assert p.shape == (60, 80) and p.min() > 0.99


def test_tile_probs_blends_by_window_centre():
    # LeftHalf marks only the left half of each window: with the Gaussian blend a pixel takes its value
    # mostly from the window it lies nearest the centre of, so on a bright slice the map is high where
    # that window's left half is, and the result differs from a plain mean.
    hu = np.full((256, 256), 100.0, np.float32)
    p = R.tile_probs(LeftHalf(), hu, D.WINDOW_CENTER, D.WINDOW_WIDTH)
    # windows at x0 = 0, 64, 128: column 40 is in the left half of the window at 0 (centre 63.5), and
    # in no window's right half nearer its centre: high
    assert p[128, 40] > 0.9
    # column 250 lies only in the window at 128, in its right half: low
    assert p[128, 250] < 0.1


def test_scores_remove_predictions_outside_the_lung():
    truth = np.zeros((1, 64, 64), bool)
    truth[0, 20:30, 20:30] = True
    lung = np.zeros((1, 64, 64), bool)
    lung[0, 10:40, 10:40] = True
    prob = truth.astype(np.float32)
    prob[0, 50:60, 50:60] = 1.0  # a false positive outside the lung and its margin
    s = R.scores(prob, truth, lung, lung_margin=3).summary(0.5)
    assert s["mean_dice"] == 1.0
    s = R.scores(prob, truth, None).summary(0.5)
    assert abs(s["mean_dice"] - 2 * 100 / (100 + 200)) < 1e-6


def test_stride_option_denser_tiles_same_pointwise_map():
    assert R.tile_origins(256, 128, 32) == [0, 32, 64, 96, 128]
    rng = np.random.default_rng(2)
    hu = rng.uniform(-1000, 200, (256, 256)).astype(np.float32)
    p64 = R.probs_of(Bright(), hu[None], {}, stride=64)
    p32 = R.probs_of(Bright(), hu[None], {}, stride=32)
    assert np.abs(p64 - p32).max() < 1e-5  # a pointwise model gives the same map at any stride
    p32l = R.probs_of(LeftHalf(), np.full((1, 256, 256), 100.0, np.float32), {}, stride=32)
    p64l = R.probs_of(LeftHalf(), np.full((1, 256, 256), 100.0, np.float32), {}, stride=64)
    assert np.abs(p32l - p64l).max() > 0.1  # but where the tiles fall shows for a model that depends on it
