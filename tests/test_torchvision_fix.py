"""The CPU torchvision fix: applied only when the plain import fails, and leaves a working torchvision."""
import subprocess
import sys

import torch

from lab.infra import torchvision_fix


def test_plain_import_state_matches_fix_applied():
    """On a CPU torch the plain import fails with the nms error, and only then is the fix applied."""
    code = "import torchvision"
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if plain.returncode == 0:
        assert not torchvision_fix.applied  # a working torchvision (e.g. CUDA build) is left alone
    else:
        assert "torchvision::nms does not exist" in plain.stderr
        assert torchvision_fix.applied


def test_torchvision_and_timm_work_after_fix():
    import timm
    import torchvision

    out = torchvision.models.resnet18(weights=None).eval()(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 1000)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=16)
    assert vit(torch.rand(1, 3, 32, 32)).shape == (1, 1000)
    assert torchvision_fix.ensure_torchvision() is False  # second call: already imported, nothing to do
