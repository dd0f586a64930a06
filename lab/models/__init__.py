"""Generators on token latents [B, N, C]."""
from lab.models.dit import DiT, SIZES, dit  # noqa: F401
