"""Training one model within a wall-clock budget, evaluation, export.

    python3 -m lungseg_train.train --model swin-unet-small --recipe dicebce \\
        --minutes 4 --data ../.gpu/lidc_pack.npz --out ../models

Recipes
  report   the report's recipes: ResNet50-UNet (and, as an assumption, Swin-UNet):
           BCE-with-logits, Adam lr 1e-4; UNETR: BCE-with-logits, plain SGD lr 0.1,
           batch 8, ReduceLROnPlateau (factor 0.1, patience 10, down to 1e-7),
           early stop after 20 epochs without improvement. Best checkpoint kept.
  dicebce  Dice + BCE, AdamW, linear warm-up then cosine decay over the time
           budget, grad-norm clip 1.0, bf16 autocast on CUDA. Default.

An "epoch" is --epoch-samples freshly composited examples (default: as many
as there are training crops plus real slices). Validation (patient-disjoint
val composites) runs after each epoch; the best state by val Dice is kept.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from . import composite as C
from . import data as D
from . import export as E
from . import hucal
from . import metrics as MX
from . import models as M
from . import realval as R


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S ") + msg, flush=True)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def recipe_config(recipe: str, family: str, device: torch.device, args) -> Dict[str, object]:
    cuda = device.type == "cuda"
    if recipe == "report":
        if family == "unetr":
            cfg = dict(loss="bce", optimizer="sgd", lr=0.1, momentum=0.0, weight_decay=0.0, batch=8,
                       schedule="plateau", plateau_factor=0.1, plateau_patience=10, min_lr=1e-7,
                       early_stop=20, clip=0.0)
        else:
            cfg = dict(loss="bce", optimizer="adam", lr=1e-4, weight_decay=0.0, batch=16 if cuda else 4,
                       schedule="constant", early_stop=0, clip=0.0)
    elif recipe == "dicebce":
        if family == "resnet50-unet":
            lr, wd = 1e-3, 1e-4
        elif family == "swin-unet":
            lr, wd = 5e-4, 0.05
        else:
            lr, wd = 3e-4, 0.05
        cfg = dict(loss="dicebce", optimizer="adamw", lr=lr, weight_decay=wd, batch=64 if cuda else 4,
                   schedule="cosine", warmup=0.05, final_lr_frac=0.02, early_stop=0, clip=1.0)
    else:
        raise ValueError(f"unknown recipe {recipe!r} (report, dicebce)")
    if getattr(args, "dice_per_image", False):
        if cfg["loss"] != "dicebce":
            raise ValueError(f"--dice-per-image needs the dicebce recipe, not {recipe!r}")
        cfg["loss"] = "dicebce-image"
    if args.batch:
        cfg["batch"] = args.batch
    if args.lr:
        cfg["lr"] = args.lr
    cfg["amp"] = "bf16" if (cuda and not args.no_amp) else "none"
    cfg["name"] = recipe
    return cfg


def make_optimizer(model, cfg):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.dim() <= 1 or n.endswith(".pos") or "rel_bias" in n else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg.get("momentum", 0.0))
    if cfg["optimizer"] == "adam":
        return torch.optim.Adam(groups, lr=cfg["lr"])
    return torch.optim.AdamW(groups, lr=cfg["lr"], betas=(0.9, 0.999))


def loss_fn(logits: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, y)
    if kind == "bce":
        return bce
    p = torch.sigmoid(logits)
    if kind == "dicebce-image":
        # soft Dice per image, averaged over the batch: the headline metric is
        # the mean over images, and a pooled Dice lets one large nodule
        # outweigh the small ones beside it in the batch
        dims = tuple(range(1, p.dim()))
        inter = (p * y).sum(dims)
        dice = 1 - (2 * inter + 1.0) / (p.sum(dims) + y.sum(dims) + 1.0)
        return bce + dice.mean()
    inter = (p * y).sum()
    dice = 1 - (2 * inter + 1.0) / (p.sum() + y.sum() + 1.0)
    return bce + dice


def autocast(device: torch.device, amp: str):
    if amp == "bf16" and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return torch.autocast(device_type="cpu", enabled=False)


@torch.no_grad()
def predict_scores(model, ev: C.EvalSet, device, amp: str, batch: int, bank: Optional[C.Bank] = None,
                   channels_last: bool = False, diam: Optional[torch.Tensor] = None):
    """Scores on whole slices, and (with a bank and thetas) on native-resolution crops.
    diam [n_crops]: each crop's truth longest diameter (mm), for the size bins."""
    model.eval()
    sl, cr = MX.Scores(), MX.Scores()
    n = ev.x.shape[0]
    for s in range(0, n, batch):
        x = ev.x[s:s + batch]
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            logits = model(x)
        prob = torch.sigmoid(logits.float())
        d = None
        if diam is not None and ev.crop_index is not None:
            d = diam[ev.crop_index[s:s + batch].cpu()]
        sl.add(prob, ev.y[s:s + batch], diam=d)
        if bank is not None and ev.theta is not None:
            idx = ev.crop_index[s:s + batch]
            back = C.crops_back(bank, prob, ev.theta[s:s + batch], idx)
            cr.add(back, bank.crop_mask[idx], bank.crop_valid[idx], d)
    return sl, cr


def _subset_crops(c: D.CropSet, limit: Optional[int]) -> D.CropSet:
    if not limit or len(c) <= limit:
        return c
    idx = np.linspace(0, len(c) - 1, limit).round().astype(np.int64)
    return c.subset(np.unique(idx))


def _subset_slices(s: D.SliceSet, limit: Optional[int]) -> D.SliceSet:
    if not limit or len(s) <= limit:
        return s
    return s.subset(np.linspace(0, len(s) - 1, limit).round().astype(np.int64))


