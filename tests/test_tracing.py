"""Tracing foreground to SWC, and the ``trace`` CLI."""
import numpy as np
import pytest
import tifffile
import torch

from napari_segneuron.cli import main
from napari_segneuron.io import read_swc
from napari_segneuron.lm_render import centreline_points, rasterise, render_sample
from napari_segneuron.tracing import prune_spurs, swc_match_f1, swc_points_voxels, trace


def _tube(shape, a, b, radius):
    """Mask of a straight tube between voxel points a, b given as (x, y, z)."""
    nodes = np.array([[1, 3, *a, radius, -1], [2, 3, *b, radius, 1]], dtype=float)
    mask, _ = rasterise(nodes, shape, (1, 1, 1))
    return mask


def test_trace_recovers_a_rendered_tree():
    r = render_sample(np.random.default_rng(5), shape=(24, 96, 96))
    nodes, mask = trace(r.mask.astype(np.float32), voxel_size=(1, 1, 1))
    truth = centreline_points(r.nodes)
    truth = truth[np.all((truth >= 0) & (truth <= np.array(r.mask.shape) - 1), axis=1)]
    score = swc_match_f1(swc_points_voxels(nodes), truth, tolerance=3)
    assert score["f1"] > 0.9, score
    # SWC invariants: unique ids, parents listed before children, roots have parent -1
    ids = nodes[:, 0].astype(int)
    assert len(set(ids)) == len(ids)
    position = {i: k for k, i in enumerate(ids)}
    assert all(p == -1 or position[int(p)] < k for k, p in enumerate(nodes[:, 6]))


def test_one_tree_per_component_scaled_coordinates_and_radius():
    shape = (20, 60, 80)
    mask = _tube(shape, (10, 15, 10), (70, 15, 10), 3.0) | _tube(shape, (10, 45, 10), (70, 45, 10), 3.0)
    voxel = (2.0, 0.5, 0.25)
    nodes, _ = trace(mask.astype(np.float32), voxel_size=voxel, spur_length=6)
    assert (nodes[:, 6] == -1).sum() == 2
    # x = column * vx, y = row * vy, z = slice * vz
    assert set(np.round(nodes[:, 3] / voxel[1]).astype(int)) <= {14, 15, 16, 44, 45, 46}
    assert np.abs(nodes[:, 4] / voxel[0] - 10).max() <= 1
    assert nodes[:, 2].max() / voxel[2] > 60
    # radius from the distance transform in physical units: 3 voxels across y = 1.5 µm
    assert 1.25 <= np.median(nodes[:, 5]) <= 2.0


def test_short_spurs_are_pruned_long_branches_kept():
    shape = (9, 60, 60)
    trunk = _tube(shape, (5, 30, 4), (55, 30, 4), 0.5)
    spur = _tube(shape, (30, 30, 4), (30, 27, 4), 0.5)
    branch = _tube(shape, (15, 30, 4), (15, 5, 4), 0.5)
    skel = trunk | spur | branch
    pruned = prune_spurs(skel, 5.0, (1, 1, 1))
    assert not pruned[4, 27, 30] and pruned[4, 30, 30]
    assert pruned[4, 6, 15]  # the 25-voxel branch survives


def test_empty_foreground_gives_an_empty_tree():
    nodes, mask = trace(np.zeros((5, 20, 20), np.float32))
    assert nodes.shape == (0, 7) and not mask.any()


@pytest.fixture
def lm_weights(tmp_path):
    from napari_segneuron._model import build_vit3d, save_vit3d

    torch.manual_seed(0)
    model = build_vit3d(None, patch=(3, 4, 4), embed_dim=24, depth=2, heads=3, grid=(2, 3, 3), channels=(4, 8),
                        vit_channels=4)
    return save_vit3d(model, tmp_path / "tiny_lm.pt", metadata={"name": "tiny"})


def test_cli_trace_writes_swc_and_mask(tmp_path, lm_weights):
    r = render_sample(np.random.default_rng(2), shape=(12, 48, 48))
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, r.stack)
    out, mask_out = tmp_path / "tree.swc", tmp_path / "mask.tif"
    rc = main(["trace", str(stack), "-o", str(out), "--mask-out", str(mask_out), "--weights", str(lm_weights),
               "--threshold", "0.3", "--voxel-size", "2,0.5,0.5", "--min-size", "1", "--max-gap", "10",
               "--root", "6,24,24"])
    assert rc == 0
    assert out.read_text().startswith("# napari-segneuron")
    nodes = read_swc(out)
    assert nodes.shape[1] == 7
    mask = tifffile.imread(mask_out)
    assert mask.shape == r.stack.shape
    # the SWC lies on the written mask
    if len(nodes):
        zyx = np.round(nodes[:, [4, 3, 2]] / np.array([2, 0.5, 0.5])).astype(int)
        assert mask[tuple(zyx.T)].all()


