"""A tiny frozen video denoiser with SVD's interface, for fast unit tests of reenact_core.

Per-frame cross-attention from pixels to that frame's tokens, a temporal cross-attention to the
shared tokens, the conditioning latent concatenated to the input, EDM v-prediction preconditioning.
"""

from __future__ import annotations

import torch
from torch import nn


class ToyVideoDenoiser(nn.Module):
    def __init__(self, channels: int = 4, dim: int = 32, hidden: int = 16, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.inp = nn.Conv2d(2 * channels, hidden, 3, padding=1)
        self.q = nn.Linear(hidden, hidden, bias=False)
        self.k = nn.Linear(dim, hidden, bias=False)
        self.v = nn.Linear(dim, hidden, bias=False)
        self.tk = nn.Linear(dim, hidden, bias=False)
        self.tv = nn.Linear(dim, hidden, bias=False)
        self.out = nn.Conv2d(hidden, channels, 3, padding=1)
        for p in self.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) / max(1, p[0].numel()) ** 0.5)
        self.requires_grad_(False)
        self.calls = 0

    def forward(self, noisy, sigma, frame_tokens, shared_tokens, image_latent):
        self.calls += 1
        frames, channels, h, w = noisy.shape
        c_in = 1 / (sigma**2 + 1) ** 0.5
        c_skip = 1 / (sigma**2 + 1)
        c_out = -sigma / (sigma**2 + 1) ** 0.5  # v-prediction, sigma_data = 1
        image = image_latent.expand(frames, -1, -1, -1)
        x = torch.tanh(self.inp(torch.cat([noisy * c_in, image], dim=1)))  # [F, H, h, w]
        pixels = x.flatten(2).transpose(1, 2)  # [F, hw, H]
        attn = torch.softmax(self.q(pixels) @ self.k(frame_tokens).transpose(1, 2) / 4.0, dim=-1)  # [F, hw, N]
        pixels = pixels + attn @ self.v(frame_tokens)  # frame f attends to row f
        t_attn = torch.softmax(self.q(pixels) @ self.tk(shared_tokens).T / 4.0, dim=-1)  # [F, hw, N]
        pixels = pixels + t_attn @ self.tv(shared_tokens)
        x = pixels.transpose(1, 2).reshape(frames, -1, h, w)
        return (c_skip * noisy + c_out * self.out(x)).float()
