"""Regenerate the README screenshots from real runs of the docks (works under Xvfb).

    .venv/bin/python scripts/make_screenshots.py [--weights default] [--out docs/images]

Without a display it starts a virtual one (pyvirtualdisplay + Xvfb, as pytest-xvfb does).
Writes:
  docs/images/after_predict.png   the SegNeuron dock on the FIB-25 sample after Predict
  docs/images/after_segment.png   after Segment + Evaluate (labels over the EM, scores in the dock)
  docs/images/training_dock.png   the training dock after a short finetune (loss curve)
  docs/images/calibrate_dock.png  Calibrate on a painted block of the sample typed in at the wrong voxel size
  docs/images/magnify_auto.png    Magnify 'auto' on the sample typed in at the wrong voxel size (no labels)
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wait_for(app, widget, timeout=1800.0):
    t0 = time.time()
    while widget.runner.busy:
        app.processEvents()
        time.sleep(0.02)
        if time.time() - t0 > timeout:
            raise TimeoutError(f"{widget.runner.task} did not finish in {timeout} s")
    for _ in range(20):
        app.processEvents()
        time.sleep(0.01)
    out = widget.runner.last_outcome
    if out is not None and out.status != "ok":
        raise RuntimeError(f"{widget.status_label.text()}: {out.error!r}")


def settle(app, n=30):
    for _ in range(n):
        app.processEvents()
        time.sleep(0.02)


def close_toasts(viewer) -> None:
    """Hide notification pop-ups (e.g. napari's PyQt5 deprecation notice) before a screenshot."""
    try:
        from napari._qt.dialogs.qt_notification import NapariQtNotification

        for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
            toast.close()
    except Exception:
        pass


def save(viewer, path: Path) -> None:
    from PIL import Image

    close_toasts(viewer)
    from qtpy.QtWidgets import QApplication

    for _ in range(10):
        QApplication.processEvents()
        time.sleep(0.02)
    img = viewer.screenshot(canvas_only=False, flash=False)
    Image.fromarray(img).save(path, optimize=True)
    print(f"wrote {path} {img.shape[1]}x{img.shape[0]}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="default", help="weights name or checkpoint file")
    parser.add_argument("--out", default=str(ROOT / "docs" / "images"))
    parser.add_argument("--size", default="1600x1000", help="window size WxH")
    parser.add_argument("--train-iterations", type=int, default=30)
    parser.add_argument("--no-training", action="store_true")
    parser.add_argument("--calibrate-only", action="store_true", help="only calibrate_dock.png")
    parser.add_argument("--auto-only", action="store_true", help="only magnify_auto.png")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))

    display = None
    if not os.environ.get("DISPLAY"):
        from pyvirtualdisplay import Display

        display = Display(visible=False, size=(width, height), color_depth=24)
        display.start()
    try:
        return _run(args, width, height)
    finally:
        import napari
        from qtpy.QtWidgets import QApplication

        napari.Viewer.close_all()  # before the virtual display goes: Qt must not outlive its X server
        app = QApplication.instance()
        if app is not None:
            app.processEvents()
            app.quit()
        if display is not None:
            display.stop()


