"""HAE / DINO-SAE: a frozen DINO ViT whose patch embedding is replaced by a hierarchical conv stem.

    student(x) = norm(blocks(pos_embed(stem(x))))          tokens [B, N, C], grid = (H/16, W/16)
    teacher(x) = norm(blocks(pos_embed(patch_embed(x'))))  x' = x resized to grid * patch (64 -> 56)
    loss       = L1 + LPIPS + lambda_cos * (1 - cos(student, teacher))     (stage 1, see stages.py)

The teacher sees the image resized so that its patch grid equals the student's token grid, so the
two token sets correspond one to one (64 px student, 16x stem -> 4x4; teacher: 56 px / 14 = 4x4).
stem='patch' is the standard baseline: the student *is* the teacher (own patch embedding, frozen),
and only the decoder trains; its alignment loss is zero by construction.
Which parts train (DINO-SAE): stem + decoder; the transformer blocks stay frozen
(train_blocks=True makes a trainable copy of blocks and final norm for ablations).
"""
import copy

import torch
import torch.nn as nn

from lab import check_choice, encoders
from lab.autoencoders.decoder import conv_decoder
from lab.autoencoders.losses import ALIGN_KINDS, alignment_loss
from lab.autoencoders.stem import ConvStem

STEMS = ("conv", "patch")
DOWN = 16  # the stem's downsampling; the patch baseline uses the same token grid


class HAE(nn.Module):
    """Hierarchical-stem autoencoder on a frozen ViT teacher.

    teacher: a timm ViT module (kept frozen, built with dynamic_img_size=True) or a name for
        lab.encoders.vit ('dinov2_s_imgfocus' default; other timm names need teacher_weights).
    stem: 'conv' (hierarchical stem) or 'patch' (the teacher's own patch embedding: the baseline).
    align: 'cosine' (DINO-SAE), 'mse' or 'mse_matched' (the ablation at the cosine loss's effective
        weight: losses.matched_mse).
    decoder: an nn.Module mapping [B, N, C] -> [B, 3, 16h, 16w] (linear output trained towards
        [0, 1], with .last_layer), or None for conv_decoder(decoder_size).
    image_size: the training resolution; sets .grid and, for a named teacher, the size its position
        grid is interpolated to.
    """

    def __init__(self, teacher="dinov2_s_imgfocus", stem="conv", align="cosine", decoder=None, *,
                 train_blocks=False, image_size=64, stem_channels=(64, 128, 256), stem_kernel=3,
                 decoder_size="tiny", teacher_weights=None):
        super().__init__()
        check_choice("stem", stem, STEMS)
        check_choice("align", align, ALIGN_KINDS)
        if image_size % DOWN:
            raise ValueError(f"image_size={image_size} must be a multiple of {DOWN}")
        if stem == "patch" and train_blocks:
            raise ValueError("train_blocks=True needs stem='conv' (the patch baseline is the frozen teacher)")
        self.image_size, self.stem_kind, self.align = image_size, stem, align
        if isinstance(teacher, str):
            # DINOv2-S/14: build its position grid at the teacher's input size (64 px -> 56 px)
            size = image_size // DOWN * 14 if teacher == encoders.DINO_NAME else None
            teacher = encoders.vit(teacher, weights=teacher_weights, img_size=size)
        if not getattr(teacher, "dynamic_img_size", False):
            raise ValueError("the teacher ViT must be built with dynamic_img_size=True "
                             "(lab.encoders.vit does this; timm.create_model(..., dynamic_img_size=True))")
        self.teacher = encoders.freeze(teacher)
        self.patch = encoders.patch_size(teacher)
        self.width = teacher.embed_dim
        self.stem = ConvStem(self.width, stem_channels, stem_kernel) if stem == "conv" else None
        # the student shares the teacher's frozen blocks unless they are to be trained
        self.blocks = copy.deepcopy(teacher.blocks).requires_grad_(True) if train_blocks else None
        self.norm = copy.deepcopy(teacher.norm).requires_grad_(True) if train_blocks else None
        self.decoder = decoder if decoder is not None else conv_decoder(decoder_size, in_dim=self.width)

    # ------------------------------------------------------------ geometry

    @property
    def grid(self):
        """Token grid (h, w) at the training resolution."""
        return self.image_size // DOWN, self.image_size // DOWN

    def token_grid(self, height, width):
        return height // DOWN, width // DOWN

    def train(self, mode=True):
        super().train(mode)
        self.teacher.eval()  # the teacher is a fixed function, whatever mode the student is in
        return self

    # ------------------------------------------------------------ encoder side

    @torch.no_grad()
    def teacher_features(self, images01):
        """Teacher tokens [B, N, C] of the image resized to the student's grid times the patch."""
        h, w = self.token_grid(*images01.shape[-2:])
        size = (h * self.patch[0], w * self.patch[1])
        return encoders.patch_tokens(self.teacher, images01, size=size)

    def encode(self, images01):
        """Student tokens [B, N, C]; differentiable w.r.t. the stem (and blocks if trained)."""
        if self.stem is None:
            return self.teacher_features(images01)
        H, W = images01.shape[-2:]
        if H % DOWN or W % DOWN:
            raise ValueError(f"image size {(H, W)} must be divisible by {DOWN}")
        vit = self.teacher
        x = self.stem.features(encoders.normalize(images01, vit)).permute(0, 2, 3, 1)  # NHWC
        x = vit._pos_embed(x)  # prefix tokens + position grid interpolated to (H/16, W/16)
        x = vit.norm_pre(vit.patch_drop(x))
        x = (vit.blocks if self.blocks is None else self.blocks)(x)
        x = (vit.norm if self.norm is None else self.norm)(x)
        return x[:, vit.num_prefix_tokens:]

    def alignment_loss(self, z_student, z_teacher):
        """1 - cos per token (align='cosine'), MSE ('mse') or the matched MSE ('mse_matched'), averaged."""
        return alignment_loss(z_student, z_teacher, self.align)

    def encoder_parameters(self):
        """What stages 1-2 train on the encoder side: the stem (and blocks/norm if train_blocks)."""
        mods = [m for m in (self.stem, self.blocks, self.norm) if m is not None]
        return [p for m in mods for p in m.parameters()]

    # ------------------------------------------------------------ decoder side

    def decode(self, tokens, grid=None):
        """Tokens [B, N, C] -> images in [0, 1] (square grid unless grid=(h, w))."""
        return self.decoder(tokens, grid).clamp(0, 1)

    def forward(self, images01):
        """Reconstruction in [0, 1]."""
        z = self.encode(images01)
        return self.decode(z, self.token_grid(*images01.shape[-2:]))

    def checkpoint_modules(self):
        """{name: module} of everything but the frozen teacher: what a checkpoint stores."""
        mods = dict(stem=self.stem, blocks=self.blocks, norm=self.norm, decoder=self.decoder)
        return {k: m for k, m in mods.items() if m is not None}
