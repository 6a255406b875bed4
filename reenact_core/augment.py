"""Anti-leakage augmentations: make the reference's appearance a poor predictor of the loss, so that
the embedding learns motion rather than the reference's look.

Pixel augmentations (flip, crop/scale, colour jitter, hue rotation) build a few augmented copies of
the clip that are VAE-encoded once, before the loop (encoding per step would cost as much as the step
itself and keep the VAE on the GPU); each step then picks one copy. Conditioning augmentations (which
frame serves as the conditioning image, noise on its latent) are drawn every step.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F


@dataclasses.dataclass(frozen=True)
class Augmentations:
    hflip: bool = False  # mirror the whole clip; this mirrors the motion too, so only for symmetric motions
    crop_scale: float = 1.0  # random crop keeping at least this fraction of each side, resized back; 1 = off
    color_jitter: float = 0.0  # max relative change of brightness, contrast and saturation; 0 = off
    hue_shift: float = 0.0  # max hue rotation as a fraction of the colour circle (0.5 = any hue); 0 = off
    random_cond_frame: bool = False  # conditioning image taken from a random frame instead of frame 0
    cond_noise: float = 0.0  # Gaussian noise on the conditioning latent, relative to the latent's std; 0 = off
    variants: int = 4  # augmented copies of the clip encoded up front (only used with a pixel augmentation)

    def __post_init__(self):
        if not 0.1 <= self.crop_scale <= 1.0:
            raise ValueError(f"crop_scale must be in [0.1, 1], got {self.crop_scale}")
        if not 0.0 <= self.color_jitter <= 1.0:
            raise ValueError(f"color_jitter must be in [0, 1], got {self.color_jitter}")
        if not 0.0 <= self.hue_shift <= 0.5:
            raise ValueError(f"hue_shift must be in [0, 0.5], got {self.hue_shift}")
        if self.cond_noise < 0:
            raise ValueError(f"cond_noise must be >= 0, got {self.cond_noise}")
        if self.variants < 1:
            raise ValueError(f"variants must be >= 1, got {self.variants}")

    @property
    def changes_pixels(self) -> bool:
        return self.hflip or self.crop_scale < 1.0 or self.color_jitter > 0.0 or self.hue_shift > 0.0


def make_variants(frames: torch.Tensor, aug: Augmentations, generator: torch.Generator) -> torch.Tensor:
    """[F, H, W, 3] clip -> [V, F, H, W, 3]: copy 0 is the clip itself, the rest augmented."""
    count = aug.variants if aug.changes_pixels else 1
    copies = [frames]
    for _ in range(count - 1):
        clip = frames
        if aug.hflip and _coin(generator):
            clip = clip.flip(2)
        if aug.crop_scale < 1.0:
            clip = _random_crop(clip, aug.crop_scale, generator)
        if aug.color_jitter > 0.0:
            clip = _color_jitter(clip, aug.color_jitter, generator)
        if aug.hue_shift > 0.0:
            clip = _rotate_hue(clip, aug.hue_shift, generator)
        copies.append(clip)
    return torch.stack(copies)


def conditioning_latent(
    clip_latents: torch.Tensor, aug: Augmentations, generator: torch.Generator
) -> torch.Tensor:
    """The conditioning image's latent [C, h, w] for one step, from the clip's latents [F, C, h, w]."""
    frame = int(torch.randint(clip_latents.shape[0], (1,), generator=generator)) if aug.random_cond_frame else 0
    latent = clip_latents[frame]
    if aug.cond_noise > 0.0:
        noise = torch.randn(latent.shape, generator=generator).to(latent)
        latent = latent + aug.cond_noise * latent.std() * noise
    return latent


def _coin(generator: torch.Generator) -> bool:
    return bool(torch.rand((), generator=generator) < 0.5)


def _uniform(lo: float, hi: float, generator: torch.Generator) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


def _random_crop(clip: torch.Tensor, min_scale: float, generator: torch.Generator) -> torch.Tensor:
    """One crop for the whole clip (the same window on every frame), resized back to full size."""
    _, height, width, _ = clip.shape
    scale = _uniform(min_scale, 1.0, generator)
    ch, cw = max(1, round(height * scale)), max(1, round(width * scale))
    top = int(torch.randint(height - ch + 1, (1,), generator=generator))
    left = int(torch.randint(width - cw + 1, (1,), generator=generator))
    window = clip[:, top : top + ch, left : left + cw].permute(0, 3, 1, 2)
    resized = F.interpolate(window, size=(height, width), mode="bilinear", align_corners=False, antialias=False)
    return resized.permute(0, 2, 3, 1).clamp(0, 1)


def _color_jitter(clip: torch.Tensor, amount: float, generator: torch.Generator) -> torch.Tensor:
    """The same brightness/contrast/saturation change on every frame (colour, not motion)."""
    brightness = _uniform(1 - amount, 1 + amount, generator)
    contrast = _uniform(1 - amount, 1 + amount, generator)
    saturation = _uniform(1 - amount, 1 + amount, generator)
    out = clip * brightness
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * contrast + mean
    gray = (out * torch.tensor([0.299, 0.587, 0.114])).sum(-1, keepdim=True)
    out = (out - gray) * saturation + gray
    return out.clamp(0, 1)


def _rotate_hue(clip: torch.Tensor, max_turn: float, generator: torch.Generator) -> torch.Tensor:
    """The same hue rotation on every frame: RGB turned about the grey axis, which keeps each pixel's
    mean of R, G, B and its distance from grey (up to clipping), so a red sprite may come out green or
    blue (colour, not motion)."""
    angle = 2 * math.pi * _uniform(-max_turn, max_turn, generator)
    axis = torch.full((3,), 3**-0.5)
    cross = torch.tensor([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    rotation = math.cos(angle) * torch.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * torch.outer(axis, axis)
    return (clip @ rotation.T.to(clip)).clamp(0, 1)