def _run(args, width, height) -> int:
    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    from napari_segneuron import segmentation

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(title="napari-segneuron", show=True)
    app = QApplication.instance()
    viewer.window._qt_window.resize(width, height)
    viewer.open_sample("napari-segneuron", "fib25_both")
    gt = viewer.layers["fib25 ground truth"]
    gt.visible = False
    # the docks as Plugins > SegNeuron opens them (each gets napari's proxy of the viewer)
    _, dock = viewer.window.add_plugin_dock_widget("napari-segneuron", "SegNeuron")
    settle(app)

    if args.calibrate_only:
        return _calibrate_shot(args, viewer, app, dock, out)
    if args.auto_only:
        return _auto_shot(args, viewer, app, dock, out)

    # 1. Model
    if Path(args.weights).is_file():
        dock.weights_combo.setCurrentText("Checkpoint file…")
        dock.weights_path.setText(str(args.weights))
    else:
        dock.weights_combo.setCurrentText(args.weights)
    dock.device_combo.setCurrentText("auto")
    dock.load_weights()
    wait_for(app, dock)
    # 2. Predict
    viewer.dims.set_point(0, 25)
    dock.predict()
    wait_for(app, dock)
    viewer.layers.selection.active = viewer.layers["fib25 EM affinities"]
    settle(app)
    save(viewer, out / "after_predict.png")

    # 3. Segment, move the slider, 4. Evaluate
    viewer.layers["fib25 EM affinities"].visible = False
    dock.segment()
    wait_for(app, dock)
    dock.set_threshold(segmentation.DEFAULT_THRESHOLD)
    settle(app)
    dock.gt_combo.set_value(gt)
    dock.evaluate()
    wait_for(app, dock)
    seg = viewer.layers["fib25 EM segmentation"]
    viewer.layers.selection.active = seg
    settle(app)
    save(viewer, out / "after_segment.png")
    lat = dock.slider_latency_ms
    print(f"scores: {dock.scores}; slider updates (ms): {np.round(lat, 1).tolist()}")

    # training dock
    if not args.no_training:
        _, train = viewer.window.add_plugin_dock_widget("napari-segneuron", "SegNeuron training", tabify=True)
        train.image_combo.set_value(viewer.layers["fib25 EM"])
        train.labels_combo.set_value(gt)
        train.settings.iterations.value = args.train_iterations
        train.settings.crop.value = (16, 64, 64)
        train.settings.batch_size.value = 1
        import tempfile

        train.settings.save_to.value = str(Path(tempfile.mkdtemp()) / "finetuned.pt")
        train.train()
        wait_for(app, train)
        settle(app)
        save(viewer, out / "training_dock.png")
    viewer.close()
    return 0


def _calibrate_shot(args, viewer, app, dock, out: Path) -> int:
    """A user types 10 nm for the sample (it is ~20 nm), so the plugin shrinks it 2x; they paint
    every neuron of one block and press Calibrate in the training dock."""
    import numpy as np

    dock.weights_combo.setCurrentText(args.weights)
    dock.load_weights()
    wait_for(app, dock)
    dock.voxel_field.set_value((10.0, 10.0, 10.0))
    dock.magnify.setValue(1.0)  # by hand, so Calibrate has the damage to undo ('auto' would find ~2 itself)
    gt = viewer.layers["fib25 ground truth"]
    painted = np.zeros_like(gt.data)
    box = (slice(5, 45), slice(0, 100), slice(40, 160))
    painted[box] = gt.data[box]
    viewer.add_labels(painted, name="painted block")
    _, train = viewer.window.add_plugin_dock_widget("napari-segneuron", "SegNeuron training", tabify=True)
    train.image_combo.set_value(viewer.layers["fib25 EM"])
    train.labels_combo.set_value(viewer.layers["painted block"])
    settle(app)
    train.calibrate()
    wait_for(app, train)
    wait_for(app, dock)
    viewer.layers["painted block"].visible = False
    for name in ("fib25 EM affinities (calibrated)", "fib25 EM foreground (calibrated)"):
        if name in viewer.layers:
            viewer.layers[name].visible = False
    viewer.dims.set_point(0, 25)
    viewer.layers.selection.active = viewer.layers["fib25 EM segmentation (calibrated)"]
    settle(app)
    save(viewer, out / "calibrate_dock.png")
    print(train.last_calibration.summary())
    viewer.close()
    return 0


def _auto_shot(args, viewer, app, dock, out: Path) -> int:
    """A user types 10 nm for the sample (it is ~20 nm) and leaves Magnify at 'auto': Predict
    estimates the magnification from the image; Segment + Evaluate show the result."""
    from napari_segneuron import segmentation

    dock.weights_combo.setCurrentText(args.weights)
    dock.load_weights()
    wait_for(app, dock)
    dock.voxel_field.set_value((10.0, 10.0, 10.0))
    viewer.dims.set_point(0, 25)
    dock.predict()
    wait_for(app, dock)
    viewer.layers["fib25 EM affinities"].visible = False
    dock.segment()
    wait_for(app, dock)
    dock.set_threshold(segmentation.DEFAULT_THRESHOLD)
    dock.gt_combo.set_value(viewer.layers["fib25 ground truth"])
    dock.evaluate()
    wait_for(app, dock)
    viewer.layers.selection.active = viewer.layers["fib25 EM segmentation"]
    settle(app)
    save(viewer, out / "magnify_auto.png")
    print(f"magnification {dock.magnification()}; scores {dock.scores}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
