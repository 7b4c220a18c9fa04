"""Topology of ``trace`` on single-neuron LM renders: trees per neuron, length error,
length-based skeleton F1 and ESA/DSA/PDS, with gap crossing off (``--max-gap 0``) and on.

Two renderers: the project's own (``lm_render.render_sample``, the LM model's training
distribution) and an independent test-only one (``_other_render`` below: a two-component
PSF with wide tails, gamma-distributed labelling, dark stretches along the arbor,
multiplicative speckle and saturation), on seeds never used in training.

    python benchmarks/bench_trace_topology.py [--seeds 901,902,903] [--radius 3] [--radius-um R]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage as ndi

from napari_segneuron.lm_render import random_tree, rasterise, render_sample
from napari_segneuron.swc_metrics import compare
from napari_segneuron.tracing import predict_foreground, trace


def _other_render(rng: np.random.Generator, shape=(40, 160, 160)):
    """Test-only renderer (not the training one): returns (stack uint8, nodes µm, voxel size)."""
    vxy, vz = float(rng.uniform(0.3, 0.5)), float(rng.uniform(1.0, 1.6))
    voxel = (vz, vxy, vxy)
    nodes = random_tree(rng, [s * v for s, v in zip(shape, voxel)], step=max(vxy, 0.5))
    vox = nodes.copy()
    vox[:, 2:5] /= np.array([vxy, vxy, vz])
    brightness = rng.gamma(4.0, 0.25, len(nodes))
    dark = rng.random(len(nodes)) < 0.03  # dim stretches: the gaps to cross
    brightness[dark] *= 0.15
    _, density = rasterise(vox, shape, voxel, brightness)
    core = ndi.gaussian_filter(density, (0.9 / vz, 0.2 / vxy, 0.2 / vxy))
    tails = ndi.gaussian_filter(density, (3.0 / vz, 0.8 / vxy, 0.8 / vxy))
    image = core + 0.25 * tails
    image = image / max(np.percentile(image[image > 0], 95), 1e-6)
    speckle = rng.gamma(8.0, 1 / 8.0, shape)
    stack = 0.08 + 0.9 * image * speckle + rng.normal(0, 0.03, shape)
    return np.clip(stack * 255, 0, 255).astype(np.uint8), nodes, voxel


def _truth_um(nodes_vox: np.ndarray, voxel) -> np.ndarray:
    out = nodes_vox.copy()
    out[:, 2:5] *= np.array([voxel[2], voxel[1], voxel[0]])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="901,902,903")
    p.add_argument("--shape", default="40,160,160")
    p.add_argument("--weights", default="lm_default")
    p.add_argument("--radius", type=float, default=3.0, help="matching radius in xy voxels")
    p.add_argument("--radius-um", type=float, default=None, help="matching radius in µm (replaces --radius)")
    p.add_argument("--max-gap", type=float, default=15.0)
    args = p.parse_args(argv)
    from napari_segneuron._model.vit3d import load_lm_model

    model = load_lm_model(args.weights)
    threshold = float((model.info.get("metadata") or {}).get("threshold", 0.5))
    shape = tuple(int(v) for v in args.shape.split(","))
    print(f"{'renderer':9} {'seed':>5} {'gaps':>4} {'trees':>5} {'F1':>5} {'P':>5} {'R':>5} {'len.err':>7} "
          f"{'ESA':>5} {'DSA':>5} {'PDS':>5} {'s':>5}")
    rows = []
    for renderer in ("own", "other"):
        for seed in (int(s) for s in args.seeds.split(",")):
            rng = np.random.default_rng(seed)
            if renderer == "own":
                r = render_sample(rng, shape)
                stack, voxel, truth = r.stack, r.voxel_size, _truth_um(r.nodes, r.voxel_size)
            else:
                stack, truth, voxel = _other_render(rng, shape)
            radius = args.radius_um if args.radius_um is not None else args.radius * voxel[1]
            prob = predict_foreground(model, stack)
            for gap in (0.0, args.max_gap):
                t = time.time()
                nodes, _ = trace(prob, threshold=threshold, voxel_size=voxel, max_gap=gap, image=stack)
                m = compare(nodes, truth, radius=radius)
                rows.append((renderer, gap, m))
                print(f"{renderer:9} {seed:5d} {'on' if gap else 'off':>4} {m['trees']:5d} {m['f1']:5.3f} "
                      f"{m['precision']:5.3f} {m['recall']:5.3f} {m['length_error']:+7.3f} {m['esa']:5.2f} "
                      f"{m['dsa']:5.2f} {m['pds']:5.3f} {time.time() - t:5.1f}", flush=True)
    print("mean (trees, F1, length error, ESA µm):")
    for renderer in ("own", "other"):
        for gap in (0.0, args.max_gap):
            ms = [m for rr, g, m in rows if rr == renderer and g == gap]
            print(f"  {renderer:6} gaps {'on ' if gap else 'off'}: trees {np.mean([m['trees'] for m in ms]):.1f} "
                  f"(max {max(m['trees'] for m in ms)}), F1 {np.mean([m['f1'] for m in ms]):.3f}, "
                  f"length error {np.mean([m['length_error'] for m in ms]):+.3f}, "
                  f"ESA {np.mean([m['esa'] for m in ms]):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
