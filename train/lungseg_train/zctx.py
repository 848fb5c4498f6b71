"""Does z-context help the crop model? A probe on the bare crops (issue 14).

    cd train && /usr/bin/python3 -m lungseg_train.zctx --context 1 --steps 6000 \\
        --data ../.gpu/lidc_pack.npz --threads 1 --work W --json W/ctx1.json

The crops of one nodule in ctslicing_vois_hu are contiguous slices of one
volume of interest (slice ids nNN_k00, k01, ...; every nodule's crops share
one size and origin), so crop k's neighbours k-1 and k+1 are the same window
one slice above and below. With --context 1 the network sees (k-1, k, k+1) as
three input channels (a nodule's first and last slice repeat themselves for
the missing neighbour) and predicts crop k's mask; --context 0 is the same
network on crop k alone, the control. Everything else is equal: the compact
ResNet50-UNet from scratch, bare training crops only (one of the eight
symmetries of the square, placed at a random offset in a window of 64, 96 or
128 px by the crop's size: the small windows are what makes this cheap on a
CPU), CT noise, the HU window, contrast/brightness, Dice+BCE, AdamW 1e-3 with
warm-up and cosine decay over --steps.

Evaluation is bare_eval's: each validation / test crop centred in a 128
window of air (data.pad_bare_crop), only its own pixels scored, mean Dice over
crops with truth at the threshold chosen on validation; the step kept is the
best validation mean. It writes checkpoints (--work) and continues with
--resume. It is a measurement, not a shipped model: the Go pipeline feeds a
crop model one slice.

--upscale S trains and scores the same network on a grid S times finer: each
batch's HU upsampled bilinear after the noise, masks nearest, and for scoring
each window upsampled, run, and its probabilities pooled back to the native
grid (Upscaled), so the figures compare with the native run's.

--affine P resamples a share P of the training crops after their placement:
a rotation by any angle and a scale drawn log-uniform from [1/1.25, 1.25]
about the crop's centre (HU bilinear with air beyond the crop, masks
bilinear kept at 0.5; composite.rotate_scale). The eight symmetries alone never resample a
crop, so the network sees each nodule only at its own pixel size and at
four orientations.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import defaultdict
from typing import Dict, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import bare_eval as BE
from . import composite as C
from . import data as D
from . import metrics as MX
from . import models as M
from .train import loss_fn

EVAL_WIN = 128
BUCKETS = (64, 96, 128)


def neighbours(crops: D.CropSet) -> np.ndarray:
    """int64 [N, 2]: the index of each crop's slice above and below in its
    nodule's volume (itself at the volume's ends)."""
    groups: Dict[Tuple[str, str], Dict[int, int]] = defaultdict(dict)
    for i, (p, s) in enumerate(zip(crops.patient, crops.slice_id)):
        nod, _, k = str(s).partition("_k")
        groups[(str(p), nod)][int(k)] = i
    out = np.zeros((len(crops), 2), np.int64)
    for ks in groups.values():
        for k, i in ks.items():
            out[i, 0] = ks.get(k - 1, i)
            out[i, 1] = ks.get(k + 1, i)
    return out


def stack(crops: D.CropSet, nb: np.ndarray, i: int, context: int) -> Tuple[np.ndarray, np.ndarray]:
    """HU float32 [C, h, w] (C = 1 or 3: below, itself, above) and mask [h, w]."""
    a, m = crops.bare(i)
    if context == 0:
        return a[None].astype(np.float32), m
    lo, _ = crops.bare(int(nb[i, 0]))
    hi, _ = crops.bare(int(nb[i, 1]))
    return np.stack([lo, a, hi]).astype(np.float32), m


def bucket(h: int, w: int) -> int:
    s = max(h, w)
    for b in BUCKETS:
        if s <= b:
            return b
    return BUCKETS[-1]


def mirror_index(n: int, start: int, size: int) -> np.ndarray:
    """Indices into an axis of length n that fill size positions with it
    placed at start and mirrored beyond its ends without repeating the edge
    (numpy's "reflect", but periodic however far it goes: period 2(n-1))."""
    if n == 1:
        return np.zeros(size, np.int64)
    period = 2 * (n - 1)
    k = (np.arange(size) - start) % period
    return np.where(k < n, k, period - k)


class Batches:
    def __init__(self, crops: D.CropSet, context: int, seed: int, upscale: int = 1, affine: float = 0.0,
                 mirror: float = 0.0):
        self.crops, self.context, self.upscale, self.affine = crops, context, upscale, affine
        self.mirror = mirror
        self.nb = neighbours(crops)
        self.rng = np.random.default_rng(seed)
        by = defaultdict(list)
        for i, (h, w) in enumerate(crops.hw):
            by[bucket(int(h), int(w))].append(i)
        self.win = sorted(by)
        self.members = [np.array(by[w]) for w in self.win]
        n = np.array([len(m) for m in self.members], np.float64)
        self.p = n / n.sum()

    def next(self, b: int) -> Tuple[torch.Tensor, torch.Tensor]:
        r = self.rng
        k = int(r.choice(len(self.win), p=self.p))
        win, idx = self.win[k], r.choice(self.members[k], size=b)
        c = 1 if self.context == 0 else 3
        x = np.full((b, c, win, win), D.OUTSIDE_HU, np.float32)
        y = np.zeros((b, 1, win, win), np.float32)
        for j, i in enumerate(idx):
            a, m = stack(self.crops, self.nb, int(i), self.context)
            s = int(r.integers(8))
            a, m = np.rot90(a, s % 4, axes=(1, 2)), np.rot90(m, s % 4)
            if s >= 4:
                a, m = a[:, :, ::-1], m[:, ::-1]
            a = a[:, :win, :win]
            m = m[:win, :win]
            h, w = m.shape
            y0, x0 = int(r.integers(win - h + 1)), int(r.integers(win - w + 1))
            mirrored = self.mirror > 0 and r.random() < self.mirror
            if mirrored:  # the whole window is the crop's own tissue, mirrored at its edges, mask alike
                iy, ix = mirror_index(h, y0, win), mirror_index(w, x0, win)
                x[j] = a[:, iy][:, :, ix]
                y[j, 0] = m[iy][:, ix]
            else:
                x[j, :, y0:y0 + h, x0:x0 + w] = a
                y[j, 0, y0:y0 + h, x0:x0 + w] = m
            if self.affine > 0 and r.random() < self.affine:
                ang, sc = r.uniform(0.0, 2 * math.pi), math.exp(r.uniform(-math.log(C.AFFINE_SCALE), math.log(C.AFFINE_SCALE)))
                x[j], y[j, 0] = C.rotate_scale(x[j], y[j, 0], (y0 + (h - 1) / 2, x0 + (w - 1) / 2), ang, sc,
                                               beyond="mirror" if mirrored else "air")
        x = torch.from_numpy(x)
        noise = torch.from_numpy(np.abs(r.standard_normal((b, 1, 1, 1))).clip(max=2.5).astype(np.float32))
        x = x + noise * 8.0 * torch.randn_like(x)
        yt = torch.from_numpy(y)
        if self.upscale > 1:
            x, yt = upsample(x, self.upscale), F.interpolate(yt, scale_factor=self.upscale, mode="nearest")
        x = D.window(x)
        cst = torch.from_numpy(r.uniform(0.9, 1.1, (b, 1, 1, 1)).astype(np.float32))
        off = torch.from_numpy(r.uniform(-0.04, 0.04, (b, 1, 1, 1)).astype(np.float32))
        return ((x - 0.5) * cst + 0.5 + off).clamp(0.0, 1.0), yt


def upsample(x: torch.Tensor, s: int) -> torch.Tensor:
    """x (HU, native grid) on an s times finer grid, bilinear: what a crop
    model trained with --upscale s is fed."""
    return F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)


