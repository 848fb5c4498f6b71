import numpy as np
import torch

from lungseg_train import data as D
from lungseg_train import shift_probe as S


class Bright(torch.nn.Module):
    """Logits positive where the windowed HU is above soft tissue's: the same at every offset."""

    def forward(self, x):
        return 50.0 * (x - float(D.window(np.float32(-200.0))))


class LeftHalf(Bright):
    """Bright, but only in the window's left half: its outline depends on where the window sits."""

    def forward(self, x):
        z = super().forward(x)
        z[..., 64:] = -50.0
        return z


def _slice():
    hu = np.full((256, 256), -850.0, np.float32)
    m = np.zeros((256, 256), bool)
    yy, xx = np.mgrid[:256, :256]
    m[(yy - 120) ** 2 + (xx - 200) ** 2 <= 10 ** 2] = True  # near the right edge: windows reach past it
    hu[m] = 30.0
    return hu, m


CARD = {"threshold": 0.5, "normalisation": {"kind": "window", "center": -600.0, "width": 1500.0}}


def test_a_shift_invariant_model_scores_the_same_at_every_offset():
    r = S.probe(Bright(), CARD, [_slice()], radius=21, step=7)
    s = r["summary"]
    assert s["offsets"] == 49 and s["slices"] == 1
    assert s["mean"] == s["centred"] == s["worst"] == s["best"] == 1.0 and s["sd"] == 0.0


def test_a_model_that_depends_on_the_window_position_shows_a_spread():
    s = S.probe(LeftHalf(), CARD, [_slice()], radius=21, step=7)["summary"]
    assert s["worst"] == 0.0 and s["best"] == 1.0 and s["sd"] > 0.3
    assert s["centred"] < 1.0


def test_window_at_reads_air_beyond_the_image_and_truth_window_lines_up():
    hu, m = _slice()
    a, y0, x0 = S.window_at(hu, 120, 200)
    assert (y0, x0) == (56, 136)
    assert a[0, -1] == D.OUTSIDE_HU and a[64, 64] == 30.0  # x 136+127 = 263 is past the 256 columns
    t = S.truth_window(m, y0, x0)
    assert t.sum() == m.sum() and t[64, 64]
