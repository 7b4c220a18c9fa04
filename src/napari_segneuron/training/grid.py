"""Training on the model's grid: a block annotated at the user's voxel size is resampled to the
voxel size the starting model declares, exactly as prediction resamples the stack, so the
adapted model sees neurites at the scale it knows and predicts through the same path."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..resample import needs_resampling, parse_voxel_size, resample_image, resize_labels


def block_on_model_grid(image: np.ndarray, labels: np.ndarray, mask: Optional[np.ndarray],
                        voxel_size: Optional[Sequence[float]], model_voxel_size: Optional[Sequence[float]]):
    """``(image, labels, mask, metadata)`` on the model's grid (image linear with anti-aliasing,
    labels and mask nearest). ``metadata`` declares the grid trained on: the model's voxel size,
    or the block's own when the model declares none; nothing when neither is known."""
    voxel = parse_voxel_size(voxel_size)
    model_voxel = parse_voxel_size(model_voxel_size, "model voxel size")
    if voxel is None:
        return image, labels, mask, {}
    meta = {"voxel_size_nm": [float(v) for v in (model_voxel or voxel)],
            "adapted_on_voxel_size_nm": [float(v) for v in voxel]}
    if not needs_resampling(voxel, model_voxel):
        return image, labels, mask, meta
    image2 = resample_image(image, voxel, model_voxel)
    labels2 = resize_labels(labels, image2.shape)
    mask2 = None if mask is None else resize_labels(np.asarray(mask), image2.shape)
    meta["resampled_from_shape"] = [int(n) for n in np.shape(image)]
    return image2, labels2, mask2, meta