@pytest.mark.parametrize(
    "extra, message",
    [([], "must end in .swc"), (["--threshold", "1.5"], "threshold"), (["--root", "9,99,0"], "outside"),
     (["--max-gap", "-1"], "max-gap"), (["--weights", "default"], "not a light-microscopy")],
)
def test_cli_trace_bad_input_gets_one_line(tmp_path, capsys, extra, message):
    stack = tmp_path / "s.tif"
    tifffile.imwrite(stack, np.zeros((4, 16, 16), np.uint8))
    out = tmp_path / ("t.txt" if not extra else "t.swc")
    rc = main(["trace", str(stack), "-o", str(out)] + extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("error:") and message in err[-1]


def test_cli_trace_missing_stack(tmp_path, capsys):
    assert main(["trace", str(tmp_path / "none.tif"), "-o", str(tmp_path / "t.swc")]) == 2
    assert "error:" in capsys.readouterr().err


def _n_trees(nodes):
    return int((nodes[:, 6] < 0).sum())


def _cut(prob, mask, xs, width, level):
    """Dim the foreground in slabs of ``width`` columns starting at each x in ``xs``."""
    prob = prob.copy()
    for x in xs:
        prob[:, :, x:x + width] = np.where(mask[:, :, x:x + width], level, 0.0)
    return prob


def test_gaps_in_a_rendered_neuron_are_crossed_into_one_tree():
    r = render_sample(np.random.default_rng(5), shape=(24, 96, 96))
    prob = _cut(r.mask.astype(np.float32) * 0.9, r.mask, (20, 45, 70), 4, 0.2)
    nodes_off, _ = trace(prob, max_gap=0)
    nodes, _ = trace(prob, max_gap=15)
    assert _n_trees(nodes_off) >= 3
    assert _n_trees(nodes) == 1
    truth = centreline_points(r.nodes)
    truth = truth[np.all((truth >= 0) & (truth <= np.array(r.mask.shape) - 1), axis=1)]
    assert swc_match_f1(swc_points_voxels(nodes), truth, tolerance=3)["f1"] > 0.9


def test_gap_longer_than_max_gap_or_through_empty_background_is_not_joined():
    shape = (12, 30, 100)
    mask = _tube(shape, (5, 15, 6), (95, 15, 6), 2.0)
    dim_long = _cut(mask.astype(np.float32), mask, (40,), 20, 0.2)
    assert _n_trees(trace(dim_long, max_gap=15)[0]) == 2
    assert _n_trees(trace(dim_long, max_gap=30)[0]) == 1
    # in µm: voxels of 0.5 µm, a 20-voxel (10 µm) gap needs max_gap_um above 10
    assert _n_trees(trace(dim_long, voxel_size=(0.5, 0.5, 0.5), max_gap_um=8)[0]) == 2
    assert _n_trees(trace(dim_long, voxel_size=(0.5, 0.5, 0.5), max_gap_um=15)[0]) == 1
    empty = _cut(mask.astype(np.float32), mask, (45,), 6, 0.0)
    assert _n_trees(trace(empty, max_gap=30)[0]) == 2


def test_two_neurons_far_apart_stay_two_trees_rooted_at_their_somata():
    a = render_sample(np.random.default_rng(5), shape=(24, 96, 96)).mask
    b = render_sample(np.random.default_rng(6), shape=(24, 96, 96)).mask
    mask = np.zeros((24, 96, 96 * 2 + 40), bool)
    mask[:, :, :96], mask[:, :, -96:] = a, b
    nodes, _ = trace(mask.astype(np.float32) * 0.9 + 0.1, max_gap=15)  # dim haze everywhere: not empty
    roots = nodes[nodes[:, 6] < 0]
    assert len(roots) == 2
    assert roots[:, 2].min() < 96 and roots[:, 2].max() > 96 + 40
    # each root is its tree's thickest node (the soma)
    assert np.isclose(roots[:, 5].max(), nodes[:, 5].max())


def test_two_somata_joined_by_a_dim_bridge_stay_two_trees_and_a_given_root_is_used():
    shape = (16, 30, 80)
    mask = _tube(shape, (8, 15, 8), (72, 15, 8), 1.5)
    zz, yy, xx = np.indices(shape)
    for cx in (10, 70):
        mask |= (zz - 8) ** 2 + (yy - 15) ** 2 + (xx - cx) ** 2 <= 36
    prob = _cut(mask.astype(np.float32), mask, (38,), 4, 0.2)
    assert _n_trees(trace(prob, max_gap=15)[0]) == 2
    nodes, _ = trace(_cut(mask.astype(np.float32), mask, (50,), 4, 0.2), max_gap=15, root=[(8, 15, 30)])
    root = nodes[nodes[:, 6] < 0]
    assert _n_trees(nodes) == 1 and abs(root[0, 2] - 30) <= 1.5
