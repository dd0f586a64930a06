"""latent-geometry lab: spherical autoencoders, Riemannian flow matching, probes.

Time convention for the whole package (see lab.geometry): t = 0 is noise, t = 1 is data.
"""
from lab.infra import torchvision_fix  # noqa: F401  (makes torchvision/timm importable on a CPU torch)
from lab.infra import progress  # noqa: F401  (text progress bars in batch kernels)


def check_choice(name, value, allowed):
    """Raise ValueError naming the parameter and its allowed values unless value is one of them."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r}; allowed: {', '.join(map(repr, allowed))}")
