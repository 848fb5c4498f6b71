"""A component verifier for a crop model tiled over whole slices (issue 14).

A crop model tiled over a real whole slice finds most nodules and outlines
them well, but it also marks vessels, hila and chest wall: on the 45 real
slices of patients 0001, 0003, 0006 and 0008, the from-scratch ResNet crop
model (zctx, --affine 0.5) scores a mean Dice of 0.185 as it is and 0.705
when every component that misses the truth is removed (train/README.md,
"Verifier"). The verifier is that removal, learnt: a small CNN that sees a
P x P window of native HU centred on one component of the thresholded map
and the component itself, and says nodule or not. The Go side
(segment/verify) runs it on every component of a tiled map and lowers the
rejected ones below the crop model's threshold.

Candidates (components of the crop model's map at its card threshold and at
0.25, labelled by whether they touch the truth dilated 1 px):

- the training patients' bare crops, every second one (the crop model run
  on the air-padded crop as bare_eval does; the patch read from the crop
  mirror-padded, so that no air border marks a positive);
- popi_00_141's usable slices (its mass slices left out; ctbg), tiled: all
  negatives. lungdx_a0002_30 and lungmask_1 stay unseen for the Go checks;
- the real whole slices of the non-test patients of vinibfr_lidc_norm
  (0001, 0003, 0006 and validation patient 0008), tiled as realval does.
  Test patient 0007 is never used.

The verifier's threshold is chosen by leave-one-patient-out over 0001,
0003 and 0006: three verifiers, each trained without one of them, are
applied to that patient's slices; the threshold is the median of those
whose pooled mean Dice (slices weighted equally) is within 0.005 of the
best. The final verifier is trained on all candidates.

    cd train && /usr/bin/python3 -m lungseg_train.verifier CROP_FOLDER --data ../.gpu/lidc_pack.npz \\
        --ct-series ../../shared/data/ct_series --work W --out OUT --threads 2

OUT gets a copy of CROP_FOLDER with verifier.onnx (input "input" [N,2,P,P],
output "logits" [N,1]), verifier_parity_{input,output}.bin and
verifier_parity.json, and the card's "verifier" section.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ctbg
from . import data as D
from . import realval as R

PATCH = 32  # the verifier's input side, native pixels
HARVEST = 48  # the side of the stored candidate windows (PATCH is their centre)
CENTER, WIDTH = -600.0, 1500.0  # the verifier's HU window
LOW_THRESHOLD = 0.25  # a second harvest threshold, for more (and larger) negatives
ZOOM_MARGIN = 4  # --zoom: native px kept around a component's box on every side
ZOOM_MAX = 6  # --zoom: the largest block side (a component up to 6 * patch - 8 px wide is seen whole)
CV_PATIENTS = ("LIDC-IDRI-0001", "LIDC-IDRI-0003", "LIDC-IDRI-0006")
REAL_PATIENTS = CV_PATIENTS + ("LIDC-IDRI-0008",)
TEST_PATIENT = "LIDC-IDRI-0007"


class Net(nn.Module):
    """Three double-conv blocks (24, 48, 96 channels), two max-pools, global mean, one logit."""

    def __init__(self, patch: int = PATCH, zoom: bool = False):
        super().__init__()
        self.patch = patch  # the input side it is trained and exported for
        self.zoom = zoom  # inputs are zoom_window's block means, not native windows

        def blk(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(),
                                 nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())

        self.b1, self.b2, self.b3 = blk(2, 24), blk(24, 48), blk(48, 96)
        self.fc = nn.Linear(96, 1)

    def forward(self, x):
        x = F.max_pool2d(self.b1(x), 2)
        x = F.max_pool2d(self.b2(x), 2)
        return self.fc(self.b3(x).mean((2, 3)))


def components(prob: np.ndarray, thr: float):
    """(label image, [(pixel rows, pixel cols, cy, cx)]) of the 8-connected
    components of prob >= thr; the centroid is each mean rounded half to even
    (Python's round; Go's math.RoundToEven)."""
    from scipy import ndimage

    lab, _ = ndimage.label(prob >= thr, structure=np.ones((3, 3)))
    out = []
    for k, sl in enumerate(ndimage.find_objects(lab), 1):
        ys, xs = np.nonzero(lab[sl] == k)
        ys, xs = ys + sl[0].start, xs + sl[1].start
        out.append((ys, xs, int(round(float(ys.mean()))), int(round(float(xs.mean())))))
    return lab, out


def window(hu_padded: np.ndarray, pad: int, ys, xs, cy: int, cx: int, p: int = HARVEST):
    """(HU p x p, component mask p x p) with top-left (cy - p//2, cx - p//2) on
    the unpadded grid; hu_padded is the image padded by pad >= p on every side."""
    y0, x0 = cy - p // 2, cx - p // 2
    hu = hu_padded[y0 + pad:y0 + pad + p, x0 + pad:x0 + pad + p]
    m = np.zeros((p, p), np.uint8)
    yy, xx = ys - y0, xs - x0
    ok = (yy >= 0) & (yy < p) & (xx >= 0) & (xx < p)
    m[yy[ok], xx[ok]] = 1
    return hu.astype(np.int16), m


def zoom_factor(ys, xs, patch: int) -> int:
    """The block side f of zoom_window: the least f >= 1 with the component's
    box plus ZOOM_MARGIN on each side within patch * f, at most ZOOM_MAX."""
    side = max(int(ys.max()) - int(ys.min()) + 1, int(xs.max()) - int(xs.min()) + 1) + 2 * ZOOM_MARGIN
    return int(min(ZOOM_MAX, max(1, -(-side // patch))))


def zoom_window(hu_padded: np.ndarray, pad: int, ys, xs, cy: int, cx: int, patch: int = PATCH):
    """(HU patch x patch, component patch x patch), both float32: the window of
    side patch * f (f = zoom_factor) with top-left (cy - patch*f//2, cx - patch*f//2)
    averaged over f x f blocks, so that the verifier sees a large component
    whole; the mask is the share of each block in the component. f = 1 is
    window()'s centre patch. hu_padded is the image padded by pad >= patch * ZOOM_MAX."""
    f = zoom_factor(ys, xs, patch)
    hu, m = window(hu_padded, pad, ys, xs, cy, cx, patch * f)
    def pool(a):
        return a.astype(np.float32).reshape(patch, f, patch, f).mean((1, 3), dtype=np.float64).astype(np.float32)
    return pool(hu), pool(m)


def component_windows(hu: np.ndarray, comps, zoom_patch: int = 0, mirror: bool = False) -> List[tuple]:
    """(HU, component mask) of each component of comps (components()) on the
    image hu: zoom_window patches of side zoom_patch when it is set, else the
    HARVEST windows of window(); beyond the image, air or (mirror) the image
    mirrored."""
    pad = zoom_patch * ZOOM_MAX if zoom_patch else HARVEST
    hp = np.pad(hu.astype(np.float32), pad, mode="reflect" if mirror else "constant",
                **({} if mirror else {"constant_values": D.OUTSIDE_HU}))
    if zoom_patch:
        return [zoom_window(hp, pad, ys, xs, cy, cx, zoom_patch) for ys, xs, cy, cx in comps]
    return [window(hp, pad, ys, xs, cy, cx) for ys, xs, cy, cx in comps]


def net_input(hu: np.ndarray, mask: np.ndarray, size: int = PATCH) -> torch.Tensor:
    """[N,2,size,size]: the centre size x size of stored windows, HU through the
    verifier's window (as Go's Normalisation.Apply) and the component mask."""
    o = (hu.shape[-1] - size) // 2
    x = np.clip((hu[:, o:o + size, o:o + size].astype(np.float32) - (CENTER - WIDTH / 2)) / WIDTH, 0, 1)
    return torch.from_numpy(np.stack([x, mask[:, o:o + size, o:o + size].astype(np.float32)], 1))


class Candidates:
    """Stored candidate windows with labels (1 nodule, 0 not), sources and patients."""

    def __init__(self, zoom: int = 0):
        self.rows: List[tuple] = []
        self.zoom = zoom  # > 0: store zoom_window patches of this side instead of HARVEST windows

    def add(self, prob, hu, truth, src, patient, thresholds, mirror=False):
        td = R.dilate(truth, 1) if truth is not None else None
        comps = [c for t in thresholds for c in components(prob, t)[1]]
        for (ys, xs, _, _), (w, m) in zip(comps, component_windows(hu, comps, self.zoom, mirror)):
            label = 0 if td is None else int(td[ys, xs].any())
            self.rows.append((w, m, label, src, patient))

    def arrays(self) -> Dict[str, np.ndarray]:
        r = self.rows
        return {"hu": np.stack([x[0] for x in r]), "mask": np.stack([x[1] for x in r]),
                "label": np.array([x[2] for x in r], np.int8), "src": np.array([x[3] for x in r]),
                "patient": np.array([x[4] for x in r])}


def harvest(model, card, data: D.LidcData, ct_root: Optional[str], crop_step: int = 2,
            log=print, zoom: int = 0) -> Dict[str, np.ndarray]:
    thr = float(card["threshold"])
    norm = card.get("normalisation", {})
    c, w = float(norm.get("center", D.WINDOW_CENTER)), float(norm.get("width", D.WINDOW_WIDTH))
    ths = (thr, LOW_THRESHOLD) if thr > LOW_THRESHOLD else (thr,)
    cand = Candidates(zoom)
    t0 = time.time()
    cs = D.split_data(data)["train"]["crops"]
    idx = np.arange(0, len(cs), crop_step)
    with torch.no_grad():
        for s in range(0, len(idx), 32):
            part = idx[s:s + 32]
            bare = [cs.bare(i) for i in part]
            x = np.stack([D.window(D.pad_bare_crop(h.astype(np.float32), R.WIN, D.OUTSIDE_HU), c, w) for h, _ in bare])
            p = torch.sigmoid(model(torch.from_numpy(x[:, None].astype(np.float32))))[:, 0].numpy()
            for (h, m), pi, i in zip(bare, p, part):
                cand.add(D.unpad_bare(pi, *h.shape), h, m > 0, "crop", cs.patient[i], (thr,), mirror=True)
    log(f"verifier: {len(idx)} training crops, {len(cand.rows)} candidates ({time.time() - t0:.0f} s)")
    if ct_root:
        t0 = time.time()
        bank = ctbg.load_ct_bank(ct_root, ("popi_00_141",))
        for k in range(bank.n):
            hu = bank.hu[k, 0].numpy()
            lung = R.dilate(ctbg.lung_mask(hu, erode=0), 8)
            pr = np.where(lung, R.tile_probs(model, hu, c, w), 0.0)
            cand.add(pr, hu, None, "popi", "popi_00_141", ths)
        log(f"verifier: {bank.n} popi slices, {len(cand.rows)} candidates ({time.time() - t0:.0f} s)")
    t0 = time.time()
    ids, hu, truth, lung = R.real_slices(data, REAL_PATIENTS)
    for i in range(len(hu)):
        pr = np.where(R.dilate(lung[i], 8), R.tile_probs(model, hu[i], c, w), 0.0)
        cand.add(pr, hu[i], truth[i], "real", ids[i].split("/")[0], ths)
    log(f"verifier: {len(hu)} real slices of {', '.join(REAL_PATIENTS)}, {len(cand.rows)} candidates "
        f"({time.time() - t0:.0f} s)")
    return cand.arrays()


def augment(x: torch.Tensor, g: np.random.Generator) -> torch.Tensor:
    """A symmetry of the square, a Gaussian blur of sigma 0.3-1.2 px on half
    the batches (sharp and smooth kernels), noise and an offset on the HU channel."""
    x = torch.rot90(x, int(g.integers(4)), (2, 3))
    if g.random() < 0.5:
        x = x.flip(3)
    hu = x[:, :1]
    if g.random() < 0.5:
        s = float(g.uniform(0.3, 1.2))
        r = torch.arange(-2, 3, dtype=torch.float32)
        k = torch.exp(-r ** 2 / (2 * s * s))
        k = k / k.sum()
        hu = F.conv2d(F.pad(hu, (2, 2, 0, 0), mode="replicate"), k.view(1, 1, 1, 5))
        hu = F.conv2d(F.pad(hu, (0, 0, 2, 2), mode="replicate"), k.view(1, 1, 5, 1))
    hu = hu + torch.randn_like(hu) * float(g.uniform(0, 0.02)) + torch.randn(len(x), 1, 1, 1) * 0.02
    return torch.cat([hu.clamp(0, 1), x[:, 1:]], 1)


def train_net(c: Dict[str, np.ndarray], keep: np.ndarray, epochs: int = 8, seed: int = 1, log=None,
              patch: int = PATCH, real_pos: float = 0.0, zoom: bool = False) -> Net:
    """Trains a Net on the candidates where keep; each batch half nodules, half
    not. With real_pos > 0, that share of each batch's nodules is drawn from
    the real slices' nodule candidates (src "real"), the rest from the others:
    most nodule candidates come from bare crops, most real-slice candidates
    are not nodules, and a net may learn the source instead of the nodule."""
    torch.manual_seed(seed)
    g = np.random.default_rng(seed)
    X = net_input(c["hu"][keep], c["mask"][keep], patch)
    y = torch.from_numpy(c["label"][keep].astype(np.float32))
    pos, neg = np.nonzero(y.numpy() == 1)[0], np.nonzero(y.numpy() == 0)[0]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"verifier: {len(pos)} nodule and {len(neg)} other candidates to train on")
    spe = max(len(pos), len(neg)) * 2 // 64
    n_real = int(round(32 * real_pos))
    if n_real:
        real = c["src"][keep][pos] == "real"
        pos_real, pos = pos[real], pos[~real]
        if len(pos_real) == 0 or len(pos) == 0:
            raise ValueError(f"verifier: {len(pos_real)} real and {len(pos)} other nodule candidates for real_pos")
    net = Net(patch, zoom)
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=epochs * spe)
    for ep in range(epochs):
        net.train()
        for _ in range(spe):
            idx = np.concatenate([g.choice(pos, 32 - n_real), g.choice(neg, 32)]
                                 + ([g.choice(pos_real, n_real)] if n_real else []))
            loss = F.binary_cross_entropy_with_logits(net(augment(X[idx], g))[:, 0], y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if log:
            log(f"verifier: epoch {ep + 1}/{epochs} loss {loss.item():.3f}")
    return net.eval()


class Mean(nn.Module):
    """Several verifiers as one: the logit of the mean of their probabilities."""

    def __init__(self, nets: Sequence[Net]):
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.patch = nets[0].patch
        self.zoom = nets[0].zoom

    def forward(self, x):
        p = torch.stack([torch.sigmoid(n(x)) for n in self.nets]).mean(0).clamp(1e-6, 1 - 1e-6)
        return torch.log(p / (1 - p))


def train_mean(c: Dict[str, np.ndarray], keep: np.ndarray, epochs: int, seeds: Sequence[int],
               patch: int = PATCH, real_pos: float = 0.0, zoom: bool = False) -> nn.Module:
    """One Net per seed, averaged (Mean) when there are several."""
    nets = [train_net(c, keep, epochs, s, patch=patch, real_pos=real_pos, zoom=zoom) for s in seeds]
    return nets[0] if len(nets) == 1 else Mean(nets).eval()


@torch.no_grad()
def judge(net: Net, hu: np.ndarray, mask: np.ndarray) -> np.ndarray:
    x = net_input(hu, mask, getattr(net, "patch", PATCH))
    return np.concatenate([torch.sigmoid(net(x[s:s + 512]))[:, 0].numpy() for s in range(0, len(x), 512)]) \
        if len(x) else np.zeros(0, np.float32)


def dice(p: np.ndarray, t: np.ndarray) -> float:
    s = int(p.sum()) + int(t.sum())
    return 2.0 * int((p & t).sum()) / s if s else 1.0


def verified_dice(net: Net, probs: np.ndarray, hu: np.ndarray, truth: np.ndarray, thr: float,
                  vthrs: Sequence[float]) -> np.ndarray:
    """[len(vthrs), slices with truth]: each slice's Dice once the components the
    verifier puts under each vthr are removed (as segment/verify does)."""
    out = []
    for i in range(len(hu)):
        if not truth[i].any():
            continue
        lab, comps = components(probs[i], thr)
        ws = component_windows(hu[i], comps, net.patch if getattr(net, "zoom", False) else 0)
        v = judge(net, np.stack([a for a, _ in ws]), np.stack([b for _, b in ws])) if ws else np.zeros(0)
        out.append([dice(np.isin(lab, np.nonzero(v >= vt)[0] + 1), truth[i]) for vt in vthrs])
    return np.array(out, np.float64).T.reshape(len(vthrs), -1)


VTHRS = tuple(round(0.1 * k, 1) for k in range(10))


def choose_threshold(means: np.ndarray, vthrs: Sequence[float] = VTHRS, tol: float = 0.005) -> float:
    """The median of the thresholds whose mean is within tol of the best (the lower one of an even count)."""
    best = float(means.max())
    near = [t for t, m in zip(vthrs, means) if m >= best - tol]
    return float(near[(len(near) - 1) // 2])


def export(net: Net, folder: str, parity_x: torch.Tensor) -> Dict[str, object]:
    """Writes verifier.onnx (opset 17, dynamic batch) and its parity files; returns their report."""
    from .export import OPSET, sha256_file

    path = os.path.join(folder, "verifier.onnx")
    m = net.cpu().float().eval()
    with torch.no_grad():
        torch.onnx.export(m, (parity_x[:2],), path, opset_version=OPSET, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          do_constant_folding=True)
        y = m(parity_x).numpy().astype("<f4")
    x = parity_x.numpy().astype("<f4")
    x.tofile(os.path.join(folder, "verifier_parity_input.bin"))
    y.tofile(os.path.join(folder, "verifier_parity_output.bin"))
    rep = {"input_shape": list(x.shape), "output_shape": list(y.shape), "tolerance": 1e-4}
    try:
        import onnxruntime as ort  # noqa: F401  (absent on this machine; Go checks parity)
        s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        rep["max_abs_diff_onnxruntime"] = float(np.abs(s.run(None, {"input": x})[0] - y).max())
    except ImportError:
        pass
    with open(os.path.join(folder, "verifier_parity.json"), "w") as f:
        json.dump(rep, f, indent=2)
    rep["sha256"] = sha256_file(path)
    return rep


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m lungseg_train.verifier", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("crop_folder", help="registry folder of the crop model to verify")
    ap.add_argument("--data", default=None)
    ap.add_argument("--ct-series", default=None, help="../shared/data/ct_series (popi_00_141 negatives)")
    ap.add_argument("--work", required=True, help="candidates are cached here (candidates.npz)")
    ap.add_argument("--out", required=True, help="registry root to write <name>/ into")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--seeds", type=int, default=1,
                    help="average this many verifiers (seeds seed, seed+1, ...) into one")
    ap.add_argument("--patch", type=int, default=PATCH,
                    help=f"the verifier's input side in native pixels ({PATCH}; at most {HARVEST}, even)")
    ap.add_argument("--real-pos", type=float, default=0.0,
                    help="share of each batch's nodule candidates drawn from the real slices' (0: as they come)")
    ap.add_argument("--zoom", action="store_true",
                    help="judge each component whole: a window of patch * f px (f the least block side that holds "
                         f"the component's box and {ZOOM_MARGIN} px, at most {ZOOM_MAX}) averaged over f x f blocks")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args(argv)
    if not 0 <= a.real_pos < 1:
        ap.error(f"--real-pos {a.real_pos}: want 0 <= share < 1")
    if not (8 <= a.patch <= HARVEST and a.patch % 2 == 0):
        ap.error(f"--patch {a.patch}: want an even side from 8 to {HARVEST}")
    if a.threads:
        torch.set_num_threads(a.threads)
    model, card = R.load_crop_model(a.crop_folder)
    thr = float(card["threshold"])
    data = D.load(a.data, allow_synthetic=False)
    os.makedirs(a.work, exist_ok=True)
    cpath = os.path.join(a.work, f"candidates_zoom{a.patch}.npz" if a.zoom else "candidates.npz")
    if os.path.exists(cpath):
        c = dict(np.load(cpath))
        print(f"verifier: {len(c['label'])} candidates from {cpath}")
    else:
        c = harvest(model, card, data, a.ct_series, zoom=a.patch if a.zoom else 0)
        np.savez_compressed(cpath, **c)
    for s in sorted(set(c["src"].tolist())):
        k = c["src"] == s
        print(f"verifier: {s}: {int(k.sum())} candidates, {int(c['label'][k].sum())} on a nodule")
    # leave one patient out over the CV patients, on their real slices
    ids, hu, truth, lung = R.real_slices(data, CV_PATIENTS)
    keep_l = np.stack([R.dilate(l, 8) for l in lung])
    norm = card.get("normalisation", {})
    cc, ww = float(norm.get("center", D.WINDOW_CENTER)), float(norm.get("width", D.WINDOW_WIDTH))
    # the CV slices' tiled maps are cached beside the candidates: a second run
    # on the same work folder (another seed, another patch) skips the tiling
    ppath = os.path.join(a.work, "cv_probs.npz")
    cached = np.load(ppath) if os.path.exists(ppath) else None
    if cached is not None and list(cached["ids"]) == list(ids):
        probs = cached["probs"]
    else:
        probs = np.stack([np.where(keep_l[i], R.tile_probs(model, hu[i], cc, ww), 0.0) for i in range(len(hu))])
        np.savez_compressed(ppath, ids=np.array(ids), probs=probs.astype(np.float32))
    pats = np.array([s.split("/")[0] for s in ids])
    seeds = [a.seed + k for k in range(max(1, a.seeds))]
    per = []
    for held in CV_PATIENTS:
        t0 = time.time()
        net = train_mean(c, c["patient"] != held, a.epochs, seeds, a.patch, a.real_pos, a.zoom)
        k = pats == held
        d = verified_dice(net, probs[k], hu[k], truth[k], thr, VTHRS)
        per.append(d)
        print(f"verifier: held out {held} ({d.shape[1]} slices): mean Dice by threshold "
              + " ".join(f"{t:.1f}:{m:.3f}" for t, m in zip(VTHRS, d.mean(1))) + f" ({time.time() - t0:.0f} s)",
              flush=True)
    means = np.concatenate(per, 1).mean(1)
    vthr = choose_threshold(means)
    print("verifier: pooled over the held-out slices " + " ".join(f"{t:.1f}:{m:.3f}" for t, m in zip(VTHRS, means))
          + f"; threshold {vthr:.1f}")
    net = train_mean(c, np.ones(len(c["label"]), bool), a.epochs, seeds, a.patch, a.real_pos, a.zoom)
    folder = os.path.join(a.out, card["name"])
    if os.path.abspath(folder) != os.path.abspath(a.crop_folder):
        shutil.copytree(a.crop_folder, folder, dirs_exist_ok=True)
    g = torch.Generator().manual_seed(7)
    k = torch.randperm(len(c["label"]), generator=g)[:8].numpy()
    rep = export(net, folder, net_input(c["hu"][k], c["mask"][k], a.patch))
    with open(os.path.join(folder, "card.json")) as f:
        out_card = json.load(f)
    out_card["verifier"] = {
        "file": "verifier.onnx", "sha256": rep["sha256"], "patch": a.patch,
        **({"zoom": {"margin": ZOOM_MARGIN, "max_factor": ZOOM_MAX}} if a.zoom else {}),
        "normalisation": {"kind": "window", "center": CENTER, "width": WIDTH}, "threshold": vthr,
        "training": {
            "candidates": {s: int((c["src"] == s).sum()) for s in sorted(set(c["src"].tolist()))},
            "on_nodule": int(c["label"].sum()), "epochs": a.epochs, "seeds": seeds, "real_pos": a.real_pos,
            "harvest_thresholds": [thr, LOW_THRESHOLD] if thr > LOW_THRESHOLD else [thr],
            "threshold_selected_on": "leave one patient out over " + ", ".join(CV_PATIENTS)
                                     + ": pooled mean Dice of their real slices",
            "cv_mean_dice": {f"{t:.1f}": round(float(m), 4) for t, m in zip(VTHRS, means)},
        },
    }
    with open(os.path.join(folder, "card.json"), "w") as f:
        json.dump(out_card, f, indent=2)
        f.write("\n")
    print(f"verifier: wrote {folder} (verifier.onnx sha256 {rep['sha256'][:12]}…, threshold {vthr:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
