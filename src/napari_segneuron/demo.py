"""``python -m napari_segneuron.demo``: SegNeuron on the bundled FIB-25 sample.

With a display, napari opens with the sample (EM + ground truth) loaded, the SegNeuron
and training docks docked and the default model loaded: press "Predict whole image",
then "Segment", then move the merge slider.

Without a display (or with ``--headless``), the same pipeline runs without a window:
predict -> agglomerate -> labels at the default threshold -> scores against the ground
truth, and writes to ``demo_out/``: ``fib25_labels.tif`` (with provenance),
``fib25_prediction.zarr``, ``scores.json`` and ``overview.png`` (EM, boundary prediction,
segmentation and ground truth of the middle slice).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def has_display() -> bool:
    if sys.platform.startswith(("win", "darwin")):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


# -- overview picture (numpy + Pillow; no matplotlib) ----------------------------------
def label_colors(labels: np.ndarray, seed: int = 3) -> np.ndarray:
    """RGB image with one random colour per id (0 = black)."""
    ids = np.unique(labels)
    rng = np.random.default_rng(seed)
    lut_colors = rng.integers(60, 256, size=(len(ids), 3)).astype(np.uint8)
    lut_colors[ids == 0] = 0
    return lut_colors[np.searchsorted(ids, labels)]


def _grey(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img, dtype=np.float32)
    lo, hi = np.percentile(img, (1, 99))
    g = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    return (np.stack([g] * 3, -1) * 255).astype(np.uint8)


def overview_png(path, raw_slice, boundary_slice, seg_slice, gt_slice=None, title: str = "", zoom: int = 3) -> Path:
    from PIL import Image, ImageDraw

    panels = [("EM", _grey(raw_slice)), ("boundaries (1 - mean affinity)", _grey(boundary_slice))]
    overlay = (0.45 * _grey(raw_slice) + 0.55 * label_colors(seg_slice)).astype(np.uint8)
    panels.append(("SegNeuron segmentation", overlay))
    if gt_slice is not None:
        panels.append(("ground truth", (0.45 * _grey(raw_slice) + 0.55 * label_colors(gt_slice, 5)).astype(np.uint8)))
    h, w = raw_slice.shape
    pad, head = 8, 20
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    title_h = 20 if title else 0
    canvas = Image.new(
        "RGB", (cols * (w * zoom + pad) + pad, title_h + rows * (h * zoom + head) + pad), (24, 24, 28)
    )
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 5), title, fill=(235, 235, 235))
    for i, (name, rgb) in enumerate(panels):
        r, c = divmod(i, cols)
        x = pad + c * (w * zoom + pad)
        y = title_h + r * (h * zoom + head) + head
        canvas.paste(Image.fromarray(rgb).resize((w * zoom, h * zoom), Image.NEAREST), (x, y))
        draw.text((x, y - 15), name, fill=(220, 220, 220))
    path = Path(path)
    canvas.save(path)
    return path


# -- headless pipeline --------------------------------------------------------------------
def run_headless(out_dir="demo_out", weights: str = "default", device=None, threshold=None, quiet=False) -> dict:
    from . import __version__, io, segmentation
    from .cli.common import TerminalProgress
    from ._model import load_named
    from .samples import load_labels, load_raw
    from .inference import DEFAULT_TTA, Predictor

    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    raw, gt = load_raw(), load_labels()
    say(f"sample: FIB-25 crop {raw.shape} {raw.dtype}; weights: {weights}")
    t0 = time.perf_counter()
    model = load_named(weights, device=device)
    say(f"model: MNet kn={model.info['kn']}, {model.info['n_parameters'] / 1e6:.2f} M parameters on {model.info['device']}")
    bar = TerminalProgress("predict")
    aff, fg = Predictor(model, device=device, tta=DEFAULT_TTA).predict(raw, progress=None if quiet else bar)
    bar.close()
    t_pred = time.perf_counter() - t0
    bar = TerminalProgress("agglomerate")
    fg_threshold = segmentation.foreground_threshold_for(model)  # what the weights declare
    agg = segmentation.agglomerate(aff, fg, fg_threshold=fg_threshold, progress=None if quiet else bar)
    bar.close()
    t = segmentation.DEFAULT_THRESHOLD if threshold is None else float(threshold)
    labels = agg.labels(t)
    t_total = time.perf_counter() - t0
    scores = segmentation.evaluate(labels, gt)
    provenance = {
        "plugin": "napari-segneuron", "plugin_version": __version__, "step": "demo",
        "source_image": "fib25 EM (napari-segneuron sample)",
        "weights": {"name": model.info["name"], "sha256": model.info["sha256"]},
        "segment": {"threshold": t, "fg_threshold": fg_threshold, "min_size": segmentation.DEFAULT_MIN_SIZE,
                    "membrane_fill": segmentation.DEFAULT_MEMBRANE_FILL},
    }
    io.write_labels(out / "fib25_labels.tif", labels, metadata={"segneuron": provenance}, overwrite=True)
    io.write_prediction(out / "fib25_prediction.zarr", aff, fg, metadata={"segneuron": provenance}, overwrite=True)
    z = raw.shape[0] // 2
    boundary = 1.0 - aff[1:, z].mean(0)
    overview_png(
        out / "overview.png", raw[z], boundary, labels[z], gt[z],
        title=f"SegNeuron demo, FIB-25 sample slice z={z}: VI {scores.vi:.3f} (split {scores.vi_split:.3f}, "
              f"merge {scores.vi_merge:.3f}), ARAND {scores.arand:.3f}, threshold {t:g}",
    )
    result = {
        "weights": model.info["name"], "sha256": model.info["sha256"], "threshold": t,
        "n_segments": int(agg.n_segments(t)), "vi_split": scores.vi_split, "vi_merge": scores.vi_merge,
        "vi": scores.vi, "arand": scores.arand, "seconds_predict": round(t_pred, 2),
        "seconds_total": round(t_total, 2), "note": "scored on the crop the default model was trained on; not a held-out result",
    }
    (out / "scores.json").write_text(json.dumps(result, indent=2))
    say(f"wrote {out}/fib25_labels.tif, fib25_prediction.zarr, overview.png, scores.json")
    say(f"{result['n_segments']} segments; VI {scores.vi:.3f} (split {scores.vi_split:.3f}, merge {scores.vi_merge:.3f}), "
        f"ARAND {scores.arand:.3f} (training crop; see the README for held-out numbers)")
    return result


# -- GUI ----------------------------------------------------------------------------------
def open_viewer(weights: str = "default", show: bool = True, load_model: bool = True):
    """A napari viewer with the sample, both docks docked and (by default) the model loading."""
    import napari

    viewer = napari.Viewer(title="SegNeuron demo", show=show)
    viewer.open_sample("napari-segneuron", "fib25_both")
    _, dock = viewer.window.add_plugin_dock_widget("napari-segneuron", "SegNeuron")
    _, train = viewer.window.add_plugin_dock_widget("napari-segneuron", "SegNeuron training", tabify=True)
    # keep the main dock in front
    try:
        dock.parent().raise_()
    except Exception:  # pragma: no cover
        pass
    if load_model:
        dock.weights_combo.setCurrentText(weights)
        dock.load_weights()
    return viewer, dock, train


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m napari_segneuron.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--headless", action="store_true", help="no window even if a display exists")
    parser.add_argument("--out", default="demo_out", help="output folder of the headless run (default demo_out/)")
    parser.add_argument("--weights", default="default", help="weights name or checkpoint file (default: bundled)")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: auto)")
    parser.add_argument("--threshold", type=float, default=None, help="merge threshold (default: the plugin's)")
    args = parser.parse_args(argv)
    if args.headless or not has_display():
        if not args.headless:
            print("No display found: running the demo headless (see --help).", file=sys.stderr)
        try:
            run_headless(args.out, args.weights, args.device, args.threshold)
        except ValueError as exc:  # InputError / WeightsError: messages written for the user
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    import napari

    open_viewer(args.weights)
    napari.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
