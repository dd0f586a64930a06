"""Let torchvision (and timm, which imports it) load on a CPU-only torch build.

torchvision 0.28's compiled ops are built for CUDA; on the CPU torch wheel `import torchvision`
raises `RuntimeError: operator torchvision::nms does not exist` while registering fake kernels.
Declaring the two op schemas it looks for first lets the import succeed. Models and transforms
work afterwards; `torchvision.ops.nms` and `torchvision.io` do not (the lab uses PIL for I/O).
The fix runs only when the plain import fails, so a CUDA build is left untouched.
"""
import sys

import torch

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library = None  # keep the Library alive: dropping it would unregister the schemas
applied = False


def _drop_partial_import():
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def ensure_torchvision():
    """Import torchvision, declaring the missing op schemas only if the plain import fails."""
    global _library, applied
    try:
        import torchvision  # noqa: F401
        return False
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
    _drop_partial_import()
    _library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS.values():
        _library.define(schema)
    import torchvision  # noqa: F401,F811
    applied = True
    return True


ensure_torchvision()
