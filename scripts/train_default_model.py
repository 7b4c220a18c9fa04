#!/usr/bin/env python
"""Train the bundled default SegNeuron model (compact MNet) on the real EM data, on CPU.

Recipe (SegNeuron, scaled down): self-supervised pretraining (noise masking,
image + HOG reconstruction) on raw FIB-25 and ISBI 2012 stacks, then supervised
finetuning on fib25_a (3D ids) and ISBI 2012 (2D membranes, z affinity masked),
validating on fib25_b only. Resumable: run the same command again to continue.

    PYTHONPATH=src python scripts/train_default_model.py --out runs/default --export
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

ROOT = Path(__file__).resolve().parents[1]

from napari_segneuron.training.augment import AugmentConfig  # noqa: E402
from napari_segneuron.training.checkpoints import read_checkpoint, write_checkpoint  # noqa: E402
from napari_segneuron.training.data import TrainVolume  # noqa: E402
from napari_segneuron.training.finetune import (build_mnet, finetune, mnet_from_state_dict,  # noqa: E402
                                                segmentation_loss, validate)
from napari_segneuron.training.data import CropSampler  # noqa: E402
from napari_segneuron.training.pretrain import pretrain, transfer_encoder  # noqa: E402
from napari_segneuron.training.targets import labels_from_membranes  # noqa: E402

DATA = Path("/work/shared/data")
WEIGHTS = ROOT / "src" / "napari_segneuron" / "weights" / "default.pt"


def block_mean(a: np.ndarray, f: tuple) -> np.ndarray:
    """Downsample by integer factors (z, y, x) with block averaging (edges trimmed)."""
    s = [d // k * k for d, k in zip(a.shape, f)]
    a = a[: s[0], : s[1], : s[2]].astype(np.float32)
    return a.reshape(s[0] // f[0], f[0], s[1] // f[1], f[1], s[2] // f[2], f[2]).mean(axis=(1, 3, 5))


EXTRA = ROOT / "training_data"


ISBI_VOXEL_NM = (50.0, 4.0, 4.0)  # the challenge's serial-section TEM: 4 x 4 nm pixels, 50 nm sections


def isbi_on_model_grid(raw: np.ndarray, membranes: np.ndarray, model_voxel_nm: float = 20.0,
                       threshold: float = 0.35, min_area: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """ISBI 2012 moved to the model's isotropic grid exactly as prediction moves a serial-section
    stack (anti-aliased shrink in xy, linear interpolation between sections), so training shows the
    model ssTEM the way it meets it at inference; 2D ids from the resampled membrane map, regions
    under ``min_area`` pixels (bits of thick membrane) set to boundary."""
    from napari_segneuron.resample import resample_image

    grid = (model_voxel_nm,) * 3
    img = resample_image(raw, ISBI_VOXEL_NM, grid)
    memb = resample_image(membranes.astype(np.float32) / 255.0, ISBI_VOXEL_NM, grid)
    lab = labels_from_membranes(memb, threshold=threshold)
    ids, counts = np.unique(lab, return_counts=True)
    lab[np.isin(lab, ids[(counts < min_area) & (ids > 0)])] = 0
    return img, lab


def load_data(data: Path, extra: Path = EXTRA, isbi_down: int = 2):
    """The labelled FIB crops at their own grid, the unlabeled cube 2x down in z, y, x (the crops'
    scale, benchmarks/measure_voxel_size.py), ISBI ``isbi_down`` x down in xy; fib25_c from
    ``extra`` (scripts/gather_training_data.py) when it is there."""
    rd = lambda n: tifffile.imread(str(data / n))  # noqa: E731
    unl = np.round(block_mean(rd("fib25_unlabeled_raw.tif"), (2, 2, 2))).astype(np.uint8)
    a_raw, a_lab = rd("fib25_a_raw.tif"), rd("fib25_a_labels.tif")
    b_raw, b_lab = rd("fib25_b_raw.tif"), rd("fib25_b_labels.tif")
    isbi = np.round(block_mean(rd("isbi2012_raw.tif"), (1, isbi_down, isbi_down))).astype(np.uint8)
    memb = block_mean(rd("isbi2012_membranes.tif"), (1, isbi_down, isbi_down)) / 255.0
    isbi_lab = labels_from_membranes(memb, threshold=0.35)
    out = dict(unl=unl, a_raw=a_raw, a_lab=a_lab, b_raw=b_raw, b_lab=b_lab, isbi=isbi, isbi_lab=isbi_lab)
    out["isbi_grid"], out["isbi_grid_lab"] = isbi_on_model_grid(rd("isbi2012_raw.tif"), rd("isbi2012_membranes.tif"))
    if (extra / "fib25_c_raw.tif").is_file():
        out.update(c_raw=tifffile.imread(str(extra / "fib25_c_raw.tif")),
                   c_lab=tifffile.imread(str(extra / "fib25_c_labels.tif")))
    return out


def time_step(kn, crop, batch, volumes, threads) -> float:
    torch.set_num_threads(threads)
    m = build_mnet(kn)
    opt = torch.optim.Adam(m.parameters())
    s = CropSampler(volumes, crop, seed=123)
    ts = []
    for _ in range(3):
        t = time.time()
        b = s.batch(batch)
        opt.zero_grad()
        segmentation_loss(m, b, "cpu")[0].backward()
        opt.step()
        ts.append(time.time() - t)
    return float(np.median(ts))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/default")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--kn", default="8,16,24,32,64")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads; 1 is much faster than 2 on an oversubscribed machine")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pretrain-iters", type=int, default=300, help="0 = no pretraining (ablation)")
    p.add_argument("--pretrain-minutes", type=float, default=12.0, help="stop pretraining early after this")
    p.add_argument("--pretrain-crop", default="20,96,96")
    p.add_argument("--finetune-iters", default="auto",
                   help="iterations, or 'auto' = as many as fit in --finetune-minutes at the measured speed")
    p.add_argument("--time-schedule", action="store_true",
                   help="decay the learning rate over --finetune-minutes (or the iterations, whichever ends first)")
    p.add_argument("--finetune-minutes", type=float, default=60.0)
    p.add_argument("--crop", default="16,96,96")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--isbi-weight", type=float, default=0.25)
    p.add_argument("--isbi-down", type=int, default=2, help="ISBI 2012 (4 nm in xy) downsampling factor in xy")
    p.add_argument("--c-weight", type=float, default=0.0,
                   help="sampling weight of fib25_c (training_data/, gather_training_data.py); 0 = not used")
    p.add_argument("--augment", choices=["default", "robust"], default="default",
                   help="robust: zoom 0.5-2x, wide contrast/gamma, histogram remapping, more amplitude mixing")
    p.add_argument("--voxel-size", type=float, default=20.0,
                   help="voxel size (nm, isotropic) declared in the checkpoint: the FIB crops' true one, ~2x the "
                        "10 nm unlabeled cube (benchmarks/measure_voxel_size.py)")
    p.add_argument("--validate-every", type=int, default=100)
    p.add_argument("--keep-every", type=int, default=100)
    p.add_argument("--average-last", type=int, default=4,
                   help="also try the mean weights of the last N kept checkpoints as a candidate")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bfloat16 autocast (default: asked for where the CPU has native bf16, avx512_bf16 / "
                        "amx_bf16, and then used only if a timed training step is faster with it; emulated "
                        "bf16 on other CPUs is several times slower)")
    p.add_argument("--balance", action="store_true", help="weigh boundary and inside affinities equally")
    p.add_argument("--ema", type=float, default=0.0, help="EMA decay of the weights that are validated and kept")
    p.add_argument("--pretrain-batch", type=int, default=1)
    p.add_argument("--init-from", default=None,
                   help="start finetuning from this checkpoint's weights (a warm restart; pretraining is skipped)")
    p.add_argument("--warmup", type=int, default=20, help="learning-rate warm-up iterations")
    p.add_argument("--export", action="store_true", help="write the best model to the package's weights/default.pt")
    a = p.parse_args(argv)
    if a.bf16 is None:
        from napari_segneuron.precision import cpu_has_native_bf16

        a.bf16 = torch.cuda.is_available() or cpu_has_native_bf16()

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    kn = tuple(int(v) for v in a.kn.split(","))
    crop = tuple(int(v) for v in a.crop.split(","))
    pcrop = tuple(int(v) for v in a.pretrain_crop.split(","))
    torch.set_num_threads(a.threads)
    logf = open(out / "log.txt", "a", buffering=1)

    def log(msg: str) -> None:
        line = time.strftime("%H:%M:%S ") + msg
        print(line, flush=True)
        logf.write(line + "\n")

    log("command: " + " ".join(sys.argv))
    d = load_data(Path(a.data), isbi_down=a.isbi_down)
    log("data: " + ", ".join(f"{k} {v.shape}" for k, v in d.items()))
    plan_path = out / "plan.json"
    plan = json.loads(plan_path.read_text()) if plan_path.is_file() else {}

    # ---------------- pretraining
    pre_ck = out / "pretrain.pt"
    init = read_checkpoint(a.init_from) if a.init_from else None
    if init is not None:
        plan.setdefault("initialized_from", {"path": str(a.init_from), "iters": init["iters"],
                                             "metadata": init.get("metadata", {})})
    if a.pretrain_iters > 0 and init is None and not plan.get("pretrain_done"):
        resume = pre_ck if pre_ck.is_file() else None
        aug = AugmentConfig(zoom=0.5, zoom_range=(0.7, 1.4))
        r = pretrain([d["unl"], d["a_raw"], d["isbi"]], kn=kn, iterations=a.pretrain_iters,
                     batch_size=a.pretrain_batch, mixed_precision=a.bf16,
                     crop=pcrop, lr=a.lr, augment=aug, weights=[0.5, 0.25, 0.25], checkpoint=pre_ck,
                     checkpoint_every=25, resume=resume, seed=a.seed, threads=a.threads,
                     time_limit_s=a.pretrain_minutes * 60, log=log)
        plan.update(pretrain_done=True, pretrain_iters=r.iterations,
                    pretrain_wall_s=plan.get("pretrain_wall_s", 0) + r.wall_time_s)
        plan_path.write_text(json.dumps(plan, indent=1))
        log(f"pretraining done: {r.iterations} iterations")

    # ---------------- finetuning
    vols = [TrainVolume(d["a_raw"], d["a_lab"], weight=1 - a.isbi_weight - a.c_weight, name="fib25_a")]
    if a.c_weight > 0:
        if "c_raw" not in d:
            raise SystemExit("--c-weight needs training_data/fib25_c_*.tif (scripts/gather_training_data.py)")
        vols.append(TrainVolume(d["c_raw"], d["c_lab"], weight=a.c_weight, name="fib25_c"))
    if a.isbi_weight > 0:
        vols.append(TrainVolume(d["isbi"], d["isbi_lab"], z_affinity=False, weight=a.isbi_weight, name="isbi2012"))
    if "finetune_iters" not in plan:
        if a.finetune_iters == "auto":
            sec = time_step(kn, crop, a.batch, vols, a.threads)
            plan["finetune_iters"] = max(50, int(a.finetune_minutes * 60 / (sec * 1.08)))
            log(f"measured {sec:.2f} s/step -> {plan['finetune_iters']} finetune iterations")
        else:
            plan["finetune_iters"] = int(a.finetune_iters)
        plan_path.write_text(json.dumps(plan, indent=1))
    ft_ck = out / "finetune.pt"
    if not plan.get("finetune_done"):
        model, resume = None, None
        if ft_ck.is_file():
            resume = ft_ck
        elif init is not None:
            model = mnet_from_state_dict(init["model_weights"])
            log(f"finetuning starts from {a.init_from} (iteration {init['iters']})")
        else:
            model = build_mnet(kn)
            if a.pretrain_iters > 0 and pre_ck.is_file():
                names = transfer_encoder(pre_ck, model)
                log(f"transferred {len(names)} pretrained encoder tensors")
        aug = AugmentConfig.robust() if a.augment == "robust" else AugmentConfig(zoom=0.3, zoom_range=(0.75, 1.33))
        prev = plan.get("initialized_from", {}).get("metadata", {})
        names = ["fib25_a (3D ids)"] + (["fib25_c (3D ids)"] if a.c_weight > 0 else [])
        meta = {"name": "default", "voxel_size_nm": [a.voxel_size] * 3, "augment": a.augment,
                "pretrained": bool(prev.get("pretrained", a.pretrain_iters > 0)),
                "pretrain_iters": plan.get("pretrain_iters", prev.get("pretrain_iters", 0)),
                "training_data": ", ".join(names) + f", isbi2012 {a.isbi_down}x-downsampled xy (2D membranes, "
                                 "z affinity masked)",
                "validation_data": "fib25_b"}
        r = finetune(model, volumes=vols, val_image=d["b_raw"], val_labels=d["b_lab"],
                     iterations=plan["finetune_iters"], batch_size=a.batch, crop=crop, lr=a.lr, min_lr=1e-5,
                     schedule="cosine", warmup=a.warmup, augment=aug, amp_sources=[d["unl"], d["isbi"], d["a_raw"]],
                     checkpoint=ft_ck, checkpoint_every=25, keep_every=a.keep_every,
                     validate_every=a.validate_every, resume=resume, seed=a.seed, threads=a.threads,
                     time_limit_s=a.finetune_minutes * 60 * (1.0 if a.time_schedule else 1.15),
                     time_schedule=a.time_schedule, metadata=meta, log=log,
                     balance=a.balance, ema_decay=a.ema, mixed_precision=a.bf16)
        plan.update(finetune_done=True, finetune_iters_done=r.iterations,
                    finetune_wall_s=plan.get("finetune_wall_s", 0) + r.wall_time_s)
        plan_path.write_text(json.dumps(plan, indent=1))
        log(f"finetuning done: {r.iterations} iterations, best {r.best_score}")
    select_and_export(out, d, plan, a, log)
    return 0


def select_and_export(out: Path, d: dict, plan: dict, a, log) -> None:
    """Score candidates on fib25_b (best validated, final, average of the last kept checkpoints); export the best."""
    thresholds = tuple(np.round(np.arange(0.05, 1.0, 0.05), 3))
    cands = {}
    for name in ("finetune_best.pt", "finetune.pt", "finetune_ema.pt"):
        if (out / name).is_file():
            ck = read_checkpoint(out / name)
            cands[name] = (ck["model_weights"], ck["iters"], ck["metadata"])
    kept = sorted(out.glob("finetune_iter*.pt"))[-a.average_last:] if a.average_last > 1 else []
    if len(kept) > 1:
        cks = [read_checkpoint(p) for p in kept]
        cands[f"average of {', '.join(p.stem.split('_iter')[-1] for p in kept)}"] = (
            average_state_dicts([c["model_weights"] for c in cks]), cks[-1]["iters"],
            dict(cks[-1]["metadata"], averaged_checkpoints=[p.name for p in kept]))
    scores = {}
    for name, (sd, iters, meta) in cands.items():
        v = validate(mnet_from_state_dict(sd), d["b_raw"], d["b_lab"], thresholds=thresholds)
        v.pop("vi_parts", None)
        scores[name] = v
        log(f"candidate {name} (iteration {iters}): {v}")
    key = lambda n: scores[n].get("vi", scores[n]["val_loss"])  # noqa: E731
    pick = min(scores, key=key)
    sd, iters, meta = cands[pick]
    plan.update(exported_from=pick, exported_iters=iters, exported_score=scores[pick],
                candidates={n: scores[n] for n in scores})
    (out / "plan.json").write_text(json.dumps(plan, indent=1, default=str))
    if a.export:
        meta = dict(meta, name="default", iters=iters, selected=pick, fib25_b_validation=scores[pick],
                    pretrain_iters=plan.get("pretrain_iters", 0), finetune_iters=plan.get("finetune_iters_done"),
                    pretrain_wall_s=round(plan.get("pretrain_wall_s", 0)),
                    finetune_wall_s=round(plan.get("finetune_wall_s", 0)))
        meta.pop("best_score", None)
        write_checkpoint(mnet_from_state_dict(sd), WEIGHTS, iters, meta, half=True)
        log(f"exported {pick} (iteration {iters}) to {WEIGHTS}")


def average_state_dicts(sds: list) -> dict:
    """Element-wise mean of several state dicts of the same architecture."""
    return {k: (sum(sd[k].float() for sd in sds) / len(sds)) if sds[0][k].is_floating_point() else sds[-1][k]
            for k in sds[0]}


if __name__ == "__main__":
    raise SystemExit(main())
