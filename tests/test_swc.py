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
