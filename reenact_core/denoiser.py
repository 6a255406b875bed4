"""The one interface between the method and a video diffusion model.

Where a frame's tokens enter the model
--------------------------------------
A :class:`Denoiser` receives the motion tokens split the way the paper inflates SVD's context:

* ``frame_tokens[f]`` ([N, D]) is the cross-attention context of frame f in every *spatial*
  transformer block: frame f's pixels attend to frame f's own N tokens. In ComfyUI this is simply
  ``c_crossattn`` of shape [F, N, D]: frames live in the batch dimension, so row f meets frame f.
* ``shared_tokens`` ([N, D]) is the context of every *temporal* transformer block (attention across
  frames at each pixel). In ComfyUI this is ``time_context``; stock SVD would use frame 0's context.

The same tokens go to every UNet level. Stock SVD is the special case N=1 with every row equal to the
image's CLIP embedding. The image itself enters separately, as the VAE latent concatenated to the noisy
latents (``image_latent``); it carries appearance, the tokens carry motion.

Backends: ``nodes/comfy_denoiser.py`` (ComfyUI's SVD model), ``reenact_core/diffusers_backend.py`` (diffusers'
UNetSpatioTemporalConditionModel, for the standalone API and command) and the small models in tests/bench.
"""

from __future__ import annotations

from typing import Protocol

import torch


class Denoiser(Protocol):
    """D(x; sigma, tokens, image) -> x0 estimate, in the model's (scaled) latent space.

    Args:
        noisy: [F, C, h, w] noisy latents x0 + sigma * eps.
        sigma: 0-dim tensor, the EDM noise level (one per video).
        frame_tokens: [F, N, D] spatial cross-attention context, row f for frame f.
        shared_tokens: [N, D] temporal cross-attention context.
        image_latent: [C, h, w] latent of the conditioning image (same latent space as ``noisy``).

    Returns [F, C, h, w] float32: the denoised estimate of x0.
    """

    def __call__(
        self,
        noisy: torch.Tensor,
        sigma: torch.Tensor,
        frame_tokens: torch.Tensor,
        shared_tokens: torch.Tensor,
        image_latent: torch.Tensor,
    ) -> torch.Tensor: ...
