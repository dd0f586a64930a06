"""latent-geometry lab: spherical autoencoders, Riemannian flow matching, probes.

Time convention for the whole package (see lab.geometry): t = 0 is noise, t = 1 is data.
"""
from lab import _torchvision  # noqa: F401  (makes torchvision/timm importable on a CPU torch)
