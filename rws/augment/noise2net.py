"""DeepAugment's image-to-image perturbations: Noise2Net (random weights, no download) and a hook for
a user's pre-trained image-to-image network (EDSR, CAE, ...).

    n2n = Noise2Net(fraction=0.5)                        # DeepAugment's defaults
    x_aug, idx = n2n(x, generator)                       # idx: the perturbed images (int(0.5 B) of them)

Noise2Net (Hendrycks et al., "The Many Faces of Robustness", ICCV 2021; hendrycks/imagenet-r,
``DeepAugment/train_noise2net.py``) is a small Res2Net: ``blocks`` (4) residual Res2Net bottlenecks
``z <- z + eps * block(z)``, each ``1x1 conv (3 -> scale * hidden) -> norm -> ReLU``, ``scale - 1``
hierarchical ``KxK`` convs with dilation ``D`` (``K`` in {1, 3}, ``D`` in {1, 2, 3}, drawn per conv;
each conv sees its split plus the previous conv's output) ``-> norm -> ReLU``, the last split passed
through, ``1x1 conv (scale * hidden -> 3) -> norm``. Every image gets its own random weights
(the reference runs the half batch as one image with ``groups=batch`` convs; so does this), drawn
afresh for every batch with PyTorch's default conv initialisation (``U(+-1/sqrt(fan_in))``, biases on
the hierarchical convs only); the norms are the reference's train-mode BatchNorm over that grouped
"image", i.e. a per-image, per-channel normalisation without affine parameters. The strength
``eps ~ U(max_eps / 2, max_eps)`` is drawn once per batch (reference: ``--noisenet-max-eps 0.75``),
hidden width 16, scale 4. The reference perturbs ImageNet-normalised tensors; here the network runs
on ``(x - mean) / std`` (default: ImageNet's mean/std; ``AugMixModule`` passes the model's own) and
the result is mapped back and clamped to [0, 1].

What the reference leaves open and the choice here: the kernel sizes and dilations are drawn once
(at the first batch, from the generator) and kept, as the reference draws them when the network is
built (``redraw_architecture=True`` draws them per batch too); the perturbed images are a random subset
of ``int(fraction * B)`` images drawn from the generator (the reference takes the first half of a
shuffled batch, which is the same in distribution and also holds for unshuffled batches).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FractionPerturbation:
    """An image-to-image perturbation applied to a random ``fraction`` of each batch.

    ``__call__(x, generator) -> (x', idx)``: ``x'`` equals ``x`` except at the ``int(fraction * B)``
    images ``idx`` (sorted, drawn from ``generator``), which are ``perturb(x[idx], generator)``.
    Runs without gradients. Subclasses implement ``perturb``."""

    def __init__(self, fraction: float = 0.5) -> None:
        if not 0.0 <= float(fraction) <= 1.0:
            raise ValueError(f"perturbation fraction must be in [0, 1], got {fraction}")
        self.fraction = float(fraction)

    def perturb(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(x)
        k = int(self.fraction * n)
        idx = torch.randperm(n, generator=generator, device=generator.device)[:k].sort().values.to(x.device)
        out = x.clone()
        if k:
            out[idx] = self.perturb(x[idx], generator).to(x.dtype)
        return out, idx


def _stats(values: Sequence[float] | torch.Tensor | None, default: Sequence[float]) -> torch.Tensor:
    v = torch.as_tensor(default if values is None else values, dtype=torch.float32).flatten()
    if v.numel() == 1:
        v = v.repeat(3)
    if v.numel() != 3:
        raise ValueError(f"mean/std must have 1 or 3 values, got {v.numel()}")
    return v.reshape(1, 3, 1, 1)


def _uniform(shape: tuple[int, ...], bound: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, device=generator.device)
    return ((u * 2 - 1) * bound).to(device)


def _norm(z: torch.Tensor) -> torch.Tensor:
    """Train-mode BatchNorm2d (weight 1, bias 0) of a batch-1 grouped tensor = per-channel normalisation."""
    return F.instance_norm(z, eps=1e-5)


class Noise2Net(FractionPerturbation):
    """DeepAugment's Noise2Net with fresh random weights for every batch (see the module docstring)."""

    def __init__(self, fraction: float = 0.5, max_eps: float = 0.75, hidden_planes: int = 16, scale: int = 4,
                 blocks: int = 4, redraw_architecture: bool = False,
                 mean: Sequence[float] | torch.Tensor | None = None,
                 std: Sequence[float] | torch.Tensor | None = None) -> None:
        super().__init__(fraction)
        if float(max_eps) < 0:
            raise ValueError(f"noise2net.max_eps must be >= 0, got {max_eps}")
        if int(hidden_planes) < 1 or int(scale) < 1 or int(blocks) < 1:
            raise ValueError(f"noise2net hidden_planes, scale and blocks must be >= 1, "
                             f"got {hidden_planes}, {scale}, {blocks}")
        self.max_eps, self.hidden, self.scale = float(max_eps), int(hidden_planes), int(scale)
        self.blocks, self.redraw_architecture = int(blocks), bool(redraw_architecture)
        self.mean, self.std = _stats(mean, IMAGENET_MEAN), _stats(std, IMAGENET_STD)
        self.architecture: list[list[tuple[int, int]]] | None = None
        self.last_eps: float | None = None

    def draw_architecture(self, generator: torch.Generator) -> list[list[tuple[int, int]]]:
        """(kernel size, dilation) of each hierarchical conv of each block: K in {1, 3}, D in {1, 2, 3}."""
        n_convs = max(self.scale - 1, 1)
        k = torch.randint(2, (self.blocks, n_convs), generator=generator, device=generator.device).cpu()
        d = torch.randint(3, (self.blocks, n_convs), generator=generator, device=generator.device).cpu()
        return [[(1 + 2 * int(k[b, i]), 1 + int(d[b, i])) for i in range(n_convs)] for b in range(self.blocks)]

    def _block(self, z: torch.Tensor, n: int, convs: list[tuple[int, int]], g: torch.Generator) -> torch.Tensor:
        _, _, h, w = z.shape
        hid, s, dev = self.hidden, self.scale, z.device
        out = F.conv2d(z, _uniform((n * hid * s, 3, 1, 1), 1 / math.sqrt(3), g, dev), groups=n)
        out = F.relu(_norm(out)).reshape(n, s, hid, h, w)
        if s == 1:  # Res2Net with one scale: a single hierarchical conv on the whole width
            splits, passthrough = [out[:, 0]], []
        else:
            splits, passthrough = [out[:, i] for i in range(s - 1)], [out[:, s - 1]]
        pieces, sp = [], None
        for i, (ks, dil) in enumerate(convs):
            sp = splits[i] if sp is None else sp + splits[i]
            bound = 1 / math.sqrt(hid * ks * ks)
            sp = F.conv2d(sp.reshape(1, n * hid, h, w), _uniform((n * hid, hid, ks, ks), bound, g, dev),
                          _uniform((n * hid,), bound, g, dev), padding=(ks - 1) // 2 * dil, dilation=dil, groups=n)
            sp = F.relu(_norm(sp)).reshape(n, hid, h, w)
            pieces.append(sp)
        cat = torch.stack(pieces + passthrough, 1).reshape(1, n * s * hid, h, w)
        return _norm(F.conv2d(cat, _uniform((n * 3, s * hid, 1, 1), 1 / math.sqrt(s * hid), g, dev), groups=n))

    def perturb(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Every image of ``x`` (float (N, 3, H, W) in [0, 1]) through its own random Noise2Net."""
        n, c, h, w = x.shape
        if c != 3:
            raise ValueError(f"Noise2Net takes (N, 3, H, W) images, got {tuple(x.shape)}")
        if self.architecture is None or self.redraw_architecture:
            self.architecture = self.draw_architecture(generator)
        u = torch.rand((), generator=generator, device=generator.device, dtype=torch.float64)
        eps = float(self.max_eps / 2 + u * (self.max_eps / 2))
        self.last_eps = eps
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        z = ((x.float() - mean) / std).reshape(1, n * 3, h, w)
        for convs in self.architecture:
            z = z + eps * self._block(z, n, convs, generator)
        return (z.reshape(n, 3, h, w) * std + mean).clamp_(0, 1)


class ImageToImagePerturbation(FractionPerturbation):
    """A user's image-to-image network applied to a random ``fraction`` of each batch, like Noise2Net.

    The hook for DeepAugment's pre-trained distortion networks (EDSR, CAE) or any other: ``network`` is
    an ``nn.Module`` or a config dict with ``_target_`` (instantiated with Hydra; load its weights in
    its constructor: nothing is downloaded here). It runs in eval mode without gradients on
    ``(x - mean) / std`` (default mean 0, std 1: pixels in [0, 1]; EDSR-style [0, 255] inputs are
    ``mean: 0, std: 0.00392156862745098``); its output is mapped back, resized to the input size if it
    differs (EDSR x4 upsamples; a box filter (``area``) down, bilinear up) and clamped to [0, 1].
    DeepAugment perturbs the network itself per image set (flipped, zeroed or negated filters...):
    a network that defines ``resample(generator)`` gets it called before every batch, with the method's
    private generator, to draw its next distortion. The network is not a submodule of the training
    module: it is not trained and stays out of checkpoints and exports."""

    def __init__(self, network: nn.Module | dict[str, Any], fraction: float = 0.5,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        super().__init__(fraction)
        if isinstance(network, dict):
            if "_target_" not in network:
                raise ValueError("image_to_image.network must be a module or a config with _target_, "
                                 f"got keys {sorted(network)}")
            from hydra.utils import instantiate

            network = instantiate(network, _convert_="all")
        if not callable(network):
            raise ValueError(f"image_to_image.network must be callable (an nn.Module), got {type(network).__name__}")
        self.network = network
        self.mean, self.std = _stats(mean, (0.0,)), _stats(std, (1.0,))

    def perturb(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        net = self.network
        if isinstance(net, nn.Module):
            net.to(x.device).eval()
        if hasattr(net, "resample"):
            net.resample(generator)
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        y = net((x.float() - mean) / std)
        if not torch.is_tensor(y) or y.ndim != 4 or y.shape[:2] != x.shape[:2]:
            raise ValueError(f"image_to_image network must map (N, 3, H, W) to (N, 3, H', W'), "
                             f"got {tuple(x.shape)} -> {getattr(y, 'shape', type(y).__name__)}")
        y = y.float() * std + mean
        if y.shape[-2:] != x.shape[-2:]:  # back to the input size: box filter down, bilinear up
            down = y.shape[-2] >= x.shape[-2] and y.shape[-1] >= x.shape[-1]
            y = F.interpolate(y, size=x.shape[-2:], mode="area") if down else \
                F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return y.clamp_(0, 1)


def build_perturbation(kind: str, cfg: dict[str, Any] | None, mean: Sequence[float] | torch.Tensor | None = None,
                       std: Sequence[float] | torch.Tensor | None = None) -> FractionPerturbation | None:
    """``method.noise2net`` / ``method.image_to_image`` config (a dict or null) -> the perturbation.
    Noise2Net gets the model's ``mean``/``std`` unless its config sets them."""
    if not cfg:
        return None
    cfg = dict(cfg)
    if kind == "noise2net":
        cfg.setdefault("mean", mean)
        cfg.setdefault("std", std)
        try:
            return Noise2Net(**cfg)
        except TypeError as e:
            raise ValueError(f"method.noise2net: {e}; keys: fraction, max_eps, hidden_planes, scale, blocks, "
                             "redraw_architecture, mean, std") from None
    if kind == "image_to_image":
        if "network" not in cfg:
            raise ValueError("method.image_to_image needs network: {_target_: ...} "
                             "(and optionally fraction, mean, std)")
        try:
            return ImageToImagePerturbation(**cfg)
        except TypeError as e:
            raise ValueError(f"method.image_to_image: {e}; keys: network, fraction, mean, std") from None
    raise ValueError(f"unknown perturbation kind {kind!r}: noise2net | image_to_image")