class Upscaled(nn.Module):
    """Runs model on an s times finer grid and gives logits on the native
    grid: the mean of each s x s block's probabilities, as a logit. The
    window (D.window) maps HU to [0, 1] pointwise, so upsampling the windowed
    input equals windowing the upsampled HU except for the clamp's corners."""

    def __init__(self, model: nn.Module, s: int):
        super().__init__()
        self.model, self.s = model, s

    def forward(self, x):
        p = torch.sigmoid(self.model(upsample(x, self.s)).float())
        p = F.avg_pool2d(p, self.s).clamp(1e-6, 1 - 1e-6)
        return torch.log(p) - torch.log1p(-p)


def eval_set(crops: D.CropSet, context: int) -> C.BareSet:
    """composite.bare_eval_set (each crop centred in a 128 window of air),
    with context 1 the windows of the slices below and above as channels 0
    and 2: a nodule's crops share one size, so theirs are padded alike."""
    bs = C.bare_eval_set(crops, EVAL_WIN)
    if context:
        nb = torch.from_numpy(neighbours(crops))
        bs.x = torch.cat([bs.x[nb[:, 0]], bs.x, bs.x[nb[:, 1]]], dim=1)
    return bs


def scores(model: nn.Module, bs: C.BareSet, batch: int = 8, upscale: int = 1) -> MX.Scores:
    """bare_eval's scores; batches of 8 (128² windows of 32 ran 5x slower
    per image on one thread here). With upscale > 1 the model runs on the
    finer grid (Upscaled) and is scored on the native one."""
    fwd = Upscaled(model, upscale) if upscale > 1 else None
    return BE.bare_scores(model, bs, batch, forward=fwd)


