"""npe2 sample-data hooks: the stacks of ``samples`` as napari layer data."""
from __future__ import annotations

from ..samples import CREDIT, EM_VOXEL_SIZE_NM, LM_CREDIT, load_labels, load_lm, load_raw


def _em_meta() -> dict:
    """Layer kwargs shared by the EM sample layers: the measured voxel size as scale (nm) and metadata."""
    return {"scale": EM_VOXEL_SIZE_NM, "metadata": {"source": CREDIT, "voxel_size_nm": list(EM_VOXEL_SIZE_NM)}}


def fib25_raw() -> list[tuple]:
    return [(load_raw(), {"name": "fib25 EM", **_em_meta()}, "image")]


def fib25_labels() -> list[tuple]:
    return [(load_labels(), {"name": "fib25 ground truth", **_em_meta(), "opacity": 0.5}, "labels")]


def fib25_raw_and_labels() -> list[tuple]:
    return fib25_raw() + fib25_labels()


def lm_sample() -> list[tuple]:
    """The rivuletpy LM test stack as napari sample data."""
    return [(load_lm(), {"name": "rivuletpy LM neuron", "metadata": {"source": LM_CREDIT}}, "image")]
