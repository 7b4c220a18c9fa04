"""The stacks shipped with the package (Qt-free): an EM crop with ground truth and an LM neuron.

EM: a real FIB-SEM crop of Drosophila medulla (FIB-25) and its ground truth, 50 x 100 x 200
voxels, ``EM_VOXEL_SIZE_NM`` = 20 nm isotropic by measurement (its source says ~10 nm, but membrane
thickness and neurite calibre measure about 2x coarser; benchmarks/measure_voxel_size.py; the default
model declares 20 nm, see its model card); 87 neuron ids, 0 = membrane. Source: test data of janelia-flyem/gala (Janelia Farm
BSD-style licence, HHMI; Nunez-Iglesias et al. 2014) and janelia-flyem/neuroproof_examples
(CC-BY; Takemura et al. 2015). The bundled default model was finetuned on this crop: it shows
the workflow, it is not a held-out benchmark.

LM: ``rivuletpy_lm_test.tif``, the test stack of github RivuletStudio/rivuletpy (BSD-3
licence, Copyright (c) 2016, The University of Sydney; background zeroed by its authors),
119 x 415 x 409 uint8, a 3D light-microscopy image of one neuron.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).parent / "data"
RAW_PATH = DATA_DIR / "fib25_a_raw.tif"
LABELS_PATH = DATA_DIR / "fib25_a_labels.tif"
CREDIT = (
    "FIB-25 (Drosophila medulla) crop from janelia-flyem/gala and "
    "janelia-flyem/neuroproof_examples; Nunez-Iglesias et al. 2014, Takemura et al. 2015"
)
EM_VOXEL_SIZE_NM: tuple[float, float, float] = (20.0, 20.0, 20.0)  # (z, y, x), measured
LM_SAMPLE_PATH = DATA_DIR / "rivuletpy_lm_test.tif"
LM_CREDIT = ("rivuletpy test stack (github RivuletStudio/rivuletpy, BSD-3; "
             "Copyright (c) 2016, The University of Sydney)")


def load_raw() -> np.ndarray:
    """The EM crop as a (Z, Y, X) uint8 array."""
    import tifffile

    return tifffile.imread(RAW_PATH)


def load_labels() -> np.ndarray:
    """The ground-truth neuron ids as a (Z, Y, X) uint32 array (0 = membrane)."""
    import tifffile

    return tifffile.imread(LABELS_PATH)


def load_lm() -> np.ndarray:
    """The rivuletpy LM stack as a (Z, Y, X) uint8 array."""
    import tifffile

    return tifffile.imread(LM_SAMPLE_PATH)
