"""Synthetic light-microscopy (LM) stacks of single neurons, rendered from SWC morphologies.

Training and test data for the LM model (no BigNeuron stack is available here). A
morphology (random branching tree from :func:`random_tree`, or a real SWC fitted into
the volume with :func:`fit_morphology`) becomes an image through: radius-aware tubes,
uneven labelling along the arbor (smooth brightness drift, varicosities, faint stretches),
an anisotropic Gaussian PSF (wider in z), a background gradient, out-of-arbor debris,
Poisson (shot) and Gaussian (read) noise. :func:`render_sample` draws voxel size, contrast
and noise at random.

Coordinates follow SWC: nodes are (N, 7) rows id, type, x, y, z, radius, parent with
x = column, y = row, z = slice in physical units (µm); the stack is (Z, Y, X).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage as ndi


@dataclass
class Render:
    """A rendered stack: ``stack`` (Z,Y,X) uint16, ``mask`` (Z,Y,X) bool foreground,
    ``nodes`` (N,7) SWC in voxel units (x=column, y=row, z=slice), ``voxel_size`` (z,y,x) µm."""

    stack: np.ndarray
    mask: np.ndarray
    nodes: np.ndarray
    voxel_size: tuple[float, float, float]

    def __iter__(self):  # (stack, mask, nodes) unpacking
        return iter((self.stack, self.mask, self.nodes))


# -- morphologies ----------------------------------------------------------------------------
def random_tree(
    rng: np.random.Generator,
    extent: Sequence[float],
    n_primary: Optional[int] = None,
    step: float = 1.0,
    max_nodes: int = 4000,
) -> np.ndarray:
    """A random branching neuron inside a box of ``extent`` (z, y, x) µm, as SWC rows (µm).

    Primary neurites leave a soma near the centre; each grows as a persistent random walk
    that branches now and then, thins with distance and stops at the box or by chance.
    """
    ez, ey, ex = (float(e) for e in extent)
    size = np.array([ex, ey, ez])  # x, y, z
    soma = size * rng.uniform(0.3, 0.7, 3)
    soma_r = rng.uniform(2.0, 4.0)
    rows = [[1, 1, *soma, soma_r, -1]]
    n_primary = int(n_primary or rng.integers(2, 6))
    # (parent id, position, direction, radius, remaining length)
    stack = []
    for _ in range(n_primary):
        d = rng.normal(size=3)
        d[2] *= 0.4  # neurons in a stack spread mostly in xy
        d /= np.linalg.norm(d) + 1e-9
        stack.append((1, soma + d * soma_r, d, rng.uniform(0.5, 1.4), rng.uniform(0.4, 1.2) * size[:2].max()))
    while stack and len(rows) < max_nodes:
        parent, pos, d, r, length = stack.pop()
        travelled = 0.0
        while travelled < length and len(rows) < max_nodes:
            d = d + rng.normal(scale=0.18, size=3)
            d[2] *= 0.8
            d /= np.linalg.norm(d) + 1e-9
            pos = pos + d * step
            if np.any(pos < 0) or np.any(pos > size):
                break
            travelled += step
            r = max(0.25, r * (1 - 0.004 * step))
            rows.append([len(rows) + 1, 3, *pos, r, parent])
            parent = len(rows)
            if rng.random() < 0.04 * step and travelled > 4:
                side = rng.normal(size=3)
                side -= side.dot(d) * d
                nd = d * 0.5 + side / (np.linalg.norm(side) + 1e-9)
                stack.append((parent, pos, nd / np.linalg.norm(nd), r * rng.uniform(0.6, 0.9),
                              (length - travelled) * rng.uniform(0.4, 0.9)))
    return np.asarray(rows, dtype=np.float64)


def fit_morphology(
    nodes: np.ndarray, extent: Sequence[float], rng: np.random.Generator, radius_range=(0.3, 2.0)
) -> np.ndarray:
    """Scale, rotate (about z) and shift a real SWC morphology so it spans about a box of
    ``extent`` (z, y, x) µm; radii are rescaled into ``radius_range`` µm. Parts outside the
    box are kept (they are clipped when rendered)."""
    out = nodes.astype(np.float64).copy()
    xyz = out[:, 2:5] - out[:, 2:5].mean(0)
    theta = rng.uniform(0, 2 * np.pi)
    c, s = np.cos(theta), np.sin(theta)
    xyz = xyz @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T
    xyz -= (xyz.min(0) + xyz.max(0)) / 2
    span = np.ptp(xyz, axis=0) + 1e-9
    ez, ey, ex = extent
    scale = rng.uniform(1.0, 3.0) * min(ex / span[0], ey / span[1])
    xyz = xyz * scale
    xyz[:, 2] *= min(1.0, 0.9 * ez / (span[2] * scale))  # flatten into the stack's depth
    out[:, 2:5] = xyz + np.array([ex, ey, ez]) / 2
    r = out[:, 5]
    lo, hi = np.percentile(r, [5, 95]) if len(r) > 1 else (r.min(), r.max() + 1)
    out[:, 5] = np.interp(r, [lo, hi + 1e-9], radius_range)
    return out


# -- rendering --------------------------------------------------------------------------------
def _edges(nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (child, parent) into ``nodes``."""
    index = {int(i): k for k, i in enumerate(nodes[:, 0])}
    child, parent = [], []
    for k, p in enumerate(nodes[:, 6]):
        if p >= 0 and int(p) in index:
            child.append(k)
            parent.append(index[int(p)])
    return np.asarray(child, dtype=int), np.asarray(parent, dtype=int)


