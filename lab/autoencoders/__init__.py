"""Autoencoders: images [B, 3, H, W] in [0, 1] <-> token latents [B, N, C].

Every autoencoder has encode(images) -> [B, N, C], decode(tokens) -> images in [0, 1], .grid, and
teacher_features(images) where there is a teacher.

    hae.py      HAE / DINO-SAE: frozen DINO ViT + hierarchical conv stem (stem.py), DC-AE-style
                conv decoder (decoder.py); stem='patch' is the standard patch-embedding baseline
    stages.py   its four progressive training stages (train_stage) and evaluate_recon
    disc.py     discriminator on frozen DINO features; losses.py: L1/LPIPS, alignment, hinge GAN
    rae.py, gae.py, vae.py, vit_decoder.py: RAE, GAE, spherical VAE and the ViT decoder
Import the submodule you need (e.g. `from lab.autoencoders.hae import HAE`).
"""