def _flops(model, size: int):
    try:
        return M.count_flops(E.cpu_copy(model), size)
    except Exception as e:  # noqa: BLE001 - a rough figure is not worth losing a run
        log(f"flop count failed: {e}")
        return None


def parity_inputs(test_real: C.EvalSet, test_comp: C.EvalSet, n: int = 2) -> np.ndarray:
    """Real test slice(s) first (with nodule if any), then composites with nodule."""
    picks = []
    for ev in (test_real, test_comp):
        if ev.x.shape[0] == 0:
            continue
        has = (ev.y.flatten(1).sum(1) > 0).nonzero().flatten().tolist()
        i = has[0] if has else 0
        picks.append(ev.x[i:i + 1].float().cpu())
    while len(picks) < n:
        picks.append(torch.rand(1, 1, test_comp.x.shape[-1], test_comp.x.shape[-1]))
    return torch.cat(picks[:n]).numpy()


def load_init(model, path: str, size: int) -> Dict[str, object]:
    """Start from trained weights: a model.onnx of this architecture (read
    back with onnx_weights) or a checkpoint written by --save-checkpoint.

    A model.onnx holds BatchNorm folded into the convolutions: each folded
    weight W' goes into its Conv and the BatchNorm after it becomes the
    identity plus the folded bias b' (running mean 0, running variance 1-eps,
    weight 1, bias b'), so the network in eval mode is the ONNX one. Training
    mode would replace those statistics by batch ones, so such a model is
    fine-tuned with frozen BatchNorm (statistics fixed, eval mode; affine
    weight and bias trained): the result has "frozen_bn": True and the
    training loop keeps every BatchNorm in eval mode (set_train).
    """
    sha = E.sha256_file(path)
    frozen = False
    if path.endswith(".onnx"):
        from .onnx_weights import load_onnx_weights
        load_onnx_weights(model, path, size)
        kind = "onnx"
        frozen = has_batchnorm(model)
    else:
        ck = torch.load(path, map_location="cpu")
        model.load_state_dict(ck.get("state_dict", ck))
        kind = "checkpoint"
    return {"path": os.path.basename(os.path.dirname(os.path.abspath(path))) + "/" + os.path.basename(path),
            "kind": kind, "sha256": sha, "frozen_bn": frozen, **init_history(path)}


def has_batchnorm(model) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def set_train(model, frozen_bn: bool = False):
    """model.train(), but with frozen_bn every BatchNorm stays in eval mode
    (its running statistics are used and not updated)."""
    model.train()
    if frozen_bn:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
    return model


def _rng_state(gen: torch.Generator) -> Dict[str, object]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "gen": gen.get_state()}


def _set_rng_state(st: Dict[str, object], gen: torch.Generator) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    gen.set_state(st["gen"])


def resume_path(work: str, name: str) -> str:
    return os.path.join(work, f"{name}.resume.pt")