def build(context: int, width: int = 16) -> nn.Module:
    """The compact ResNet50-UNet; width (planes of the first stage, 16 in the
    compact spec) scales the encoder and the decoder together."""
    kw = dict(M.SPECS["resnet50-unet-small"]["kw"])
    kw["decoder"] = tuple(d * width // kw["width"] for d in kw["decoder"])
    kw["width"] = width
    m = M.ResNetUNet(in_ch=1 if context == 0 else 3, **kw)
    nn.init.constant_(m.head.bias, M.HEAD_BIAS)
    return m


def lr_at(step: int, steps: int, base: float) -> float:
    warm = max(1, steps // 20)
    if step < warm:
        return base * (step + 1) / warm
    return base * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--context", type=int, choices=(0, 1), default=1)
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval-every", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--upscale", type=int, default=1,
                    help="train and evaluate on a grid this many times finer than the native one (crops upsampled "
                         "bilinear, masks nearest; probabilities pooled back to the native grid for scoring)")
    ap.add_argument("--affine", type=float, default=0.0,
                    help="share of training crops rotated by any angle and scaled by 0.8-1.25 about their centre")
    ap.add_argument("--mirror", type=float, default=0.0,
                    help="share of training crops that fill their whole window with their own tissue, mirrored "
                         "at the crop's edges (HU and mask alike), instead of sitting in air")
    ap.add_argument("--width", type=int, default=16,
                    help="first-stage planes of the ResNet50-UNet (16: the compact spec; the decoder scales with it)")
    ap.add_argument("--data", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", required=True, help="checkpoint folder")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--checkpoint-every-minutes", type=float, default=10.0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    os.makedirs(a.work, exist_ok=True)
    tag = f"zctx{a.context}" + (f"x{a.upscale}" if a.upscale > 1 else "") + (f"a{a.affine:g}" if a.affine else "") \
        + (f"m{a.mirror:g}" if a.mirror else "") + (f"w{a.width}" if a.width != 16 else "")
    ck = os.path.join(a.work, f"{tag}.resume.pt")

    sp = D.split_data(D.load(a.data, allow_synthetic=False))
    train, val, test = sp["train"]["crops"], sp["val"]["crops"], sp["test"]["crops"]
    print(f"zctx: context {a.context}; crops train {len(train)} val {len(val)} test {len(test)}", flush=True)
    bt = Batches(train, a.context, a.seed, a.upscale, a.affine, a.mirror)
    ev_val = eval_set(val, a.context)

    model = build(a.context, a.width)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=1e-4)
    step, best, hist, elapsed = 0, None, [], 0.0
    if a.resume and os.path.exists(ck):
        st = torch.load(ck)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        step, best, hist, elapsed = st["step"], st["best"], st["hist"], st["elapsed"]
        bt.rng.bit_generator.state = st["rng"]
        torch.set_rng_state(st["torch_rng"])
        print(f"zctx: resumed at step {step}", flush=True)

    def save():
        st = dict(model=model.state_dict(), opt=opt.state_dict(), step=step, best=best, hist=hist,
                  elapsed=elapsed, rng=bt.rng.bit_generator.state, torch_rng=torch.get_rng_state(),
                  args=vars(a))
        torch.save(st, ck + ".tmp")
        os.replace(ck + ".tmp", ck)

    t0, last_ck, run_loss = time.time() - elapsed, time.time(), []
    while step < a.steps:
        model.train()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a.steps, a.lr)
        x, y = bt.next(a.batch)
        loss = loss_fn(model(x), y, "dicebce")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        run_loss.append(float(loss))
        elapsed = time.time() - t0
        if step % a.eval_every == 0 or step == a.steps:
            sc = scores(model, ev_val, upscale=a.upscale)
            th = sc.best_threshold()
            s = sc.summary(th)
            rec = dict(step=step, minutes=round(elapsed / 60, 1), loss=float(np.mean(run_loss)),
                       val_mean=s["mean_dice"], threshold=th)
            run_loss = []
            hist.append(rec)
            if best is None or s["mean_dice"] > best["val_mean"]:
                best = dict(rec, state={k: v.clone() for k, v in model.state_dict().items()})
            print("zctx: " + json.dumps(rec), flush=True)
            save()
            last_ck = time.time()
        elif time.time() - last_ck > a.checkpoint_every_minutes * 60:
            save()
            last_ck = time.time()

    model.load_state_dict(best["state"])
    th = best["threshold"]
    out = {"context": a.context, "width": a.width, "upscale": a.upscale, "affine": a.affine, "mirror": a.mirror, "steps": step, "minutes": round(elapsed / 60, 1),
           "kept_step": best["step"], "threshold": th, "history": hist}
    for name, ev in (("val", ev_val), ("test", eval_set(test, a.context))):
        out[name] = scores(model, ev, upscale=a.upscale).summary(th)
        print(f"zctx: {name} " + MX.fmt(out[name]), flush=True)
    torch.save(best["state"], os.path.join(a.work, f"{tag}.best.pt"))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
