"""Per-slice HU calibration of the normalised LIDC slices (vinibfr_lidc_norm).

    /usr/bin/python3 -m lungseg_train.hucal --data ../.gpu/lidc_pack.npz [--patients LIDC-IDRI-0007]

The `vinibfr_lidc_norm` slices are not HU: each slice was z-scored on its
own, smoothed (median 3 and anisotropic diffusion) and multiplied by a lung
mask. The data README's single inverse (HU ~ v*775 - 835) is a fit over
several slices; per slice the true scale and offset differ (patient 0007:
HU ~ v*(755..843) - (955..972)), which put that patient's nodules about
120 HU too bright.

The same patients' nodules are also in `ctslicing_vois_hu` as crops in HU
cut from the same native 512 grid. For each normalised slice this finds the
crop of the same patient that matches it best (normalised cross-correlation
over the slice's lung pixels, every position, by FFT) and fits HU = a*v + b
by least squares on the overlapping lung pixels. Only image values are used:
no mask takes part in the match or the fit. A slice whose best match is
weaker than `min_ncc` keeps its patient's median (a, b) over the matched
slices, or the README's inverse when the patient has none.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

import numpy as np
from scipy import ndimage
from scipy.signal import fftconvolve

from . import data as D

MIN_NCC = 0.85
MIN_OVERLAP = 0.5


@dataclass
class Calibration:
    patient: str
    slice_id: str
    scale: float  # a in HU = a*v + b
    offset: float  # b
    ncc: float  # best normalised cross-correlation (0 when unmatched)
    crop: str  # slice_id of the matched crop ("" when unmatched)
    r2: float  # of the fit on the overlap
    how: str  # "matched", "patient" (median of the patient's matched slices) or "readme"
    y: int = 0  # top-left row of the matched crop on the slice (when matched)
    x: int = 0  # its left column


def _corr(a: np.ndarray, k: np.ndarray) -> np.ndarray:
    """out[y, x] = sum_u a[y+u, x+v] * k[u, v] over the 'valid' positions."""
    return fftconvolve(a, k[::-1, ::-1], mode="valid")


def lung_of(v: np.ndarray) -> np.ndarray:
    """The pixels a match and a fit use: the lung of a normalised slice (v != 0)
    eroded 2 px, since the smoothing blurs the mask's edge."""
    return ndimage.binary_erosion(v != 0, iterations=2)


def best_match(v: np.ndarray, lung: np.ndarray, crop: np.ndarray):
    """(ncc, y, x) of the crop's best position over the pixels of lung (lung_of(v))."""
    m = lung.astype(np.float64)
    h, w = crop.shape
    if h > v.shape[0] or w > v.shape[1]:
        return 0.0, 0, 0
    c = crop.astype(np.float64)
    ones = np.ones_like(c)
    mv = m * v
    n = _corr(m, ones)
    sv = _corr(mv, ones)
    svv = _corr(mv * v, ones)
    sc = _corr(m, c)
    scc = _corr(m, c * c)
    svc = _corr(mv, c)
    ok = n >= max(100.0, MIN_OVERLAP * h * w)
    n = np.where(ok, n, 1.0)
    cov = svc - sv * sc / n
    varv = svv - sv * sv / n
    varc = scc - sc * sc / n
    den = np.sqrt(np.clip(varv, 0, None) * np.clip(varc, 0, None))
    ncc = np.where(ok & (den > 1e-6), cov / np.where(den > 1e-6, den, 1.0), -1.0)
    y, x = np.unravel_index(int(np.argmax(ncc)), ncc.shape)
    return float(ncc[y, x]), int(y), int(x)


