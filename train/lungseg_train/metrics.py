"""Overlap scores accumulated over batches, for a range of thresholds at once."""

from __future__ import annotations

from typing import Dict, Optional

import torch

THRESHOLDS = [round(0.05 * i, 2) for i in range(1, 20)]  # 0.05 .. 0.95


class Scores:
    """Per-image counts at every threshold.

    For each image: TP/FP/FN at each threshold, the sum of squared
    differences between probability and mask (for RMSE), and the pixel count.
    `valid` restricts counting to some pixels (the true crop region).
    """

    def __init__(self, thresholds=THRESHOLDS):
        self.t = list(thresholds)
        self.tp, self.fp, self.fn, self.sse, self.npx, self.pos = [], [], [], [], [], []

    @torch.no_grad()
    def add(self, prob: torch.Tensor, mask: torch.Tensor, valid: Optional[torch.Tensor] = None) -> None:
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

    def __len__(self) -> int:
        return int(sum(x.shape[0] for x in self.npx))

    def _cat(self):
        return (torch.cat(self.tp), torch.cat(self.fp), torch.cat(self.fn), torch.cat(self.sse),
                torch.cat(self.npx), torch.cat(self.pos))

    def best_threshold(self) -> float:
        """Threshold with the highest pooled Dice (ties: closest to 0.5)."""
        if len(self) == 0:
            return 0.5
        tp, fp, fn, *_ = self._cat()
        dice = (2 * tp.sum(0)) / (2 * tp.sum(0) + fp.sum(0) + fn.sum(0)).clamp(min=1)
        best = max(range(len(self.t)), key=lambda i: (round(float(dice[i]), 6), -abs(self.t[i] - 0.5)))
        return self.t[best]

    def summary(self, threshold: float = 0.5) -> Dict[str, float]:
        """Pooled Dice and IoU, mean per-image Dice (empty mask and empty
        prediction count as 1), RMSE of the probability and of the binary mask."""
        if len(self) == 0:
            return {"n": 0}
        i = min(range(len(self.t)), key=lambda k: abs(self.t[k] - threshold))
        tp, fp, fn, sse, npx, pos = self._cat()
        tp, fp, fn = tp[:, i], fp[:, i], fn[:, i]
        den = 2 * tp + fp + fn
        per = torch.where(den > 0, 2 * tp / den.clamp(min=1), torch.ones_like(den))
        nonempty = pos > 0
        return {
            "n": int(tp.numel()),
            "n_nonempty": int(nonempty.sum()),
            "threshold": self.t[i],
            "dice": float(2 * tp.sum() / max(1.0, float(den.sum()))),
            "iou": float(tp.sum() / max(1.0, float((tp + fp + fn).sum()))),
            "dice_mean": float(per.mean()),
            "dice_mean_nonempty": float(per[nonempty].mean()) if bool(nonempty.any()) else float("nan"),
            "rmse": float((sse.sum() / npx.sum().clamp(min=1)).sqrt()),
            "rmse_binary": float(((fp + fn).sum() / npx.sum().clamp(min=1)).sqrt()),
        }
