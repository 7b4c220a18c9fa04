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

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

FMU_MODES = ("sub", "sum", "cat")
DEFAULT_KN = (32, 64, 96, 128, 256)
_MIN_Z_FOR_3D_POOL = 8


def merge_features(a: torch.Tensor, b: torch.Tensor, mode: str) -> torch.Tensor:
    """Feature merging unit: combine two streams of equal shape."""
    if mode == "sub":
        return (a - b).abs()
    if mode == "sum":
        return a + b
    if mode == "cat":
        return torch.cat([a, b], dim=1)
    raise ValueError(f"unknown feature merging mode {mode!r}; expected one of {FMU_MODES}")


def _use_onednn(x: torch.Tensor) -> bool:
    # PyTorch routes fp32 3D convolutions on CPU to a slow reference kernel; oneDNN's
    # kernel gives the same result about 5x faster. Only used without autograd.
    # Not under torch.compile, which lowers convolutions itself.
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled() and _ONEDNN
            and not torch.compiler.is_compiling())


_ONEDNN = torch.backends.mkldnn.is_available()


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
        return F.leaky_relu(self.norm(x), 0.01)


class ConvPair(nn.Module):
    """Two ConvNormAct layers (names ``conv1``, ``conv2``)."""

    def __init__(self, cin: int, cout: int, planar: bool):
        super().__init__()
        self.conv1 = ConvNormAct(cin, cout, planar)
        self.conv2 = ConvNormAct(cout, cout, planar)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


def _pool_planar(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool3d(x, (1, 2, 2), (1, 2, 2))


def _pool_volumetric(x: torch.Tensor) -> torch.Tensor:
    # Thin volumes keep their z extent: only xy is halved below 8 slices.
    if x.shape[2] >= _MIN_Z_FOR_3D_POOL:
        return F.max_pool3d(x, 2, 2)
    return _pool_planar(x)


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


class Decoder(Stage):
    """Decoder stage: upsample two deep streams to the skip size, merge pairs, concatenate."""

    def __init__(self, cin: int, cout: int, outputs: str, fmu: str):
        super().__init__(cin, cout, outputs)
        self.fmu = fmu

    def forward(self, deep_a, skip_a, deep_b, skip_b):
        size = skip_a.shape[2:]
        up_a = F.interpolate(deep_a, size=size, mode="trilinear", align_corners=False)
        up_b = F.interpolate(deep_b, size=size, mode="trilinear", align_corners=False)
        merged = torch.cat(
            [merge_features(skip_a, skip_b, self.fmu), merge_features(up_a, up_b, self.fmu)], dim=1
        )
        return self.run(merged)


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
        up = lambda name: getattr(self, name + suffix)  # noqa: E731
        u41 = up("up41")(e["b4"][0], e["41"][0], e["b5"], e["41"][1])
        u31 = up("up31")(e["b3"][0], e["32"][0], e["b4"][1], e["32"][1])
        u32 = up("up32")(u31[0], e["31"][0], u41, e["31"][1])
        u21 = up("up21")(e["b2"][0], e["23"][0], e["b3"][1], e["23"][1])
        u22 = up("up22")(u21[0], e["22"][0], u31[1], e["22"][1])
        u23 = up("up23")(u22[0], e["21"][0], u32, e["21"][1])
        u11 = up("up11")(e["b1"], e["14"][0], e["b2"][1], e["14"][1])
        u12 = up("up12")(u11, e["13"][0], u21[1], e["13"][1])
        u13 = up("up13")(u12, e["12"][0], u22[1], e["12"][1])
        u14 = up("up14")(u13, e["11"][0], u23, e["11"][1])
        return u14[0] + u14[1]

    def forward_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-sigmoid outputs (for training with BCE-with-logits)."""
        e = self.encode(x)
        return self.outputs[0](self.decode(e, "")), self.outputs2[0](self.decode(e, "_"))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        aff, fg = self.forward_logits(x)
        return torch.sigmoid(aff), torch.sigmoid(fg)

    def describe(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        return f"MNet(kn={self.kn}, fmu={self.fmu!r}), {n / 1e6:.2f} M parameters"
