"""Shared fixtures: a tiny random-weights MNet checkpoint, the sample data, notification capture."""
from __future__ import annotations

import numpy as np
import pytest

TINY_KN = (4, 8, 12, 16, 20)


def pytest_configure(config):
    # Tiny tensors on a shared 2-core CI box: one intra-op thread is 5-10x faster than
    # several threads fighting over the cores (measured). Override with TORCH_NUM_THREADS.
    import os

    import torch

    torch.set_num_threads(int(os.environ.get("TORCH_NUM_THREADS", "1")))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A small MNet (kn=(4,8,12,16,20)) with random weights, saved like a real checkpoint."""
    import torch

    from napari_segneuron._model import MNet, save_checkpoint

    torch.manual_seed(0)
    model = MNet(kn=TINY_KN)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    save_checkpoint(model, path, iters=0, metadata={"name": "tiny-test"})
    return path


@pytest.fixture(scope="session")
def tiny_model_cpu(tiny_checkpoint):
    from napari_segneuron._model import load_model

    return load_model(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="session")
def sample_raw():
    from napari_segneuron._sample_data import load_raw

    return load_raw()


@pytest.fixture(scope="session")
def sample_labels():
    from napari_segneuron._sample_data import load_labels

    return load_labels()


@pytest.fixture
def notifications(monkeypatch):
    """Collect the (level, message) of every notification the docks raise."""
    from napari_segneuron._widgets import _runner

    seen: list[tuple[str, str]] = []
    monkeypatch.setattr(_runner, "notify_error", lambda m: seen.append(("error", m)))
    monkeypatch.setattr(_runner, "notify_warning", lambda m: seen.append(("warning", m)))
    monkeypatch.setattr(_runner, "notify_info", lambda m: seen.append(("info", m)))
    for mod_name in ("segment", "train"):
        try:
            mod = __import__(f"napari_segneuron._widgets.{mod_name}", fromlist=["x"])
        except Exception:
            continue
        for level in ("error", "warning", "info"):
            if hasattr(mod, f"notify_{level}"):
                monkeypatch.setattr(mod, f"notify_{level}", lambda m, lv=level: seen.append((lv, m)))
    return seen


@pytest.fixture
def rng():
    return np.random.default_rng(0)
