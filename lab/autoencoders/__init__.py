"""Autoencoders: images [B, 3, H, W] in [0, 1] <-> token latents [B, N, C].

Every autoencoder has encode(images) -> [B, N, C], decode(tokens) -> images in [0, 1], .grid, and
teacher_features(images) where there is a teacher.

    hae.py      HAE / DINO-SAE: frozen DINO ViT + hierarchical conv stem (stem.py), DC-AE-style
                conv decoder (decoder.py); stem='patch' is the standard patch-embedding baseline
    rae.py, gae.py, vae.py, vit_decoder.py: RAE, GAE, KL-VAE + spherical VAE, the ViT decoder
    fit.py      the one training loop (resume, atomic save, NaN guard, clipping, GAN) + data helpers
    stages.py   HAE's four progressive stages on it; trainers.py: RAE, GAE, KL-VAE, spherical fine-tune
    noise.py    the latent-noise conventions of RAE, GAE and DINO-SAE side by side
    recon.py    reconstruction scores and the noise-robustness curve of any autoencoder
    disc.py     discriminator on frozen DINO features; losses.py: L1/LPIPS, alignment, hinge GAN
Import the submodule you need (e.g. `from lab.autoencoders.hae import HAE`).
"""
