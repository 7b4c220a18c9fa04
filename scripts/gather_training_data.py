#!/usr/bin/env python
"""Rebuild the extra labelled EM volumes from local snapshots of their public repositories.

Two sources (see training_data/README.md for licences and credits):

* ``fib25_c`` - the FIB-SEM "tiny_fib" example of github janelia-flyem/gala
  (``example/original_grayscales`` + the Raveler ground truth ``example/groundtruth``:
  per-slice superpixel maps -> segments -> bodies; a one-voxel boundary of 0 added at body borders).
  Drosophila medulla (FIB-25 imaging
  run, Janelia), dense 3D body ids. HHMI BSD-style licence: written to ``training_data/``
  and used for training.
* ``vnc_stack1`` - github unidesigner/groundtruth-drosophila-vnc ``stack1``: serial-section
  TEM of a third-instar larva ventral nerve cord, 4.6 x 4.6 nm, 45-50 nm sections, 20
  sections of 1024 x 1024, with per-pixel classes (membranes, glia, mitochondria,
  synapses, intracellular). CC BY-NC-SA 3.0: NOT shipped and NOT trained on; written
  outside the repository (default ``runs/heldout/``) as the unseen held-out test volume.
  Ids are 2D connected components of the cell interior per section (intracellular and
  mitochondria; membranes, membrane junctions, synapses and glia/extracellular are 0),
  so it scores per-section (2D) segmentation only.

    python scripts/gather_training_data.py --gala MIRROR --vnc MIRROR

MIRROR is a git directory of the repository (a bare clone or ``.git``); the commits used
are pinned below and checked.
"""
from __future__ import annotations

import argparse
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
GALA_COMMIT = "db73a1c84d8a99975a2a8fb68660a83d8889ab1e"
VNC_COMMIT = "4a5f051466d24d8dc1e855ab55658bb1b1dcd6bf"
DEFAULT_GALA = Path("/work/.mirror/janelia-flyem+gala/repo/.git")
DEFAULT_VNC = Path("/work/.mirror/unidesigner+groundtruth-drosophila-vnc/repo")

#: vnc label classes (README of the source): membranes at 0/32/64/96 (orientations), 128 junction,
#: 159 glia/extracellular, 191 mitochondria, 223 synapse, 255 intracellular
VNC_INTERIOR = (191, 255)


def git_bytes(gitdir: Path, commit: str, path: str) -> bytes:
    """One file of ``commit`` from a git directory."""
    return subprocess.run(["git", "--git-dir", str(gitdir), "show", f"{commit}:{path}"], check=True,
                           capture_output=True).stdout


def git_list(gitdir: Path, commit: str, folder: str) -> list:
    out = subprocess.run(["git", "--git-dir", str(gitdir), "ls-tree", "--name-only", f"{commit}:{folder}"],
                         check=True, capture_output=True, text=True).stdout
    return sorted(f"{folder}/{n}" for n in out.split())


def read_png(data: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(data)))


def read_table(data: bytes) -> np.ndarray:
    rows = [list(map(int, line.split())) for line in data.decode().splitlines()
            if line.strip() and not line.startswith("#")]
    return np.array(rows, dtype=np.int64)


