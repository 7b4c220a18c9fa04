"""Proofread step: merge, split, undo/redo and mark-as-done on the segmentation's labels layer.

Thin glue over ``napari_segneuron.proofreading.Proofreader``: Ctrl+click two segments to merge
them, Shift+click two points of one segment to split it, Ctrl+Z / Ctrl+Shift+Z to undo / redo; the
*Selected segment threshold* slider moves down the merge hierarchy inside the last clicked segment only.
Every edit rewrites the labels layer's data in place and records the edit log in
``layer.metadata['segneuron']['proofreading']``.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QSlider, QVBoxLayout, QWidget

from ..proofreading import Proofreader

HELP = "Ctrl+click two segments: merge · Shift+click two points of one segment: split · Ctrl+Z / Ctrl+Shift+Z: undo / redo"


class ProofreadStep(QWidget):
    """Edits on the current segmentation (``get_segmentation()`` returns the SegNeuron dock's one)."""

    def __init__(self, viewer, get_segmentation: Callable[[], Any], parent=None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self._get = get_segmentation
        self.proofreader: Optional[Proofreader] = None
        self._agg = None
        self._layer = None
        self._merge_pick: list[int] = []
        self._split_pick: list[tuple[int, int, int]] = []
        self.selected: Optional[int] = None
        self.edit_ms: list[float] = []
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.help_label = QLabel(HELP)
        self.help_label.setWordWrap(True)
        lay.addWidget(self.help_label)
        row = QWidget()
        hl = QHBoxLayout(row)
        hl.setContentsMargins(0, 0, 0, 0)
        self.undo_button = QPushButton("Undo")
        self.redo_button = QPushButton("Redo")
        self.done_button = QPushButton("Mark as done")
        self.done_button.setToolTip("Lock the selected segment: no edit or threshold changes it again")
        for b, f in ((self.undo_button, self.undo), (self.redo_button, self.redo), (self.done_button, self.mark_done)):
            b.clicked.connect(f)
            hl.addWidget(b)
        lay.addWidget(row)
        srow = QWidget()
        sl = QHBoxLayout(srow)
        sl.setContentsMargins(0, 0, 0, 0)
        sl.addWidget(QLabel("Selected segment threshold"))
        self.segment_slider = QSlider(Qt.Horizontal)
        self.segment_slider.setRange(0, 100)
        self.segment_slider.setValue(100)
        self.segment_slider.setToolTip("Drag left to split the last clicked segment along its own merge history; "
                                       "other segments do not change")
        self.segment_slider.sliderReleased.connect(self.apply_segment_threshold)
        sl.addWidget(self.segment_slider)
        self.segment_value = QLabel("")
        sl.addWidget(self.segment_value)
        lay.addWidget(srow)
        self.count_label = QLabel("0 edits")
        lay.addWidget(self.count_label)
        viewer.bind_key("Control-Z", lambda v: self.undo(), overwrite=True)
        viewer.bind_key("Control-Shift-Z", lambda v: self.redo(), overwrite=True)

    # state ---------------------------------------------------------------------------
    def _ensure(self) -> Optional[Proofreader]:
        """The proofreader of the current segmentation (a new one when it changed)."""
        seg = self._get()
        if seg is None or seg.squeeze:
            self.count_label.setText("Segment a 3D volume first")
            return None
        if seg.agglomeration is not self._agg:
            t = (seg.provenance.get("segment") or {}).get("threshold")
            self.proofreader = Proofreader(seg.agglomeration, t)
            self._agg = seg.agglomeration
            seg.proofreader = self.proofreader
        if seg.layer is not self._layer:
            self._layer = seg.layer
            if self._on_click not in seg.layer.mouse_drag_callbacks:
                seg.layer.mouse_drag_callbacks.append(self._on_click)
            # the labels layer's own Ctrl+Z (paint undo) comes first when it is selected: ours on it
            seg.layer.bind_key("Control-Z", self._undo_key, overwrite=True)
            seg.layer.bind_key("Control-Shift-Z", self._redo_key, overwrite=True)
        return self.proofreader

    def _undo_key(self, layer) -> None:
        """Ctrl+Z on the segmentation: the last proofreading edit, else napari's paint undo."""
        if self.proofreader is not None and self.proofreader.edits:
            self.undo()
        else:
            layer.undo()

    def _redo_key(self, layer) -> None:
        if self.proofreader is not None and self.proofreader._redo:
            self.redo()
        else:
            layer.redo()

    def attach(self) -> None:
        """Hook the clicks onto the current segmentation's layer."""
        self._ensure()

    def _on_click(self, layer, event) -> None:
        mods = set(getattr(event, "modifiers", ()) or ())
        if not mods & {"Control", "Shift"}:
            return
        pos = np.round(layer.world_to_data(event.position)).astype(int)
        self.click(tuple(int(c) for c in pos[-3:]), "merge" if "Control" in mods else "split")

    def click(self, point: tuple[int, int, int], action: str) -> None:
        """One Ctrl+click ('merge') or Shift+click ('split') at the (z, y, x) voxel ``point``."""
        pr = self._ensure()
        if pr is None:
            return
        if not all(0 <= c < n for c, n in zip(point, pr.fragments.shape)):
            return
        sid = int(np.asarray(self._layer.data)[point])
        self.selected = sid or self.selected
        try:
            if action == "merge":
                if sid == 0:
                    return
                self._merge_pick.append(sid)
                if len(self._merge_pick) == 2:
                    a, b = self._merge_pick
                    self._merge_pick = []
                    if a != b:
                        self._apply(lambda: pr.merge(a, b))
            else:
                self._split_pick.append(point)
                if len(self._split_pick) == 2:
                    seeds, self._split_pick = self._split_pick, []
                    self._apply(lambda: pr.split(sid, seeds))
        except ValueError as exc:
            self.count_label.setText(str(exc))

    def _apply(self, edit: Callable[[], Any]) -> None:
        t0 = time.perf_counter()
        edit()
        self.refresh()
        self.edit_ms.append((time.perf_counter() - t0) * 1000)

    def refresh(self) -> None:
        """Write the proofreader's labels into the layer in place and record the edits."""
        pr, layer = self.proofreader, self._layer
        if pr is None or layer is None:
            return
        seg = self._get()
        if seg is not None:
            pr.set_threshold((seg.provenance.get("segment") or {}).get("threshold", pr.threshold))
        layer.data[...] = pr.labels()
        layer.refresh()
        meta = dict(layer.metadata.get("segneuron") or {})
        meta["proofreading"] = {"threshold": pr.threshold, "edits": list(pr.edits)}
        layer.metadata["segneuron"] = meta
        if seg is not None:
            seg.provenance = meta
        n = len(pr.edits)
        self.count_label.setText(f"{n} edit{'s' if n != 1 else ''}, {len(pr.locked())} done")

    def undo(self) -> None:
        if self._ensure() is not None:
            self._apply(self.proofreader.undo)

    def redo(self) -> None:
        if self._ensure() is not None:
            self._apply(self.proofreader.redo)

    def segment_threshold(self) -> float:
        """The selected segment's threshold the slider shows (a fraction of the global one)."""
        pr = self.proofreader
        top = pr.threshold if pr is not None else 1.0
        return round(top * self.segment_slider.value() / 100.0, 4)

    def apply_segment_threshold(self) -> None:
        """Cut the selected segment down its own merge history to the slider's threshold."""
        pr = self._ensure()
        if pr is None or not self.selected:
            self.count_label.setText("Click a segment first (Ctrl+click or Shift+click), then move the slider")
            return
        t = self.segment_threshold()
        self.segment_value.setText(f"{t:.3f}")
        try:
            self._apply(lambda: pr.set_segment_threshold(self.selected, t))
        except ValueError as exc:
            self.count_label.setText(str(exc))

    def mark_done(self) -> None:
        pr = self._ensure()
        if pr is None or not self.selected:
            self.count_label.setText("Click a segment first, then Mark as done")
            return
        try:
            self._apply(lambda: pr.lock(self.selected))
        except ValueError as exc:
            self.count_label.setText(str(exc))