def rasterise(
    nodes_vox: np.ndarray,
    shape: Sequence[int],
    voxel_size: Sequence[float],
    brightness: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Tubes of the SWC radius (µm) around every edge: returns (mask bool, density float32).

    ``nodes_vox`` holds x, y, z in voxels; a voxel is inside when its centre lies within
    the interpolated radius of the segment (physical distance), and the voxels the
    centreline passes through are always inside, so thin neurites stay connected.
    ``brightness`` (per node) scales the density.
    """
    shape = tuple(int(s) for s in shape)
    vz, vy, vx = (float(v) for v in voxel_size)
    scale = np.array([vx, vy, vz])
    mask = np.zeros(shape, dtype=bool)
    density = np.zeros(shape, dtype=np.float32)
    bright = np.ones(len(nodes_vox)) if brightness is None else brightness
    child, parent = _edges(nodes_vox)
    pts = nodes_vox[:, 2:5]
    rad = nodes_vox[:, 5]
    limit = np.array([shape[2], shape[1], shape[0]]) - 1
    for c, p in zip(child, parent):
        a, b = pts[p], pts[c]
        rmax = max(rad[p], rad[c])
        lo = np.floor(np.minimum(a, b) - rmax / scale - 1).astype(int)
        hi = np.ceil(np.maximum(a, b) + rmax / scale + 1).astype(int)
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, limit)
        if np.any(hi < lo):
            continue
        xs, ys, zs = (np.arange(lo[i], hi[i] + 1) for i in range(3))
        gz, gy, gx = np.meshgrid(zs, ys, xs, indexing="ij")
        q = np.stack([gx, gy, gz], axis=-1).astype(np.float64)
        ab = (b - a) * scale
        denom = float(ab.dot(ab)) or 1e-12
        t = np.clip(((q - a) * scale) @ ab / denom, 0.0, 1.0)
        closest = a * scale + t[..., None] * ab
        dist = np.linalg.norm(q * scale - closest, axis=-1)
        r = rad[p] + t * (rad[c] - rad[p])
        inside = dist <= r
        sl = (slice(lo[2], hi[2] + 1), slice(lo[1], hi[1] + 1), slice(lo[0], hi[0] + 1))
        mask[sl] |= inside
        # soft tube profile for the image, brightness interpolated along the edge
        value = (bright[p] + t * (bright[c] - bright[p])) * np.clip(1.2 - (dist / np.maximum(r, 1e-3)) ** 2, 0, 1)
        np.maximum(density[sl], value.astype(np.float32), out=density[sl])
        # centreline voxels
        n = int(np.ceil(np.abs(b - a).max() * 2)) + 1
        line = a + np.linspace(0, 1, n)[:, None] * (b - a)
        idx = np.round(line).astype(int)
        ok = np.all((idx >= 0) & (idx <= limit), axis=1)
        idx = idx[ok]
        mask[idx[:, 2], idx[:, 1], idx[:, 0]] = True
        bl = (bright[p] + np.linspace(0, 1, n)[ok] * (bright[c] - bright[p])).astype(np.float32)
        np.maximum.at(density, (idx[:, 2], idx[:, 1], idx[:, 0]), bl)
    return mask, density


def labelling(nodes: np.ndarray, rng: np.random.Generator, unevenness: float = 0.5) -> np.ndarray:
    """Per-node brightness: a smooth random drift along the arbor, varicosities and faint stretches."""
    n = len(nodes)
    index = {int(i): k for k, i in enumerate(nodes[:, 0])}
    level = np.ones(n)
    for k in range(n):  # SWC order: parents usually come first
        p = nodes[k, 6]
        base = level[index[int(p)]] if p >= 0 and int(p) in index and index[int(p)] < k else 1.0
        level[k] = np.clip(base * np.exp(rng.normal(scale=0.08 * unevenness)), 0.25, 2.5)
    beads = rng.random(n) < 0.04
    level[beads] *= rng.uniform(1.3, 2.0, beads.sum())
    faint = rng.random(n) < 0.01 * unevenness
    level[faint] *= 0.3
    return level


def render(
    nodes_um: np.ndarray,
    shape: Sequence[int],
    voxel_size: Sequence[float],
    rng: np.random.Generator,
    psf_sigma_um: Sequence[float] = (1.2, 0.25, 0.25),
    signal: float = 200.0,
    background: float = 30.0,
    gradient: float = 0.5,
    read_noise: float = 4.0,
    debris: int = 30,
    unevenness: float = 0.5,
) -> Render:
    """Render an SWC morphology (µm) into a uint16 LM-like stack of ``shape`` (z, y, x)."""
    shape = tuple(int(s) for s in shape)
    vz, vy, vx = (float(v) for v in voxel_size)
    vox = nodes_um.astype(np.float64).copy()
    vox[:, 2:5] = vox[:, 2:5] / np.array([vx, vy, vz])
    mask, density = rasterise(vox, shape, voxel_size, labelling(nodes_um, rng, unevenness))
    # out-of-arbor debris: small bright blobs, not neuron
    blobs = np.zeros(shape, dtype=np.float32)
    for _ in range(int(debris)):
        c = [rng.integers(0, s) for s in shape]
        if mask[tuple(c)]:
            continue
        blobs[tuple(c)] = rng.uniform(0.5, 3.0)
    blobs = ndi.grey_dilation(blobs, size=(1, 3, 3))
    image = density + blobs
    sigma = [max(s / v, 0.3) for s, v in zip(psf_sigma_um, (vz, vy, vx))]
    image = ndi.gaussian_filter(image, sigma)
    peak = np.percentile(image[mask], 90) if mask.any() else 1.0
    image = image / max(peak, 1e-6) * signal
    # smooth background: a linear gradient in a random direction plus low-frequency haze
    zz, yy, xx = np.meshgrid(*(np.linspace(-1, 1, s) for s in shape), indexing="ij")
    direction = rng.normal(size=3)
    bg = 1 + gradient * (direction[0] * zz + direction[1] * yy + direction[2] * xx) / np.linalg.norm(direction)
    haze = ndi.gaussian_filter(rng.normal(size=shape).astype(np.float32), [max(s / 6, 1) for s in shape])
    bg = background * np.clip(bg + haze * 3.0 * gradient, 0.2, None)
    expected = np.clip(image + bg, 0, None)
    counts = rng.poisson(expected).astype(np.float32) + rng.normal(scale=read_noise, size=shape).astype(np.float32)
    stack = np.clip(np.round(counts + 100.0), 0, 65535).astype(np.uint16)  # camera offset 100
    return Render(stack, mask, vox, (vz, vy, vx))


def render_sample(
    rng: np.random.Generator,
    shape: Sequence[int] = (40, 160, 160),
    morphology: Optional[np.ndarray] = None,
) -> Render:
    """A random render: voxel size, PSF, contrast, noise, debris drawn at random; the
    morphology is a random tree unless one (SWC, any units) is given."""
    shape = tuple(int(s) for s in shape)
    vxy = float(rng.uniform(0.25, 0.6))
    vz = float(rng.uniform(0.8, 2.0))
    voxel = (vz, vxy, vxy)
    extent = [s * v for s, v in zip(shape, voxel)]
    if morphology is None:
        nodes = random_tree(rng, extent, step=max(vxy, 0.5))
    else:
        nodes = fit_morphology(morphology, extent, rng, radius_range=(0.5 * vxy, 4 * vxy))
    return render(
        nodes,
        shape,
        voxel,
        rng,
        psf_sigma_um=(rng.uniform(0.6, 1.5), rng.uniform(0.12, 0.3), rng.uniform(0.12, 0.3)),
        signal=float(rng.uniform(25, 400)),
        background=float(rng.uniform(10, 80)),
        gradient=float(rng.uniform(0.1, 0.8)),
        read_noise=float(rng.uniform(2, 8)),
        debris=int(rng.integers(5, 60)),
        unevenness=float(rng.uniform(0.3, 1.0)),
    )


def centreline_points(nodes_vox: np.ndarray, spacing: float = 0.5) -> np.ndarray:
    """Points (z, y, x) every ``spacing`` voxels along all edges of an SWC in voxel units."""
    child, parent = _edges(nodes_vox)
    pts = [nodes_vox[:, [4, 3, 2]]]
    for c, p in zip(child, parent):
        a, b = nodes_vox[p, [4, 3, 2]], nodes_vox[c, [4, 3, 2]]
        n = int(np.ceil(np.linalg.norm(b - a) / spacing))
        if n > 1:
            pts.append(a + np.linspace(0, 1, n + 1)[1:-1, None] * (b - a))
    return np.concatenate(pts)
