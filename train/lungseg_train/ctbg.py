"""Real chest CT backgrounds for the crop model, from ../shared/data/ct_series.

The series are real whole-chest CT in HU (DICOM; two RLE Lossless, which
pydicom decodes with numpy alone) without annotations. Each shows a visible
mass (ct_series/README.md), so the slices around it are left out
(`EXCLUDE`), and what is left is used only where nothing is expected: as real
negative windows and as backgrounds to paste the LIDC crops into
(`composite.crop_training_batch(ct=...)`).

By default only popi_00_141 is used (`DEFAULT_SERIES`): lungdx_a0002_30 and
lungmask_1 stay unseen, for the Go side's checks that need no annotation
(nothing predicted outside the body, the visible masses found, false
candidates per slice).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

DEFAULT_SERIES = ("popi_00_141",)

# Slice numbers (from the file names) left out around the visible masses the
# README names, with a margin: popi 057-067 (2 mm slices) -> 052-072;
# lungdx 1-14..1-19 and the hilar soft tissue 1-12, 1-13 (8 mm) -> 1-11..1-20;
# lungmask_1's only slice has a ground-glass nodule.
EXCLUDE: Dict[str, Tuple[int, int]] = {
    "popi_00_141": (52, 72),
    "lungdx_a0002_30": (11, 20),
    "lungmask_1": (-1, 10 ** 6),
}

MIN_LUNG_FRACTION = 0.03  # slices with less lung (neck, abdomen) are left out


def slice_number(fname: str) -> int:
    """The last number in a file name: 00-slice057.dcm -> 57, 1-14.dcm -> 14, 0.dcm -> 0."""
    nums = re.findall(r"\d+", os.path.splitext(fname)[0])
    return int(nums[-1]) if nums else -1


def read_hu(path: str) -> Tuple[np.ndarray, float]:
    """One DICOM slice in HU (stored value x RescaleSlope + RescaleIntercept) and its pixel spacing (mm)."""
    import pydicom

    d = pydicom.dcmread(path)
    hu = d.pixel_array.astype(np.float32) * float(getattr(d, "RescaleSlope", 1.0)) + float(
        getattr(d, "RescaleIntercept", 0.0))
    return hu, float(d.PixelSpacing[0])


def lung_mask(hu: np.ndarray, erode: int = 2) -> np.ndarray:
    """bool mask of the lungs: air-like pixels (< -400 HU) in components that do
    not touch the image border (the air around the body and under the table
    does), at least 0.4 % of the image each, holes (vessels) filled, then
    eroded by `erode` pixels."""
    from scipy import ndimage

    air = hu < -400
    lab, n = ndimage.label(air)
    if n == 0:
        return np.zeros_like(air)
    border = set(np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))) - {0}
    sizes = np.bincount(lab.ravel())
    keep = [k for k in range(1, n + 1) if k not in border and sizes[k] >= 0.004 * hu.size]
    m = np.isin(lab, keep)
    m = ndimage.binary_fill_holes(m)
    if erode:
        m = ndimage.binary_erosion(m, iterations=erode)
    return m


@dataclass
class CTBank:
    hu: torch.Tensor  # [K,1,S,S] HU
    lung: torch.Tensor  # [K,1,S,S] 0/1
    spacing: torch.Tensor  # [K] mm/px
    names: List[str]

    @property
    def n(self) -> int:
        return int(self.hu.shape[0])


def load_ct_bank(root: str, series: Sequence[str] = DEFAULT_SERIES, device="cpu", size: int = 512,
                 step: int = 1) -> CTBank:
    """The usable slices (outside EXCLUDE, enough lung) of the named series,
    every `step`-th; all must be size x size."""
    hus, lungs, sps, names = [], [], [], []
    for s in series:
        folder = os.path.join(root, s)
        lo, hi = EXCLUDE.get(s, (1, 0))
        files = sorted(f for f in os.listdir(folder) if f.endswith(".dcm"))
        for f in files[::step]:
            k = slice_number(f)
            if lo <= k <= hi:
                continue
            hu, sp = read_hu(os.path.join(folder, f))
            if hu.shape != (size, size):
                continue
            m = lung_mask(hu)
            if m.mean() < MIN_LUNG_FRACTION:
                continue
            hus.append(np.clip(hu, -1024, 3071))
            lungs.append(m)
            sps.append(sp)
            names.append(f"{s}/{f}")
    dev = torch.device(device)
    if not hus:
        z = torch.zeros((0, 1, size, size), device=dev)
        return CTBank(z, z, torch.zeros(0, device=dev), [])
    return CTBank(torch.from_numpy(np.stack(hus)).unsqueeze(1).to(dev),
                  torch.from_numpy(np.stack(lungs).astype(np.float32)).unsqueeze(1).to(dev),
                  torch.tensor(sps, dtype=torch.float32, device=dev), names)


def to_grid(bank: CTBank, size: int) -> CTBank:
    """The bank at a smaller grid, as a whole-slice model sees a slice: HU by
    area averaging (512 -> 256, what preprocess's resize approximates), lung
    where at least half of a cell is lung, spacing times the factor."""
    import torch.nn.functional as F

    s = int(bank.hu.shape[-1]) if bank.n else size
    if bank.n == 0 or s == size:
        return bank
    if s % size:
        raise ValueError(f"ct bank of {s} px does not reduce to {size}")
    f = s // size
    return CTBank(F.avg_pool2d(bank.hu, f), (F.avg_pool2d(bank.lung, f) >= 0.5).float(), bank.spacing * f,
                  bank.names)
