"""``napari-segneuron segment`` (predict if needed, then agglomerate) and ``evaluate`` (VI, ARAND)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from .common import (
    TerminalProgress,
    add_model_arguments,
    apply_roi,
    check_output_path,
    checked_volume,
    input_voxel_size,
    load_weights,
    magnify_of,
    make_predictor,
    resolve_fg_threshold,
    resolve_scoring_arg,
)
from ..io import InputError
from ..settings import SegmentSettings


def _unit_interval(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {v}")
    return v


def _non_negative_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def add_parser(subparsers) -> None:
    from ..metrics import BACKGROUND_MODES, DEFAULT_BACKGROUND, DEFAULT_SECTION_RULE, SECTION_RULES
    from ..segmentation import (
        ANISOTROPIC_SCORING, ANISOTROPY, AUTO_SCORING, BACKGROUND_MODES_AGG, DEFAULT_BACKGROUND_MODE,
        DEFAULT_FG_THRESHOLD, DEFAULT_MEMBRANE_FILL, DEFAULT_MIN_SIZE, DEFAULT_SCORING, DEFAULT_SMALL, DEFAULT_THRESHOLD, SCORING_FUNCTIONS,
        SMALL_SEGMENTS,
    )

    p = subparsers.add_parser(
        "segment",
        help="neuron labels from an EM stack (predict + agglomerate) or from a saved prediction",
        description="Agglomerate affinities with waterz, restricted to the predicted foreground, into neuron "
        "labels (0 = background). IN is either an EM stack (.tif/.zarr: the network predicts affinities and "
        "foreground first) or a prediction written by 'napari-segneuron predict' (.zarr with 'affinities' "
        "and 'foreground' arrays, or a 4-channel .tif).",
    )
    p.add_argument("input", metavar="IN", help="EM stack or saved prediction (.tif/.tiff/.zarr)")
    p.add_argument("-o", "--output", required=True, metavar="LABELS", help="output labels .tif or .zarr")
    g = p.add_argument_group("agglomeration")
    g.add_argument("--threshold", type=_unit_interval, default=DEFAULT_THRESHOLD, metavar="T",
                   help=f"waterz merge threshold in [0, 1]; higher merges more (default {DEFAULT_THRESHOLD})")
    g.add_argument("--fg-threshold", type=_unit_interval, default=None, metavar="F",
                   help="voxels with foreground probability below F are background (default: the value the "
                        f"weights declare, 0.75 for 'default'; {DEFAULT_FG_THRESHOLD} for weights that declare none)")
    g.add_argument("--min-size", type=_non_negative_int, default=DEFAULT_MIN_SIZE, metavar="N",
                   help=f"segments smaller than N voxels are merged or removed, see --small (default {DEFAULT_MIN_SIZE})")
    g.add_argument("--small", choices=SMALL_SEGMENTS, default=DEFAULT_SMALL,
                   help="small segments: 'merge' into the touching segment with the largest contact (pieces touching "
                        f"nothing become 0) or 'remove' (set to 0) (default {DEFAULT_SMALL})")
    g.add_argument("--no-foreground", action="store_true",
                   help="plain waterz: ignore the foreground prediction")
    g.add_argument("--background-mode", choices=BACKGROUND_MODES_AGG, default=DEFAULT_BACKGROUND_MODE,
                   help="'mask': agglomerate everything, then clear background voxels; 'cut': the same without "
                        "agglomerating background with itself (faster on noisy backgrounds); 'exclude': background "
                        f"leaves waterz's graph (lower thresholds work best) (default {DEFAULT_BACKGROUND_MODE})")
    g.add_argument("--membrane-fill", type=_non_negative_int, default=DEFAULT_MEMBRANE_FILL, metavar="N",
                   help="background voxels within N voxels of a neurite (the membranes between touching neurites) "
                        "join the neurite on their side of the membrane, so labels leave no gaps; wider background "
                        f"stays 0; 0 keeps every background voxel 0 (default {DEFAULT_MEMBRANE_FILL}, on the grid "
                        "the stack is agglomerated on: the model's when it is rescaled)")
    g.add_argument("--scoring", choices=[AUTO_SCORING, *sorted(SCORING_FUNCTIONS)], default=AUTO_SCORING,
                   help="edge score: 1 - median affinity, starting from the highest one along each contact (SegNeuron's; "
                        "keeps thin necks whole), 1 - median over the whole contact ('median-all': resists leaks "
                        "through a few bright voxels) or 1 - mean (waterz's default). Default 'auto': "
                        f"{ANISOTROPIC_SCORING} for serial sections (z voxel >= {ANISOTROPY:g}x the xy voxel), "
                        f"else {DEFAULT_SCORING}")
    g.add_argument("--save-prediction", metavar="PRED", default=None,
                   help="also write the network's prediction (.zarr or .tif) when IN is an EM stack")
    add_model_arguments(p)
    from .blockwise import add_blockwise_arguments

    add_blockwise_arguments(p)
    p.add_argument("--overwrite", action="store_true", help="replace LABELS (and PRED) if they exist")
    p.add_argument("--edits", metavar="EDITS", default=None,
                   help="proofreading edits (.json from Proofreader.save) to replay on the result")
    p.set_defaults(func=run_segment)

    e = subparsers.add_parser(
        "evaluate",
        help="VI (split/merge) and adapted Rand error of a segmentation against ground truth",
        description="Score SEG against GT (both label volumes of the same shape, .tif or .zarr). VI split = "
        "H(SEG|GT) (over-segmentation), VI merge = H(GT|SEG) (under-segmentation), in bits; ARAND = adapted "
        "Rand error. Ground-truth voxels labelled 0 are ignored. Ground truth labelled section by section (no id "
        "spans two z sections) is scored per section, by two rules (see --section-rule).",
    )
    e.add_argument("seg", metavar="SEG", help="segmentation labels")
    e.add_argument("gt", metavar="GT", help="ground-truth labels")
    e.add_argument("--background", choices=BACKGROUND_MODES, default=DEFAULT_BACKGROUND,
                   help="predicted background (SEG == 0): 'fill' = nearest segment's label, 'ignore' = leave "
                        "those voxels out, 'segment' = count 0 as one segment like skimage "
                        f"(default {DEFAULT_BACKGROUND})")
    e.add_argument("--no-ignore-gt", action="store_true", help="also score ground-truth voxels labelled 0")
    sections = e.add_mutually_exclusive_group()
    sections.add_argument("--per-section", dest="per_section", action="store_true", default=None,
                          help="score section by section (default when no ground-truth id spans two sections)")
    sections.add_argument("--3d", dest="per_section", action="store_false", help="score in 3D")
    e.add_argument("--section-rule", choices=SECTION_RULES, default=DEFAULT_SECTION_RULE,
                   help="per section: 'segments' = a segment's voxels in a section are one segment (merges made "
                        "through other sections count, and so does a neuron folding through the section); "
                        "'pieces' = its connected pieces against the ground truth's (folds free, merges made only "
                        f"through z unseen). Both are printed; this one is the main score (default "
                        f"{DEFAULT_SECTION_RULE})")
    e.add_argument("--json", action="store_true", help="print the scores as JSON")
    e.set_defaults(func=run_evaluate)


def _read_labels(path: str, name: str) -> np.ndarray:
    from ..io import read_volume

    data, _ = read_volume(path)
    arr = np.asarray(data)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InputError(f"The {name} {Path(path).name} must be a 3-D label volume (z, y, x), not {arr.shape}")
    if arr.dtype.kind not in "biu":
        raise InputError(f"The {name} {Path(path).name} holds {arr.dtype} values, not integer labels")
    return arr


def _is_prediction(path: str) -> bool:
    """A zarr group with 'affinities' and 'foreground', or a 4-channel 4-D tif."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"File not found: {p}")
    low = str(p).rstrip("/").lower()
    if low.endswith(".zarr"):
        import zarr

        try:
            node = zarr.open(str(p), mode="r")
        except Exception as err:
            raise InputError(f"Could not open {p.name} as zarr: {err}") from None
        return not isinstance(node, zarr.Array) and "affinities" in node
    if low.endswith((".tif", ".tiff")):
        import tifffile

        try:
            with tifffile.TiffFile(p) as tif:
                shape = tif.series[0].shape
        except Exception as err:
            raise InputError(f"Could not read {p.name} as a TIFF: {err}") from None
        return len(shape) == 4 and shape[0] == 4
    raise InputError(f"Unsupported file type {p.suffix!r}: use .tif/.tiff or .zarr")