def save_resume(path: str, state: Dict[str, object]) -> None:
    """Writes the resume state atomically (a kill while writing keeps the old one)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def init_history(path: str) -> Dict[str, object]:
    """What trained the weights an --init starts from, read from the
    card.json beside them (if any), so a card of a model trained further
    tells its whole training: earlier device, minutes, epochs, recipe."""
    card_path = os.path.join(os.path.dirname(os.path.abspath(path)), "card.json")
    if not os.path.exists(card_path):
        return {}
    with open(card_path) as f:
        c = json.load(f)
    t = c.get("training") or {}
    keep = ("device", "torch", "minutes", "epochs", "steps", "batch", "seed", "init")
    prev = {k: t[k] for k in keep if k in t}
    if isinstance(t.get("recipe"), dict):
        prev["recipe"] = {k: t["recipe"].get(k) for k in ("name", "lr", "batch", "loss", "optimizer")}
    elif "recipe" in t:
        prev["recipe"] = {"name": str(t["recipe"])}
    val = c.get("validation") or {}
    if "dice" in val:
        prev["val_dice"] = val["dice"]
    return {"from_card": {"name": c.get("name"), "sha256": c.get("sha256"), "training": prev}}


def run(args) -> Dict[str, object]:
    t_start = time.time()
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    spec = M.SPECS[args.model]
    family = spec["family"]
    cfg = recipe_config(args.recipe, family, device, args)
    crop = args.task == "crop"
    if crop and not getattr(args, "detector", ""):
        args.detector = args.model
    size = args.size or (C.CROP_WIN if crop else 256)
    canvas = C.CROP_CANVAS if crop else size

    data = args.loaded_data if getattr(args, "loaded_data", None) is not None else D.load(args.data)
    parts = D.split_data(data)
    tr, va, te = parts["train"], parts["val"], parts["test"]
    # --real-val-patients: training patients with whole slices held out of training (their slices and crops)
    # to give the run a real-slice validation set of patients it never saw
    rv_pats = [p for p in getattr(args, "real_val_patients", "").split(",") if p]
    if rv_pats:
        have = sorted(set(tr["slices"].patient.tolist()))
        bad = [p for p in rv_pats if p not in have]
        if bad:
            raise SystemExit(f"--real-val-patients {','.join(bad)}: not a training patient with whole slices {have}")
        ks, kc = np.isin(tr["slices"].patient, rv_pats), np.isin(tr["crops"].patient, rv_pats)
        rv_slices = tr["slices"].subset(np.nonzero(ks)[0])
        rv_crops = tr["crops"].subset(np.nonzero(kc)[0])
        tr = dict(tr, slices=tr["slices"].subset(np.nonzero(~ks)[0]), crops=tr["crops"].subset(np.nonzero(~kc)[0]),
                  patients=[p for p in tr["patients"] if p not in rv_pats])
    tr_crops = _subset_crops(tr["crops"], args.crop_limit)
    smooth = not crop  # crop models see the crops at their own resolution
    hu_cal = None
    if args.slice_hu == "calibrated" and len(data.slices):
        hu_cal = hucal.calibrate(data.crops, data.slices)
    bank_tr = C.make_bank(tr_crops, tr["slices"], device, canvas, smooth, hu_cal=hu_cal)
    va_crops = _subset_crops(va["crops"], args.eval_limit)  # bare crops: all of them unless --eval-limit
    te_crops = _subset_crops(te["crops"], args.eval_limit)
    # windows / composites: at most --window-eval-limit crops (their synthetic chests are slow on a CPU)
    va_w = _subset_crops(va_crops, args.window_eval_limit)
    te_w = _subset_crops(te_crops, args.window_eval_limit)
    bank_va = C.make_bank(va_w, _subset_slices(va["slices"], args.eval_limit), device, canvas, smooth, hu_cal=hu_cal)
    bank_te = C.make_bank(te_w, _subset_slices(te["slices"], args.eval_limit), device, canvas, smooth, hu_cal=hu_cal)
    diam_va = torch.from_numpy(MX.diameters_mm(va_crops.mask, va_crops.spacing))
    diam_te = torch.from_numpy(MX.diameters_mm(te_crops.mask, te_crops.spacing))
    diam_va_w = torch.from_numpy(MX.diameters_mm(va_w.mask, va_w.spacing))
    diam_te_w = torch.from_numpy(MX.diameters_mm(te_w.mask, te_w.spacing))
    val_bare = C.bare_eval_set(va_crops, size, device, diam_va.numpy()) if crop else None
    select_on = args.select_on if args.select_on != "auto" else ("bare" if crop else "windows")
    if select_on == "bare" and not crop:
        raise SystemExit("--select-on bare needs --task crop")
    if select_on == "real" and not rv_pats:
        raise SystemExit("--select-on real needs --real-val-patients")
    real_val = None  # () -> Scores of the held-out patients' real slices
    if rv_pats:
        if crop:  # tiled over the whole slice at its native grid, as segment.Tile (realval)
            _, rv_hu, rv_truth, rv_lung = R.real_slices(data, rv_pats)

            def real_val():
                with torch.no_grad():
                    p = R.probs_of(model, rv_hu, {}, batch=eval_batch,
                                   forward=(lambda x: model(x.to(device)).float().cpu()))
                return R.scores(p, rv_truth, rv_lung)
        else:  # at the model's grid, as the composites' real slices (512 -> 256 area-averaged)
            real_rv = C.real_eval_set(C.make_bank(rv_crops, rv_slices, device, canvas, smooth, hu_cal=hu_cal), seed=1003)

            def real_val():
                return predict_scores(model, real_rv, device, cfg["amp"], eval_batch, channels_last=cl)[0]
    bare_frac = args.bare_frac if crop else 0.0
    bg_pool = None
    if args.bg_pool:
        tp = time.time()
        gp = torch.Generator(device=device if device.type == "cuda" else torch.device("cpu"))
        gp.manual_seed(args.seed + 11)
        bg_pool = C.make_bg_pool(bank_tr, C.Rand(gp, device), args.bg_pool, p_real=args.p_real)
        log(f"background pool: {bg_pool.n} chests in {time.time() - tp:.0f}s")
    ct_bank = None
    if args.ct_backgrounds and args.p_ct > 0:
        from . import ctbg
        if crop:
            ct_bank = ctbg.load_ct_bank(args.ct_backgrounds, args.ct_series.split(","), device, canvas)
        else:  # whole 512 slices, reduced to the model's grid as preprocess does
            ct_bank = ctbg.to_grid(ctbg.load_ct_bank(args.ct_backgrounds, args.ct_series.split(","), device,
                                                     512), canvas)
        log(f"CT backgrounds: {ct_bank.n} slices of {args.ct_series} (p {args.p_ct})")
    if crop:
        val_comp = C.crop_eval_set(bank_va, seed=1001, win=size)
        val_real = C.crop_real_eval_set(bank_va, seed=1002, win=size)
    else:
        val_comp = C.composite_eval_set(bank_va, seed=1001)
        val_real = C.real_eval_set(bank_va, seed=1002)
    log(f"{args.model}/{args.recipe}: data {data.source}; train {len(tr['patients'])} patients "
        f"{bank_tr.n_crops} crops {bank_tr.n_real} slices; val {len(va['patients'])} patients "
        f"{len(va_crops)} crops ({bank_va.n_crops} in windows) {bank_va.n_real} slices; test {len(te['patients'])} "
        f"patients {len(te_crops)} crops ({bank_te.n_crops} in windows) {bank_te.n_real} slices; device {device}; "
        f"setup {time.time() - t_start:.1f}s")

    torch.manual_seed(args.seed)
    model = M.build(args.model, size).to(device)
    if args.encoder_weights:
        if family != "resnet50-unet" or spec["variant"] != "full":
            raise SystemExit("--encoder-weights applies to resnet50-unet only")
        rep = model.load_encoder_weights(args.encoder_weights)
        log(f"encoder weights {args.encoder_weights}: missing {len(rep['missing'])}, unexpected {len(rep['unexpected'])}")
    init = None
    if getattr(args, "init", ""):
        init = load_init(model, args.init, size)
        log(f"initialised from {args.init} ({init['kind']}, sha256 {init['sha256'][:12]}"
            f"{', frozen BatchNorm' if init['frozen_bn'] else ''})")
    frozen_bn = bool(init and init["frozen_bn"]) or bool(getattr(args, "frozen_bn", False))
    cl = device.type == "cuda" and family == "resnet50-unet"
    if cl:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, cfg)
    plateau = None
    if cfg["schedule"] == "plateau":
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=cfg["plateau_factor"],
                                                             patience=cfg["plateau_patience"], min_lr=cfg["min_lr"])
    gdev = device if device.type == "cuda" else torch.device("cpu")
    gen = torch.Generator(device=gdev)
    gen.manual_seed(args.seed + 7)
    rnd = C.Rand(gen, device)
    batch = int(cfg["batch"])
    epoch_samples = args.epoch_samples or (bank_tr.n_crops + bank_tr.n_real)
    steps_per_epoch = max(1, int(math.ceil(epoch_samples / batch)))
    budget = args.minutes * 60.0
    if args.train_until:
        budget = min(budget, args.train_until - time.time())
    budget = max(budget, 1.0)
    eval_batch = args.eval_batch or (128 if device.type == "cuda" else 8)

    best = {"dice": -1.0, "epoch": 0, "state": None}
    history: List[Dict[str, object]] = []
    epoch, step, since_best, nonfinite = 0, 0, 0, 0
    t0 = time.time()
    stop = ""
    base_lrs = [g["lr"] for g in opt.param_groups]
    ck_path = resume_path(args.work, args.name or args.model) if args.work else ""
    ck_every = args.checkpoint_every_minutes * 60.0
    in_epoch, loss_acc, n_acc = 0, 0.0, 0  # where a resumed run picks up inside its epoch
    if args.resume:
        if not ck_path or not os.path.exists(ck_path):
            raise SystemExit(f"--resume: no {ck_path or '--work'}")
        ck = torch.load(ck_path, map_location="cpu")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        if plateau is not None and ck.get("plateau"):
            plateau.load_state_dict(ck["plateau"])
        base_lrs = ck["base_lrs"]
        best, history = ck["best"], ck["history"]
        epoch, step, since_best, nonfinite = ck["epoch"], ck["step"], ck["since_best"], ck["nonfinite"]
        in_epoch, loss_acc, n_acc = ck["in_epoch"], ck["loss_sum"], ck["n_loss"]
        t0 = time.time() - ck["elapsed_s"]
        if args.train_until:  # the budget is the whole run's: what was spent plus what is left until then
            budget = max(1.0, min(args.minutes * 60.0, ck["elapsed_s"] + args.train_until - time.time()))
        init, frozen_bn = ck.get("init", init), ck.get("frozen_bn", frozen_bn)
        _set_rng_state(ck["rng"], gen)
        log(f"resumed from {ck_path}: epoch {epoch} (step {in_epoch} of it), {step} steps, "
            f"{ck['elapsed_s']:.0f}s of {budget:.0f}s; best {best['dice']:.4f} at epoch {best['epoch']}")
    last_ck = time.time()

    def checkpoint(why: str) -> None:
        nonlocal last_ck
        if not ck_path:
            return
        save_resume(ck_path, {
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": opt.state_dict(), "plateau": plateau.state_dict() if plateau is not None else None,
            "base_lrs": base_lrs, "best": best, "history": history, "epoch": epoch, "step": step,
            "since_best": since_best, "nonfinite": nonfinite, "in_epoch": in_epoch, "loss_sum": loss_acc,
            "n_loss": n_acc, "elapsed_s": time.time() - t0, "rng": _rng_state(gen), "init": init,
            "frozen_bn": frozen_bn, "args": {k: v for k, v in vars(args).items() if k != "loaded_data"}})
        last_ck = time.time()
        log(f"checkpoint ({why}): {ck_path}")

    if frozen_bn:
        log("BatchNorm frozen (eval mode, affine trained)")
    nb = int(round(batch * bare_frac))
    while not stop:
        if in_epoch == 0:
            epoch += 1
            loss_acc, n_acc = 0.0, 0
        set_train(model, frozen_bn)
        te0 = time.time()
        n_here = 0
        while in_epoch < steps_per_epoch:
            frac = (time.time() - t0) / budget
            if frac >= 1.0:
                stop = "time budget"
                break
            if args.max_steps and step >= args.max_steps:
                stop = "max steps"
                break
            if cfg["schedule"] == "cosine":
                w = cfg["warmup"]
                f = frac / w if frac < w else cfg["final_lr_frac"] + (1 - cfg["final_lr_frac"]) * 0.5 * (
                    1 + math.cos(math.pi * (frac - w) / (1 - w)))
                for g, b0 in zip(opt.param_groups, base_lrs):
                    g["lr"] = b0 * f
            with torch.no_grad():
                if crop:
                    x, y = C.crop_training_batch(bank_tr, rnd, batch - nb, win=size, p_real=args.p_real, ct=ct_bank,
                                                 p_ct=args.p_ct, pool=bg_pool)
                    if nb:
                        xb, yb = C.bare_training_batch(tr_crops, rnd, nb, win=size,
                                                       upscale=args.bare_upscale,
                                                       p_upscale=args.p_bare_upscale,
                                                       p_affine=args.p_bare_affine)
                        x, y = torch.cat([x, xb]), torch.cat([y, yb])
                else:
                    x, y = C.training_batch(bank_tr, rnd, batch, p_real=args.p_real, ct=ct_bank, p_ct=args.p_ct,
                                            pool=bg_pool)
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, cfg["amp"]):
                logits = model(x)
            loss = loss_fn(logits, y, cfg["loss"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg["clip"]:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["clip"])
            opt.step()
            loss_acc += float(loss.detach())
            n_acc += 1
            n_here += 1
            step += 1
            in_epoch += 1
            if ck_every > 0 and time.time() - last_ck >= ck_every and in_epoch < steps_per_epoch:
                checkpoint("every %g min" % args.checkpoint_every_minutes)
        if n_acc == 0:
            epoch -= 1
            break
        in_epoch = 0
        mean_loss = loss_acc / n_acc
        if not math.isfinite(mean_loss):
            nonfinite += 1
        sl, _ = predict_scores(model, val_comp, device, cfg["amp"], eval_batch, channels_last=cl, diam=diam_va_w)
        v = sl.summary(0.5)
        # the epoch is chosen by the mean Dice over val images with truth, at its own best
        # threshold (as the card's threshold is chosen afterwards), on the bare crops for a crop model
        vt = sl.best_threshold()
        vb = sl.summary(vt)
        rl, _ = predict_scores(model, val_real, device, cfg["amp"], eval_batch, channels_last=cl)
        vr = rl.summary(0.5)
        rec = {"epoch": epoch, "steps": step, "loss": mean_loss, "val_mean_dice": vb["mean_dice"],
               "val_dice_pooled": vb["dice"], "val_best_threshold": vt, "val_dice": v["dice"], "val_iou": v["iou"],
               "val_real_dice": vr.get("dice"), "val_dice_best": vb["dice"]}
        sel = vb
        if val_bare is not None:
            from .bare_eval import bare_scores
            bs = bare_scores(model, val_bare, eval_batch,
                             forward=(lambda x: model(x.contiguous(memory_format=torch.channels_last))) if cl else None)
            bt = bs.best_threshold()
            bsum = bs.summary(bt)
            rec.update({"val_bare_mean_dice": bsum["mean_dice"], "val_bare_dice_pooled": bsum["dice"],
                        "val_bare_threshold": bt, "val_bare_fp_empty": bsum["n_fp_empty"]})
            if select_on == "bare":
                sel = bsum
        if real_val is not None:
            model.eval()
            rs = real_val()
            rthr = rs.best_threshold()
            rsum = rs.summary(rthr)
            rec.update({"val_real_patients_mean_dice": rsum["mean_dice"], "val_real_patients_dice_pooled": rsum["dice"],
                        "val_real_patients_threshold": rthr})
            log(f"val real slices of {','.join(rv_pats)}: mean {rsum['mean_dice']:.4f} pooled {rsum['dice']:.4f}"
                f"@{rthr:.2f}")
            if select_on == "real":
                sel = rsum
        dice = sel["mean_dice"] if math.isfinite(sel["mean_dice"]) else 0.0
        elapsed = time.time() - t0
        rec.update({"select_on": select_on, "selected_mean_dice": dice, "lr": opt.param_groups[0]["lr"],
                    "elapsed_s": round(elapsed, 1),
                    "img_per_s": round(n_here * batch / max(1e-6, time.time() - te0), 1)})
        history.append(rec)
        improved = dice > best["dice"]
        if improved:
            best = {"dice": dice, "epoch": epoch,
                    "state": {k: t.detach().to("cpu", copy=True) for k, t in model.state_dict().items()}}
            since_best = 0
        else:
            since_best += 1
        bare_txt = (f"bare mean {rec['val_bare_mean_dice']:.4f} pooled {rec['val_bare_dice_pooled']:.4f}"
                    f"@{rec['val_bare_threshold']:.2f} fp-empty {rec['val_bare_fp_empty']}; ") if val_bare is not None else ""
        log(f"{args.model}/{args.recipe} ep {epoch} step {step} loss {mean_loss:.4f} val {bare_txt}"
            f"windows mean {vb['mean_dice']:.4f} pooled {vb['dice']:.4f}@{vt:.2f} (pooled@0.5 {v['dice']:.4f}) "
            f"real {vr.get('dice', float('nan')):.4f} lr {rec['lr']:.2e} "
            f"{rec['img_per_s']} img/s {elapsed:.0f}s{' *' if improved else ''}")
        if plateau is not None:
            plateau.step(dice)
        if cfg["early_stop"] and since_best >= cfg["early_stop"]:
            stop = f"early stop ({cfg['early_stop']} epochs without improvement)"
        if args.max_epochs and epoch >= args.max_epochs:
            stop = "max epochs"
        if time.time() - t0 >= budget:
            stop = stop or "time budget"
        if ck_every > 0:
            checkpoint(f"end of epoch {epoch}")
    train_s = time.time() - t0
    log(f"{args.model}/{args.recipe}: stopped ({stop or 'no step'}) after {epoch} epochs, {step} steps, "
        f"{train_s:.0f}s; best val mean dice ({select_on}) {best['dice']:.4f} at epoch {best['epoch']}")
    if best["state"] is not None:
        model.load_state_dict(best["state"])

    # threshold on validation (mean Dice over images with truth; bare crops for a crop model), then final scores
    sl_v, cr_v = predict_scores(model, val_comp, device, cfg["amp"], eval_batch, bank_va, cl, diam=diam_va_w)
    fwd = (lambda x: model(x.contiguous(memory_format=torch.channels_last))) if cl else None
    bare_v = bare_t = None
    if crop:
        from .bare_eval import bare_scores
        bare_v = bare_scores(model, val_bare, eval_batch, forward=fwd)
    rs_v = real_val() if real_val is not None else None
    thr = {"bare": bare_v, "real": rs_v}.get(select_on, sl_v).best_threshold()
    rv, _ = predict_scores(model, val_real, device, cfg["amp"], eval_batch, channels_last=cl)
    if crop:
        test_comp = C.crop_eval_set(bank_te, seed=2001, win=size)
        test_real = C.crop_real_eval_set(bank_te, seed=2002, win=size)
    else:
        test_comp = C.composite_eval_set(bank_te, seed=2001)
        test_real = C.real_eval_set(bank_te, seed=2002)
    sl_t, cr_t = predict_scores(model, test_comp, device, cfg["amp"], eval_batch, bank_te, cl, diam=diam_te_w)
    rt, _ = predict_scores(model, test_real, device, cfg["amp"], eval_batch, channels_last=cl)
    vs, ts, tc, trl = sl_v.summary(thr), sl_t.summary(thr), cr_t.summary(thr), rt.summary(thr)
    if crop:
        bare_t = bare_scores(model, C.bare_eval_set(te_crops, size, device, diam_te.numpy()), eval_batch, forward=fwd)
    definitions = {
        "slices": "256x256 composites: each held-out crop once in a seeded synthetic chest at 1.4 mm/px; "
                  "pooled over all pixels of all images",
        "crops": "the same predictions sampled back (bilinear) onto each crop's native pixel grid; only "
                 "the crop's own pixels counted; pooled",
        "real_slices": "the held-out normalised LIDC slices, approximate HU (v*775-835) inside the lung, "
                       "seeded synthetic body outside, 512->256 area-averaged",
        "mean_dice": "the headline: per-image 2TP/(2TP+FP+FN) at the card threshold, averaged over the images "
                     "whose truth is non-empty; images with empty truth are counted apart (n_both_empty: nothing "
                     "predicted; n_fp_empty: something predicted); by_size: the same mean by the truth's longest "
                     "diameter (largest 8-connected component, max distance between pixel centres x the crop's "
                     "pixel spacing), <6, 6-10, 10-20, >20 mm",
        "dice": "pooled 2TP/(2TP+FP+FN) at the card threshold (second figure); dice_mean: per image over all "
                "images, empty+empty = 1",
        "rmse": "root mean square of (sigmoid(logit) - mask) over pixels; rmse_binary: of the binary mask",
    }
    if crop:
        definitions["bare"] = (f"each held-out crop as it is (no compositing, no noise), padded with air (HU -1024) into the "
                               f"{size}x{size} window by data.pad_bare_crop (centred); only the "
                               "crop's own pixels scored")
        definitions.update({
            "slices": f"{size}x{size} windows at native resolution: each held-out crop once, unscaled and "
                      "unrotated, at the centre of a window cut around a lung pixel of a seeded synthetic "
                      f"{canvas} chest; pooled over all window pixels",
            "crops": "the same predictions on each crop's own pixels only (the window holds the crop "
                     "unscaled, so no resampling); pooled",
            "real_slices": f"{size}x{size} windows of the held-out normalised LIDC slices at 512 (approximate "
                           "HU inside the lung, seeded synthetic body outside), centred on the bounding box "
                           "of each slice's nodule pixels",
        })
    validation = {
        "threshold_selected_on": {"bare": "val bare crops", "windows": ("val crop windows" if crop else "val composites"),
                                  "real": "the real slices of " + ",".join(rv_pats) + " (held out of training)"}[select_on]
                                 + ", mean Dice over images with truth, thresholds 0.05..0.95",
        "epoch_selected_on": f"val {select_on}, mean Dice over images with truth at each epoch's own best threshold",
        **({"real_val_patients": rv_pats, "val_real_patients": rs_v.summary(thr)} if rs_v is not None else {}),
        **({"val_bare": bare_v.summary(thr), "test_bare": bare_t.summary(thr),
            "test_bare_mean_dice": bare_t.summary(thr)["mean_dice"]} if crop else {}),
        "mean_dice": vs["mean_dice"], "test_slices_mean_dice": ts["mean_dice"], "test_crops_mean_dice": tc["mean_dice"],
        "dice": vs["dice"], "iou": vs["iou"], "rmse": vs["rmse"],
        "val_slices": vs, "val_crops": cr_v.summary(thr), "val_real_slices": rv.summary(thr),
        "test_slices_dice": ts["dice"], "test_slices_iou": ts["iou"], "test_slices_rmse": ts["rmse"],
        "test_crops_dice": tc["dice"], "test_crops_iou": tc["iou"], "test_crops_rmse": tc["rmse"],
        "test_real_slices_dice": trl.get("dice"), "test_real_slices_iou": trl.get("iou"),
        "test_slices": ts, "test_crops": tc, "test_real_slices": trl,
        "definitions": definitions,
    }
    if crop:
        log(f"{args.model}/{args.recipe}: threshold {thr}; val bare {MX.fmt(bare_v.summary(thr))}")
        log(f"{args.model}/{args.recipe}: test bare {MX.fmt(bare_t.summary(thr))}")
    log(f"{args.model}/{args.recipe}: val windows {MX.fmt(vs)}; test windows {MX.fmt(ts)}; test crops {MX.fmt(tc)}")
    log(f"{args.model}/{args.recipe}: threshold {thr}; val dice {vs['dice']:.4f}; test slices dice "
        f"{ts['dice']:.4f} iou {ts['iou']:.4f} rmse {ts['rmse']:.4f}; test crops dice {tc['dice']:.4f}; "
        f"test real dice {trl.get('dice', float('nan')):.4f}; val real dice {rv.summary(thr).get('dice', float('nan')):.4f}")

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    if crop:
        how = (f" Crop model: segments a {size}x{size} window at the slice's native pixel grid around a "
               f"candidate of the whole-slice detector {args.detector} (the cascade '{args.detector}+crop'). "
               f"Trained {'further from ' + init['path'] if init else 'from scratch'} with the {args.recipe} recipe on LIDC-IDRI nodule crops pasted at their "
               f"physical size into windows of {canvas}x{canvas} chest backgrounds.")
        compositing = (f"{size}x{size} windows of synthetic or real-lung {canvas} chest backgrounds at "
                       f"{C.CROP_GRID_MM[0]}-{C.CROP_GRID_MM[1]} mm/px, cut around a lung pixel or a real nodule; "
                       f"a crop pasted within +-{C.CROP_OFFSET} px of the centre (p 0.85 unless a real nodule is "
                       "there; a second one anywhere, p 0.1); flips, any rotation of the crop, then rotation +-30 deg, "
                       "scale 0.9-1.1, elastic 1.5 px, CT noise, contrast 0.9-1.1, brightness +-0.04")
    else:
        how = (f" Trained {'further from ' + init['path'] if init else 'from scratch'} with the {args.recipe} recipe on LIDC-IDRI "
               f"nodule crops composited into whole {size}x{size} chest slices.")
        compositing = ("crops pasted into synthetic or real-lung chest backgrounds at spacing/t, "
                       "t ~ U(1.2,1.6) mm/px; flips, rotation +-30 deg, scale 0.9-1.1, elastic 1.5 px, "
                       "CT noise, contrast 0.9-1.1, brightness +-0.04")
        if ct_bank is not None:
            compositing += (f"; a fraction {args.p_ct} of the backgrounds are whole real CT slices of "
                            f"{args.ct_series} at {size}x{size} (area-averaged, their own spacing x"
                            f"{512 // size}), half of them with a crop pasted into the lungs, the rest "
                            "real negatives")
    card = {
        "name": args.name or args.model,
        "architecture": family,
        "variant": spec["variant"],
        "version": E.CARD_VERSION,
        "description": spec["text"] + how,
        "threshold": thr,
        "parameters": M.count_parameters(model),
        "training": {
            "data": {"source": data.source.split(":")[0], "dataset": "LIDC-IDRI (CC BY 3.0), shared/data README",
                     "crops": "ctslicing_vois_hu (HU crops, union of readers' outlines)",
                     "slices": "vinibfr_lidc_norm (normalised full slices, 50% consensus)",
                     "compositing": compositing},
            "split": {"rule": "by patient_id: the 5 full-slice patients fixed (0001,0003,0006 train; 0008 val; "
                              "0007 test); the others ordered by sha256('lungseg-split-v1:'+id), cut 80/10/10",
                      "train_patients": len(tr["patients"]), "val_patients": len(va["patients"]),
                      "test_patients": len(te["patients"]),
                      "train_crops": bank_tr.n_crops, "val_crops": len(va_crops), "test_crops": len(te_crops),
                      "val_window_crops": bank_va.n_crops, "test_window_crops": bank_te.n_crops,
                      "train_slices": bank_tr.n_real, "val_slices": bank_va.n_real, "test_slices": bank_te.n_real,
                      "val": va["patients"], "test": te["patients"], "train": tr["patients"]},
            "recipe": {k: v for k, v in cfg.items()},
            "epochs": epoch, "best_epoch": best["epoch"], "steps": step, "batch": batch,
            "epoch_samples": epoch_samples, "minutes": round(train_s / 60.0, 2), "budget_minutes": args.minutes,
            "stop": stop, "device": dev_name, "torch": torch.__version__, "seed": args.seed,
            "flops_per_image": _flops(model, size),
            "bare_frac": bare_frac, "frozen_bn": frozen_bn, "select_on": select_on, "bg_pool": args.bg_pool, "p_real": args.p_real,
            "slice_hu": args.slice_hu,
            "bare_upscale": {"max": args.bare_upscale, "p": args.p_bare_upscale},
            "p_bare_affine": args.p_bare_affine,
            **({"ct_backgrounds": {"series": args.ct_series, "slices": ct_bank.n, "p": args.p_ct}} if ct_bank else {}),
            **({"init": init} if init else {}),
        },
        "validation": validation,
    }
    if crop:
        card["task"] = "crop"
        card["detector"] = args.detector
        card["cascade"] = {"window": size, "detect_threshold": args.detect_threshold,
                           "max_candidates": args.max_candidates}
    summary = {"model": args.model, "name": card["name"], "recipe": args.recipe, "card": card, "history": history,
               "nonfinite_epochs": nonfinite}
    if args.work:
        os.makedirs(args.work, exist_ok=True)
        if args.save_checkpoint:
            torch.save({"model": args.model, "state_dict": model.state_dict(), "card": card},
                       os.path.join(args.work, f"{card['name']}.pt"))
    if args.out:
        par = parity_inputs(test_real, test_comp)
        te0 = time.time()
        try:
            rep = E.export_model(model, card["name"], args.out, card, par, size)
            rep["export_s"] = round(time.time() - te0, 1)
            summary["export"] = rep
            log(f"{card['name']}: exported {rep['bytes'] / 1e6:.1f} MB (budget {'ok' if rep['fits_budget'] else 'EXCEEDED'}), "
                f"parity ORT {rep['parity'].get('max_abs_diff_onnxruntime', 'n/a')}, {rep['export_s']}s")
        except Exception:  # keep the trained weights so the export can be redone elsewhere
            import traceback
            err = traceback.format_exc()
            folder = os.path.join(args.out, card["name"])
            os.makedirs(folder, exist_ok=True)
            torch.save({"model": args.model, "size": size, "state_dict": E.cpu_copy(model).state_dict(), "card": card},
                       os.path.join(folder, "state_dict.pt"))
            np.asarray(par, "<f4").tofile(os.path.join(folder, "parity_input.bin"))
            summary["export_error"] = err
            log(f"{card['name']}: EXPORT FAILED, weights saved to {folder}/state_dict.pt:\n{err}")
    if args.work:
        with open(os.path.join(args.work, f"{card['name']}.summary.json"), "w") as f:
            json.dump(E.json_safe(summary), f, indent=2, default=str, allow_nan=False)
    summary["total_s"] = round(time.time() - t_start, 1)
    return summary


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python3 -m lungseg_train.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, choices=M.MODEL_NAMES)
    ap.add_argument("--recipe", default="dicebce", choices=["report", "dicebce"])
    ap.add_argument("--minutes", type=float, default=4.0, help="wall-clock budget of the training loop")
    ap.add_argument("--train-until", type=float, default=0.0,
                    help="absolute time (seconds since the epoch) by which training must stop; caps --minutes")
    ap.add_argument("--out", default="", help="export root: writes OUT/<name>/{model.onnx,card.json,parity_*}")
    ap.add_argument("--name", default="", help="model name in the card and folder (default: --model)")
    ap.add_argument("--data", default=None, help="raw data folder or pack .npz (default ../shared/data)")
    ap.add_argument("--work", default="", help="folder for summary.json (and checkpoint)")
    ap.add_argument("--save-checkpoint", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--batch", type=int, default=0)
    ap.add_argument("--dice-per-image", action="store_true",
                    help="dicebce recipe: soft Dice per image averaged over the batch (the headline metric) "
                         "instead of one Dice pooled over the batch")
    ap.add_argument("--lr", type=float, default=0.0)
    ap.add_argument("--no-amp", action="store_true")
    ap.add_argument("--size", type=int, default=0, help="model input side (default 256; crop task 128)")
    ap.add_argument("--task", default="slice", choices=["slice", "crop"],
                    help="slice: whole-slice model at 256; crop: native-resolution window model for the cascade")
    ap.add_argument("--detector", default="", help="crop task: the whole-slice model it follows (default: --model)")
    ap.add_argument("--detect-threshold", type=float, default=0.25, help="crop task: cascade candidate threshold")
    ap.add_argument("--max-candidates", type=int, default=8, help="crop task: windows per slice at most")
    ap.add_argument("--epoch-samples", type=int, default=0)
    ap.add_argument("--max-epochs", type=int, default=0)
    ap.add_argument("--max-steps", type=int, default=0)
    ap.add_argument("--crop-limit", type=int, default=0, help="use at most this many training crops")
    ap.add_argument("--eval-limit", type=int, default=0, help="use at most this many val/test crops")
    ap.add_argument("--window-eval-limit", type=int, default=0,
                    help="use at most this many val/test crops for the window/composite sets (bare crops: all)")
    ap.add_argument("--eval-batch", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--init", default="",
                    help="continue from trained weights: a model.onnx of the same architecture and size "
                         "(no BatchNorm) or a --save-checkpoint .pt")
    ap.add_argument("--frozen-bn", action="store_true",
                    help="keep BatchNorm in eval mode while training (implied by an --init model.onnx with BatchNorm)")
    ap.add_argument("--bare-frac", type=float, default=0.4,
                    help="crop task: fraction of each batch that is bare training crops (data.pad_bare_crop)")
    ap.add_argument("--bare-upscale", type=float, default=1.0,
                    help="crop task: enlarge bare training crops by a factor drawn from [1, this] (masses larger "
                         "than LIDC's crops), cut to the window")
    ap.add_argument("--p-bare-upscale", type=float, default=0.0,
                    help="crop task: fraction of the bare training crops that --bare-upscale enlarges")
    ap.add_argument("--p-bare-affine", type=float, default=0.0,
                    help="crop task: fraction of the bare training crops rotated by any angle and scaled "
                         "0.8-1.25 about their centre (composite.rotate_scale)")
    ap.add_argument("--real-val-patients", default="",
                    help="comma-separated training patients with whole slices (of 0001, 0003, 0006) held out of "
                         "training, slices and crops, and scored on their real slices every epoch (crop models "
                         "tiled as segment.Tile); --select-on real chooses the epoch and threshold there")
    ap.add_argument("--select-on", default="auto", choices=["auto", "bare", "windows", "real"],
                    help="epoch and threshold selection set (auto: bare crops for the crop task, else windows; "
                         "real: the slices of --real-val-patients); "
                         "always by the mean Dice over images with truth")
    ap.add_argument("--bg-pool", type=int, default=0,
                    help="draw the synthetic backgrounds (crop task: of the windows) from a pool of this many chests "
                         "made once (CPU runs)")
    ap.add_argument("--ct-backgrounds", default="",
                    help="ct_series folder (../shared/data/ct_series): real CT slices as backgrounds (crop task: of the "
                         "windows; slice task: whole slices reduced to the model grid, half of them without a nodule)")
    ap.add_argument("--slice-hu", default="calibrated", choices=["calibrated", "readme"],
                    help="HU of the normalised vinibfr slices: hucal's per-slice fit against the same patient's HU "
                         "crops (default), or the data README's single inverse v*775-835 (models before 2026-12-03)")
    ap.add_argument("--ct-series", default="popi_00_141", help="comma-separated series of --ct-backgrounds")
    ap.add_argument("--p-real", type=float, default=0.3,
                    help="fraction of the chest backgrounds (crop task: of the windows) that are the training patients' "
                         "normalised vinibfr slices, with their own nodules; the rest are synthetic chests")
    ap.add_argument("--p-ct", type=float, default=0.25, help="fraction of (window) backgrounds that are real CT")
    ap.add_argument("--checkpoint-every-minutes", type=float, default=0.0,
                    help="write WORK/<name>.resume.pt (model, optimizer, scheduler, RNG, epoch, best) this often "
                         "and at each epoch's end")
    ap.add_argument("--resume", action="store_true",
                    help="continue from WORK/<name>.resume.pt (same arguments; --minutes is the whole budget)")
    ap.add_argument("--encoder-weights", default="", help="local torchvision resnet50 state_dict (full model only)")
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    s = run(args)
    print(json.dumps({"name": s["name"], "validation": {k: v for k, v in s["card"]["validation"].items()
                                                         if not isinstance(v, dict)}}, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
