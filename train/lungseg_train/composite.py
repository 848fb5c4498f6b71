"""Whole-slice 256x256 examples built on the device from nodule crops.

The crops are tight (43-109 px) and have little context, while the models
see whole slices. So each example is a chest background (synthetic, or a real
normalised LIDC slice turned back into approximate HU with a synthetic body
around its lungs) with one or two real nodule crops pasted into a lung at the
scale they would have on the 256 grid: a crop pixel of spacing s mm becomes
s / t pixels, t being the 256 grid's spacing (1.2-1.6 mm/px while training,
1.4 mm/px for evaluation; a 512 slice at 0.6-0.8 mm/px downsampled to 256).
Crop edges are feathered over 4 native pixels.

Everything is batched torch on whatever device the bank lives on: a few
grid_sample calls per batch, no per-sample Python.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from . import data as D
from . import hucal

FEATHER = 4.0  # native crop pixels over which the pasted crop fades in at its edges
NODULE_MARGIN = 5  # native pixels of crop context kept fully around the nodule
NODULE_RAMP = 6  # native pixels over which the context then fades out
EVAL_GRID_MM = 1.4  # spacing of the 256 grid used for evaluation composites


class Rand:
    """Random draws from one generator, moved to the target device."""

    def __init__(self, gen: torch.Generator, device: torch.device):
        self.gen, self.device = gen, torch.device(device)
        self.gdev = gen.device if hasattr(gen, "device") else torch.device("cpu")

    def u(self, shape, lo=0.0, hi=1.0):
        return (torch.rand(shape, generator=self.gen, device=self.gdev) * (hi - lo) + lo).to(self.device)

    def n(self, shape, std=1.0):
        return (torch.randn(shape, generator=self.gen, device=self.gdev) * std).to(self.device)

    def i(self, hi, shape):
        return torch.randint(0, int(hi), shape, generator=self.gen, device=self.gdev).to(self.device)


def _gauss_kernel(sigma: float, device) -> torch.Tensor:
    r = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-r, r + 1, dtype=torch.float32, device=device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.max()  # peak 1: an impulse of height a becomes a blob of peak a


def _blur(x: torch.Tensor, sigma: float, peak: bool = True) -> torch.Tensor:
    k = _gauss_kernel(sigma, x.device)
    if not peak:
        k = k / k.sum()
    r = (k.numel() - 1) // 2
    x = _correlate(F.pad(x, (r, r, 0, 0), mode="replicate" if not peak else "constant"), k, -1)
    return _correlate(F.pad(x, (0, 0, r, r), mode="replicate" if not peak else "constant"), k, -2)


def _correlate(x: torch.Tensor, k: torch.Tensor, dim: int) -> torch.Tensor:
    """1-D cross-correlation of x along dim with k, valid part (what conv2d with a
    1xK or Kx1 kernel gives), as a sum of shifted copies: the Debian CPU torch
    runs such thin single-channel convolutions through a generic BLAS, ~4 s
    for 8 images of 512x512, this in a few tens of ms."""
    n = k.numel()
    length = x.shape[dim] - n + 1
    out = x.narrow(dim, 0, length) * k[0]
    for j in range(1, n):
        out = out + x.narrow(dim, j, length) * k[j]
    return out


def smooth_noise(r: Rand, b: int, size: int, cells: int) -> torch.Tensor:
    """Unit-ish smooth noise [B,1,size,size]: random cells upsampled bilinearly."""
    z = r.n((b, 1, cells, cells))
    return F.interpolate(z, size=(size, size), mode="bilinear", align_corners=False)


def _splat(r: Rand, b: int, size: int, ys: torch.Tensor, xs: torch.Tensor, amp: torch.Tensor) -> torch.Tensor:
    """Adds amplitudes at integer positions (clipped to the image) into [B,1,size,size]."""
    img = torch.zeros(b * size * size, device=r.device)
    ys = ys.round().long().clamp(0, size - 1)
    xs = xs.round().long().clamp(0, size - 1)
    bi = torch.arange(b, device=r.device).view(-1, *([1] * (ys.dim() - 1))).expand_as(ys)
    idx = (bi * size * size + ys * size + xs).reshape(-1)
    img.index_add_(0, idx, amp.reshape(-1).to(img.dtype))
    return img.view(b, 1, size, size)


def chest_backgrounds(r: Rand, b: int, size: int = 256, body: Optional[torch.Tensor] = None,
                      lungs: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Synthetic axial chest slices in HU and their lung masks, [B,1,S,S] each.

    Air outside an elliptic body, a fat ring, soft tissue, two lungs with
    texture, dot and segment vessels, a vertebra and ribs, CT noise added later.
    body: optional [B,4] (cx, cy, ax, ay) in pixels; lungs=False leaves the
    lungs out (for real lung fields pasted afterwards).
    """
    s = size / 256.0
    dev = r.device
    yy = torch.arange(size, device=dev, dtype=torch.float32).view(1, 1, size, 1) + 0.5
    xx = torch.arange(size, device=dev, dtype=torch.float32).view(1, 1, 1, size) + 0.5
    if body is None:
        cx = size / 2 + r.n((b,), 4 * s)
        cy = size * 0.52 + r.n((b,), 4 * s)
        ax = r.u((b,), 98, 122) * s
        ay = r.u((b,), 72, 96) * s
    else:
        cx, cy, ax, ay = body[:, 0], body[:, 1], body[:, 2], body[:, 3]
    v = lambda t: t.view(-1, 1, 1, 1)  # noqa: E731
    e_body = ((xx - v(cx)) / v(ax)) ** 2 + ((yy - v(cy)) / v(ay)) ** 2
    e_body = e_body + 0.04 * smooth_noise(r, b, size, 5)
    inside = e_body < 1.0
    fat_w = r.u((b,), 0.10, 0.22)
    fat = inside & (e_body > v((1 - fat_w) ** 2))
    tissue = 38 + 12 * smooth_noise(r, b, size, 16)
    hu = torch.full((b, 1, size, size), -1000.0, device=dev)
    hu = torch.where(inside, tissue, hu)
    hu = torch.where(fat, -95 + 15 * smooth_noise(r, b, size, 16), hu)
    # ribs: bright dots along an inner ellipse
    k = 14
    th = r.u((b, k), 0, 2 * math.pi)
    rr = r.u((b, k), 0.80, 0.88)
    ribs = _splat(r, b, size, v(cy).view(b, 1) + rr * v(ay).view(b, 1) * torch.sin(th),
                  v(cx).view(b, 1) + rr * v(ax).view(b, 1) * torch.cos(th), r.u((b, k), 500, 900))
    hu = hu + _blur(ribs, 1.6 * s) * inside
    lung = torch.zeros((b, 1, size, size), dtype=torch.bool, device=dev)
    if lungs:
        for side in (-1.0, 1.0):
            lcx = cx + side * r.u((b,), 0.44, 0.54) * ax
            lcy = cy - r.u((b,), 0.02, 0.12) * ay
            lax = r.u((b,), 0.30, 0.40) * ax
            lay = r.u((b,), 0.62, 0.80) * ay
            e = ((xx - v(lcx)) / v(lax)) ** 2 + ((yy - v(lcy)) / v(lay)) ** 2
            lung |= (e + 0.25 * smooth_noise(r, b, size, 6)) < 1.0
        lung &= e_body < 0.72
        par = -865 + 18 * smooth_noise(r, b, size, 24) + 30 * smooth_noise(r, b, size, 4)
        # vessels: dots (cross-sections) and short segments (in-plane runs)
        kd = 60
        dots = _splat(r, b, size, r.u((b, kd), 0, size), r.u((b, kd), 0, size), r.u((b, kd), 250, 800))
        ksg, ln = 24, 10
        y0, x0 = r.u((b, ksg, 1), 0, size), r.u((b, ksg, 1), 0, size)
        ang = r.u((b, ksg, 1), 0, 2 * math.pi)
        t = torch.arange(ln, device=dev, dtype=torch.float32).view(1, 1, ln) * r.u((b, ksg, 1), 0.3, 1.0)
        segs = _splat(r, b, size, y0 + t * torch.sin(ang), x0 + t * torch.cos(ang),
                      r.u((b, ksg, 1), 300, 700).expand(b, ksg, ln))
        ves = _blur(dots, 0.8 * s) + _blur(segs, 1.1 * s)
        lung_hu = par + ves.clamp(max=950)
        hu = torch.where(lung, lung_hu, hu)
    # vertebra: cancellous bone with a cortical rim, behind the mediastinum
    vr = r.u((b,), 0.10, 0.14) * ax
    vcy = cy + 0.70 * ay
    d = torch.sqrt((xx - v(cx)) ** 2 + (yy - v(vcy)) ** 2)
    bone = d < v(vr)
    hu = torch.where(bone, 250 + 40 * smooth_noise(r, b, size, 16) + 450 * (d > v(vr) * 0.8).float(), hu)
    lung &= ~bone
    return hu, lung.float()