class StageProgress:
    """Progress of segment's stages after predict, on stderr: a tqdm bar over the stages whose
    label names the current one (fed by ``agglomerate``'s progress callback for fragments and
    agglomeration), and one line per finished stage with its time."""

    STAGES = ("fragments", "agglomeration", "small-segment merging", "writing")
    #: agglomerate's progress messages -> stage
    _FROM_MESSAGE = (("fragments", "fragments"), ("waterz", "agglomeration"), ("preparing", "fragments"))

    def __init__(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=len(self.STAGES), desc="segment", unit="stage", file=sys.stderr, dynamic_ncols=True,
                        bar_format="{desc}: {n_fmt}/{total_fmt} stages |{bar}| {elapsed}")
        self.current: str | None = None
        self.started = 0.0
        self.times: dict[str, float] = {}

    def stage(self, name: str) -> None:
        """Start stage ``name`` (ends the current one)."""
        if name == self.current:
            return
        self.end()
        self.current, self.started = name, time.perf_counter()
        self.bar.set_description(f"segment: {name}")

    def end(self) -> None:
        if self.current is None:
            return
        took = time.perf_counter() - self.started
        self.times[self.current] = took
        self.bar.write(f"  {self.current}: {took:.1f} s", file=sys.stderr)
        self.bar.update(1)
        self.current = None

    def __call__(self, done: int, total: int, message: str = "") -> None:
        """``agglomerate``'s progress callback."""
        if "done" in message:
            return
        for needle, name in self._FROM_MESSAGE:
            if needle in message:
                self.stage(name)
                return

    def close(self) -> None:
        self.end()
        self.bar.close()


