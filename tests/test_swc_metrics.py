"""Length and topology metrics between SWC trees."""
import numpy as np

from napari_segneuron.swc_metrics import compare, n_trees, total_length


def _line(x0, x1, y=0.0, first_id=1, n=11):
    xs = np.linspace(x0, x1, n)
    return np.array([[first_id + k, 3, x, y, 0.0, 1.0, -1 if k == 0 else first_id + k - 1] for k, x in enumerate(xs)])


def test_identical_trees_score_perfectly():
    t = _line(0, 10)
    m = compare(t, t, radius=1.0)
    assert m["trees"] == 1 and np.isclose(m["length"], 10.0)
    assert m["f1"] == 1.0 and m["esa"] == 0.0 and m["pds"] == 0.0 and abs(m["length_error"]) < 1e-12


def test_half_traced_and_shifted_and_split():
    truth = _line(0, 10)
    half = _line(0, 5)
    m = compare(half, truth, radius=0.5)
    assert m["precision"] == 1.0 and 0.45 <= m["recall"] <= 0.55 and np.isclose(m["length_error"], -0.5)
    shifted = _line(0, 10, y=3.0)
    s = compare(shifted, truth, radius=1.0)
    assert s["f1"] == 0.0 and np.isclose(s["esa"], 3.0, atol=0.1) and s["pds"] == 1.0
    split = np.concatenate([_line(0, 4), _line(6, 10, first_id=100)])
    assert n_trees(split) == 2 and np.isclose(total_length(split), 8.0)
    assert compare(split, truth, radius=1.0)["recall"] > 0.85