def fit(v: np.ndarray, lung: np.ndarray, crop: np.ndarray, y: int, x: int):
    """(a, b, r2) of HU = a*v + b on the overlap of the crop at (y, x) with lung (lung_of(v))."""
    h, w = crop.shape
    m = lung[y:y + h, x:x + w]
    vv = v[y:y + h, x:x + w][m].astype(np.float64)
    hu = crop[m].astype(np.float64)
    a, b = np.polyfit(vv, hu, 1)
    pred = a * vv + b
    ss = ((hu - hu.mean()) ** 2).sum()
    r2 = 1.0 - ((hu - pred) ** 2).sum() / ss if ss > 0 else 0.0
    return float(a), float(b), float(r2)


def calibrate(crops: D.CropSet, slices: D.SliceSet, patients: Optional[List[str]] = None,
              min_ncc: float = MIN_NCC) -> Dict[str, Calibration]:
    """Calibration per normalised slice, keyed "patient/slice_id", from the
    same patients' crops."""
    sl, cr = slices, crops
    want = set(patients) if patients else None
    out: Dict[str, Calibration] = {}
    by_patient: Dict[str, List[int]] = {}
    for i, p in enumerate(cr.patient):
        by_patient.setdefault(str(p), []).append(i)
    for i in range(len(sl)):
        p, sid = str(sl.patient[i]), str(sl.slice_id[i])
        if want is not None and p not in want:
            continue
        v = sl.norm[i].astype(np.float32)
        lung = lung_of(v)
        best = (0.0, -1, 0, 0)
        for j in by_patient.get(p, []):
            ncc, y, x = best_match(v, lung, cr.bare(j)[0])
            if ncc > best[0]:
                best = (ncc, j, y, x)
        ncc, j, y, x = best
        if j >= 0 and ncc >= min_ncc:
            a, b, r2 = fit(v, lung, cr.bare(j)[0], y, x)
            out[f"{p}/{sid}"] = Calibration(p, sid, a, b, ncc, str(cr.slice_id[j]), r2, "matched", y, x)
        else:
            out[f"{p}/{sid}"] = Calibration(p, sid, D.NORM_SCALE, D.NORM_OFFSET, max(ncc, 0.0), "", 0.0, "readme")
    for p in {c.patient for c in out.values()}:
        got = [c for c in out.values() if c.patient == p and c.how == "matched"]
        if not got:
            continue
        a = float(np.median([c.scale for c in got]))
        b = float(np.median([c.offset for c in got]))
        for c in out.values():
            if c.patient == p and c.how == "readme":
                c.scale, c.offset, c.how = a, b, "patient"
    return out


def scale_offset(slices: D.SliceSet, cal: Optional[Dict[str, Calibration]]):
    """float32 [M] scale and offset per slice: its calibration, or the
    README's inverse for a slice without one (all of them when cal is None)."""
    a = np.full(len(slices), D.NORM_SCALE, np.float32)
    b = np.full(len(slices), D.NORM_OFFSET, np.float32)
    for i in range(len(slices)):
        c = (cal or {}).get(f"{slices.patient[i]}/{slices.slice_id[i]}")
        if c is not None:
            a[i], b[i] = c.scale, c.offset
    return a, b


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="raw data folder or pack .npz (default ../shared/data)")
    ap.add_argument("--patients", default="", help="comma-separated patient ids (default: all with slices)")
    ap.add_argument("--min-ncc", type=float, default=MIN_NCC)
    ap.add_argument("--json", default="", help="write the calibrations here")
    a = ap.parse_args(argv)
    data = D.load(a.data, allow_synthetic=False)
    pats = [p for p in a.patients.split(",") if p] or None
    cal = calibrate(data.crops, data.slices, pats, a.min_ncc)
    print(f"{'slice':28s} {'how':8s} {'crop':8s} {'ncc':>5s} {'r2':>5s} {'scale':>7s} {'offset':>8s}")
    for k in sorted(cal):
        c = cal[k]
        print(f"{k:28s} {c.how:8s} {c.crop:8s} {c.ncc:5.3f} {c.r2:5.3f} {c.scale:7.1f} {c.offset:8.1f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({k: asdict(c) for k, c in sorted(cal.items())}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
