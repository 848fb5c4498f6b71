"""Overlap scores accumulated over batches, for a range of thresholds at once.

The headline figure is the **mean Dice over images whose truth is non-empty**
(`mean_dice`): each image's 2TP/(2TP+FP+FN), averaged over the images that
have truth pixels. Images with empty truth are counted apart: `n_both_empty`
(nothing predicted either) and `n_fp_empty` (something predicted: a false-
positive image). Pooled Dice (all pixels of all images together) is the second
figure (`dice`). The mean is also given by nodule size (`by_size`): the truth's
longest diameter in mm (`longest_diameter_mm`), binned <6, 6-10, 10-20, >20.
Thresholds and epochs are chosen by `mean_dice`.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import numpy as np
import torch

THRESHOLDS = [round(0.05 * i, 2) for i in range(1, 20)]  # 0.05 .. 0.95

# Size bins of the truth's longest diameter (mm): [lo, hi).
SIZE_BINS = (("<6", 0.0, 6.0), ("6-10", 6.0, 10.0), ("10-20", 10.0, 20.0), (">20", 20.0, math.inf))


def longest_diameter_mm(mask: np.ndarray, spacing_mm: float) -> float:
    """Longest diameter of the largest 8-connected component of a 2-D mask:
    the largest distance between two of its pixel centres, times the pixel
    spacing (mm). 0 for an empty mask (and for a single pixel)."""
    from scipy import ndimage

    m = np.asarray(mask) > 0.5
    if not m.any():
        return 0.0
    lab, n = ndimage.label(m, structure=np.ones((3, 3), bool))
    if n > 1:
        sizes = np.bincount(lab.ravel())[1:]
        m = lab == (1 + int(np.argmax(sizes)))
    # the farthest pair lies on the outline: pixels with a 4-neighbour outside
    inner = ndimage.binary_erosion(m, structure=np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool),
                                   border_value=0)
    ys, xs = np.nonzero(m & ~inner)
    p = np.stack([ys, xs], 1).astype(np.float64)
    d2 = 0.0
    for s in range(0, len(p), 512):
        q = p[s:s + 512]
        d2 = max(d2, float((((q[:, None, :] - p[None, :, :]) ** 2).sum(-1)).max()))
    return math.sqrt(d2) * float(spacing_mm)


def diameters_mm(masks: np.ndarray, spacing_mm: Sequence[float]) -> np.ndarray:
    """float32 [N]: longest_diameter_mm of each mask [N,H,W] at its spacing."""
    return np.array([longest_diameter_mm(m, s) for m, s in zip(masks, spacing_mm)], np.float32)


def size_bin(d_mm: float) -> Optional[str]:
    if d_mm is None or not math.isfinite(d_mm) or d_mm <= 0:
        return None
    for name, lo, hi in SIZE_BINS:
        if lo <= d_mm < hi:
            return name
    return None


class Scores:
    """Per-image counts at every threshold.

    For each image: TP/FP/FN at each threshold, the sum of squared
    differences between probability and mask (for RMSE), and the pixel count.
    `valid` restricts counting to some pixels (the true crop region); `diam`
    gives each image's truth longest diameter in mm (NaN: unknown) for the
    size bins.
    """

    def __init__(self, thresholds=THRESHOLDS):
        self.t = list(thresholds)
        self.tp, self.fp, self.fn, self.sse, self.npx, self.pos, self.diam = [], [], [], [], [], [], []

    @torch.no_grad()
    def add(self, prob: torch.Tensor, mask: torch.Tensor, valid: Optional[torch.Tensor] = None,
            diam: Optional[torch.Tensor] = None) -> None:
        prob = prob.float().flatten(1)
        y = (mask.flatten(1) > 0.5)
        v = torch.ones_like(prob, dtype=torch.bool) if valid is None else (valid.flatten(1) > 0.5)
        y = y & v
        t = torch.tensor(self.t, device=prob.device, dtype=prob.dtype).view(1, -1, 1)
        pred = (prob.unsqueeze(1) > t) & v.unsqueeze(1)  # [B,T,P]
        yy = y.unsqueeze(1)
        self.tp.append((pred & yy).sum(-1).double().cpu())
        self.fp.append((pred & ~yy).sum(-1).double().cpu())
        self.fn.append((~pred & yy).sum(-1).double().cpu())
        d = (prob - y.float()) * v.float()
        self.sse.append((d * d).sum(-1).double().cpu())
        self.npx.append(v.sum(-1).double().cpu())
        self.pos.append(y.sum(-1).double().cpu())
        b = prob.shape[0]
        self.diam.append(torch.full((b,), float("nan"), dtype=torch.float64) if diam is None
                         else torch.as_tensor(diam).double().cpu().view(b))

    def __len__(self) -> int:
        return int(sum(x.shape[0] for x in self.npx))

    def _cat(self):
        return (torch.cat(self.tp), torch.cat(self.fp), torch.cat(self.fn), torch.cat(self.sse),
                torch.cat(self.npx), torch.cat(self.pos))

    def _per_image(self):
        """[N,T] per-image Dice (empty truth and empty prediction: 1) and [N] truth non-empty."""
        tp, fp, fn, _, _, pos = self._cat()
        den = 2 * tp + fp + fn
        per = torch.where(den > 0, 2 * tp / den.clamp(min=1), torch.ones_like(den))
        return per, pos > 0

    def oracle_mean(self) -> float:
        """Mean Dice over images with truth if each image had its own best
        threshold of the grid: an upper bound for any rule that only picks
        thresholds (per size, per image) on these probabilities."""
        per, ne = self._per_image()
        return float(per[ne].max(1).values.mean()) if bool(ne.any()) else float("nan")

    def best_threshold(self, by: str = "mean") -> float:
        """Threshold with the highest mean Dice over images with truth
        (by="pooled": pooled Dice); ties go to the one closest to 0.5."""
        if len(self) == 0:
            return 0.5
        if by == "pooled":
            tp, fp, fn, *_ = self._cat()
            score = (2 * tp.sum(0)) / (2 * tp.sum(0) + fp.sum(0) + fn.sum(0)).clamp(min=1)
        elif by == "mean":
            per, has = self._per_image()
            if not bool(has.any()):
                return self.best_threshold("pooled")
            score = per[has].mean(0)
        else:
            raise ValueError(f"best_threshold: by {by!r} (mean, pooled)")
        best = max(range(len(self.t)), key=lambda i: (round(float(score[i]), 6), -abs(self.t[i] - 0.5)))
        return self.t[best]

    def summary(self, threshold: float = 0.5) -> Dict[str, object]:
        """mean_dice (over images with truth; the headline), the counts of
        empty-truth images with an empty (n_both_empty) and a non-empty
        (n_fp_empty) prediction, the mean by size bin, pooled Dice and IoU,
        mean per-image Dice over all images (empty+empty = 1), RMSE of the
        probability and of the binary mask."""
        if len(self) == 0:
            return {"n": 0}
        i = min(range(len(self.t)), key=lambda k: abs(self.t[k] - threshold))
        tp, fp, fn, sse, npx, pos = self._cat()
        tp, fp, fn = tp[:, i], fp[:, i], fn[:, i]
        den = 2 * tp + fp + fn
        per = torch.where(den > 0, 2 * tp / den.clamp(min=1), torch.ones_like(den))
        nonempty = pos > 0
        mean = float(per[nonempty].mean()) if bool(nonempty.any()) else float("nan")
        diam = torch.cat(self.diam)
        by_size = {}
        for name, lo, hi in SIZE_BINS:
            sel = nonempty & (diam >= lo) & (diam < hi)
            k = int(sel.sum())
            by_size[name] = {"n": k, "mean_dice": float(per[sel].mean()) if k else float("nan")}
        return {
            "n": int(tp.numel()),
            "n_nonempty": int(nonempty.sum()),
            "threshold": self.t[i],
            "mean_dice": mean,
            "n_both_empty": int((~nonempty & (tp + fp == 0)).sum()),
            "n_fp_empty": int((~nonempty & (fp > 0)).sum()),
            "by_size": by_size,
            "dice": float(2 * tp.sum() / max(1.0, float(den.sum()))),
            "iou": float(tp.sum() / max(1.0, float((tp + fp + fn).sum()))),
            "dice_mean": float(per.mean()),
            "dice_mean_nonempty": mean,
            "rmse": float((sse.sum() / npx.sum().clamp(min=1)).sqrt()),
            "rmse_binary": float(((fp + fn).sum() / npx.sum().clamp(min=1)).sqrt()),
        }


def fmt(s: Dict[str, object]) -> str:
    """One line: mean (n) first, pooled second, empty-truth counts, size bins."""
    if not s or s.get("n", 0) == 0:
        return "n 0"
    bins = " ".join(f"{k} {v['mean_dice']:.3f}({v['n']})" for k, v in s["by_size"].items() if v["n"])
    return (f"mean {s['mean_dice']:.4f} (n {s['n_nonempty']}) pooled {s['dice']:.4f}; empty truth: "
            f"both-empty {s['n_both_empty']} fp {s['n_fp_empty']}; {bins}")
