"""npe2 sample-data hooks: the stacks of ``samples`` as napari layer data."""
from __future__ import annotations

from ..samples import CREDIT, LM_CREDIT, load_labels, load_lm, load_raw


def fib25_raw() -> list[tuple]:
    return [(load_raw(), {"name": "fib25 EM", "metadata": {"source": CREDIT}}, "image")]


def fib25_labels() -> list[tuple]:
    return [(load_labels(), {"name": "fib25 ground truth", "metadata": {"source": CREDIT}, "opacity": 0.5}, "labels")]


def fib25_raw_and_labels() -> list[tuple]:
    return fib25_raw() + fib25_labels()


def lm_sample() -> list[tuple]:
    """The rivuletpy LM test stack as napari sample data."""
    return [(load_lm(), {"name": "rivuletpy LM neuron", "metadata": {"source": LM_CREDIT}}, "image")]