def run_segment(args: argparse.Namespace) -> int:
    from . import blockwise as _cli_blockwise

    if _cli_blockwise.wants_blockwise(args):  # --block / --scheduler
        return _cli_blockwise.run_segment(args)
    from .. import __version__
    from ..io import as_volume, read_metadata, read_prediction, read_volume, write_labels, write_prediction
    from ..segmentation import agglomerate

    check_output_path(args.output, args.overwrite)
    meta: dict = {"plugin_version": __version__, "source": str(args.input)}
    t0 = time.perf_counter()
    grid: dict = {}  # the model-grid prediction when the input was resampled
    if _is_prediction(args.input):
        aff, fg = read_prediction(args.input)
        if args.roi is not None:
            fg = apply_roi(fg, args.roi, meta)
            aff = aff[(slice(None),) + tuple(args.roi)]
        print(f"read prediction {args.input}: affinities {tuple(aff.shape)}", file=sys.stderr)
        meta["prediction"] = str(args.input)
        provenance = read_metadata(args.input)
        resolve_fg_threshold(args, provenance)
        resolve_scoring_arg(args, provenance.get("voxel_size_nm"))
    else:
        if args.save_prediction:
            check_output_path(args.save_prediction, args.overwrite)
        volume, voxel = read_volume(args.input)
        volume = as_volume(volume, name=args.input)
        volume = apply_roi(volume, args.roi, meta)
        volume = checked_volume(volume, name=args.input)
        model = load_weights(args.weights, args.device)
        predictor = make_predictor(args, model)
        print(f"{model.describe()} on {predictor.device}; volume {tuple(volume.shape)}", file=sys.stderr)
        voxel = input_voxel_size(args, voxel, predictor, volume)
        bar = TerminalProgress("predict")
        try:
            aff, fg = predictor.predict(volume, progress=bar, voxel_size=voxel, model_grid=grid)
        finally:
            bar.close()
        from .._model.info import ModelInfo

        meta.update(**ModelInfo.of(model).provenance(), inference=predictor.settings())
        resolve_fg_threshold(args, model)
        resolve_scoring_arg(args, voxel)
        if voxel:
            meta["voxel_size_nm"] = list(voxel)  # as predicted: the stack's own times --magnify
        meta["magnify"] = magnify_of(args)
        if getattr(args, "magnify_estimate", None) is not None:
            meta["magnify_estimate"] = args.magnify_estimate.record()
        if args.save_prediction:
            write_prediction(args.save_prediction, aff, fg, metadata=meta, overwrite=args.overwrite)
            print(f"wrote {args.save_prediction}", file=sys.stderr)
    t1 = time.perf_counter()
    # one-shot: waterz only needs to run up to the requested threshold. A resampled
    # prediction is agglomerated on the model's grid and the fragments carried back.
    seg_aff, seg_fg = (grid["affinities"], grid["foreground"]) if grid else (aff, fg)
    stages = StageProgress()
    try:
        stages.stage("fragments")
        settings = SegmentSettings.from_args(args)
        agg = agglomerate(
            seg_aff, seg_fg if settings.use_foreground else None, max_threshold=settings.threshold, worker=False,
            output_shape=aff.shape[1:] if grid else None, progress=stages, **settings.agglomerate_kwargs(),
        )
        if grid:
            meta["segmented_on_model_grid"] = list(grid["voxel_size"])
        stages.stage("small-segment merging")
        labels = agg.labels(args.threshold)
        n = agg.n_segments(args.threshold)  # labels are root-fragment ids, not 1..n
        if getattr(args, "edits", None):
            from ..proofreading import Proofreader

            pr = Proofreader.load(args.edits, agg)
            labels = pr.labels(args.threshold)
            n = int(np.count_nonzero(np.unique(pr.lookup_table(args.threshold))))
            meta.update(edits=str(args.edits), n_edits=len(pr.edits))
        t2 = time.perf_counter()
        meta.update(
            threshold=args.threshold, fg_threshold=None if args.no_foreground else args.fg_threshold,
            min_size=args.min_size, small=args.small, scoring=args.scoring,
            background_mode=None if args.no_foreground else args.background_mode,
            membrane_fill=None if args.no_foreground else args.membrane_fill,
            fragments=agg.info.get("fragments"), n_fragments=agg.n_fragments, segment=settings.provenance(),
            command=" ".join(["napari-segneuron"] + sys.argv[1:]),
        )
        stages.stage("writing")
        write_labels(args.output, labels, metadata=meta, overwrite=args.overwrite)
    finally:
        stages.close()
    print(
        f"wrote {args.output}: {n} segments, {100.0 * float((labels == 0).mean()):.1f}% background "
        f"(threshold {args.threshold}, fg threshold {args.fg_threshold}, min size {args.min_size}); "
        f"input {t1 - t0:.1f} s, agglomeration {t2 - t1:.1f} s",
        file=sys.stderr,
    )
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from ..calibration import sections_only
    from ..metrics import SECTION_RULES, evaluate, evaluate_sections

    seg = _read_labels(args.seg, "segmentation")
    gt = _read_labels(args.gt, "ground truth")
    if seg.shape != gt.shape:
        raise InputError(
            f"{Path(args.seg).name} {seg.shape} and {Path(args.gt).name} {gt.shape} have different shapes; "
            "crop them to the same region first"
        )
    per_section = sections_only(gt) if args.per_section is None else bool(args.per_section)
    ignore = () if args.no_ignore_gt else (0,)
    other = None
    if per_section:
        s = evaluate_sections(seg, gt, rule=args.section_rule, ignore_gt=ignore, background=args.background)
        other_rule = next(r for r in SECTION_RULES if r != args.section_rule)
        other = evaluate_sections(seg, gt, rule=other_rule, ignore_gt=ignore, background=args.background)
    else:
        s = evaluate(seg, gt, ignore_gt=ignore, background=args.background)
    if args.json:
        out = dict(vi_split=s.vi_split, vi_merge=s.vi_merge, vi=s.vi, arand=s.arand,
                   precision=s.precision, recall=s.recall, voxels=s.n_voxels,
                   background=args.background, ignore_gt_zero=not args.no_ignore_gt, per_section=per_section)
        if other is not None:
            out["section_rule"] = args.section_rule
            out[other_rule] = dict(vi_split=other.vi_split, vi_merge=other.vi_merge, vi=other.vi, arand=other.arand)
        print(json.dumps(out))
    else:
        print(f"VI split  {s.vi_split:.4f}   (H(SEG|GT): over-segmentation)")
        print(f"VI merge  {s.vi_merge:.4f}   (H(GT|SEG): under-segmentation)")
        print(f"VI        {s.vi:.4f}")
        print(f"ARAND     {s.arand:.4f}   (precision {s.precision:.4f}, recall {s.recall:.4f})")
        print(f"scored {s.n_voxels} voxels; ground-truth 0 {'scored' if args.no_ignore_gt else 'ignored'}; "
              f"predicted background: {args.background}")
        if other is not None:
            why = ": no ground-truth id spans two sections" if args.per_section is None else ""
            print(f"scored section by section{why}, rule '{args.section_rule}'; by the '{other_rule}' rule: "
                  f"VI {other.vi:.4f} (split {other.vi_split:.4f}, merge {other.vi_merge:.4f}), ARAND {other.arand:.4f}")
    return 0
