"""MNet: the SegNeuron multi-stream 2D/3D U-Net, with the released checkpoint's names.

Four encoder streams run side by side at different depths. Stream 1 uses only
in-plane (1x3x3) convolutions, deeper streams start from the 3D (3x3x3) branch of
the stream above. Where two streams meet, a feature merging unit (FMU) combines
them: ``sub`` = |a - b|, ``sum`` = a + b, ``cat`` = concatenation.

Every attribute name below (``down11``, ``up14_``, ``CB2d.conv1.norm`` ...) is a
contract with the released weights: the official state dict loads with
``strict=True``.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

FMU_MODES = ("sub", "sum", "cat")
DEFAULT_KN = (32, 64, 96, 128, 256)
_MIN_Z_FOR_3D_POOL = 8


def merge_features(a: torch.Tensor, b: torch.Tensor, mode: str, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Feature merging unit: combine two streams of equal shape (into ``out`` when given)."""
    if mode == "sub":
        diff = torch.sub(a, b, out=out)
        return diff.abs_() if out is not None or _fast_path() else diff.abs()
    if mode == "sum":
        return torch.add(a, b, out=out)
    if mode == "cat":
        return torch.cat([a, b], dim=1, out=out)
    raise ValueError(f"unknown feature merging mode {mode!r}; expected one of {FMU_MODES}")


def _use_onednn(x: torch.Tensor) -> bool:
    # PyTorch routes fp32 3D convolutions on CPU to a slow reference kernel; oneDNN's
    # kernel gives the same result about 5x faster. Only used without autograd.
    # Not under torch.compile, which lowers convolutions itself.
    return (x.device.type == "cpu" and x.dtype == torch.float32 and _fast_path() and _ONEDNN
            and not torch.compiler.is_compiling())


_ONEDNN = torch.backends.mkldnn.is_available()
_STATE = threading.local()


def _fast_path() -> bool:
    """Inference shortcuts apply: no autograd recording, not inside ``reference_ops``."""
    return not torch.is_grad_enabled() and not getattr(_STATE, "reference", False)


@contextmanager
def reference_ops():
    """Run MNet exactly as the released code does (no inference shortcuts), in this thread."""
    previous = getattr(_STATE, "reference", False)
    _STATE.reference = True
    try:
        yield
    finally:
        _STATE.reference = previous


class ConvNormAct(nn.Module):
    """Conv3d -> InstanceNorm3d(affine) -> LeakyReLU(0.01)."""

    def __init__(self, cin: int, cout: int, planar: bool):
        super().__init__()
        kernel = (1, 3, 3) if planar else (3, 3, 3)
        pad = (0, 1, 1) if planar else (1, 1, 1)
        self.conv = nn.Conv3d(cin, cout, kernel_size=kernel, padding=pad, bias=True)
        self.norm = nn.InstanceNorm3d(cout, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _use_onednn(x):
            conv = self.conv
            x = torch.ops.aten.mkldnn_convolution(x, conv.weight, conv.bias, conv.padding, (1, 1, 1), (1, 1, 1), 1)
        else:
            x = self.conv(x)
        if _fast_path():
            # In place on the norm's fresh output: one full-size allocation less per layer.
            return F.leaky_relu_(self._normalize_fast(x), 0.01)
        return F.leaky_relu(self.norm(x), 0.01)

    def _normalize_fast(self, x: torch.Tensor) -> torch.Tensor:
        """Instance norm that keeps a channels-last tensor channels-last (``instance_norm``
        returns a contiguous tensor, so every next layer would convert it back): per-sample,
        per-channel mean and variance of the (voxels, channels) view, then one affine pass."""
        if (x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last_3d)
                or getattr(self.norm, "external_stats", False)):  # statistics set from outside
            return self.norm(x)
        n, c = x.shape[:2]
        rows = x.permute(0, 2, 3, 4, 1).reshape(n, -1, c)  # a view for channels-last memory
        if rows.dtype in (torch.float16, torch.bfloat16):  # statistics in fp32, as instance_norm keeps them
            rows = rows.float()
        stats = [channel_mean_var(rows[i]) for i in range(n)]
        mean = torch.stack([m for m, _ in stats])
        var = torch.stack([v for _, v in stats])
        norm = self.norm
        scale = norm.weight * torch.rsqrt(var + norm.eps)
        shift = norm.bias - mean * scale
        # in place (x is the convolution's fresh output): no second full-size tensor per layer
        return torch.addcmul(shift.view(n, c, 1, 1, 1), x, scale.view(n, c, 1, 1, 1), out=x)


