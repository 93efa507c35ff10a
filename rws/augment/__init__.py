"""Batched, seeded training augmentations for robust teachers: AugMix and DeepAugment's Noise2Net.

Everything takes float (B, 3, H, W) images in [0, 1] on any device and draws its randomness from a
``torch.Generator`` passed in (docs/teachers.md)."""

from rws.augment.augmix import (AUGMIX_OPS, EXCLUDED_OPS, augmix_batch, augmix_views, resolve_ops)
from rws.augment.noise2net import ImageToImagePerturbation, Noise2Net, build_perturbation

__all__ = ["AUGMIX_OPS", "EXCLUDED_OPS", "augmix_batch", "augmix_views", "resolve_ops",
           "Noise2Net", "ImageToImagePerturbation", "build_perturbation"]
