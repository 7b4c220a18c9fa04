"""Trace the rivuletpy LM stack with gap crossing off and on; print trees and write
docs/images/lm_trace_rivuletpy_topology.png.

    python benchmarks/trace_rivuletpy_figure.py
"""
import numpy as np, tifffile, time
import matplotlib; matplotlib.use("Agg")
import matplotlib.pyplot as plt
from napari_segneuron._model.vit3d import load_lm_model
from napari_segneuron.tracing import predict_foreground, trace
from napari_segneuron.swc_metrics import n_trees, total_length
from napari_segneuron.swc import swc_to_paths
from scipy import sparse
stack = tifffile.imread("/work/shared/data/rivuletpy_lm_test.tif")
model = load_lm_model("lm_default"); th = float((model.info.get("metadata") or {}).get("threshold", 0.5))
prob = predict_foreground(model, stack)
res = {}
for gap in (0, 15):
    nodes, _ = trace(prob, threshold=th, max_gap=gap, image=stack)
    ids = {int(i): k for k, i in enumerate(nodes[:, 0])}
    root_of = np.zeros(len(nodes), int)
    for k, p in enumerate(nodes[:, 6].astype(int)):
        root_of[k] = k if p < 0 else root_of[ids[p]]
    sizes = np.bincount(root_of, minlength=len(nodes)); sizes = np.sort(sizes[sizes > 0])[::-1]
    print(f"max_gap {gap}: {len(nodes)} nodes, {n_trees(nodes)} trees, length {total_length(nodes):.0f} voxels, "
          f"largest tree {sizes[0]} nodes ({sizes[0]/len(nodes):.1%}), others {list(sizes[1:10])}")
    res[gap] = nodes
fig, axes = plt.subplots(1, 2, figsize=(12, 6))
for ax, gap in zip(axes, (0, 15)):
    ax.imshow(stack.max(0), cmap="gray"); nodes = res[gap]
    ids = {int(i): k for k, i in enumerate(nodes[:, 0])}
    root_of = np.zeros(len(nodes), int)
    for k, p in enumerate(nodes[:, 6].astype(int)):
        root_of[k] = k if p < 0 else root_of[ids[p]]
    cmap = plt.get_cmap("tab20")
    for k, p in enumerate(nodes[:, 6].astype(int)):
        if p >= 0:
            j = ids[p]; ax.plot(nodes[[k, j], 2], nodes[[k, j], 3], color=cmap(root_of[k] % 20), lw=1)
    r = nodes[nodes[:, 6] < 0]; ax.plot(r[:, 2], r[:, 3], "w*", ms=8)
    ax.set_title(f"max gap {gap} voxels: {n_trees(nodes)} trees (colours), roots *"); ax.axis("off")
fig.tight_layout(); fig.savefig("docs/images/lm_trace_rivuletpy_topology.png", dpi=80)