@dataclass
class Bank:
    """Crops and real slices of one split, as tensors on the device."""

    crop_hu: torch.Tensor  # [N,1,P,P] HU, lightly smoothed (anti-aliasing for the downscale)
    crop_mask: torch.Tensor  # [N,1,P,P] 0/1
    crop_alpha: torch.Tensor  # [N,1,P,P] feathered validity
    crop_valid: torch.Tensor  # [N,1,P,P] 0/1 inside the true crop
    crop_spacing: torch.Tensor  # [N]
    real_hu: torch.Tensor  # [R,1,S,S] approximate HU inside the lungs, 0 elsewhere
    real_lung: torch.Tensor  # [R,1,S,S] 0/1
    real_mask: torch.Tensor  # [R,1,S,S] 0/1
    real_body: torch.Tensor  # [R,4] body ellipse around the lungs
    size: int

    @property
    def n_crops(self) -> int:
        return int(self.crop_hu.shape[0])

    @property
    def n_real(self) -> int:
        return int(self.real_hu.shape[0])


def _feather_alpha(hw: np.ndarray, p: int) -> np.ndarray:
    """Alpha that ramps from 0 at each crop edge to 1 FEATHER px inside."""
    yy = np.arange(p, dtype=np.float32)[:, None] + 0.5
    xx = np.arange(p, dtype=np.float32)[None, :] + 0.5
    out = np.zeros((len(hw), p, p), np.float32)
    for i, (h, w) in enumerate(hw):
        y0, x0 = (p - h) // 2, (p - w) // 2
        dy = np.minimum(yy - y0, y0 + h - yy)
        dx = np.minimum(xx - x0, x0 + w - xx)
        out[i] = np.clip(np.minimum(dy, dx) / FEATHER, 0, 1)
    return out


def _nodule_alpha(mask: torch.Tensor, hw: np.ndarray) -> torch.Tensor:
    """[N,1,P,P]: 1 on the nodule and NODULE_MARGIN px around it, fading to 0
    over NODULE_RAMP px (chessboard distance). Crops with an empty mask keep a
    centred ellipse of a quarter of their size instead. Only the nodule and
    its near context are pasted, so no square crop outline is left behind."""
    n, _, p, _ = mask.shape
    m = mask > 0.5
    empty = ~m.view(n, -1).any(dim=1)
    if bool(empty.any()):
        dev = mask.device
        yy = torch.arange(p, dtype=torch.float32, device=dev).view(1, p, 1) + 0.5 - p / 2
        xx = torch.arange(p, dtype=torch.float32, device=dev).view(1, 1, p) + 0.5 - p / 2
        h = torch.from_numpy(hw[:, 0].astype(np.float32)).to(dev).view(-1, 1, 1)
        w = torch.from_numpy(hw[:, 1].astype(np.float32)).to(dev).view(-1, 1, 1)
        ell = ((yy / (0.25 * h)) ** 2 + (xx / (0.25 * w)) ** 2 <= 1.0).unsqueeze(1)
        m = torch.where(empty.view(-1, 1, 1, 1), ell, m)
    dist = torch.where(m, 0.0, float(NODULE_MARGIN + NODULE_RAMP + 1))
    cur = m.float()
    for k in range(1, NODULE_MARGIN + NODULE_RAMP + 1):
        cur = F.max_pool2d(cur, 3, 1, 1)
        dist = torch.where((cur > 0) & (dist > k), torch.full_like(dist, float(k)), dist)
    return (1.0 - (dist - NODULE_MARGIN) / NODULE_RAMP).clamp(0.0, 1.0)


