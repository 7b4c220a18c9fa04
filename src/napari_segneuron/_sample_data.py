"""napari sample data: a real FIB-SEM crop of Drosophila medulla (FIB-25) and its ground truth.

50 x 100 x 200 voxels, about 20 nm isotropic by measurement (the default model declares 20 nm; see its model card); 87 neuron ids, 0 = membrane.
Source: test data of janelia-flyem/gala (Janelia Farm BSD-style licence, HHMI;
Nunez-Iglesias et al. 2014) and janelia-flyem/neuroproof_examples (CC-BY; Takemura et al. 2015).
This crop is the one the bundled default model was finetuned on: it shows the workflow,
it is not a held-out benchmark.
"""
from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
RAW_PATH = DATA_DIR / "fib25_a_raw.tif"
LABELS_PATH = DATA_DIR / "fib25_a_labels.tif"
CREDIT = (
    "FIB-25 (Drosophila medulla) crop from janelia-flyem/gala and "
    "janelia-flyem/neuroproof_examples; Nunez-Iglesias et al. 2014, Takemura et al. 2015"
)


def load_raw():
    """The EM crop as a (Z, Y, X) uint8 array."""
    import tifffile

    return tifffile.imread(RAW_PATH)


def load_labels():
    """The ground-truth neuron ids as a (Z, Y, X) uint32 array (0 = membrane)."""
    import tifffile

    return tifffile.imread(LABELS_PATH)


def fib25_raw():
    return [(load_raw(), {"name": "fib25 EM", "metadata": {"source": CREDIT}}, "image")]


def fib25_labels():
    return [
        (
            load_labels(),
            {"name": "fib25 ground truth", "metadata": {"source": CREDIT}, "opacity": 0.5},
            "labels",
        )
    ]


def fib25_raw_and_labels():
    return fib25_raw() + fib25_labels()
