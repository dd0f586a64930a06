"""Frozen feature networks the metrics use: EfficientNet-Lite0 (FD-effnet), LPIPS, Inception-v3 (FID).

EfficientNet-Lite0 and the LPIPS backbones come converted and checksummed from the lab cache
(lab.infra.convert fills it); Inception-v3 comes only from a weights file the user passes, since
no package carries it.
"""
import types
from pathlib import Path

import torch
import torch.nn.functional as F

import timm
from lab.encoders import freeze, normalize
from lab.infra.cache import AssetError, converted
from lab.infra.convert import LPIPS_NETS, convert_efficientnet, convert_lpips, lpips_model, skip_torch_init
from lab.infra.sources import load_weights_file


def efficientnet_lite0():
    """Frozen eval timm efficientnet_lite0 with ImageNet weights (inputs: ImageNet-normalised,
    224 px). `model.forward_features` + pooling gives the 1280-d features of FD-effnet."""
    sd = converted("efficientnet_lite0", convert_efficientnet)
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
        raise AssetError(f"efficientnet_lite0 weights do not fit: missing {missing}, unexpected {unexpected}")
    model.lab_label = "EfficientNet-Lite0 (ImageNet)"
    return freeze(model)


def lpips_net(net="alex"):
    """Frozen lpips.LPIPS with its real AlexNet/VGG16 backbone (inputs in [-1, 1], as lpips wants)."""
    if net not in LPIPS_NETS:
        raise ValueError(f"lpips_net(net={net!r}): allowed values are {sorted(LPIPS_NETS)}")
    sd = converted(f"lpips_{net}", lambda log: convert_lpips(net, log))
    model = lpips_model(net)
    model.net.load_state_dict(sd, strict=True)
    model.lab_label = f"LPIPS-{net}"
    return freeze(model)


# ----------------------------------------------------------------------------- Inception (FID)

FID_WEIGHTS_HELP = (
    "Standard FID needs the Inception weights file, which no package carries. On a machine with "
    "network download https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth (or save torchvision's inception_v3 IMAGENET1K_V1 "
    "state dict) and pass its path. Without it, use the Fréchet distance on EfficientNet-Lite0 "
    "features (FD-effnet), and never call that FID.")


def _avg3(x):
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _fid_a(self, x):  # InceptionA as in the TF FID graph: average pool excludes the padding
    b5 = self.branch5x5_2(self.branch5x5_1(x))
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg3(x))], 1)


def _fid_c(self, x):
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    b7d = self.branch7x7dbl_5(self.branch7x7dbl_4(self.branch7x7dbl_3(self.branch7x7dbl_2(self.branch7x7dbl_1(x)))))
    return torch.cat([self.branch1x1(x), b7, b7d, self.branch_pool(_avg3(x))], 1)


def _fid_e(pool):
    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pool(x))], 1)
    return forward


class InceptionFeatures(torch.nn.Module):
    """2048-d pool features of Inception-v3 for images in [0, 1] (resized to `size`, 299, bilinearly)."""

    def __init__(self, net, fid_standard, size=299):
        super().__init__()
        self.net, self.fid_standard, self.size = net, fid_standard, size
        self.lab_label = "Inception-v3 (FID, pt_inception-2015-12-05)" if fid_standard else "Inception-v3 (torchvision)"

    def forward(self, images01):
        x = F.interpolate(images01, size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = 2 * x - 1 if self.fid_standard else normalize(x)  # the TF graph wants [-1, 1]
        n = self.net
        for layer in (n.Conv2d_1a_3x3, n.Conv2d_2a_3x3, n.Conv2d_2b_3x3, n.maxpool1, n.Conv2d_3b_1x1,
                      n.Conv2d_4a_3x3, n.maxpool2, n.Mixed_5b, n.Mixed_5c, n.Mixed_5d, n.Mixed_6a,
                      n.Mixed_6b, n.Mixed_6c, n.Mixed_6d, n.Mixed_6e, n.Mixed_7a, n.Mixed_7b, n.Mixed_7c):
            x = layer(x)
        return x.mean((2, 3))


def inception_fid(path=None, size=299):
    """Inception-v3 feature network from a user's weights file (weights_only=True), never fetched.

    pt_inception-2015-12-05 (fc with 1008 classes) -> the standard FID network (TF pooling quirks);
    a torchvision inception_v3 state dict (1000 classes) -> its features (`fid_standard=False`).
    size: the input resolution; every FID uses 299, a smaller one (>= 75) is for fast tests only."""
    if path is None or not Path(path).exists():
        raise AssetError(f"inception_fid: weights file {path!r} not found. " + FID_WEIGHTS_HELP)
    from torchvision.models import inception_v3
    sd = {k: v for k, v in load_weights_file(path).items() if not k.startswith("AuxLogits.")}
    if "fc.weight" not in sd or "Mixed_7c.branch_pool.conv.weight" not in sd:
        raise AssetError(f"{path} is not an Inception-v3 state dict. " + FID_WEIGHTS_HELP)
    classes = sd["fc.weight"].shape[0]
    with skip_torch_init():  # every tensor is loaded strictly below
        net = inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=classes)
    net.load_state_dict(sd, strict=True)
    fid_standard = classes == 1008
    if fid_standard:  # pytorch-fid's FIDInceptionA/C/E_1/E_2
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
            getattr(net, name).forward = types.MethodType(_fid_a, getattr(net, name))
        for name in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
            getattr(net, name).forward = types.MethodType(_fid_c, getattr(net, name))
        net.Mixed_7b.forward = types.MethodType(_fid_e(_avg3), net.Mixed_7b)
        net.Mixed_7c.forward = types.MethodType(_fid_e(lambda x: F.max_pool2d(x, 3, 1, 1)), net.Mixed_7c)
    return freeze(InceptionFeatures(net, fid_standard, size))