def real_slices_to_grid(slices: D.SliceSet, size: int = 256, device="cpu",
                        hu_cal=None) -> Dict[str, torch.Tensor]:
    """512 normalised slices -> size x size approximate HU, lung and nodule masks.
    HU = v*a + b per slice with hucal's calibrations (hu_cal, from
    hucal.calibrate), else the README's single inverse."""
    dev = torch.device(device)
    if len(slices) == 0:
        z = torch.zeros((0, 1, size, size), device=dev)
        return {"hu": z, "lung": z, "mask": z, "body": torch.zeros((0, 4), device=dev)}
    v = torch.from_numpy(slices.norm.astype(np.float32)).unsqueeze(1)
    m = torch.from_numpy(slices.mask.astype(np.float32)).unsqueeze(1)
    lung = (v != 0).float()
    a, b = hucal.scale_offset(slices, hu_cal)
    hu = (v * torch.from_numpy(a).view(-1, 1, 1, 1) + torch.from_numpy(b).view(-1, 1, 1, 1)) * lung
    f = v.shape[-1] // size
    if f > 1:
        s_l = F.avg_pool2d(lung, f)
        hu = F.avg_pool2d(hu, f) / s_l.clamp(min=1e-6)
        lung = (s_l >= 0.5).float()
        m = (F.avg_pool2d(m, f) >= 0.5).float()
    hu = hu * lung
    body = torch.zeros((v.shape[0], 4))
    for i in range(v.shape[0]):
        ys, xs = torch.nonzero(lung[i, 0] > 0, as_tuple=True)
        if ys.numel() == 0:
            body[i] = torch.tensor([size / 2, size * 0.52, size * 0.42, size * 0.33])
            continue
        y0, y1 = ys.min().item(), ys.max().item() + 1
        x0, x1 = xs.min().item(), xs.max().item() + 1
        body[i] = torch.tensor([(x0 + x1) / 2, (y0 + y1) / 2 + 0.04 * size,
                                (x1 - x0) / 2 * 1.15 + 0.04 * size, (y1 - y0) / 2 * 1.25 + 0.05 * size])
    return {"hu": hu.to(dev), "lung": lung.to(dev), "mask": m.to(dev), "body": body.to(dev)}


def make_bank(crops: D.CropSet, slices: D.SliceSet, device, size: int = 256, smooth: bool = True,
              hu_cal=None) -> Bank:
    """Moves one split's crops and slices to the device and precomputes
    smoothing, alphas and the real slices' 256 grids there."""
    dev = torch.device(device)
    p = crops.hu.shape[1] if len(crops) else D.CROP_PAD
    hu = torch.from_numpy(crops.hu).to(dev).float().unsqueeze(1)
    valid = torch.from_numpy(crops.valid()).to(dev).float().unsqueeze(1)
    mask = torch.from_numpy(crops.mask).to(dev).float().unsqueeze(1)
    alpha = torch.from_numpy(_feather_alpha(crops.hw, p)).to(dev).unsqueeze(1)
    if len(crops) and not smooth:
        alpha = alpha * _nodule_alpha(mask, crops.hw)
    elif len(crops):
        # smoothing of about half a native pixel against aliasing when pasted at ~0.5x
        sm = _blur(hu * valid, 0.6, peak=False) / _blur(valid, 0.6, peak=False).clamp(min=1e-3)
        hu = torch.where(valid > 0, sm, hu)
        alpha = alpha * _nodule_alpha(mask, crops.hw)
    real = real_slices_to_grid(slices, size, dev, hu_cal)
    return Bank(hu, mask, alpha, valid, torch.from_numpy(crops.spacing.astype(np.float32)).to(dev),
                real["hu"], real["lung"], real["mask"], real["body"], size)


def _rot(phi: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(phi), torch.sin(phi)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)  # [B,2,2]


def paste_theta(center_px: torch.Tensor, scale: torch.Tensor, phi: torch.Tensor, flip: torch.Tensor,
                size: int, pad: int) -> torch.Tensor:
    """affine_grid theta [B,2,3] mapping canvas coords to crop-tensor coords.

    center_px: [B,2] (x, y) paste centre in canvas pixels from the canvas centre;
    scale: canvas pixels per crop pixel; phi: rotation; flip: +1/-1 on x.
    """
    rinv = _rot(-phi)
    fl = torch.ones_like(rinv)
    fl[:, :, 0] = flip.view(-1, 1)  # mirror x before rotating back
    m = rinv * fl
    k = (size / 2.0) / (scale * pad / 2.0)
    a = m * k.view(-1, 1, 1)
    bvec = -torch.matmul(m, center_px.unsqueeze(-1)).squeeze(-1) / (scale * pad / 2.0).view(-1, 1)
    return torch.cat([a, bvec.unsqueeze(-1)], dim=-1)


def invert_theta(theta: torch.Tensor) -> torch.Tensor:
    a, b = theta[:, :, :2], theta[:, :, 2:]
    ai = torch.linalg.inv(a)
    return torch.cat([ai, -torch.matmul(ai, b)], dim=-1)


