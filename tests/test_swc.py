"""SWC reading and writing."""
import numpy as np
import pytest

from napari_segneuron.io import InputError, read_swc, write_swc


def _tree():
    return np.array(
        [
            [1, 1, 10.5, 20.25, 3.0, 2.5, -1],
            [2, 3, 11.0, 21.0, 3.5, 1.25, 1],
            [3, 3, 12.0, 22.0, 4.0, 1.0, 2],
            [4, 3, 11.0, 19.0, 3.0, 0.75, 2],
        ]
    )


def test_round_trip(tmp_path):
    nodes = _tree()
    path = write_swc(tmp_path / "t.swc", nodes, header="traced by a test\nsecond line")
    text = path.read_text()
    assert text.startswith("# traced by a test\n# second line\n")
    back = read_swc(path)
    np.testing.assert_allclose(back, nodes)
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write leaves no temporary behind


def test_reads_comments_blank_lines_and_extra_columns(tmp_path):
    path = tmp_path / "n.swc"
    path.write_text(
        "# ORIGINAL_SOURCE test\n#id type x y z r p\n\n"
        "1 1 0 0 0 1 -1\n"
        "2 3 1 0 0 0.5 1  # trailing comment\n"
        "3 3 2 0 0 0.5 2 extra\n"
    )
    nodes = read_swc(path)
    assert nodes.shape == (3, 7)
    np.testing.assert_array_equal(nodes[:, 6], [-1, 1, 2])
    np.testing.assert_array_equal(nodes[:, 2], [0, 1, 2])


@pytest.mark.parametrize(
    "body, message",
    [("1 1 0 0 0\n", "7 columns"), ("1 1 a 0 0 1 -1\n", "non-numeric"), ("1 1 0 0 0 1 5\n", "parent 5"),
     ("1 1 0 0 0 1 -1\n1 1 0 0 0 1 -1\n", "duplicate")],
)
def test_bad_swc_gets_a_clear_message(tmp_path, body, message):
    path = tmp_path / "bad.swc"
    path.write_text(body)
    with pytest.raises(InputError, match=message):
        read_swc(path)


def test_write_refuses_wrong_shape(tmp_path):
    with pytest.raises(InputError, match=r"\(N, 7\)"):
        write_swc(tmp_path / "x.swc", np.zeros((3, 5)))


def _branched():
    # root 1 -> 2 -> 3 (branch point) -> 4 -> 5 and 3 -> 6
    return np.array(
        [[1, 1, 0, 0, 0, 2.0, -1], [2, 3, 1, 0, 0, 1.5, 1], [3, 3, 2, 0, 0, 1.0, 2], [4, 3, 3, 1, 0, 0.5, 3],
         [5, 3, 4, 2, 0, 0.5, 4], [6, 3, 3, -1, 2, 0.7, 3]], dtype=float)


def test_swc_to_paths_splits_at_branch_points_and_back():
    from napari_segneuron.swc import paths_to_swc, swc_to_paths

    nodes = _branched()
    paths = swc_to_paths(nodes, scale=(2.0, 1.0, 1.0))
    assert sorted(len(p) for p in paths) == [2, 3, 3]
    np.testing.assert_allclose(paths[0][0], [0, 0, 0])
    assert any(np.allclose(p[-1], [1.0, -1, 3]) for p in paths)  # z = 2 / scale 2
    back = paths_to_swc(paths, scale=(2.0, 1.0, 1.0))
    assert len(back) == len(nodes) and (back[:, 6] == -1).sum() == 1
    np.testing.assert_allclose(sorted(map(tuple, back[:, 2:5])), sorted(map(tuple, nodes[:, 2:5])))
    # same edges (as coordinate pairs)
    def edges(n):
        pos = {int(i): tuple(r[2:5]) for i, r in zip(n[:, 0], n)}
        return {frozenset((pos[int(r[0])], pos[int(r[6])])) for r in n if r[6] >= 0}
    assert edges(back) == edges(nodes)


def test_swc_reader_and_writer_hooks(tmp_path):
    from napari_segneuron._widgets.reader import get_swc_reader
    from napari_segneuron._widgets.writer import write_swc_layer

    src = write_swc(tmp_path / "n.swc", _branched())
    assert get_swc_reader(str(tmp_path / "x.tif")) is None
    [(paths, kwargs, kind)] = get_swc_reader(str(src))(str(src))
    assert kind == "shapes" and kwargs["shape_type"] == "path" and len(paths) == 3
    out = tmp_path / "out.swc"
    assert write_swc_layer(str(out), paths, kwargs) == [str(out)]
    back = read_swc(out)
    assert len(back) == 6
    np.testing.assert_allclose(sorted(back[:, 5]), sorted(_branched()[:, 5]))  # radii kept via metadata


def test_lm_sample_is_the_rivuletpy_stack():
    from napari_segneuron._widgets.sample_data import lm_sample

    [(data, meta, kind)] = lm_sample()
    assert kind == "image" and data.shape == (119, 415, 409) and data.dtype == np.uint8
    assert "University of Sydney" in meta["metadata"]["source"]
