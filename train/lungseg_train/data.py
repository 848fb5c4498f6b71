"""Loading the LIDC-IDRI slices, the patient split, and the compact pack.

Three ways in, one result (`LidcData`):

* the raw folder laid out as /work/shared/data/README.md describes
  (`lidc/ctslicing_vois_hu` 16-bit PNG crops in HU+1024 with masks, and
  `lidc/vinibfr_lidc_norm` normalised 512x512 slices in .npz with masks);
* the pack written by `train/pack_data.py` (one .npz, so the data can travel
  to a GPU machine that has only the repository);
* synthetic phantoms (discs in lung-like surroundings) when neither exists,
  so that the smoke test runs anywhere.

Nothing here copies the data; the raw folder is read where it lies.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

# HU window of the model contract (card.json "normalisation").
WINDOW_CENTER = -600.0
WINDOW_WIDTH = 1500.0

# Side of the square that every crop is padded into (largest crop is 109 px).
CROP_PAD = 112

# Approximate inverse of the vinibfr normalisation (README: HU ~ v*775 - 835
# inside the lung mask; fit R^2 >= 0.99, not exact).
NORM_SCALE = 775.0
NORM_OFFSET = -835.0

# The five patients that have normalised full slices, and where each goes.
# Their crops (ct-slicing has them too) follow them, so the split stays
# patient-disjoint across both sources. 0007 (24 slices) is the test patient
# because it has the most slices; 0008 (4 slices) is validation.
FULL_SLICE_SPLIT = {
    "LIDC-IDRI-0001": "train",
    "LIDC-IDRI-0003": "train",
    "LIDC-IDRI-0006": "train",
    "LIDC-IDRI-0008": "val",
    "LIDC-IDRI-0007": "test",
}

SPLITS = ("train", "val", "test")


def window(hu, center: float = WINDOW_CENTER, width: float = WINDOW_WIDTH):
    """Maps HU linearly onto [0,1] over [center-width/2, center+width/2] and clamps.

    Works on numpy arrays and torch tensors alike.
    """
    lo = center - width / 2.0
    v = (hu - lo) / width
    return v.clip(0.0, 1.0)


def bare_offset(h: int, w: int, win: int):
    """Top-left (y0, x0) of a bare h x w crop inside a win x win window."""
    if h > win or w > win:
        raise ValueError(f"bare crop {h}x{w} larger than the window {win}")
    return (win - h) // 2, (win - w) // 2


OUTSIDE_HU = -1024.0  # what a crop window reads outside its image (Go: cascade.OutsideHU)


def pad_bare_crop(crop: np.ndarray, win: int, fill: float) -> np.ndarray:
    """The crop-model input for a bare crop (the Go side does exactly this).

    An h x w crop (h, w <= win; HU or any per-pixel value) is placed at
    y0 = (win-h)//2, x0 = (win-w)//2 and the rest of the win x win window is
    fill: numpy.pad(crop, ((y0, win-h-y0), (x0, win-w-x0)), mode="constant",
    constant_values=fill). HU crops are padded with OUTSIDE_HU (air), as the
    cascade's windows read beyond an image's edge, so a crop model sees a bare
    crop alone as its cascade would; masks with 0. The HU window of the card
    is applied afterwards like for any input; the prediction is cut back with
    unpad_bare and thresholded at the card's threshold.
    """
    a = np.asarray(crop)
    h, w = a.shape
    y0, x0 = bare_offset(h, w, win)
    return np.pad(a, ((y0, win - h - y0), (x0, win - w - x0)), mode="constant", constant_values=fill)


def fit_bare(a: np.ndarray, win: int) -> np.ndarray:
    """a itself when it fits in a win x win window, else its centred win x win
    part (rows (h-win)//2 on). LIDC crops (43-109 px) fit the 128 window; only
    smaller windows (the smoke run's 64) cut them. The Go side tiles a slice
    larger than the window instead."""
    h, w = a.shape
    y0, x0 = max(0, (h - win) // 2), max(0, (w - win) // 2)
    return a[y0:y0 + min(h, win), x0:x0 + min(w, win)]


def unpad_bare(window_pred, h: int, w: int):
    """The [..., h, w] part of a window prediction [..., win, win] that
    covers the bare crop padded by pad_bare_crop."""
    win = window_pred.shape[-1]
    y0, x0 = bare_offset(h, w, win)
    return window_pred[..., y0:y0 + h, x0:x0 + w]


@dataclass
class CropSet:
    """Nodule crops in HU, each padded (centred) into CROP_PAD x CROP_PAD."""

    hu: np.ndarray  # int16 [N, P, P], padding filled with -1000
    mask: np.ndarray  # uint8 [N, P, P], 0/1
    hw: np.ndarray  # int32 [N, 2] true height, width
    spacing: np.ndarray  # float32 [N] mm per pixel
    patient: np.ndarray  # str [N]
    slice_id: np.ndarray  # str [N]

    def __len__(self) -> int:
        return int(self.hu.shape[0])

    def subset(self, idx) -> "CropSet":
        idx = np.asarray(idx, dtype=np.int64)
        return CropSet(self.hu[idx], self.mask[idx], self.hw[idx], self.spacing[idx],
                       self.patient[idx], self.slice_id[idx])

    def bare(self, i: int):
        """Crop i as it is: (HU int16 [h,w], mask uint8 [h,w])."""
        h, w = (int(v) for v in self.hw[i])
        p = self.hu.shape[1]
        y0, x0 = (p - h) // 2, (p - w) // 2
        return self.hu[i, y0:y0 + h, x0:x0 + w], self.mask[i, y0:y0 + h, x0:x0 + w]

    def valid(self) -> np.ndarray:
        """uint8 [N, P, P]: 1 inside the true crop, 0 on the padding."""
        n, p = len(self), self.hu.shape[1]
        out = np.zeros((n, p, p), np.uint8)
        for i, (h, w) in enumerate(self.hw):
            y0, x0 = (p - h) // 2, (p - w) // 2
            out[i, y0:y0 + h, x0:x0 + w] = 1
        return out


@dataclass
class SliceSet:
    """Normalised full slices (vinibfr), 512x512, with nodule masks."""

    norm: np.ndarray  # float16/float32 [M, H, W] z-scored x lung mask
    mask: np.ndarray  # uint8 [M, H, W] 0/1
    patient: np.ndarray  # str [M]
    slice_id: np.ndarray  # str [M]

    def __len__(self) -> int:
        return int(self.norm.shape[0])

    def subset(self, idx) -> "SliceSet":
        idx = np.asarray(idx, dtype=np.int64)
        return SliceSet(self.norm[idx], self.mask[idx], self.patient[idx], self.slice_id[idx])

    def approx_hu(self) -> np.ndarray:
        """float32 HU inside the lung (v != 0), NaN outside it."""
        v = self.norm.astype(np.float32)
        hu = v * NORM_SCALE + NORM_OFFSET
        hu[v == 0] = np.nan
        return hu


@dataclass
class LidcData:
    crops: CropSet
    slices: SliceSet
    source: str  # "raw:<dir>", "pack:<file>" or "synthetic"
    info: Dict[str, object] = field(default_factory=dict)

    def patients(self) -> List[str]:
        return sorted(set(self.crops.patient.tolist()) | set(self.slices.patient.tolist()))


# ---------------------------------------------------------------------------
# Raw folder


def _read_png(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.array(im)


def _pad_center(a: np.ndarray, p: int, fill) -> np.ndarray:
    h, w = a.shape
    if h > p or w > p:  # centre-crop anything larger than the pad
        y0, x0 = max(0, (h - p) // 2), max(0, (w - p) // 2)
        a = a[y0:y0 + p, x0:x0 + p]
        h, w = a.shape
    out = np.full((p, p), fill, dtype=a.dtype)
    y0, x0 = (p - h) // 2, (p - w) // 2
    out[y0:y0 + h, x0:x0 + w] = a
    return out


def _read_csv(path: str) -> List[Dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def load_raw(root: str, max_patients: Optional[int] = None,
             patients: Optional[Sequence[str]] = None) -> LidcData:
    """Reads the raw folder (the one holding README.md and lidc/).

    max_patients / patients restrict the crop patients read (for quick tests);
    the normalised full slices are always read whole (69 slices).
    """
    lidc = os.path.join(root, "lidc")
    manifest = _read_csv(os.path.join(lidc, "MANIFEST.csv"))
    detail = {(r["patient_id"], r["slice_id"]): r
              for r in _read_csv(os.path.join(lidc, "ctslicing_vois_hu", "slices_detail.csv"))}
    crop_rows = [r for r in manifest if r["value_kind"] == "hu"]
    norm_rows = [r for r in manifest if r["value_kind"] != "hu"]
    if patients is not None:
        keep = set(patients)
        crop_rows = [r for r in crop_rows if r["patient_id"] in keep]
    elif max_patients is not None:
        pids = sorted({r["patient_id"] for r in crop_rows}, key=_hash_key)[:max_patients]
        pids = set(pids) | set(FULL_SLICE_SPLIT)
        crop_rows = [r for r in crop_rows if r["patient_id"] in pids]

    n = len(crop_rows)
    hu = np.full((n, CROP_PAD, CROP_PAD), -1000, np.int16)
    mk = np.zeros((n, CROP_PAD, CROP_PAD), np.uint8)
    hw = np.zeros((n, 2), np.int32)
    sp = np.zeros(n, np.float32)
    for i, r in enumerate(crop_rows):
        img = _read_png(os.path.join(lidc, r["out_image"])).astype(np.int32) - 1024
        m = _read_png(os.path.join(lidc, r["out_mask"]))
        if img.shape != m.shape:
            raise ValueError(f"crop {r['out_image']}: image {img.shape} vs mask {m.shape}")
        hw[i] = (min(img.shape[0], CROP_PAD), min(img.shape[1], CROP_PAD))
        hu[i] = _pad_center(np.clip(img, -1024, 3071).astype(np.int16), CROP_PAD, -1000)
        mk[i] = _pad_center((m > 127).astype(np.uint8), CROP_PAD, 0)
        sp[i] = float(detail[(r["patient_id"], r["slice_id"])]["pixel_spacing_mm"])
    crops = CropSet(hu, mk, hw, sp,
                    np.array([r["patient_id"] for r in crop_rows]),
                    np.array([r["slice_id"] for r in crop_rows]))

    m = len(norm_rows)
    norm = np.zeros((m, 512, 512), np.float32)
    smk = np.zeros((m, 512, 512), np.uint8)
    for i, r in enumerate(norm_rows):
        with np.load(os.path.join(lidc, r["out_image"])) as z:
            a = z["image"].astype(np.float32)
        if a.shape != (512, 512):
            raise ValueError(f"slice {r['out_image']}: shape {a.shape}, want 512x512")
        norm[i] = a
        smk[i] = _read_png(os.path.join(lidc, r["out_mask"])) > 127
    slices = SliceSet(norm, smk, np.array([r["patient_id"] for r in norm_rows]),
                      np.array([r["slice_id"] for r in norm_rows]))
    return LidcData(crops, slices, "raw:" + os.path.abspath(root),
                    {"crop_rows": n, "slice_rows": m})


# ---------------------------------------------------------------------------
# Pack: one compressed .npz


def save_pack(data: LidcData, path: str) -> int:
    """Writes data to one compressed .npz and returns its size in bytes.

    Crops are stored unpadded (flat int16 HU + packed mask bits), full slices
    as float16 with packed mask bits.
    """
    c, s = data.crops, data.slices
    flat_hu, flat_mk = [], []
    for i in range(len(c)):
        h, w = c.hw[i]
        y0, x0 = (CROP_PAD - h) // 2, (CROP_PAD - w) // 2
        flat_hu.append(c.hu[i, y0:y0 + h, x0:x0 + w].ravel())
        flat_mk.append(c.mask[i, y0:y0 + h, x0:x0 + w].ravel())
    flat_hu = np.concatenate(flat_hu) if flat_hu else np.zeros(0, np.int16)
    flat_mk = np.concatenate(flat_mk) if flat_mk else np.zeros(0, np.uint8)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez_compressed(
        path,
        crop_hu=flat_hu.astype(np.int16),
        crop_mask_bits=np.packbits(flat_mk.astype(np.uint8)),
        crop_hw=c.hw.astype(np.int16),
        crop_spacing=c.spacing.astype(np.float32),
        crop_patient=c.patient.astype("U16"),
        crop_slice=c.slice_id.astype("U16"),
        slice_norm=s.norm.astype(np.float16),
        slice_mask_bits=np.packbits(s.mask.astype(np.uint8).ravel()),
        slice_shape=np.array(s.norm.shape, np.int32),
        slice_patient=s.patient.astype("U16"),
        slice_id=s.slice_id.astype("U16"),
        info=np.array(json.dumps({"source": data.source, **data.info})),
    )
    return os.path.getsize(path)


def load_pack(path: str) -> LidcData:
    with np.load(path, allow_pickle=False) as z:
        hw = z["crop_hw"].astype(np.int32)
        n = hw.shape[0]
        sizes = hw[:, 0].astype(np.int64) * hw[:, 1]
        flat_hu = z["crop_hu"]
        flat_mk = np.unpackbits(z["crop_mask_bits"], count=int(sizes.sum()))
        hu = np.full((n, CROP_PAD, CROP_PAD), -1000, np.int16)
        mk = np.zeros((n, CROP_PAD, CROP_PAD), np.uint8)
        off = np.concatenate([[0], np.cumsum(sizes)])
        for i in range(n):
            h, w = hw[i]
            y0, x0 = (CROP_PAD - h) // 2, (CROP_PAD - w) // 2
            hu[i, y0:y0 + h, x0:x0 + w] = flat_hu[off[i]:off[i + 1]].reshape(h, w)
            mk[i, y0:y0 + h, x0:x0 + w] = flat_mk[off[i]:off[i + 1]].reshape(h, w)
        crops = CropSet(hu, mk, hw, z["crop_spacing"].astype(np.float32),
                        z["crop_patient"].astype(str), z["crop_slice"].astype(str))
        shape = tuple(int(v) for v in z["slice_shape"])
        smk = np.unpackbits(z["slice_mask_bits"], count=int(np.prod(shape))).reshape(shape)
        slices = SliceSet(z["slice_norm"], smk, z["slice_patient"].astype(str),
                          z["slice_id"].astype(str))
        info = json.loads(str(z["info"]))
    return LidcData(crops, slices, "pack:" + os.path.abspath(path), info)


# ---------------------------------------------------------------------------
# Synthetic phantoms (fallback)


def synthetic_phantoms(n_patients: int = 12, crops_per_patient: int = 6,
                       slices_per_patient: int = 2, seed: int = 0) -> LidcData:
    """Discs in lung-like surroundings: a stand-in when no data is present.

    Crops: lung parenchyma (-850 HU, noise) with one soft-tissue disc (or none).
    Full slices: two lung ellipses in normalised units with one disc, outside 0.
    Patient ids mimic LIDC's so the split code runs unchanged; the five
    full-slice ids of FULL_SLICE_SPLIT are used for the full slices.
    """
    rng = np.random.default_rng(seed)
    pids = [f"PHANTOM-{i:04d}" for i in range(n_patients)]
    hu, mk, hw, sp, pat, sid = [], [], [], [], [], []
    for p in pids:
        for k in range(crops_per_patient):
            h, w = (int(v) for v in rng.integers(43, 80, size=2))
            yy, xx = np.mgrid[0:h, 0:w]
            img = -850 + 30 * rng.standard_normal((h, w))
            m = np.zeros((h, w), np.uint8)
            if k % 5 != 4:  # one in five crops is empty, as in LIDC
                r = rng.uniform(4, min(h, w) / 3)
                cy, cx = h / 2 + rng.uniform(-3, 3), w / 2 + rng.uniform(-3, 3)
                m = (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).astype(np.uint8)
                img = np.where(m > 0, 20 + 40 * rng.standard_normal((h, w)), img)
            hu.append(_pad_center(img.astype(np.int16), CROP_PAD, -1000))
            mk.append(_pad_center(m, CROP_PAD, 0))
            hw.append((h, w))
            sp.append(rng.uniform(0.55, 0.85))
            pat.append(p)
            sid.append(f"n00_k{k:02d}")
    crops = CropSet(np.stack(hu), np.stack(mk), np.array(hw, np.int32),
                    np.array(sp, np.float32), np.array(pat), np.array(sid))
    norm, smk, spat, ssid = [], [], [], []
    yy, xx = np.mgrid[0:512, 0:512]
    for p in FULL_SLICE_SPLIT:
        for k in range(slices_per_patient):
            lung = np.zeros((512, 512), bool)
            for cx in (170, 342):
                lung |= ((xx - cx) / 95.0) ** 2 + ((yy - 250) / 150.0) ** 2 <= 1
            v = np.where(lung, 0.05 * rng.standard_normal((512, 512)), 0.0)
            cx = 170 + rng.uniform(-40, 40)
            cy = 250 + rng.uniform(-60, 60)
            r = rng.uniform(6, 20)
            m = ((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r) & lung
            v = np.where(m, (40 - NORM_OFFSET) / NORM_SCALE, v)
            v[lung & (v == 0)] = 1e-3
            norm.append(v.astype(np.float32))
            smk.append(m.astype(np.uint8))
            spat.append(p)
            ssid.append(f"n00_s{k:02d}")
    slices = SliceSet(np.stack(norm), np.stack(smk), np.array(spat), np.array(ssid))
    return LidcData(crops, slices, "synthetic", {"seed": seed})


# ---------------------------------------------------------------------------
# Entry point and split


def default_data_path() -> str:
    """../shared/data relative to the repository root (train/..)."""
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(os.path.dirname(here))
    return os.path.normpath(os.path.join(repo, "..", "shared", "data"))


def load(path: Optional[str] = None, allow_synthetic: bool = True,
         max_patients: Optional[int] = None) -> LidcData:
    """Loads from a raw folder, a pack file (.npz), or falls back to phantoms."""
    path = path or default_data_path()
    if os.path.isfile(path) and path.endswith(".npz"):
        return load_pack(path)
    if os.path.isfile(os.path.join(path, "lidc", "MANIFEST.csv")):
        return load_raw(path, max_patients=max_patients)
    if allow_synthetic:
        return synthetic_phantoms()
    raise FileNotFoundError(f"lungseg_train.data: no LIDC data at {path}")


def _hash_key(pid: str) -> str:
    return hashlib.sha256(("lungseg-split-v1:" + pid).encode()).hexdigest()


def split_patients(patients: Sequence[str], fractions=(0.8, 0.1, 0.1)) -> Dict[str, List[str]]:
    """Deterministic patient split.

    The five full-slice patients go where FULL_SLICE_SPLIT says. The others
    are ordered by sha256("lungseg-split-v1:" + patient_id) and cut 80/10/10
    (rounded), so the split does not depend on any random generator or on
    which other patients are present.
    """
    fixed = {p: s for p, s in FULL_SLICE_SPLIT.items() if p in set(patients)}
    rest = sorted((p for p in set(patients) if p not in fixed), key=_hash_key)
    n = len(rest)
    n_train = int(round(n * fractions[0]))
    n_val = int(round(n * fractions[1]))
    out = {"train": rest[:n_train], "val": rest[n_train:n_train + n_val],
           "test": rest[n_train + n_val:]}
    for p, s in fixed.items():
        out[s].append(p)
    return {k: sorted(v) for k, v in out.items()}


def split_data(data: LidcData) -> Dict[str, Dict[str, object]]:
    """Returns {split: {"patients": [...], "crops": CropSet, "slices": SliceSet}}."""
    parts = split_patients(data.patients())
    out = {}
    for s in SPLITS:
        keep = set(parts[s])
        ci = [i for i, p in enumerate(data.crops.patient) if p in keep]
        si = [i for i, p in enumerate(data.slices.patient) if p in keep]
        out[s] = {"patients": parts[s], "crops": data.crops.subset(ci),
                  "slices": data.slices.subset(si)}
    return out