def _pick_centres(r: Rand, lung: torch.Tensor, size: int) -> torch.Tensor:
    """One pixel per image inside the (eroded) lung; [B,2] (x, y) from the centre."""
    b = lung.shape[0]
    er = -F.max_pool2d(-lung, 9, 1, 4)
    w = er.view(b, -1) + 1e-3 * lung.view(b, -1) + 1e-9
    u = r.u((b, 1)).clamp(max=1 - 1e-6)
    cdf = torch.cumsum(w, dim=1)
    idx = torch.searchsorted(cdf, u * cdf[:, -1:]).clamp(max=size * size - 1).view(-1)
    y = (idx // size).float() + 0.5 + r.u((b,), -0.5, 0.5)
    x = (idx % size).float() + 0.5 + r.u((b,), -0.5, 0.5)
    return torch.stack([x - size / 2, y - size / 2], dim=-1)


def paste(bank: Bank, r: Rand, hu: torch.Tensor, mask: torch.Tensor, lung: torch.Tensor,
          idx: torch.Tensor, grid_mm: torch.Tensor, random_pose: bool, on: torch.Tensor,
          centre: Optional[torch.Tensor] = None):
    """Pastes crops idx into hu/mask where on==1; returns hu, mask, theta.
    centre: [B,2] (x, y) from the canvas centre; default a random lung pixel."""
    b, size = hu.shape[0], hu.shape[-1]
    p = bank.crop_hu.shape[-1]
    if centre is None:
        centre = _pick_centres(r, lung, size)
    scale = bank.crop_spacing[idx] / grid_mm
    if random_pose:
        phi = r.u((b,), 0, 2 * math.pi)
        flip = torch.where(r.u((b,)) < 0.5, -1.0, 1.0)
    else:
        phi = torch.zeros(b, device=hu.device)
        flip = torch.ones(b, device=hu.device)
    theta = paste_theta(centre, scale, phi, flip, size, p)
    grid = F.affine_grid(theta, (b, 1, size, size), align_corners=False)
    stack = torch.cat([bank.crop_hu[idx], bank.crop_mask[idx], bank.crop_alpha[idx]], dim=1)
    s = F.grid_sample(stack, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    a = s[:, 2:3] * on.view(-1, 1, 1, 1)
    hu = hu * (1 - a) + s[:, 0:1] * a
    cm = ((s[:, 1:2] > 0.5) & (a > 0.5)).float()
    mask = torch.maximum(mask * (a <= 0.5).float(), cm)
    return hu, mask, theta


def augment(r: Rand, hu: torch.Tensor, mask: torch.Tensor, rot_deg: float = 30.0,
            elastic_px: float = 1.5) -> Tuple[torch.Tensor, torch.Tensor]:
    """Flips, rotation, mild scale and a small elastic warp of a whole batch."""
    b, size = hu.shape[0], hu.shape[-1]
    phi = r.u((b,), -rot_deg, rot_deg) * math.pi / 180
    sc = r.u((b,), 0.9, 1.1)
    fx = torch.where(r.u((b,)) < 0.5, -1.0, 1.0)
    fy = torch.where(r.u((b,)) < 0.5, -1.0, 1.0)
    a = _rot(phi) / sc.view(-1, 1, 1)
    a = a * torch.stack([fx, fy], -1).view(b, 1, 2)
    theta = torch.cat([a, r.u((b, 2, 1), -0.04, 0.04)], dim=-1)
    grid = F.affine_grid(theta, (b, 1, size, size), align_corners=False)
    if elastic_px > 0:
        disp = torch.cat([smooth_noise(r, b, size, 6), smooth_noise(r, b, size, 6)], 1)
        grid = grid + disp.permute(0, 2, 3, 1) * (elastic_px * 2.0 / size)
    s = F.grid_sample(torch.cat([hu + 1000.0, mask], 1), grid, mode="bilinear",
                      padding_mode="zeros", align_corners=False)
    return s[:, 0:1] - 1000.0, (s[:, 1:2] > 0.5).float()


def ct_backgrounds(r: Rand, ct, p_ct: float, hu: torch.Tensor, lung: torch.Tensor, mask: torch.Tensor):
    """Replaces a fraction p_ct of the backgrounds (HU, lung, nodule mask) by
    real CT slices of ct (a ctbg.CTBank of the same size), with empty nodule
    masks. Returns (which images are CT or None, their bank indices, hu, lung,
    mask); without ct, or p_ct 0, nothing changes and no random numbers are drawn."""
    if ct is None or ct.n == 0 or p_ct <= 0:
        return None, None, hu, lung, mask
    b = hu.shape[0]
    use_ct = r.u((b,)) < p_ct
    ci = r.i(ct.n, (b,))
    uc = use_ct.view(-1, 1, 1, 1)
    hu = torch.where(uc, ct.hu[ci], hu)
    lung = torch.where(uc, ct.lung[ci], lung)
    mask = torch.where(uc, torch.zeros_like(mask), mask)
    return use_ct, ci, hu, lung, mask


def training_batch(bank: Bank, r: Rand, b: int, p_real: float = 0.3, p_paste_real: float = 0.5,
                   p_paste_synth: float = 0.92, p_second: float = 0.25,
                   grid_mm=(1.2, 1.6), aug: bool = True, ct=None, p_ct: float = 0.0,
                   p_paste_ct: float = 0.5, pool: Optional["BgPool"] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """One batch of windowed inputs [B,1,S,S] in [0,1] and masks [B,1,S,S].

    ct (a ctbg.CTBank at the bank's size, ctbg.to_grid): a fraction p_ct of
    the images are whole real CT slices at their own pixel spacing (chest
    wall, mediastinum, hila, table and all); a fraction p_paste_ct of those
    get a crop pasted into their lungs (a second one only with a first), the
    rest are real negatives that must come out empty. pool: synthetic
    backgrounds drawn from a BgPool instead of made per batch (a CPU run)."""
    size = bank.size
    if pool is not None and pool.n > 0:
        hu, lung, mask, use_real = pool_backgrounds(pool, r, b)
    else:
        hu, lung, mask, use_real = backgrounds(bank, r, b, p_real)
    on = torch.where(use_real, r.u((b,)) < p_paste_real, r.u((b,)) < p_paste_synth).float()
    gm = r.u((b,), grid_mm[0], grid_mm[1]) * (256.0 / size)  # anatomy keeps its size on smaller grids
    use_ct, ci, hu, lung, mask = ct_backgrounds(r, ct, p_ct, hu, lung, mask)
    if use_ct is not None:
        on = torch.where(use_ct, (r.u((b,)) < p_paste_ct).float(), on)
        gm = torch.where(use_ct, ct.spacing[ci], gm)
    if bank.n_crops > 0:
        hu, mask, _ = paste(bank, r, hu, mask, lung, r.i(bank.n_crops, (b,)), gm, True, on)
        on2 = (r.u((b,)) < p_second).float()
        if use_ct is not None:
            on2 = torch.where(use_ct, on2 * on, on2)
        hu, mask, _ = paste(bank, r, hu, mask, lung, r.i(bank.n_crops, (b,)), gm, True, on2)
    return finish_batch(r, hu, mask, aug)


def finish_batch(r: Rand, hu: torch.Tensor, mask: torch.Tensor, aug: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Augmentation (if aug), CT noise of a random level, the HU window and a
    random contrast/brightness (if aug): model inputs [B,1,S,S] and masks."""
    b = hu.shape[0]
    if aug:
        hu, mask = augment(r, hu, mask)
    hu = hu + r.n((b, 1, 1, 1)).abs().clamp(max=2.5) * 8.0 * r.n(hu.shape)
    x = D.window(hu)
    if aug:
        c = r.u((b, 1, 1, 1), 0.9, 1.1)
        o = r.u((b, 1, 1, 1), -0.04, 0.04)
        x = ((x - 0.5) * c + 0.5 + o).clamp(0.0, 1.0)
    return x, mask


def backgrounds(bank: Bank, r: Rand, b: int, p_real: float):
    """Chest backgrounds at the bank's size: HU, lung mask, nodule mask [B,1,S,S]
    and which images are real. A fraction p_real are the bank's real slices
    (approximate HU in their lungs, a synthetic body around them, their own
    nodule masks); the rest synthetic chests without nodules."""
    size = bank.size
    use_real = (r.u((b,)) < p_real) if bank.n_real > 0 else torch.zeros(b, dtype=torch.bool, device=r.device)
    hu, lung = chest_backgrounds(r, b, size)
    mask = torch.zeros_like(hu)
    if bank.n_real > 0:
        ri = r.i(bank.n_real, (b,))
        ur = use_real.view(-1, 1, 1, 1)
        body = torch.where(use_real.view(-1, 1), bank.real_body[ri], _default_body(b, size, r.device))
        hu2, _ = chest_backgrounds(r, b, size, body=body, lungs=False)
        rl = bank.real_lung[ri]
        hu = torch.where(ur, torch.where(rl > 0, bank.real_hu[ri], hu2), hu)
        lung = torch.where(ur, rl, lung)
        mask = torch.where(ur, bank.real_mask[ri], mask)
    return hu, lung, mask, use_real


def _default_body(b: int, size: int, device) -> torch.Tensor:
    t = torch.tensor([size / 2, size * 0.52, size * 0.43, size * 0.33], device=device)
    return t.view(1, 4).expand(b, 4)


@dataclass
class EvalSet:
    x: torch.Tensor  # [N,1,S,S] windowed input
    y: torch.Tensor  # [N,1,S,S] mask
    theta: Optional[torch.Tensor]  # [N,2,3] paste transform (composites), else None
    crop_index: Optional[torch.Tensor]  # [N] index into the bank's crops


def composite_eval_set(bank: Bank, seed: int, limit: Optional[int] = None, chunk: int = 256) -> EvalSet:
    """Each crop of the bank once, in a seeded synthetic chest at EVAL_GRID_MM.

    No rotation, flips or warps; CT noise sigma 8 HU. The same examples give
    the whole-slice scores (Dice over all 256x256 pixels) and, mapped back
    through theta, the crop scores at native crop resolution.
    """
    g = torch.Generator()
    g.manual_seed(seed)
    r = Rand(g, bank.crop_hu.device)
    n = bank.n_crops if limit is None else min(limit, bank.n_crops)
    xs, ys, ts = [], [], []
    for s in range(0, n, chunk):
        idx = torch.arange(s, min(n, s + chunk), device=r.device)
        b = idx.numel()
        hu, lung = chest_backgrounds(r, b, bank.size)
        mask = torch.zeros_like(hu)
        gm = torch.full((b,), EVAL_GRID_MM * 256.0 / bank.size, device=r.device)
        hu, mask, th = paste(bank, r, hu, mask, lung, idx, gm, False, torch.ones(b, device=r.device))
        hu = hu + 8.0 * r.n(hu.shape)
        xs.append(D.window(hu))
        ys.append(mask)
        ts.append(th)
    if not xs:
        z = torch.zeros((0, 1, bank.size, bank.size), device=r.device)
        return EvalSet(z, z, torch.zeros((0, 2, 3), device=r.device), torch.zeros(0, dtype=torch.long, device=r.device))
    return EvalSet(torch.cat(xs), torch.cat(ys), torch.cat(ts), torch.arange(n, device=r.device))


def real_eval_set(bank: Bank, seed: int) -> EvalSet:
    """The bank's real slices with a seeded synthetic body around their lungs."""
    g = torch.Generator()
    g.manual_seed(seed)
    r = Rand(g, bank.real_hu.device)
    n = bank.n_real
    if n == 0:
        z = torch.zeros((0, 1, bank.size, bank.size), device=r.device)
        return EvalSet(z, z, None, None)
    hu2, _ = chest_backgrounds(r, n, bank.size, body=bank.real_body, lungs=False)
    hu = torch.where(bank.real_lung > 0, bank.real_hu, hu2)
    hu = hu + 8.0 * r.n(hu.shape) * (bank.real_lung == 0).float()  # the real lungs are already smoothed
    return EvalSet(D.window(hu), bank.real_mask.clone(), None, None)


def crops_back(bank: Bank, prob: torch.Tensor, theta: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Samples canvas probabilities back onto the crops' native grids: [N,1,P,P]."""
    p = bank.crop_hu.shape[-1]
    inv = invert_theta(theta)
    grid = F.affine_grid(inv, (prob.shape[0], 1, p, p), align_corners=False)
    return F.grid_sample(prob, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# ---------------------------------------------------------------------------
# Crop models: windows at the slice's native pixel grid
#
# A crop model sees a WIN x WIN window (128) of a slice at its own pixel
# spacing, centred near a candidate found by a whole-slice model (the Go
# cascade: segment/cascade). Examples: a 512 chest background (synthetic, or
# a real normalised slice with a synthetic body) at 0.45-1.0 mm/px, a window
# cut around a lung pixel or a real nodule, and a nodule crop pasted near the
# window centre at its physical size; then the usual augmentation.

CROP_WIN = 128
CROP_CANVAS = 512
CROP_OFFSET = 24  # window centre to nodule centre, px (the detector's centring error)
CROP_GRID_MM = (0.45, 1.0)  # mm/px of the native grid while training


def _pick_weighted(r: Rand, w: torch.Tensor) -> torch.Tensor:
    """One pixel per image drawn with weights w [B,1,S,S]; returns (y, x) int [B] each."""
    b, size = w.shape[0], w.shape[-1]
    flat = w.reshape(b, -1) + 1e-9
    u = r.u((b, 1)).clamp(max=1 - 1e-6)
    cdf = torch.cumsum(flat, dim=1)
    idx = torch.searchsorted(cdf, u * cdf[:, -1:]).clamp(max=size * size - 1).view(-1)
    return idx // size, idx % size


def cut_windows(t: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor, win: int, fill: float) -> torch.Tensor:
    """[B,1,win,win] windows of t [B,1,S,S] with top-left (cy - win//2, cx - win//2);
    pixels outside the image read fill (the Go cascade reads HU -1024 there)."""
    b, size = t.shape[0], t.shape[-1]
    ar = torch.arange(win, device=t.device) - win // 2
    ys = cy.long().view(-1, 1) + ar.view(1, -1)
    xs = cx.long().view(-1, 1) + ar.view(1, -1)
    ok = ((ys >= 0) & (ys < size)).unsqueeze(2) & ((xs >= 0) & (xs < size)).unsqueeze(1)
    bi = torch.arange(b, device=t.device).view(-1, 1, 1)
    out = t[bi, 0, ys.clamp(0, size - 1).unsqueeze(2), xs.clamp(0, size - 1).unsqueeze(1)]
    return torch.where(ok, out, torch.full_like(out, fill)).unsqueeze(1)


@dataclass
class BgPool:
    """Chest backgrounds made once and reused (backgrounds() output for P images)."""

    hu: torch.Tensor
    lung: torch.Tensor
    mask: torch.Tensor
    use_real: torch.Tensor

    @property
    def n(self) -> int:
        return int(self.hu.shape[0])


def make_bg_pool(bank: Bank, r: Rand, n: int, p_real: float = 0.3, chunk: int = 8) -> BgPool:
    """n backgrounds of backgrounds(bank, ...), made in chunks: on a CPU a 512
    synthetic chest costs about a second, more than a crop model's training
    step, so a CPU run draws its window backgrounds from such a pool
    (pool_backgrounds flips them) instead of making new ones every batch."""
    parts = [backgrounds(bank, r, min(chunk, n - s), p_real) for s in range(0, n, chunk)]
    return BgPool(*(torch.cat([p[k] for p in parts]) for k in range(4)))


def pool_backgrounds(pool: BgPool, r: Rand, b: int):
    """b backgrounds drawn from the pool, each flipped left-right and/or up-down at random."""
    i = r.i(pool.n, (b,))
    fx = (r.u((b,)) < 0.5).view(-1, 1, 1, 1)
    fy = (r.u((b,)) < 0.5).view(-1, 1, 1, 1)

    def f(t):
        t = torch.where(fx, t.flip(-1), t)
        return torch.where(fy, t.flip(-2), t)

    return f(pool.hu[i]), f(pool.lung[i]), f(pool.mask[i]), pool.use_real[i]


def crop_training_batch(bank: Bank, r: Rand, b: int, win: int = CROP_WIN, p_real: float = 0.3,
                        p_paste: float = 0.85, p_second: float = 0.1, offset: int = CROP_OFFSET,
                        grid_mm=CROP_GRID_MM, aug: bool = True, ct=None,
                        p_ct: float = 0.0, pool: Optional[BgPool] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """One batch of crop-model inputs [B,1,win,win] in [0,1] and masks.

    ct (a ctbg.CTBank of the same size as the bank): a fraction p_ct of the
    backgrounds are real CT slices, whole (their own chest wall, mediastinum,
    table), at their own pixel spacing; their windows are cut around a lung
    pixel and get a crop like the others (p_paste), or stay real negatives."""
    if pool is not None and pool.n > 0:
        hu, lung, mask, use_real = pool_backgrounds(pool, r, b)
    else:
        hu, lung, mask, use_real = backgrounds(bank, r, b, p_real)
    use_ct, ci, hu, lung, mask = ct_backgrounds(r, ct, p_ct, hu, lung, mask)
    er = -F.max_pool2d(-lung, 9, 1, 4)
    has = mask.flatten(1).amax(1) > 0
    w = torch.where(has.view(-1, 1, 1, 1), mask, er + 1e-3 * lung)
    cy, cx = _pick_weighted(r, w)
    cy = cy + r.i(2 * offset + 1, (b,)) - offset
    cx = cx + r.i(2 * offset + 1, (b,)) - offset
    hu_w = cut_windows(hu, cy, cx, win, -1024.0)
    mask_w = cut_windows(mask, cy, cx, win, 0.0)
    lung_w = cut_windows(lung, cy, cx, win, 0.0)
    # a crop near the centre unless the window already holds a real nodule
    on = ((r.u((b,)) < p_paste) & ~has).float()
    if bank.n_crops > 0:
        gm = r.u((b,), grid_mm[0], grid_mm[1])
        if use_ct is not None:
            gm = torch.where(use_ct, ct.spacing[ci], gm)
        centre = r.u((b, 2), -offset, offset)
        hu_w, mask_w, _ = paste(bank, r, hu_w, mask_w, lung_w, r.i(bank.n_crops, (b,)), gm, True, on,
                                centre=centre)
        on2 = (r.u((b,)) < p_second).float()
        hu_w, mask_w, _ = paste(bank, r, hu_w, mask_w, lung_w, r.i(bank.n_crops, (b,)), gm, True, on2)
    return finish_batch(r, hu_w, mask_w, aug)


def crop_eval_set(bank: Bank, seed: int, win: int = CROP_WIN, limit: Optional[int] = None,
                  chunk: int = 64) -> EvalSet:
    """Each crop once at its native spacing (scale 1, no rotation) at the centre of
    a window cut around a lung pixel of a seeded synthetic 512 chest; CT noise 8 HU.
    With the thetas, predictions map back exactly onto the crop's own pixels."""
    g = torch.Generator()
    g.manual_seed(seed)
    r = Rand(g, bank.crop_hu.device)
    n = bank.n_crops if limit is None else min(limit, bank.n_crops)
    xs, ys, ts = [], [], []
    for s in range(0, n, chunk):
        idx = torch.arange(s, min(n, s + chunk), device=r.device)
        b = idx.numel()
        hu, lung = chest_backgrounds(r, b, bank.size)
        er = -F.max_pool2d(-lung.float(), 9, 1, 4)
        cy, cx = _pick_weighted(r, er + 1e-3 * lung)
        hu_w = cut_windows(hu, cy, cx, win, -1024.0)
        lung_w = cut_windows(lung.float(), cy, cx, win, 0.0)
        mask_w = torch.zeros_like(hu_w)
        hu_w, mask_w, th = paste(bank, r, hu_w, mask_w, lung_w, idx, bank.crop_spacing[idx], False,
                                 torch.ones(b, device=r.device), centre=torch.zeros(b, 2, device=r.device))
        hu_w = hu_w + 8.0 * r.n(hu_w.shape)
        xs.append(D.window(hu_w))
        ys.append(mask_w)
        ts.append(th)
    if not xs:
        z = torch.zeros((0, 1, win, win), device=r.device)
        return EvalSet(z, z, torch.zeros((0, 2, 3), device=r.device), torch.zeros(0, dtype=torch.long, device=r.device))
    return EvalSet(torch.cat(xs), torch.cat(ys), torch.cat(ts), torch.arange(n, device=r.device))


def crop_real_eval_set(bank: Bank, seed: int, win: int = CROP_WIN) -> EvalSet:
    """Windows of the bank's real slices (512, synthetic body) centred on the
    bounding-box centre of each slice's nodule pixels; slices without any are left out."""
    g = torch.Generator()
    g.manual_seed(seed)
    r = Rand(g, bank.real_hu.device)
    keep = [i for i in range(bank.n_real) if float(bank.real_mask[i].sum()) > 0]
    if not keep:
        z = torch.zeros((0, 1, win, win), device=r.device)
        return EvalSet(z, z, None, None)
    ix = torch.tensor(keep, device=r.device)
    hu2, _ = chest_backgrounds(r, len(keep), bank.size, body=bank.real_body[ix], lungs=False)
    lung = bank.real_lung[ix]
    hu = torch.where(lung > 0, bank.real_hu[ix], hu2)
    hu = hu + 8.0 * r.n(hu.shape) * (lung == 0).float()
    cys, cxs = [], []
    for m in bank.real_mask[ix]:
        ys, xs = torch.nonzero(m[0] > 0, as_tuple=True)
        cys.append(int((ys.min() + ys.max()) // 2))
        cxs.append(int((xs.min() + xs.max()) // 2))
    cy = torch.tensor(cys, device=r.device)
    cx = torch.tensor(cxs, device=r.device)
    x = D.window(cut_windows(hu, cy, cx, win, -1024.0))
    y = cut_windows(bank.real_mask[ix], cy, cx, win, 0.0)
    return EvalSet(x, y, None, None)


# ---------------------------------------------------------------------------
# Bare crops: the held-out crops as they are, padded with air (data.pad_bare_crop)


@dataclass
class BareSet:
    """Bare crops padded into crop-model windows."""

    x: torch.Tensor  # [N,1,W,W] windowed input
    y: torch.Tensor  # [N,1,W,W] mask, padded with 0
    valid: torch.Tensor  # [N,1,W,W] 0/1: the crop's own pixels
    diam: torch.Tensor  # [N] truth longest diameter (mm), 0 if empty


def bare_eval_set(crops: D.CropSet, win: int = CROP_WIN, device="cpu",
                  diam: Optional[np.ndarray] = None) -> BareSet:
    """Each crop once, as it is (no noise, no compositing), padded by
    data.pad_bare_crop; only its own pixels are scored."""
    from . import metrics as MX

    n = len(crops)
    x = np.zeros((n, 1, win, win), np.float32)
    y = np.zeros((n, 1, win, win), np.float32)
    v = np.zeros((n, 1, win, win), np.float32)
    dm = np.zeros(n, np.float32)
    for i in range(n):
        hu, m = crops.bare(i)
        hu, m = D.fit_bare(hu, win), D.fit_bare(m, win)
        h, w = hu.shape
        x[i, 0] = D.window(D.pad_bare_crop(hu.astype(np.float32), win, D.OUTSIDE_HU))
        y[i, 0] = D.pad_bare_crop(m.astype(np.float32), win, 0.0)
        y0, x0 = D.bare_offset(h, w, win)
        v[i, 0, y0:y0 + h, x0:x0 + w] = 1.0
        dm[i] = diam[i] if diam is not None else MX.longest_diameter_mm(m, float(crops.spacing[i]))
    dev = torch.device(device)
    return BareSet(torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev), torch.from_numpy(v).to(dev),
                   torch.from_numpy(dm).to(dev))


def bare_training_batch(crops: D.CropSet, r: Rand, b: int, win: int = CROP_WIN,
                        aug: bool = True, upscale: float = 1.0,
                        p_upscale: float = 0.0, p_affine: float = 0.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """b bare training crops: each turned by one of the eight symmetries of the
    square (flips, quarter turns) as a bare crop, then padded by
    data.pad_bare_crop (mask too), then CT noise of a random level, the HU
    window and a random contrast/brightness (finish_batch without the
    geometric warp: the bare crop is not resampled).

    With p_upscale > 0, that fraction of the crops is first enlarged by a
    factor drawn from [1, upscale] (bilinear HU, the mask's bilinear
    resampling at 0.5) and cut to its centred win x win part: a nodule then
    stands for a mass up to upscale times larger, which LIDC's crops (43-109
    px) seldom show and which a crop model meets on real chests.

    With p_affine > 0, that fraction of the padded crops is rotated by any
    angle and scaled by a factor log-uniform in [1/1.25, 1.25] about the
    crop's centre (rotate_scale; zctx --affine): the eight symmetries alone
    show each nodule only at its own pixel size and four orientations. No
    random number is drawn for it when p_affine is 0."""
    idx = r.i(len(crops), (b,)).cpu().numpy()
    sym = r.i(8, (b,)).cpu().numpy()
    if p_upscale > 0 and upscale > 1.0:
        up = (r.u((b,), 0.0, 1.0) < p_upscale).cpu().numpy()
        fac = r.u((b,), 1.0, upscale).cpu().numpy()
    else:
        up = np.zeros(b, bool)
        fac = np.ones(b, np.float32)
    if p_affine > 0:
        turn = (r.u((b,), 0.0, 1.0) < p_affine).cpu().numpy()
        ang = r.u((b,), 0.0, 2 * math.pi).cpu().numpy()
        scl = torch.exp(r.u((b,), -math.log(AFFINE_SCALE), math.log(AFFINE_SCALE))).cpu().numpy()
    else:
        turn = np.zeros(b, bool)
    hu = np.zeros((b, 1, win, win), np.float32)
    mk = np.zeros((b, 1, win, win), np.float32)
    for k, (i, s) in enumerate(zip(idx, sym)):
        a, m = crops.bare(int(i))
        if up[k]:
            a, m = enlarge_bare(a, m, float(fac[k]))
        a, m = D.fit_bare(a, win), D.fit_bare(m, win)
        if aug:
            a, m = np.rot90(a, s % 4), np.rot90(m, s % 4)
            if s >= 4:
                a, m = a[:, ::-1], m[:, ::-1]
        hu[k, 0] = D.pad_bare_crop(np.ascontiguousarray(a).astype(np.float32), win, D.OUTSIDE_HU)
        mk[k, 0] = D.pad_bare_crop(np.ascontiguousarray(m).astype(np.float32), win, 0.0)
        if turn[k]:
            h, w = m.shape
            y0, x0 = D.bare_offset(h, w, win)
            hu[k], mk[k, 0] = rotate_scale(hu[k], mk[k, 0], (y0 + (h - 1) / 2, x0 + (w - 1) / 2),
                                           float(ang[k]), float(scl[k]))
    hu_t = torch.from_numpy(hu).to(r.device)
    mk_t = torch.from_numpy(mk).to(r.device)
    return finish_batch(r, hu_t, mk_t, False) if not aug else _finish_intensity(r, hu_t, mk_t)


AFFINE_SCALE = 1.25  # --p-bare-affine / zctx --affine: scale log-uniform in [1/this, this]


def rotate_scale(x: np.ndarray, m: np.ndarray, centre: Tuple[float, float], angle: float, scale: float,
                 beyond: str = "air"):
    """x [C,H,W] (HU) and m [H,W] (0/1) rotated by angle (radians) and scaled
    by scale about centre (row, col): HU bilinear, air (D.OUTSIDE_HU) from
    beyond the array (beyond="mirror": the array mirrored, HU and mask alike),
    the mask bilinear and kept where >= 0.5."""
    from scipy import ndimage as ndi

    c, s = math.cos(angle), math.sin(angle)
    inv = np.array([[c, s], [-s, c]]) / scale  # output -> input coordinates
    ctr = np.asarray(centre, np.float64)
    off = ctr - inv @ ctr
    mode = {"air": "constant", "mirror": "mirror"}[beyond]
    xo = np.stack([ndi.affine_transform(ch, inv, off, order=1, mode=mode, cval=D.OUTSIDE_HU) for ch in x])
    mo = ndi.affine_transform(m.astype(np.float32), inv, off, order=1, mode=mode, cval=0.0)
    return xo.astype(np.float32), (mo >= 0.5).astype(np.float32)


def enlarge_bare(a: np.ndarray, m: np.ndarray, f: float) -> Tuple[np.ndarray, np.ndarray]:
    """A bare crop (HU, mask) enlarged f times about its centre: bilinear HU,
    the mask resampled bilinearly and kept where >= 0.5."""
    h, w = a.shape
    nh, nw = max(1, int(round(h * f))), max(1, int(round(w * f)))
    ta = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    tm = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None, None]
    ea = F.interpolate(ta, size=(nh, nw), mode="bilinear", align_corners=False)[0, 0].numpy()
    em = (F.interpolate(tm, size=(nh, nw), mode="bilinear", align_corners=False)[0, 0] >= 0.5).numpy()
    return ea, em.astype(m.dtype)


def _finish_intensity(r: Rand, hu: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    b = hu.shape[0]
    hu = hu + r.n((b, 1, 1, 1)).abs().clamp(max=2.5) * 8.0 * r.n(hu.shape)
    x = D.window(hu)
    c = r.u((b, 1, 1, 1), 0.9, 1.1)
    o = r.u((b, 1, 1, 1), -0.04, 0.04)
    return ((x - 0.5) * c + 0.5 + o).clamp(0.0, 1.0), mask