#: rows per partial sum in ``channel_mean_var`` (short sums keep fp32 rounding small)
_STATS_CHUNK = 1024
#: below this many rows the plain two-pass statistics are as fast
_STATS_MIN_ROWS = 1 << 16
#: channels whose mean^2 exceeds this many variances get exact two-pass statistics (E[x^2] - E[x]^2
#: loses about ratio x 4e-8 of the variance; MNet's layers stay below ~40)
_STATS_MAX_RATIO = 100.0


def channel_mean_var(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column mean and (biased) variance of a (voxels, channels) fp32 matrix, in one pass.

    Sums and sums of squares are taken over chunks of ``_STATS_CHUNK`` rows (the squares as
    the diagonals of one batched matrix product, which reads the data once) and the partial
    sums are added in fp64, so E[x^2] - E[x]^2 keeps about fp32 precision: on MNet's layers,
    where mean^2 / variance reaches ~40, the variance is within ~3e-6 (relative) of the
    two-pass value, at a fifth of its time for full-resolution layers; a tensor with a channel
    whose mean^2 / variance exceeds ``_STATS_MAX_RATIO`` gets the two-pass variance instead.
    """
    v, c = rows.shape
    k = v // _STATS_CHUNK
    if v < _STATS_MIN_ROWS or not rows.is_contiguous():
        mean = rows.mean(0)
        return mean, (rows - mean).square_().mean(0)
    head = rows[: k * _STATS_CHUNK].view(k, _STATS_CHUNK, c)
    with torch.autocast(rows.device.type, enabled=False):  # autocast would run bmm in bf16 / fp16
        squares = torch.bmm(head.transpose(1, 2), head).diagonal(dim1=1, dim2=2).double().sum(0)
    sums = head.sum(1).double().sum(0)
    tail = rows[k * _STATS_CHUNK :].double()
    if tail.shape[0]:
        squares += tail.square().sum(0)
        sums += tail.sum(0)
    mean = sums / v
    var = (squares / v - mean * mean).clamp_min_(0.0)
    if bool((mean * mean > _STATS_MAX_RATIO * var).any()):  # cancellation would cost precision: two passes
        mean32 = mean.to(rows.dtype)
        return mean32, (rows - mean32).square_().mean(0)
    return mean.to(rows.dtype), var.to(rows.dtype)


class ConvPair(nn.Module):
    """Two ConvNormAct layers (names ``conv1``, ``conv2``)."""

    def __init__(self, cin: int, cout: int, planar: bool):
        super().__init__()
        self.conv1 = ConvNormAct(cin, cout, planar)
        self.conv2 = ConvNormAct(cout, cout, planar)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


def _pool_planar(x: torch.Tensor) -> torch.Tensor:
    if _fast_path():
        return _pairwise_max_pool(x, pool_z=False)
    return F.max_pool3d(x, (1, 2, 2), (1, 2, 2))


def _pool_volumetric(x: torch.Tensor) -> torch.Tensor:
    # Thin volumes keep their z extent: only xy is halved below 8 slices.
    if x.shape[2] >= _MIN_Z_FOR_3D_POOL:
        return _pairwise_max_pool(x, pool_z=True) if _fast_path() else F.max_pool3d(x, 2, 2)
    return _pool_planar(x)


def _pairwise_max_pool(x: torch.Tensor, pool_z: bool) -> torch.Tensor:
    """2x2 (xy) or 2x2x2 max pooling, stride = kernel, odd remainders dropped (as max_pool3d):
    the elementwise maximum of strided views, several times faster on CPU than
    max_pool3d, which also computes the indices of the maxima."""
    def pair(t: torch.Tensor, dim: int) -> torch.Tensor:
        n = t.shape[dim] // 2 * 2
        return torch.maximum(t.narrow(dim, 0, n)[(slice(None),) * dim + (slice(0, None, 2),)],
                             t.narrow(dim, 0, n)[(slice(None),) * dim + (slice(1, None, 2),)])
    if pool_z:
        x = pair(x, 2)
    return pair(pair(x, 4), 3)


class Stage(nn.Module):
    """One encoder or decoder stage: optional planar branch ``CB2d``, optional 3D branch ``CB3d``.

    ``outputs`` is "2d", "3d" or "both" and says which branches exist.
    """

    def __init__(self, cin: int, cout: int, outputs: str):
        super().__init__()
        self.outputs = outputs
        if outputs in ("2d", "both"):
            self.CB2d = ConvPair(cin, cout, planar=True)
        if outputs in ("3d", "both"):
            self.CB3d = ConvPair(cin, cout, planar=False)

    def run(self, x: torch.Tensor):
        if self.outputs == "2d":
            return self.CB2d(x)
        if self.outputs == "3d":
            return self.CB3d(x)
        return self.CB2d(x), self.CB3d(x)


class Encoder(Stage):
    """Encoder stage. ``inputs``: "none" (first stage), "2d", "3d" or "both" (two streams, merged)."""

    def __init__(self, cin: int, cout: int, inputs: str, outputs: str, fmu: str):
        super().__init__(cin, cout, outputs)
        self.inputs = inputs
        self.fmu = fmu

    def forward(self, x):
        if self.inputs == "2d":
            x = _pool_planar(x)
        elif self.inputs == "3d":
            x = _pool_volumetric(x)
        elif self.inputs == "both":
            planar, volumetric = x
            x = merge_features(_pool_planar(planar), _pool_volumetric(volumetric), self.fmu)
        return self.run(x)


def upsample_linear(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Trilinear resize to ``size`` (``align_corners=False``), as ``F.interpolate`` computes it.

    In inference, contiguous tensors are resized one axis at a time (trilinear interpolation
    is separable): an axis that doubles takes a direct path (each output is 0.75 / 0.25 of its
    two nearest inputs), about 2-3x faster on CPU than PyTorch's trilinear kernel for that
    layout; equal to it up to float rounding. Channels-last tensors, where PyTorch's kernel is
    fast, and autograd use ``F.interpolate``.
    """
    size = tuple(int(s) for s in size)
    if x.dim() == 5 and x.is_contiguous() and _fast_path():
        for dim in (4, 3, 2):  # smallest tensor first
            x = _resize_axis(x, dim, size[dim - 2])
        return x
    return F.interpolate(x, size=size, mode="trilinear", align_corners=False)


def _resize_axis(x: torch.Tensor, dim: int, target: int) -> torch.Tensor:
    """Linear resize along one spatial axis only (half-pixel centres, clamped edges)."""
    if x.shape[dim] == target:
        return x
    if target == 2 * x.shape[dim] and x.is_contiguous():
        return _double_axis(x, dim)
    size = list(x.shape[2:])
    size[dim - 2] = target
    return F.interpolate(x, size=size, mode="trilinear", align_corners=False)


def _double_axis(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Linear 2x upsampling along one axis with half-pixel centres and clamped edges."""
    n = x.shape[dim]
    pairs = list(x.shape)
    pairs.insert(dim + 1, 2)
    out = x.new_empty(pairs)
    even, odd = out.select(dim + 1, 0), out.select(dim + 1, 1)
    torch.mul(x, 0.75, out=even)
    torch.mul(x, 0.75, out=odd)
    if n > 1:
        even.narrow(dim, 1, n - 1).add_(x.narrow(dim, 0, n - 1), alpha=0.25)
        odd.narrow(dim, 0, n - 1).add_(x.narrow(dim, 1, n - 1), alpha=0.25)
    even.narrow(dim, 0, 1).add_(x.narrow(dim, 0, 1), alpha=0.25)
    odd.narrow(dim, n - 1, 1).add_(x.narrow(dim, n - 1, 1), alpha=0.25)
    doubled = list(x.shape)
    doubled[dim] *= 2
    return out.view(doubled)


def merge_upsampled(deep_a: torch.Tensor, deep_b: torch.Tensor, size: Sequence[int], mode: str,
                    out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``merge_features`` of the two deep streams after trilinear upsampling to ``size``.

    Upsampling is linear and separable, so for ``sub`` (|up(a) - up(b)| = |up(a - b)|) and
    ``sum`` the streams are merged at low resolution and upsampled once. Where one stream is
    already at the target size along an axis (a planar stream keeps its z), the other is
    resized along that axis alone first. Equal to the released computation up to rounding.
    """
    size = tuple(int(s) for s in size)
    if mode in ("sub", "sum") and _fast_path():
        a, b = deep_a, deep_b
        for dim in (2, 3, 4):
            n_a, n_b, target = a.shape[dim], b.shape[dim], size[dim - 2]
            if n_a == n_b:
                continue
            if n_a == target:
                b = _resize_axis(b, dim, target)
            elif n_b == target:
                a = _resize_axis(a, dim, target)
            else:
                break
        else:
            low = a - b if mode == "sub" else a + b
            if out is not None and low.shape[2] == size[0]:
                done = _upsample_planes_into(low, out, mode == "sub")
                if done is not None:
                    return done
            merged = upsample_linear(low, size)
            if out is not None:  # the last pass writes into out
                return torch.abs(merged, out=out) if mode == "sub" else out.copy_(merged)
            return merged.abs_() if mode == "sub" else merged
    return merge_features(F.interpolate(deep_a, size=size, mode="trilinear", align_corners=False),
                          F.interpolate(deep_b, size=size, mode="trilinear", align_corners=False), mode, out=out)


#: z planes per piece in ``_upsample_planes_into`` (the temporary is this many planes, not the stack)
_PLANES_PER_PIECE = 8


def _planes_in_batch(x: torch.Tensor) -> Optional[torch.Tensor]:
    """A channels-last (N, C, Z, Y, X) tensor, or a channel slice of one, as a 2D channels-last
    batch of N*Z planes sharing its memory; None where no such view exists."""
    if x.dim() != 5 or x.stride(1) != 1:
        return None
    n, c, z, y, w = x.shape
    try:
        return x.permute(0, 2, 1, 3, 4).view(n * z, c, y, w)
    except RuntimeError:
        return None


def _upsample_planes_into(low: torch.Tensor, out: torch.Tensor, absolute: bool) -> Optional[torch.Tensor]:
    """Bilinear upsampling in y, x of a channels-last stack whose z already has the target size,
    written into ``out`` (a channels-last slice, e.g. of a stage input) a few planes at a time:
    equal to trilinear interpolation with an unchanged z, without a full-size temporary.
    Returns ``out``, or None (nothing written) when either tensor is not channels-last."""
    src, dst = _planes_in_batch(low), _planes_in_batch(out)
    if src is None or dst is None:
        return None
    size = tuple(out.shape[3:])
    for p0 in range(0, src.shape[0], _PLANES_PER_PIECE):
        piece = F.interpolate(src[p0 : p0 + _PLANES_PER_PIECE], size=size, mode="bilinear", align_corners=False)
        target = dst[p0 : p0 + _PLANES_PER_PIECE]
        if absolute:
            torch.abs(piece, out=target)
        else:
            target.copy_(piece)
    return out


class Decoder(Stage):
    """Decoder stage: upsample two deep streams to the skip size, merge pairs, concatenate."""

    def __init__(self, cin: int, cout: int, outputs: str, fmu: str):
        super().__init__(cin, cout, outputs)
        self.fmu = fmu

    def merged_input(self, deep_a, skip_a, deep_b, skip_b) -> torch.Tensor:
        """The stage's input: [FMU(skips), FMU(upsampled deep streams)] along channels."""
        size = skip_a.shape[2:]
        return torch.cat([merge_features(skip_a, skip_b, self.fmu),
                          merge_upsampled(deep_a, deep_b, size, self.fmu)], dim=1)

    def forward(self, deep_a, skip_a, deep_b, skip_b):
        return self.run(self.merged_input(deep_a, skip_a, deep_b, skip_b))


# Decoder stages in execution order: (stage, deep_a, skip_a, deep_b, skip_b). A source is
# (feature, branch): encoder features by their key, decoder outputs as "u" + stage number;
# branch None means the feature is a single tensor.
_DECODER_STEPS = (
    ("41", ("b4", 0), ("41", 0), ("b5", None), ("41", 1)),
    ("31", ("b3", 0), ("32", 0), ("b4", 1), ("32", 1)),
    ("32", ("u31", 0), ("31", 0), ("u41", None), ("31", 1)),
    ("21", ("b2", 0), ("23", 0), ("b3", 1), ("23", 1)),
    ("22", ("u21", 0), ("22", 0), ("u31", 1), ("22", 1)),
    ("23", ("u22", 0), ("21", 0), ("u32", None), ("21", 1)),
    ("11", ("b1", None), ("14", 0), ("b2", 1), ("14", 1)),
    ("12", ("u11", None), ("13", 0), ("u21", 1), ("13", 1)),
    ("13", ("u12", None), ("12", 0), ("u22", 1), ("12", 1)),
    ("14", ("u13", None), ("11", 0), ("u23", None), ("11", 1)),
)


#: feature key -> index of the last decoder stage that reads it
_LAST_READER = {ref[0]: i for i, (_, *refs) in enumerate(_DECODER_STEPS) for ref in refs}


def _stage_input(skip_a: Optional[torch.Tensor], skip_b: Optional[torch.Tensor], deep_a: torch.Tensor,
                 deep_b: torch.Tensor, mode: str, skips_from: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A decoder stage's input, ``cat([FMU(skips), FMU(upsampled deep streams)])``, for inference:
    both halves are written straight into one buffer in the skips' memory format (``torch.cat``
    of channels-last tensors was 16 % of a channels-last forward). ``skips_from``: a stage input
    built earlier from the same skips (which may then be None), whose first channels are copied
    instead of merged again."""
    like = skips_from if skips_from is not None else skip_a
    size = like.shape[2:]
    if mode == "cat":
        if skips_from is not None:
            return torch.cat([skips_from[:, : skips_from.shape[1] - deep_a.shape[1] * 2],
                              merge_upsampled(deep_a, deep_b, size, mode)], 1)
        return torch.cat([merge_features(skip_a, skip_b, mode), merge_upsampled(deep_a, deep_b, size, mode)], 1)
    c2 = deep_a.shape[1]
    c1 = skips_from.shape[1] - c2 if skips_from is not None else skip_a.shape[1]
    fmt = torch.channels_last_3d if (like.is_contiguous(memory_format=torch.channels_last_3d)
                                     and not like.is_contiguous()) else torch.contiguous_format
    out = torch.empty((like.shape[0], c1 + c2) + tuple(size), dtype=torch.result_type(like, deep_a),
                      device=like.device, memory_format=fmt)
    if skips_from is not None:
        out[:, :c1].copy_(skips_from[:, :c1])
    else:
        merge_features(skip_a, skip_b, mode, out=out[:, :c1])
    merge_upsampled(deep_a, deep_b, size, mode, out=out[:, c1:])
    return out


def _source(features: dict, ref: tuple) -> torch.Tensor:
    value = features[ref[0]]
    return value if ref[1] is None else value[ref[1]]


class MNet(nn.Module):
    """SegNeuron MNet: returns ``(affinities, foreground)`` probabilities.

    Shapes: input (N, C, Z, Y, X) with Y and X multiples of 16; outputs
    (N, 3, Z, Y, X) affinities (z, y, x order) and (N, 1, Z, Y, X) foreground.
    """

    def __init__(self, in_channels: int = 1, kn: Sequence[int] = DEFAULT_KN, fmu: str = "sub"):
        super().__init__()
        if fmu not in FMU_MODES:
            raise ValueError(f"fmu must be one of {FMU_MODES}, got {fmu!r}")
        if len(kn) != 5:
            raise ValueError(f"kn needs 5 channel counts, got {tuple(kn)}")
        self.in_channels = int(in_channels)
        self.kn = tuple(int(k) for k in kn)
        self.fmu = fmu
        k0, k1, k2, k3, k4 = self.kn
        f = 2 if fmu == "cat" else 1

        def enc(cin, cout, inputs, outputs):
            return Encoder(cin, cout, inputs, outputs, fmu)

        def dec(deep, shallow, outputs):
            return Decoder(f * (deep + shallow), shallow, outputs, fmu)

        # stream 1 (planar encoder)
        self.down11 = enc(in_channels, k0, "none", "both")
        self.down12 = enc(k0, k1, "2d", "both")
        self.down13 = enc(k1, k2, "2d", "both")
        self.down14 = enc(k2, k3, "2d", "both")
        self.bottleneck1 = enc(k3, k4, "2d", "2d")
        # stream 2
        self.down21 = enc(k0, k1, "3d", "both")
        self.down22 = enc(f * k1, k2, "both", "both")
        self.down23 = enc(f * k2, k3, "both", "both")
        self.bottleneck2 = enc(f * k3, k4, "both", "both")
        # stream 3
        self.down31 = enc(k1, k2, "3d", "both")
        self.down32 = enc(f * k2, k3, "both", "both")
        self.bottleneck3 = enc(f * k3, k4, "both", "both")
        # stream 4 and the deepest 3D bottleneck
        self.down41 = enc(k2, k3, "3d", "both")
        self.bottleneck4 = enc(f * k3, k4, "both", "both")
        self.bottleneck5 = enc(k3, k4, "3d", "3d")
        # two decoders with identical layout: affinity (no suffix) and foreground ("_")
        for suffix in ("", "_"):
            setattr(self, "up11" + suffix, dec(k4, k3, "2d"))
            setattr(self, "up12" + suffix, dec(k3, k2, "2d"))
            setattr(self, "up13" + suffix, dec(k2, k1, "2d"))
            setattr(self, "up14" + suffix, dec(k1, k0, "both"))
            setattr(self, "up21" + suffix, dec(k4, k3, "both"))
            setattr(self, "up22" + suffix, dec(k3, k2, "both"))
            setattr(self, "up23" + suffix, dec(k2, k1, "3d"))
            setattr(self, "up31" + suffix, dec(k4, k3, "both"))
            setattr(self, "up32" + suffix, dec(k3, k2, "3d"))
            setattr(self, "up41" + suffix, dec(k4, k3, "3d"))
        # 1x1x1 heads; only index 0 is used in forward, the rest exist in the released weights
        head_channels = (k0, k1, k1, k2, k2, k3, k3)
        self.outputs = nn.ModuleList(nn.Conv3d(c, 3, 1, bias=False) for c in head_channels)
        self.outputs2 = nn.ModuleList(nn.Conv3d(c, 1, 1, bias=False) for c in head_channels)

    def encode(self, x: torch.Tensor) -> dict:
        """Run the four encoder streams; returns every feature map the decoders need."""
        e = {}
        e["11"] = self.down11(x)
        e["12"] = self.down12(e["11"][0])
        e["13"] = self.down13(e["12"][0])
        e["14"] = self.down14(e["13"][0])
        e["b1"] = self.bottleneck1(e["14"][0])
        e["21"] = self.down21(e["11"][1])
        e["22"] = self.down22((e["21"][0], e["12"][1]))
        e["23"] = self.down23((e["22"][0], e["13"][1]))
        e["b2"] = self.bottleneck2((e["23"][0], e["14"][1]))
        e["31"] = self.down31(e["21"][1])
        e["32"] = self.down32((e["31"][0], e["22"][1]))
        e["b3"] = self.bottleneck3((e["32"][0], e["23"][1]))
        e["41"] = self.down41(e["31"][1])
        e["b4"] = self.bottleneck4((e["41"][0], e["32"][1]))
        e["b5"] = self.bottleneck5(e["41"][1])
        return e

    def decode(self, e: dict, suffix: str) -> torch.Tensor:
        """Run one decoder (``""`` affinity, ``"_"`` foreground); returns its top features."""
        f = dict(e)
        for stage, *sources in _DECODER_STEPS:
            f["u" + stage] = getattr(self, "up" + stage + suffix)(*(_source(f, ref) for ref in sources))
        return f["u14"][0] + f["u14"][1]

    def decode_both(self, e: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Both decoders side by side, for inference: every merge whose inputs are encoder
        features (all skip merges; the whole input of each stream's first stage) is computed
        once and shared, instead of once per decoder. Same values as two ``decode`` calls.

        ``e`` is emptied as it goes: each feature map is dropped after the stage that reads it
        last, so its memory serves the next stages (a lower peak: fewer fresh pages to fault in)."""
        feats = {"": dict(e), "_": dict(e)}
        last = len(_DECODER_STEPS) - 1
        for i, (stage, deep_a, skip_a, deep_b, skip_b) in enumerate(_DECODER_STEPS):
            sa, sb = _source(e, skip_a), _source(e, skip_b)  # skips: encoder features only
            shared = not (deep_a[0].startswith("u") or deep_b[0].startswith("u"))  # the stage's whole input
            first = None
            for suffix, f in feats.items():
                if first is None or not shared:
                    da, db = _source(f, deep_a), _source(f, deep_b)
                    merged = _stage_input(sa, sb, da, db, self.fmu, skips_from=first)
                    da = db = None
                    if first is None:  # the other decoder copies the merged skips from here
                        first, sa, sb = merged, None, None
                        self._drop(i, (skip_a[0], skip_b[0]), (deep_a[0], deep_b[0]), e, feats)
                    elif not shared:  # copied: the first decoder's input can go
                        first = None
                out = getattr(self, "up" + stage + suffix).run(merged)
                if i == last:  # the two streams' sum, at once (one full-size map less held)
                    out = (out[0].add_(out[1]),)
                f["u" + stage] = out
            merged = first = None
            self._drop(i, list(_LAST_READER), (), e, feats)
        return tuple(f["u14"][0] for f in feats.values())

    @staticmethod
    def _drop(stage: int, keys, keep, e: dict, feats: dict) -> None:
        """Forget the features in ``keys`` (except ``keep``) that no stage after ``stage`` reads."""
        for key in keys:
            if key in keep or _LAST_READER.get(key) != stage:
                continue
            for holder in (e, *feats.values()):
                holder.pop(key, None)

    def forward_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-sigmoid outputs (for training with BCE-with-logits)."""
        if not _fast_path():
            e = self.encode(x)
            aff, fg = self.decode(e, ""), self.decode(e, "_")
        else:
            aff, fg = self.decode_both(self.encode(x))
        return self.outputs[0](aff), self.outputs2[0](fg)

    def forward_reference(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The released code's computation, step for step (two independent decoders, each
        upsampling both deep streams before merging them, PyTorch's trilinear kernel).
        For benchmarks that compare against the official pipeline; ``forward`` gives the
        same values faster."""
        with reference_ops():
            e = self.encode(x)
            aff, fg = self.decode(e, ""), self.decode(e, "_")
            return torch.sigmoid(self.outputs[0](aff)), torch.sigmoid(self.outputs2[0](fg))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        aff, fg = self.forward_logits(x)
        return torch.sigmoid(aff), torch.sigmoid(fg)

    def describe(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        return f"MNet(kn={self.kn}, fmu={self.fmu!r}), {n / 1e6:.2f} M parameters"
