"""Training on the model's grid: a block annotated at the user's voxel size is resampled to the
voxel size the starting model declares, exactly as prediction resamples the stack, so the
adapted model sees neurites at the scale it knows and predicts through the same path."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..resample import needs_resampling, parse_voxel_size, resample_image, resize_labels


def block_on_model_grid(image: np.ndarray, labels: np.ndarray, mask: Optional[np.ndarray],
                        voxel_size: Optional[Sequence[float]], model_voxel_size: Optional[Sequence[float]],
                        magnify: float = 1.0):
    """``(image, labels, mask, metadata)`` on the model's grid (image linear with anti-aliasing,
    labels and mask nearest). ``metadata`` declares the grid trained on: the model's voxel size,
    or the block's own when the model declares none; nothing when neither is known.

    ``magnify`` (see ``calibration``) shows the block to the model that many times larger, as
    prediction with the same magnification does; the checkpoint then declares the physical voxel
    size it was trained at (the model's divided by ``magnify``), so it predicts the stack with no
    magnification to remember."""
    from ..calibration import magnified_voxel_size

    voxel = parse_voxel_size(voxel_size)
    model_voxel = parse_voxel_size(model_voxel_size, "model voxel size")
    shown = magnified_voxel_size(voxel, model_voxel, magnify)
    if shown is None:
        return image, labels, mask, {}
    grid = model_voxel or shown
    true = voxel or model_voxel  # what a shown voxel really measures
    meta = {"voxel_size_nm": [float(g * t / s) for g, t, s in zip(grid, true, shown)]}
    if voxel is not None:
        meta["adapted_on_voxel_size_nm"] = [float(v) for v in voxel]
    if magnify != 1.0:
        meta["magnify"] = float(magnify)
    if not needs_resampling(shown, grid):
        return image, labels, mask, meta
    image2 = resample_image(image, shown, grid)
    labels2 = resize_labels(labels, image2.shape)
    mask2 = None if mask is None else resize_labels(np.asarray(mask), image2.shape)
    meta["resampled_from_shape"] = [int(n) for n in np.shape(image)]
    return image2, labels2, mask2, meta
