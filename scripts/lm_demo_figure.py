"""README figure: the bundled LM model traces the rivuletpy sample stack.

Writes a PNG with the maximum-intensity projection (left), the predicted foreground
projection (middle) and the traced SWC paths drawn on the projection (right), and prints
node / tree counts.

    python scripts/lm_demo_figure.py -o docs/images/lm_rivuletpy_trace.png
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from napari_segneuron._model.vit3d import load_lm_model  # noqa: E402
from napari_segneuron._widgets.sample_data import lm_sample  # noqa: E402
from napari_segneuron.swc import swc_to_paths  # noqa: E402
from napari_segneuron.tracing import predict_foreground, trace  # noqa: E402


def _norm(a: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(a, [1, 99.8])
    return np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--output", type=Path, default=ROOT / "docs" / "images" / "lm_rivuletpy_trace.png")
    p.add_argument("--weights", default="lm_default")
    args = p.parse_args(argv)
    from skimage.draw import line
    from skimage.io import imsave

    [(stack, _, _)] = lm_sample()
    model = load_lm_model(args.weights)
    threshold = float((model.info.get("metadata") or {}).get("threshold", 0.5))
    prob = predict_foreground(model, stack)
    nodes, mask = trace(prob, threshold=threshold)
    n_trees = int((nodes[:, 6] < 0).sum()) if len(nodes) else 0
    print(f"rivuletpy {stack.shape}: foreground {mask.mean() * 100:.2f}% of voxels, {len(nodes)} SWC nodes, "
          f"{n_trees} trees (threshold {threshold})")
    mip = _norm(stack.max(0).astype(np.float32))
    overlay = np.stack([mip] * 3, -1)
    for path in swc_to_paths(nodes):
        for a, b in zip(path[:-1], path[1:]):
            rr, cc = line(int(round(a[1])), int(round(a[2])), int(round(b[1])), int(round(b[2])))
            overlay[rr, cc] = (1.0, 0.85, 0.0)
    panel = np.concatenate([np.stack([mip] * 3, -1), np.stack([prob.max(0)] * 3, -1), overlay], axis=1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    imsave(args.output, (panel * 255).astype(np.uint8), check_contrast=False)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
