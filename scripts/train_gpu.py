#!/usr/bin/env python
"""Train the bundled models on one GPU in minutes (falls back to the CPU for a dry run).

Three sub-commands; ``scripts/train_gpu.sh`` runs the whole recipe as one command:

    python scripts/train_gpu.py pack --out gpu_data          # here: the arrays the GPU run needs
    python scripts/train_gpu.py em --data gpu_data --out runs/gpu/em --minutes 7
    python scripts/train_gpu.py lm --data gpu_data --out runs/gpu/lm --minutes 7

``em`` trains the compact MNet (affinities + foreground) on fib25_a, fib25_c and ISBI 2012
with the robust augmentation (zoom 0.5-2x, contrast / gamma / histogram, amplitude mixing
with the unlabeled cube), crops drawn by ``CropSampler`` in DataLoader worker processes, bf16
autocast, a cosine learning rate spread over the wall-clock budget, a weight EMA, and the
validation loss on fib25_b (never trained on) logged every ``--val-every`` seconds. It writes
fp16 checkpoints (final raw weights, EMA, snapshots) in the official layout: choose among them
with waterz VI on fib25_b on any machine (``benchmarks/bench_default_model.py``).

``lm`` trains the light-microscopy ViT3D three ways on identical batches (scratch, "center"
and "average" inflation of the carried 2D ViT), rendering fresh LM-like stacks in worker
processes (random trees plus the SWC morphologies given), then scores each arm on held-out
renders (Dice, HD95) and writes the best arm and ``results.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

SHARED = ROOT.parent / "shared" / "data"


def log_to(path: Path):
    fh = open(path, "a", buffering=1)

    def log(msg: str) -> None:
        line = time.strftime("%H:%M:%S ") + msg
        print(line, flush=True)
        fh.write(line + "\n")
    return log


def device_and_autocast(bf16: bool = True):
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if dev.type == "cuda":
        use = bf16
    else:  # a CPU: bf16 only where it runs in hardware (emulated bf16 is several times slower)
        from napari_segneuron.precision import cpu_has_native_bf16
        use = bf16 and cpu_has_native_bf16()

    def autocast():
        return torch.autocast(dev.type, dtype=torch.bfloat16) if use else torch.autocast("cpu", enabled=False)
    return dev, autocast


def cosine_by_time(frac: float, peak: float, floor: float, warm_frac: float = 0.03) -> float:
    """Learning rate at ``frac`` (0..1) of the wall-clock budget: linear warm-up, cosine decay."""
    if frac < warm_frac:
        return peak * max(frac / warm_frac, 0.02)
    t = min(1.0, (frac - warm_frac) / (1 - warm_frac))
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * t))


# ----------------------------------------------------------------------------- pack (here)
def pack(args) -> int:
    """Write ``em.npz`` (the EM arrays at the training grid), the SWC morphologies and a trimmed
    fp16 2D ViT (only the tensors the 3D model inflates) into ``--out``."""
    from train_default_model import block_mean, load_data

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    d = load_data(Path(args.shared))
    lsd = Path(args.shared) / "lsd_2dcrops_raw.tif"
    if lsd.is_file():  # 100 unrelated 2D ssTEM crops (~4 nm, CREMI-like, MIT): 2x down in xy like ISBI
        import tifffile
        from napari_segneuron.resample import resize_labels

        raw = tifffile.imread(str(lsd))
        lab = tifffile.imread(str(lsd.with_name("lsd_2dcrops_labels.tif")))
        d["lsd_raw"] = np.round(block_mean(raw, (1, 2, 2))).astype(np.uint8)
        d["lsd_lab"] = resize_labels(lab, d["lsd_raw"].shape)
    np.savez_compressed(out / "em.npz", **d)
    print(f"em.npz: {', '.join(f'{k} {v.shape}' for k, v in d.items())}")
    if args.swc_dir:
        (out / "swc").mkdir(exist_ok=True)
        for f in sorted(Path(args.swc_dir).glob("*.swc")):
            (out / "swc" / f.name).write_bytes(f.read_bytes())
    if args.weights_2d:
        from napari_segneuron._model.vit3d import ViT3DSeg, inflate_vit_state_dict, read_vit_state_dict

        sd = read_vit_state_dict(args.weights_2d)
        used = inflate_vit_state_dict(ViT3DSeg(), sd, "average")["loaded"]  # the 2D keys the 3D model reads
        keep = {k: (sd[k].half() if sd[k].is_floating_point() else sd[k]) for k in used}
        torch.save(keep, out / "vit2d.pt")
        print(f"vit2d.pt: {len(keep)} of {len(sd)} tensors, {sum(v.numel() for v in keep.values()) / 1e6:.1f} M")
    return 0


# ----------------------------------------------------------------------------- EM
class EMCrops(torch.utils.data.IterableDataset):
    """Endless augmented batches from ``CropSampler``; each worker has its own seed."""

    def __init__(self, data: dict, crop, batch: int, seed: int, weights: dict, isbi_key: str = "isbi"):
        self.data, self.crop, self.batch, self.seed, self.weights = data, crop, batch, seed, weights
        self.isbi_key = isbi_key  # "isbi": 2x down in xy (8 nm, sections as slices); "isbi_grid": the model grid

    def __iter__(self):
        from napari_segneuron.training.augment import AugmentConfig
        from napari_segneuron.training.data import CropSampler, TrainVolume

        torch.set_num_threads(1)
        info = torch.utils.data.get_worker_info()
        wid = info.id if info is not None else 0
        d, w = self.data, self.weights
        vols = [TrainVolume(d["a_raw"], d["a_lab"], weight=w["fib25_a"], name="fib25_a"),
                TrainVolume(d["c_raw"], d["c_lab"], weight=w["fib25_c"], name="fib25_c"),
                TrainVolume(d[self.isbi_key], d[self.isbi_key + "_lab"], z_affinity=False, weight=w["isbi"],
                            name="isbi2012")]
        if w.get("lsd", 0) > 0 and "lsd_raw" in d:
            # each unrelated 2D crop repeated along z as its own volume: xy affinities and foreground only
            depth = self.crop[0]
            n = len(d["lsd_raw"])
            vols += [TrainVolume(np.repeat(d["lsd_raw"][i][None], depth, 0), np.repeat(d["lsd_lab"][i][None], depth, 0),
                                 z_affinity=False, weight=w["lsd"] / n, name=f"lsd_{i}") for i in range(n)
                     if (d["lsd_lab"][i] > 0).any()]
        s = CropSampler(vols, self.crop, AugmentConfig.robust(), amp_sources=[d["unl"], d["isbi"], d["a_raw"]],
                        seed=self.seed * 1000 + wid)
        while True:
            b = s.batch(self.batch)
            yield {k: torch.from_numpy(v) for k, v in b.items()}


def em(args) -> int:
    from napari_segneuron.training.checkpoints import read_checkpoint, write_checkpoint
    from napari_segneuron.training.finetune import (WeightAverage, balance_weights, build_mnet, masked_bce,
                                                    mnet_from_state_dict)
    from napari_segneuron.training.data import normalize_image

    t_start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = log_to(out / "log.txt")
    torch.manual_seed(args.seed)
    dev, autocast = device_and_autocast(not args.no_bf16)
    log(f"command: {' '.join(sys.argv)}; device {dev} "
        f"{torch.cuda.get_device_name(0) if dev.type == 'cuda' else ''}; torch {torch.__version__}")
    data = dict(np.load(Path(args.data) / "em.npz"))
    kn = tuple(int(v) for v in args.kn.split(","))
    crop = tuple(int(v) for v in args.crop.split(","))
    if args.init:
        model = mnet_from_state_dict(read_checkpoint(args.init)["model_weights"]).float()
        log(f"initialised from {args.init}")
    else:
        model = build_mnet(kn)
    model = model.to(dev).train()
    nparam = sum(p.numel() for p in model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    ema = WeightAverage(model, args.ema)
    weights = {"fib25_a": args.a_weight, "fib25_c": args.c_weight, "isbi": args.isbi_weight, "lsd": args.lsd_weight}
    if args.lsd_weight > 0 and "lsd_raw" not in data:
        raise SystemExit("--lsd-weight needs lsd_raw in em.npz: run 'pack' again with the shared data")
    isbi_key = "isbi_grid" if args.isbi_grid == "model" else "isbi"
    if isbi_key not in data:
        raise SystemExit("--isbi-grid model needs isbi_grid in em.npz: run 'pack' again with the shared data")
    ds = EMCrops(data, crop, args.batch, args.seed, weights, isbi_key)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=args.workers,
                                         pin_memory=dev.type == "cuda", prefetch_factor=4 if args.workers else None,
                                         persistent_workers=bool(args.workers))
    val_img = torch.from_numpy(normalize_image(data["b_raw"]))[None, None]
    val_lab = data["b_lab"]

    @torch.no_grad()
    def val_loss(net) -> float:
        from napari_segneuron.training.targets import affinities_from_labels

        net.eval()
        z, y, x = val_img.shape[2:]
        py, px = (-y) % 16, (-x) % 16
        img = torch.nn.functional.pad(val_img, (0, px, 0, py, 0, 0), mode="reflect").to(dev)
        with autocast():
            a_log, f_log = net.forward_logits(img)
        a_log, f_log = a_log[..., :y, :x].float(), f_log[..., :y, :x].float()
        aff = torch.from_numpy(affinities_from_labels(val_lab))[None].to(dev)
        fg = torch.from_numpy((val_lab > 0).astype(np.float32))[None, None].to(dev)
        w = torch.ones_like(aff)
        loss = masked_bce(a_log, aff, balance_weights(aff, w) if args.balance else w) + \
            masked_bce(f_log, fg, torch.ones_like(fg))
        net.train()
        return float(loss)

    meta = {"name": "default", "voxel_size_nm": [args.voxel_size] * 3, "augment": "robust",
            "training_data": "fib25_a, fib25_c (3D ids), isbi2012 "
                             + ("on the model grid (50 x 4 x 4 nm resampled as prediction does)" if isbi_key == "isbi_grid"
                                else "2x-downsampled xy") + " (2D membranes, z affinity masked)"
                             + (", lsd 2D crops 2x-downsampled xy (z affinity masked)" if args.lsd_weight > 0 else ""),
            "validation_data": "fib25_b", "recipe": "scripts/train_gpu.py em " + " ".join(sys.argv[2:]),
            "kn": list(kn), "batch": args.batch, "crop": list(crop)}
    budget = args.minutes * 60.0
    it, losses, history = 0, [], []
    snaps = sorted({float(f) for f in args.snapshots.split(",") if f}) if args.snapshots else []
    t0 = time.time()
    log(f"MNet kn={kn} ({nparam / 1e6:.2f} M parameters), batch {args.batch} x {crop}, {args.workers} workers, "
        f"budget {args.minutes} min; data ready after {t0 - t_start:.1f} s")
    next_val = t0
    for batch in loader:
        el = time.time() - t0
        frac = el / budget
        if frac >= 1.0 or (args.max_iters and it >= args.max_iters):
            break
        lr = cosine_by_time(frac, args.lr, args.lr * 0.01)
        for g in opt.param_groups:
            g["lr"] = lr
        t = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
        with autocast():
            a_log, f_log = model.forward_logits(t["image"])
        a_log, f_log = a_log.float(), f_log.float()
        w_aff = balance_weights(t["aff"], t["w_aff"]) if args.balance else t["w_aff"]
        loss = masked_bce(a_log, t["aff"], w_aff) + masked_bce(f_log, t["fg"], t["w_fg"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        ema.update(model)
        it += 1
        losses.append(float(loss.detach()) if it % 10 == 0 else None)
        if snaps and frac >= snaps[0]:
            f = snaps.pop(0)
            write_checkpoint(ema.model_copy(model), out / f"ema_at{int(round(f * 100)):02d}.pt", it, meta, half=True)
        if time.time() >= next_val:
            recent = [v for v in losses[-200:] if v is not None]
            vl, vle = val_loss(model), val_loss(ema.model_copy(model))
            history.append({"iter": it, "s": round(el, 1), "lr": lr, "train": float(np.mean(recent or [np.nan])),
                            "val": vl, "val_ema": vle})
            log(f"iter {it} ({el:.0f} s, {it / max(el, 1e-9):.2f} it/s) lr {lr:.2e} train {history[-1]['train']:.4f} "
                f"val {vl:.4f} val_ema {vle:.4f}")
            next_val = time.time() + args.val_every
    wall = time.time() - t0
    vl, vle = val_loss(model), val_loss(ema.model_copy(model))
    log(f"done: {it} iterations in {wall:.0f} s ({it / wall:.2f} it/s, {it * args.batch} crops); "
        f"val {vl:.4f} val_ema {vle:.4f}")
    meta.update(iters=it, wall_s=round(wall), device=str(dev), fib25_b_val_loss=vl)
    write_checkpoint(model, out / "final.pt", it, meta, half=True)
    write_checkpoint(ema.model_copy(model), out / "ema.pt", it, dict(meta, fib25_b_val_loss=vle, ema=args.ema),
                     half=True)
    (out / "history.json").write_text(json.dumps({"history": history, "iters": it, "wall_s": wall,
                                                  "val": vl, "val_ema": vle, "args": vars(args)}, indent=1))
    return 0


# ----------------------------------------------------------------------------- LM
class LMCrops(torch.utils.data.IterableDataset):
    """Endless batches of crops from freshly rendered LM stacks (a rolling pool per worker)."""

    def __init__(self, morphologies, crop, batch: int, seed: int, pool: int = 6, reuse: int = 3):
        self.morph, self.crop, self.batch, self.seed = morphologies, crop, batch, seed
        self.pool, self.reuse = pool, reuse

    def __iter__(self):
        from napari_segneuron.lm_render import render_sample
        from napari_segneuron.training.lm import CropSource

        torch.set_num_threads(1)
        info = torch.utils.data.get_worker_info()
        wid = info.id if info is not None else 0
        rng = np.random.default_rng(self.seed * 1000 + wid + 1)

        def fresh():
            m = None
            if self.morph and rng.random() < 0.35:
                m = self.morph[int(rng.integers(len(self.morph)))]
            return render_sample(rng, (40, 160, 160), m)

        renders = [fresh() for _ in range(self.pool)]
        n = 0
        while True:
            src = CropSource(renders, self.crop)
            for _ in range(self.reuse):
                x, y = src.batch(rng, self.batch)
                yield x, y
            n += 1
            renders[n % self.pool] = fresh()


def lm(args) -> int:
    from napari_segneuron._model.vit3d import build_vit3d, save_vit3d
    from napari_segneuron.io import read_swc
    from napari_segneuron.training.lm import classical_threshold, evaluate, loss_fn, make_renders, tune_threshold

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = log_to(out / "log.txt")
    dev, autocast = device_and_autocast(not args.no_bf16)
    log(f"command: {' '.join(sys.argv)}; device {dev}")
    files = sorted((Path(args.data) / "swc").glob("*.swc"))
    morph = [read_swc(f) for f in files]
    m_train, m_val = morph[:-1], morph[-1:]
    log(f"{len(files)} SWC morphologies: {len(m_train)} for training, {len(m_val)} held out")
    sd2d = {k: v.float() for k, v in torch.load(Path(args.data) / "vit2d.pt", map_location="cpu",
                                                  weights_only=True).items()}
    arms = [a for a in args.arms.split(",") if a]
    models, opts = {}, {}
    for arm in arms:
        torch.manual_seed(args.seed)
        m = build_vit3d(None if arm == "scratch" else arm, sd2d).to(dev).train()
        enc = [p for n, p in m.named_parameters() if n.startswith("encoder.")]
        rest = [p for n, p in m.named_parameters() if not n.startswith("encoder.")]
        opts[arm] = torch.optim.AdamW([{"params": rest, "scale": 1.0}, {"params": enc, "scale": 0.3}],
                                      lr=args.lr, weight_decay=1e-4)
        models[arm] = m
    crop = tuple(int(v) for v in args.crop.split(","))
    loader = torch.utils.data.DataLoader(LMCrops(m_train, crop, args.batch, args.seed), batch_size=None,
                                         num_workers=args.workers, pin_memory=dev.type == "cuda",
                                         prefetch_factor=4 if args.workers else None,
                                         persistent_workers=bool(args.workers))
    budget = args.minutes * 60.0
    t0, it, run = time.time(), 0, {a: [] for a in arms}
    next_log = t0 + 30
    for x, y in loader:
        frac = (time.time() - t0) / budget
        if frac >= 1.0 or (args.max_iters and it >= args.max_iters):
            break
        lr = cosine_by_time(frac, args.lr, args.lr * 0.05)
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        for arm in arms:
            for g in opts[arm].param_groups:
                g["lr"] = lr * g["scale"]
            with autocast():
                logits = models[arm].forward_logits(x)
            loss = loss_fn(logits.float(), y)
            opts[arm].zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(models[arm].parameters(), 1.0)
            opts[arm].step()
            if it % 10 == 0:
                run[arm].append(float(loss.detach()))
        it += 1
        if time.time() >= next_log:
            log(f"step {it} ({time.time() - t0:.0f} s) lr {lr:.2e} " +
                " ".join(f"{a} {np.mean(run[a][-20:]):.4f}" for a in arms))
            next_log = time.time() + 30
    wall = time.time() - t0
    log(f"training done: {it} steps per arm, batch {args.batch} x {crop}, {wall:.0f} s")
    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    rng_seed = args.seed + 10_000
    val = make_renders(args.n_val, rng_seed, morphologies=m_val)
    tune = make_renders(6, args.seed + 20_000, morphologies=m_train)
    results = {"steps": it, "batch": args.batch, "crop": list(crop), "wall_s": round(wall), "device": str(dev),
               "n_val": args.n_val, "val_seed": rng_seed, "arms": {}}
    for arm in arms:
        net = models[arm].float().cpu().eval()
        thr, scores = tune_threshold(net, tune)
        res = evaluate(net, val, threshold=thr)
        res.update(threshold=thr, tune_dice_by_threshold=scores,
                   dice_at_0_5=evaluate(net, val, threshold=0.5)["dice"],
                   final_loss=float(np.mean(run[arm][-20:])) if run[arm] else None)
        results["arms"][arm] = res
        log(f"{arm}: held-out Dice {res['dice']:.4f} HD95 {res['hd95']:.2f} at threshold {thr} "
            f"(Dice {res['dice_at_0_5']:.4f} at 0.5)")
    results["classical_threshold_dice"] = float(np.mean([classical_threshold(r.stack, r.mask)[0] for r in val]))
    best = max(results["arms"], key=lambda a: results["arms"][a]["dice"])
    results["best"] = best
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    meta = {"name": "lm_default", "init": best, "steps": it, "held_out_dice": results["arms"][best]["dice"],
            "held_out_hd95": results["arms"][best]["hd95"], "threshold": 0.5,
            "tuned_threshold": results["arms"][best]["threshold"],
            "comparison": {a: {"dice": r["dice"], "hd95": r["hd95"]} for a, r in results["arms"].items()},
            "recipe": "scripts/train_gpu.py lm " + " ".join(sys.argv[2:])}
    for arm in arms:
        if arm == best or args.keep_all:
            save_vit3d(models[arm], out / f"lm_{arm}.pt", iters=it, metadata=dict(meta, init=arm), half=True)
    log(f"best arm {best}; wrote {out}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pk = sub.add_parser("pack", help="write the arrays and weights a GPU run needs")
    pk.add_argument("--out", default="gpu_data")
    pk.add_argument("--shared", default=str(SHARED))
    pk.add_argument("--swc-dir", default=None)
    pk.add_argument("--weights-2d", default=None)
    e = sub.add_parser("em", help="train the compact EM MNet")
    e.add_argument("--data", default="gpu_data")
    e.add_argument("--out", default="runs/gpu/em")
    e.add_argument("--kn", default="8,16,24,32,64")
    e.add_argument("--init", default=None, help="start from this checkpoint (a warm start)")
    e.add_argument("--minutes", type=float, default=7.0)
    e.add_argument("--max-iters", type=int, default=0)
    e.add_argument("--batch", type=int, default=16)
    e.add_argument("--crop", default="16,96,96")
    e.add_argument("--lr", type=float, default=2e-3)
    e.add_argument("--ema", type=float, default=0.999)
    e.add_argument("--balance", action=argparse.BooleanOptionalAction, default=True)
    e.add_argument("--a-weight", type=float, default=0.4)
    e.add_argument("--c-weight", type=float, default=0.35)
    e.add_argument("--isbi-weight", type=float, default=0.25)
    e.add_argument("--lsd-weight", type=float, default=0.0,
                   help="sampling weight of the 100 lsd 2D ssTEM crops (shared/data, MIT), each repeated along z "
                        "(z affinity masked); 0 = not used")
    e.add_argument("--isbi-grid", choices=["2x", "model"], default="2x",
                   help="ISBI 2012 as 2x-downsampled sections (8 nm pixels) or resampled to the model's grid "
                        "(4 x 4 x 50 nm to --voxel-size, as prediction resamples a serial-section stack)")
    e.add_argument("--voxel-size", type=float, default=20.0)
    e.add_argument("--workers", type=int, default=4)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--val-every", type=float, default=30.0, help="seconds between validation losses")
    e.add_argument("--snapshots", default="0.5,0.75", help="budget fractions at which the EMA is saved")
    e.add_argument("--no-bf16", action="store_true")
    m = sub.add_parser("lm", help="train the LM ViT3D: scratch / center / average")
    m.add_argument("--data", default="gpu_data")
    m.add_argument("--out", default="runs/gpu/lm")
    m.add_argument("--arms", default="scratch,center,average")
    m.add_argument("--minutes", type=float, default=7.0)
    m.add_argument("--max-iters", type=int, default=0)
    m.add_argument("--batch", type=int, default=8)
    m.add_argument("--crop", default="20,112,112")
    m.add_argument("--lr", type=float, default=1e-3)
    m.add_argument("--n-val", type=int, default=6)
    m.add_argument("--workers", type=int, default=5)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--keep-all", action="store_true")
    m.add_argument("--no-bf16", action="store_true")
    a = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    return {"pack": pack, "em": em, "lm": lm}[a.cmd](a)


if __name__ == "__main__":
    raise SystemExit(main())