def gala_example(gitdir: Path) -> tuple:
    """(raw, labels), both (50, 100, 200): the images are stored 200 x 100, transposed here to
    the orientation of the fib25_a/b crops. Body ids from superpixel -> segment -> body maps."""
    raw_files = git_list(gitdir, GALA_COMMIT, "example/original_grayscales")
    sp_files = git_list(gitdir, GALA_COMMIT, "example/groundtruth/superpixel_maps")
    if len(raw_files) != len(sp_files):
        raise SystemExit(f"gala example: {len(raw_files)} images but {len(sp_files)} superpixel maps")
    sp2seg = read_table(git_bytes(gitdir, GALA_COMMIT, "example/groundtruth/superpixel_to_segment_map.txt"))
    seg2body = dict(map(tuple, read_table(git_bytes(gitdir, GALA_COMMIT,
                                                   "example/groundtruth/segment_to_body_map.txt"))))
    raw, lab = [], []
    for z, (rf, sf) in enumerate(zip(raw_files, sp_files)):
        img = read_png(git_bytes(gitdir, GALA_COMMIT, rf))
        sp = read_png(git_bytes(gitdir, GALA_COMMIT, sf)).astype(np.int64)
        rows = sp2seg[sp2seg[:, 0] == z]
        lut = np.zeros(max(int(sp.max()), int(rows[:, 1].max())) + 1, dtype=np.int64)
        lut[rows[:, 1]] = [seg2body.get(int(s), 0) for s in rows[:, 2]]
        raw.append(img.T)
        lab.append(lut[sp].T)
    raw = np.stack(raw).astype(np.uint8)
    lab = np.stack(lab)
    _, inv = np.unique(lab, return_inverse=True)  # consecutive ids, 0 stays 0 (it is the smallest)
    lab = inv.reshape(lab.shape).astype(np.uint32) if lab.min() == 0 else (inv.reshape(lab.shape) + 1).astype(np.uint32)
    return raw, with_boundaries(lab)


def with_boundaries(lab: np.ndarray) -> np.ndarray:
    """Raveler bodies tile the volume (no membrane label): mark a one-voxel boundary (id 0) where
    the id differs from the next voxel along z, y or x, like the fib25_a/b ground truth
    (0 = membrane, 6.7 % of their voxels)."""
    out = lab.copy()
    for ax in range(3):
        d = np.diff(lab.astype(np.int64), axis=ax) != 0
        sl = [slice(None)] * 3
        sl[ax] = slice(0, -1)
        out[tuple(sl)][d] = 0
    return out


def vnc_stack1(gitdir: Path) -> tuple:
    """(raw, labels) of stack1, (20, 1024, 1024); labels are per-section 2D ids (unique over the stack)."""
    raw_files = git_list(gitdir, VNC_COMMIT, "stack1/raw")
    lab_files = git_list(gitdir, VNC_COMMIT, "stack1/labels")
    if len(raw_files) != len(lab_files):
        raise SystemExit(f"vnc: {len(raw_files)} images but {len(lab_files)} label images")
    raw, lab, nxt = [], [], 1
    for rf, lf in zip(raw_files, lab_files):
        raw.append(tifffile.imread(io.BytesIO(git_bytes(gitdir, VNC_COMMIT, rf))))
        cls = read_png(git_bytes(gitdir, VNC_COMMIT, lf))
        cc, n = ndimage.label(np.isin(cls, VNC_INTERIOR))
        lab.append(np.where(cc > 0, cc + nxt - 1, 0).astype(np.uint32))
        nxt += n
    return np.stack(raw).astype(np.uint8), np.stack(lab)


def write(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tifffile.imwrite(tmp, arr, compression="zlib")
    tmp.replace(path)
    print(f"wrote {path} {arr.shape} {arr.dtype} ({path.stat().st_size / 1e6:.2f} MB)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gala", type=Path, default=DEFAULT_GALA, help="git directory of janelia-flyem/gala")
    p.add_argument("--vnc", type=Path, default=DEFAULT_VNC,
                   help="git directory of unidesigner/groundtruth-drosophila-vnc")
    p.add_argument("--out", type=Path, default=ROOT / "training_data", help="folder for the shippable volumes")
    p.add_argument("--heldout-out", type=Path, default=ROOT / "runs" / "heldout",
                   help="folder for the held-out (non-redistributable) volume")
    a = p.parse_args(argv)
    if a.gala.exists():
        raw, lab = gala_example(a.gala)
        write(a.out / "fib25_c_raw.tif", raw)
        write(a.out / "fib25_c_labels.tif", lab)
    else:
        print(f"no gala snapshot at {a.gala}; skipped", file=sys.stderr)
    if a.vnc.exists():
        raw, lab = vnc_stack1(a.vnc)
        write(a.heldout_out / "vnc_stack1_raw.tif", raw)
        write(a.heldout_out / "vnc_stack1_labels.tif", lab)
    else:
        print(f"no vnc snapshot at {a.vnc}; skipped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
