"""Step 4 of the SegNeuron dock: export a labels layer and score it against a ground truth."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication, QFileDialog, QMessageBox

from ..tta import DEFAULT_TTA
from ._common import cli_command, placeholder_path
from . import _runner  # its notify_* called through the module, so tests can collect them


def merge_hint(scores, tta: Any = DEFAULT_TTA, scoring: Optional[str] = None) -> str:
    """A next step when merges dominate the error (what a user can change without training); ``tta``:
    the Flips setting the prediction used (min is suggested when it was not); ``scoring``: the edge
    score the segmentation used (median-all is suggested after median)."""
    if scores.vi_merge >= 0.2 and scores.vi_merge >= 2 * scores.vi_split:
        flips = ("" if tta == "min" else ", or predict again with Advanced settings ▸ Flips ▸ min (a boundary "
                 "any flipped view sees stays)")
        edge = (", or set Edge score to median-all (a contact must be bright along most of its length, not "
                "at one voxel)" if scoring == "median" else "")
        return f" <b>Mostly merges:</b> move the merge slider left{edge}{flips}."
    return ""


class ExportStep:
    """Export & evaluate methods of the SegNeuron dock (mixed into :class:`SegNeuronWidget`; it uses
    the dock's ``labels_combo``, ``gt_combo``, ``runner``, ``status_label``, ``eval_label``, ``tta``, ``viewer``)."""

    def ask_overwrite(self, path: str) -> bool:
        """Ask before replacing a file (tests monkeypatch this)."""
        answer = QMessageBox.question(
            self, "Replace file?", f"{path} already exists.\nReplace it?",
            QMessageBox.Yes | QMessageBox.No, QMessageBox.No,
        )
        return answer == QMessageBox.Yes

    def _export_clicked(self) -> None:
        layer = self.labels_combo.value()
        if layer is None:
            self.runner.show_error("Choose the segmentation to export under '4. Export & evaluate ▸ Labels' (or Segment first)")
            return
        suggestion = f"{layer.name.replace(' ', '_')}.tif"
        path, selected = QFileDialog.getSaveFileName(
            self, "Export labels", suggestion, "TIFF (*.tif *.tiff);;Zarr (*.zarr)",
            options=QFileDialog.DontConfirmOverwrite,
        )
        if not path:
            return
        if not path.lower().endswith((".tif", ".tiff", ".zarr")):
            path += ".zarr" if "zarr" in selected.lower() else ".tif"
        self.export(path)

    def export(self, path: str, layer=None) -> bool:
        """Save ``layer`` (default: the selected labels) to ``path`` (.tif or .zarr); asks before replacing."""
        layer = layer or self.labels_combo.value()
        if layer is None:
            self.runner.show_error("Choose the segmentation to export under '4. Export & evaluate ▸ Labels' (or Segment first)")
            return False
        path = str(path)
        if not path.lower().rstrip("/").endswith((".tif", ".tiff", ".zarr")):
            self.runner.show_error(f"Export to .tif or .zarr, not '{Path(path).suffix or path}'")
            return False
        if Path(path).exists() and not self.ask_overwrite(path):
            self.status_label.setText("Export cancelled: the existing file was kept.")
            return False
        from .writer import write_labels

        meta = {"name": layer.name, "scale": layer.scale, "translate": layer.translate, "metadata": dict(layer.metadata)}
        prov = meta["metadata"].get("segneuron")
        if prov:
            prov = dict(prov)
            prov["output"] = path
            prov["cli"] = cli_command(prov, output=path)
            meta["metadata"]["segneuron"] = prov
        data = np.asarray(layer.data)

        def work(progress, cancel):
            progress(0, 1, f"writing {Path(path).name}")
            write_labels(path, data, meta)
            edits = (prov or {}).get("proofreading")
            if edits:  # the edit log beside the labels: `segment --edits` replays it
                from ..atomic import atomic_output

                with atomic_output(Path(path.rstrip("/") + ".edits.json")) as tmp:
                    Path(tmp).write_text(json.dumps(edits, indent=1))
            progress(1, 1, "saved")
            return path

        def done(p):
            _runner.notify_info(f"Saved '{layer.name}' to {p}")

        return self.runner.start("Export", work, done) is not None

    def copy_cli_command(self) -> Optional[str]:
        layer = self.labels_combo.value()
        prov = (layer.metadata.get("segneuron") if layer is not None else None) or (
            self.segmentation.provenance if self.segmentation is not None else None
        )
        if not prov or not prov.get("weights"):
            self.runner.show_error("Select a labels layer made by SegNeuron (Segment or Preview) to copy its command")
            return None
        cmd = cli_command(prov)
        QApplication.clipboard().setText(cmd)
        if prov.get("source_path"):
            _runner.notify_info(f"Copied to the clipboard: {cmd}")
        else:
            stand_in = placeholder_path(prov.get("source_image"))
            _runner.notify_warning(f"Copied to the clipboard: {cmd}\n'{prov.get('source_image')}' was not opened from a file: "
                           f"replace {stand_in} with the stack's path (save it with File ▸ Save Selected Layers).")
        return cmd

    def evaluate(self) -> None:
        seg_layer, gt_layer = self.labels_combo.value(), self.gt_combo.value()
        if seg_layer is None or gt_layer is None:
            self.runner.show_error("Evaluate needs two labels layers: a segmentation and a ground truth (e.g. File ▸ Open Sample ▸ SegNeuron ▸ ground truth)")
            return
        if seg_layer is gt_layer:
            self.runner.show_error("Pick different layers for the segmentation and the ground truth")
            return
        gt_data = gt_layer.data
        region = (seg_layer.metadata.get("segneuron") or {}).get("region")
        if region and tuple(seg_layer.data.shape) != tuple(gt_data.shape):
            # a preview: score it against the same region of the full-size ground truth
            box = tuple(slice(a, b) for a, b in zip(region["start"], region["stop"]))
            if len(box) == gt_data.ndim and all(b.stop <= n for b, n in zip(box, gt_data.shape)):
                gt_data = gt_data[box]
        if tuple(seg_layer.data.shape) != tuple(gt_data.shape):
            self.runner.show_error(
                f"'{seg_layer.name}' {tuple(seg_layer.data.shape)} and '{gt_layer.name}' {tuple(gt_layer.data.shape)} "
                "have different shapes; evaluate a full-size segmentation (not a preview) against its ground truth"
            )
            return
        seg_data, gt_data = np.asarray(seg_layer.data), np.asarray(gt_data)

        def work(progress, cancel):
            from ..calibration import sections_only
            from ..metrics import evaluate_sections
            from .. import segmentation

            progress(0, 1, "comparing with the ground truth")
            if not sections_only(gt_data):
                scores, pieces = segmentation.evaluate(seg_data, gt_data), None
            else:  # 2D truth: scored section by section, by both rules
                scores = evaluate_sections(seg_data, gt_data, rule="segments")
                pieces = evaluate_sections(seg_data, gt_data, rule="pieces")
            progress(1, 1, "done")
            return scores, pieces

        def done(result):
            self.show_scores(seg_layer.name, gt_layer.name, *result)

        self.runner.start("Evaluate", work, done)

    def _made_with(self, layer_name: str) -> tuple[Any, Optional[str]]:
        """The Flips setting and edge score a labels layer was made with (its provenance); the Flips
        box's current choice and None where the layer does not say."""
        layer = next((lay for lay in self.viewer.layers if lay.name == layer_name), None)
        prov = (getattr(layer, "metadata", None) or {}).get("segneuron") or {}
        pred = prov.get("predict") if isinstance(prov.get("predict"), dict) else {}
        seg = prov.get("segment") if isinstance(prov.get("segment"), dict) else {}
        tta = pred["tta"] if "tta" in pred else self.tta.currentData()
        return tta, seg.get("scoring")

    def show_scores(self, seg_name, gt_name, scores, pieces=None) -> None:
        """Show the scores; ``pieces``: the same by connected pieces, when the truth is 2D."""
        self.scores = {"vi_split": scores.vi_split, "vi_merge": scores.vi_merge, "arand": scores.arand}
        self.eval_label.setText(
            f"<b>{seg_name}</b> vs <b>{gt_name}</b><br>"
            f"VI split {scores.vi_split:.3f} · VI merge {scores.vi_merge:.3f} · VI {scores.vi:.3f}<br>"
            f"ARAND {scores.arand:.3f}<br><small>Lower is better. Split = over-segmentation, merge = "
            "under-segmentation; ground-truth 0 is ignored, unlabelled voxels of the segmentation "
            "are filled from the nearest segment."
            + (" The ground truth is 2D (no id spans two sections): scored section by section. By connected "
               f"pieces (folds free, merges made only through z unseen): VI {pieces.vi:.3f}, ARAND {pieces.arand:.3f}."
               if pieces is not None else "")
            + merge_hint(scores, *self._made_with(seg_name))
            + "</small>"
        )
        QTimer.singleShot(0, self._reveal_scores)

    def _reveal_scores(self) -> None:
        """Scroll the dock so the scores (at its bottom) are in view, once they are laid out."""
        try:
            body = self._scroll.widget()
            body.layout().activate()  # lay the new text out now, so its height is known
            body.adjustSize()
            self._scroll.ensureWidgetVisible(self.eval_label, 0, 8)
        except RuntimeError:  # the dock was closed meanwhile
            pass
