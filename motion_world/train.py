"""Train Motion World: a small SVD-interface image-to-video model on synthetic sprite motion (CPU).

    COMFYUI_ROOT=... python -m motion_world.train --out motion_world/motion_world.safetensors

Up to three stages in one run, all deterministic for a seed (the model card has the command that trained
the shipped file):

1. An autoencoder in ComfyUI's AutoencoderKL format (4 latent channels, 8x downsampling, as SVD's nodes
   expect), trained on rendered frames; made deterministic (no posterior noise) and rescaled so that
   ComfyUI's SD1.5 latent scaling (x0.18215) gives unit-variance latents.
2. The video UNet, built from ComfyUI's own SVD_img2vid classes, trained with SVD's EDM v-prediction
   loss on the autoencoder's latents, conditioned like SVD: the first frame's latent concatenated to
   the noisy latents, fps/motion-bucket micro-conditioning, and a cross-attention context in every
   transformer block (per frame for the spatial layers, one shared set for the temporal layers).
3. With ``--decoder-steps``, a decoder stage after the UNet: the encoder (and so the UNet's latent space)
   stays; the decoder learns to decode latents as wrong as a small UNet leaves them (noisy ones and, with
   ``--decoder-on-unet``, the new UNet's own one-step predictions). ``--resume FILE --unet-steps 0`` runs
   it alone on a saved model.

The deliberate simplification of SVD: with ``--context motion`` (the default model) the context is
made of motion tokens (a small encoder of each frame's displacement and scale, plus a summary token
for the whole trajectory), dropped to the all-zero context part of the time. With ``--context
appearance`` (the SVD-like variant) the context is an embedding of the first frame only, as SVD's CLIP
token is, and motion is left to the model's prior.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from motion_world import classes, world

REPO = Path(__file__).resolve().parents[1]
LATENT_SCALE = 0.18215  # ComfyUI's SD1.5 latent format, which SVD_img2vid uses
FORMAT = "reenact-anything/motion-world"

VAE_CONFIG = {
    "double_z": True, "z_channels": 4, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
    "ch_mult": [1, 1, 2, 4], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0,
}


def unet_config(context_dim: int, channels: int) -> dict:
    """A two-level SVD UNet (same blocks as SVD: spatial+temporal transformers, temporal resblocks)."""
    return {
        "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
        "num_classes": "sequential", "adm_in_channels": 768, "in_channels": 8, "out_channels": 4,
        "model_channels": channels, "num_res_blocks": [1, 1], "channel_mult": [1, 1],
        "transformer_depth": [1, 1], "transformer_depth_output": [1, 1, 1, 1], "transformer_depth_middle": 1,
        "use_linear_in_transformer": True, "context_dim": context_dim, "num_head_channels": 32,
        "extra_ff_mix_layer": True, "use_spatial_context": True, "merge_strategy": "learned_with_images",
        "merge_factor": 0.0, "video_kernel_size": [3, 1, 1], "use_temporal_resblock": True, "use_temporal_attention": True,
    }


def clip_vision_config(context_dim: int) -> dict:
    """A tiny CLIP-vision tower (ComfyUI's class) whose image embedding has the context width."""
    return {
        "attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "quick_gelu", "hidden_size": 64, "image_size": 224,
        "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 128, "layer_norm_eps": 1e-05,
        "model_type": "clip_vision_model", "num_attention_heads": 2, "num_channels": 3, "num_hidden_layers": 2,
        "patch_size": 32, "projection_dim": context_dim, "torch_dtype": "float32",
    }


@dataclasses.dataclass
class TrainConfig:
    seed: int = 0
    context: str = "motion"  # "motion" (default model) or "appearance" (SVD-like variant)
    world: str = "sprites"  # "sprites": any sprite makes any motion; "classes": each sprite class its own motion family
    # (motion_world/classes.py, issue #28: the world where an appearance-only context can carry motion, as in real video)
    frames: int = 8
    size: int = 64
    context_dim: int = 64
    tokens: int = 2  # tokens per frame in the motion context
    channels: int = 64  # GroupNorm needs multiples of 32; 64 x [1, 1] is 3.5 M parameters
    ae_steps: int = 3000
    ae_batch: int = 32
    ae_lr: float = 1e-3
    decoder_steps: int = 0  # stage 3: the decoder learns to tolerate the latent errors a diffusion model leaves
    decoder_noise: float = 0.3  # largest latent noise std it sees (unit-variance latent units)
    decoder_lr: float = 3e-4
    decoder_on_unet: float = 0.0  # share of its batch decoded from the UNet's own one-step denoising of training clips
    decoder_sprite_weight: float = 0.0  # extra loss weight on the sprite and a 1-pixel ring around it: the sprite is ~3%
    # of a frame, so a plain mean spends the decoder on background texture and leaves the sprite's edges soft
    ae_sprite_weight: float = 0.0  # the same weight for stage 1 (encoder and decoder from scratch)
    unet_sprite_weight: float = 0.0  # extra loss weight on the latent cells the sprite covers (the motion is there)
    token_noise: float = 0.0  # Gaussian noise on the motion tokens in UNet training, relative to each token's RMS (an
    # inverted embedding is a free tensor, off the motion encoder's outputs; measured: it costs the oracle, see the model card)
    token_merge: float = 0.0  # share of training clips whose N tokens per frame (and N shared ones) are all replaced by
    # their mean: attention over them is then uniform and only the mean's value says the motion (inverted embeddings land
    # near uniform attention). Measured: (F+1)x1 steers far better, (F+1)xN and the oracle worse; see the model card
    bf16: bool = False  # bfloat16 autocast for the training forward passes (weights, optimiser, loss and the encoded
    # data stay float32): 1.3-1.4x faster on a CPU with AVX-512 BF16 (measured on this machine's 2-core AMD EPYC)
    clips: int = 6000  # pre-rendered training clips for the UNet stage
    unet_steps: int = 4000
    unet_batch: int = 12
    unet_lr: float = 1e-3
    ema: float = 0.998
    p_null: float = 0.15  # context dropped to all zeros (what classifier-free guidance needs)
    sigma_log_mean: float = 0.5  # training noise levels, log-normal (SVD-like: biased to high noise)
    sigma_log_std: float = 1.4
    p_sigma_uniform: float = 0.2  # share of noise levels drawn log-uniform over SVD's whole range [0.002, 700]:
    # samplers start at sigma_max = 700, far outside the log-normal's reach
    cond_aug: float = 0.0  # SVD's noise augmentation of the conditioning frame: on half the clips, Gaussian pixel noise of
    # a level drawn log-uniform in [0.02, cond_aug] is added to the first frame before it is encoded for the concatenated
    # latent (as SVD_img2vid_Conditioning's augmentation_level does), and the level goes to the model as micro-conditioning.
    # The clean frame still makes the context token, so a noisy latent leaves the token as the surer cue of the class


class MotionEncoder(nn.Module):
    """Motion tokens from a trajectory's features: N per frame (spatial context) + N shared (temporal)."""

    def __init__(self, dim: int, tokens: int, hidden: int = 128, freqs: int = 6):
        super().__init__()
        self.tokens, self.dim = tokens, dim
        self.register_buffer("freqs", 2.0 ** torch.arange(freqs) * math.pi)
        per_frame_in = len(world.PER_FRAME_FEATURES) * (1 + 2 * freqs)
        summary_in = len(world.SUMMARY_FEATURES) * (1 + 2 * freqs)
        self.frame_mlp = nn.Sequential(nn.Linear(per_frame_in, hidden), nn.SiLU(), nn.Linear(hidden, tokens * dim))
        self.summary_mlp = nn.Sequential(nn.Linear(summary_in, hidden), nn.SiLU(), nn.Linear(hidden, tokens * dim))

    def _fourier(self, x: torch.Tensor) -> torch.Tensor:
        angles = x[..., None] * self.freqs
        return torch.cat([x, angles.sin().flatten(-2), angles.cos().flatten(-2)], dim=-1)

    def forward(self, per_frame: torch.Tensor, summary: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        spatial = self.frame_mlp(self._fourier(per_frame)).unflatten(-1, (self.tokens, self.dim))  # [B, F, N, D]
        temporal = self.summary_mlp(self._fourier(summary)).unflatten(-1, (self.tokens, self.dim))  # [B, N, D]
        return spatial, temporal


# ------------------------------------------------------------------------------------------------ helpers


WORLDS = {"sprites": world.sample_training_clip, "classes": classes.sample_training_clip}


def render_batch(rng: np.random.Generator, count: int, frames: int, size: int, world_name: str = "sprites"):
    if world_name not in WORLDS:
        raise ValueError(f"unknown world {world_name!r}; expected one of {sorted(WORLDS)}")
    clips = [WORLDS[world_name](rng, frames, size) for _ in range(count)]
    pixels = torch.stack([c.frames for c in clips])  # [B, F, H, W, 3]
    masks = torch.stack([c.masks for c in clips])  # [B, F, H, W] sprite coverage
    feats = [world.trajectory_features((c.centers - c.centers[0]).numpy() / size, c.scales.numpy(), _bg_shift(c, size)) for c in clips]
    per_frame = torch.from_numpy(np.stack([f["per_frame"] for f in feats]))
    summary = torch.from_numpy(np.stack([f["summary"] for f in feats]))
    return pixels, per_frame, summary, masks


def _bg_shift(clip, size):
    if clip.motion.family != "pan":
        return None
    return (clip.centers - clip.centers[0]).numpy() / size  # the camera moves content and sprite together


def ae_encode_mean(ae, pixels: torch.Tensor) -> torch.Tensor:
    """Deterministic latent (posterior mean) of [B, H, W, 3] pixels in [0, 1]."""
    moments = ae.quant_conv(ae.encoder(pixels.movedim(-1, 1) * 2 - 1))
    return moments[:, : moments.shape[1] // 2]


def ae_decode(ae, latents: torch.Tensor) -> torch.Tensor:
    return ((ae.decoder(ae.post_quant_conv(latents)) + 1) / 2).movedim(1, -1)


def zero_output_gain(name: str) -> float:
    """Zero-initialise residual outputs so every block starts as the identity (standard for diffusion UNets)."""
    if name.startswith("out.") or name.endswith(("proj_out.weight", "out_layers.3.weight", "to_out.0.weight")):
        return 0.0
    return 1.0


def autocast(cfg: TrainConfig):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------ stages


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, sprite_mask=None, sprite_weight: float = 0.0):
    """L1 + 2 L2 over [B, H, W, 3] pixels. With ``sprite_weight``, pixels on the sprite or next to it (the
    [B, H, W] coverage dilated by one pixel) weigh ``1 + sprite_weight``; normalised by the mean weight."""
    if sprite_weight == 0.0:
        return (recon - target).abs().mean() + 2 * ((recon - target) ** 2).mean()
    error = recon - target
    weight = 1.0 + sprite_weight * torch.nn.functional.max_pool2d(sprite_mask[:, None], 3, 1, 1)[:, 0, :, :, None]
    mean_weight = weight.mean()
    return (error.abs() * weight).mean() / mean_weight + 2 * ((error**2) * weight).mean() / mean_weight


def train_autoencoder(cfg: TrainConfig, build_vae, init_params) -> nn.Module:
    torch.manual_seed(cfg.seed)
    vae = build_vae(VAE_CONFIG)
    ae = vae.first_stage_model.float().train()
    init_params(ae, torch.Generator().manual_seed(cfg.seed), zero_output_gain)
    opt = torch.optim.AdamW(ae.parameters(), lr=cfg.ae_lr, weight_decay=0.0)
    rng = np.random.default_rng(cfg.seed)
    start = time.perf_counter()
    for step in range(cfg.ae_steps):
        lr = cfg.ae_lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / cfg.ae_steps))
        for g in opt.param_groups:
            g["lr"] = lr
        # one random frame from each of ae_batch clips: many scenes per batch, not a few clips' frames
        pixels, _, _, masks = render_batch(rng, cfg.ae_batch, cfg.frames, cfg.size, cfg.world)
        picked = torch.arange(cfg.ae_batch), torch.from_numpy(rng.integers(0, cfg.frames, cfg.ae_batch))
        x = pixels[picked]
        with autocast(cfg):
            recon = ae_decode(ae, ae_encode_mean(ae, x))
        loss = reconstruction_loss(recon.float(), x, masks[picked], cfg.ae_sprite_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ae.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == cfg.ae_steps - 1:
            log(f"autoencoder step {step + 1}/{cfg.ae_steps} loss {loss.item():.4f} ({time.perf_counter() - start:.0f} s)")
    ae.eval()
    _make_deterministic_and_scaled(ae, cfg)
    _report_autoencoder(ae, cfg)
    return ae


@torch.no_grad()
def _report_autoencoder(ae: nn.Module, cfg: TrainConfig) -> None:
    """How well positions survive the autoencoder (the benchmark measures motion on decoded frames)."""
    from motion_world import metrics

    gen = torch.Generator().manual_seed(7)
    for noise in (0.0, 0.2):  # exact latents, and latents as wrong as a small UNet leaves them
        errors, areas, pixel_errors = [], [], []
        for clip in world.held_out_references(cfg.frames, cfg.size, seed=cfg.seed + 7):
            z = ae_encode_mean(ae, clip.frames)
            recon = ae_decode(ae, z + noise / LATENT_SCALE * torch.randn(z.shape, generator=gen)).clamp(0, 1)
            centers, area = metrics.track_sprite(recon, clip.sprite_color)
            errors.append(float(np.nanmean(np.linalg.norm(centers - clip.centers.numpy(), axis=1))))
            areas.append(metrics.area_kept(area, clip.areas.numpy()))
            pixel_errors.append(float((recon - clip.frames).abs().mean()))
        log(f"autoencoder on held-out clips, latent noise {noise}: sprite position error {np.mean(errors):.3f} px, "
            f"area kept {np.mean(areas):.3f}, mean abs pixel error {np.mean(pixel_errors):.4f}")


@torch.no_grad()
def _make_deterministic_and_scaled(ae: nn.Module, cfg: TrainConfig) -> None:
    """No posterior noise (ComfyUI samples the posterior when encoding), and latent std = 1/0.18215."""
    rng = np.random.default_rng(cfg.seed + 1)
    pixels, *_ = render_batch(rng, 64, cfg.frames, cfg.size, cfg.world)
    std = float(ae_encode_mean(ae, pixels.flatten(0, 1)).std())
    factor = (1.0 / LATENT_SCALE) / std
    z = ae.quant_conv.weight.shape[0] // 2
    ae.quant_conv.weight[:z] *= factor
    ae.quant_conv.bias[:z] *= factor
    ae.quant_conv.weight[z:] = 0.0
    ae.quant_conv.bias[z:] = -30.0  # log-variance: std e^-15, no sampling noise
    ae.post_quant_conv.weight /= factor
    log(f"autoencoder latents rescaled by {factor:.3f} (raw std was {std:.3f})")


def finetune_decoder(cfg: TrainConfig, ae: nn.Module, denoiser=None) -> nn.Module:
    """Stage 3: the decoder learns to decode slightly wrong latents into clean frames; the encoder (and so the
    latent space the UNet learned) stays as it is. Without this, a latent error of 0.2 (in unit-variance latent
    units, well within what a small UNet leaves) already costs a third of the sprite's area and its colour."""
    torch.manual_seed(cfg.seed + 6)
    decoder = list(ae.decoder.parameters()) + list(ae.post_quant_conv.parameters())
    ae.requires_grad_(False)
    for p in decoder:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(decoder, lr=cfg.decoder_lr, weight_decay=0.0)
    rng = np.random.default_rng(cfg.seed + 6)
    gen = torch.Generator().manual_seed(cfg.seed + 6)
    start = time.perf_counter()
    ae.train()
    for step in range(cfg.decoder_steps):
        for g in opt.param_groups:
            g["lr"] = cfg.decoder_lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / cfg.decoder_steps))
        pixels, _, _, masks = render_batch(rng, cfg.ae_batch, cfg.frames, cfg.size, cfg.world)
        picked = torch.arange(cfg.ae_batch), torch.from_numpy(rng.integers(0, cfg.frames, cfg.ae_batch))
        x, mask = pixels[picked], masks[picked]
        with torch.no_grad():
            z = ae_encode_mean(ae, x)
        # per-sample noise std uniform in [0, decoder_noise] (so clean latents still decode exactly)
        std = cfg.decoder_noise * torch.rand(cfg.ae_batch, 1, 1, 1, generator=gen) / LATENT_SCALE
        z = z + std * torch.randn(z.shape, generator=gen)
        unet_clips = round(cfg.decoder_on_unet * cfg.ae_batch / cfg.frames)
        if denoiser is not None and unet_clips:  # whole clips, as the UNet sees them; every frame is decoded
            clip_pixels, per_frame, summary, clip_masks = render_batch(rng, unet_clips, cfg.frames, cfg.size, cfg.world)
            with torch.no_grad():
                raw = ae_encode_mean(ae, clip_pixels.flatten(0, 1)).unflatten(0, clip_pixels.shape[:2])
                log_sigma = math.log(0.05) + (math.log(1.5) - math.log(0.05)) * torch.rand(unet_clips, generator=gen)
                with autocast(cfg):
                    denoised = denoiser(raw, per_frame, summary, log_sigma.exp(), gen).float()
                z = torch.cat([z, denoised / LATENT_SCALE])
            x, mask = torch.cat([x, clip_pixels.flatten(0, 1)]), torch.cat([mask, clip_masks.flatten(0, 1)])
        with autocast(cfg):
            recon = ae_decode(ae, z)
        loss = reconstruction_loss(recon.float(), x, mask, cfg.decoder_sprite_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder, 1.0)
        opt.step()
        if step % 100 == 0 or step == cfg.decoder_steps - 1:
            log(f"decoder step {step + 1}/{cfg.decoder_steps} loss {loss.item():.4f} ({time.perf_counter() - start:.0f} s)")
    ae.requires_grad_(False).eval()
    _report_autoencoder(ae, cfg)
    return ae


@torch.no_grad()
def build_dataset(cfg: TrainConfig, ae: nn.Module):
    """Latents [N, F, 4, h, w] (float32, exact), motion features, first frames, and which latent cells the
    sprite covers in each frame [N, F, h, w]."""
    rng = np.random.default_rng(cfg.seed + 2)
    latents, per_frame, summary, first_frames, sprite_cells = [], [], [], [], []
    for start in range(0, cfg.clips, 100):
        pixels, pf, sm, masks = render_batch(rng, min(100, cfg.clips - start), cfg.frames, cfg.size, cfg.world)
        latents.append(ae_encode_mean(ae, pixels.flatten(0, 1)).unflatten(0, pixels.shape[:2]))
        per_frame.append(pf)
        summary.append(sm)
        first_frames.append(pixels[:, 0])
        downsample = cfg.size // latents[-1].shape[-1]
        sprite_cells.append(torch.nn.functional.max_pool2d(masks, downsample) > 0)
    log(f"dataset: {cfg.clips} clips encoded")
    return torch.cat(latents), torch.cat(per_frame), torch.cat(summary), torch.cat(first_frames), torch.cat(sprite_cells)


def denoising_loss(denoised: torch.Tensor, x0: torch.Tensor, sigma_frames: torch.Tensor, sprite_cells=None, sprite_weight: float = 0.0):
    """SVD's EDM loss: the squared error of the denoised latents [B*F, C, h, w], weighted (sigma^2 + 1) / sigma^2.
    With ``sprite_weight``, latent cells the sprite covers ([B*F, h, w]) weigh ``1 + sprite_weight``, normalised by
    the mean weight: the sprite is a few cells of a frame, and all of the motion."""
    per_value = ((sigma_frames**2 + 1) / sigma_frames**2)[:, None, None, None] * (denoised - x0) ** 2
    if sprite_weight == 0.0:
        return per_value.mean()
    cell_weight = 1.0 + sprite_weight * sprite_cells[:, None].float()
    return (per_value * cell_weight).mean() / cell_weight.mean()


def train_unet(cfg: TrainConfig, ae, builders, init_params, protect, resume: dict | None = None, clip_state: dict | None = None):
    """``resume``: tensors of a saved Motion World file to continue from (UNet, motion encoder, CLIP vision).
    ``clip_state``: a pretrained CLIP-like tower (motion_world.pretrain_clip) for the appearance context, kept
    frozen with its projection, as SVD keeps CLIP."""
    build_unet, build_clip_vision = builders
    torch.manual_seed(cfg.seed + 3)
    base = build_unet(unet_config(cfg.context_dim, cfg.channels)).float()
    init_params(base.diffusion_model, torch.Generator().manual_seed(cfg.seed + 3), zero_output_gain)
    protect(base.diffusion_model)
    base.train()
    encoder = MotionEncoder(cfg.context_dim, cfg.tokens)
    clip = build_clip_vision(clip_vision_config(cfg.context_dim))
    clip_model = clip.model.float()
    init_params(clip_model, torch.Generator().manual_seed(cfg.seed + 4))
    if cfg.context == "motion":  # the motion model's CLIP vision says nothing: its image token is the null context
        torch.nn.init.zeros_(clip_model.visual_projection.weight)
        trainable_clip = []
    else:  # the tower stays at its random init (ComfyUI's CLIP layers add in place, so no backward through
        # them); its pooled features of the first frame are fixed, and the projection to the token is learned
        trainable_clip = list(clip_model.visual_projection.parameters())
    if resume is not None:
        for module, prefix in ((base.diffusion_model, "model.diffusion_model."), (encoder, "motion_encoder."), (clip_model, "clip_vision.")):
            load_prefixed(module, resume, prefix)
        log("continuing from the saved UNet, motion encoder and CLIP vision")
    if clip_state is not None:
        clip_model.load_state_dict(clip_state)
        trainable_clip = []
        log("appearance context: the pretrained CLIP-like tower, frozen")

    latents, per_frame, summary, first_frames, sprite_cells = build_dataset(cfg, ae)
    if cfg.context == "appearance":
        with torch.no_grad():
            pooled = torch.cat([clip_model.vision_model(pixel_values=_clip_pixels(chunk))[2] for chunk in first_frames.split(100)])
    adm = base.encode_adm(fps=6, motion_bucket_id=127, augmentation_level=0.0)
    params = list(base.diffusion_model.parameters()) + list(encoder.parameters()) + trainable_clip
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=0.01)
    ema = copy.deepcopy(base.diffusion_model).requires_grad_(False)
    ema_encoder = copy.deepcopy(encoder).requires_grad_(False)
    ema_clip = copy.deepcopy(clip_model).requires_grad_(False)
    gen = torch.Generator().manual_seed(cfg.seed + 5)
    f, d = cfg.frames, cfg.context_dim
    start = time.perf_counter()
    history = []
    for step in range(cfg.unet_steps):
        lr = cfg.unet_lr * min(1.0, (step + 1) / 200) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / cfg.unet_steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(len(latents), (cfg.unet_batch,), generator=gen)
        raw = latents[idx]  # [B, F, 4, h, w]
        b = raw.shape[0]
        log_sigma = cfg.sigma_log_mean + cfg.sigma_log_std * torch.randn(b, generator=gen)
        log_uniform = math.log(0.002) + (math.log(700.0) - math.log(0.002)) * torch.rand(b, generator=gen)
        log_sigma = torch.where(torch.rand(b, generator=gen) < cfg.p_sigma_uniform, log_uniform, log_sigma)
        x0, concat, sigma_frames, noisy = noised_clip(raw, log_sigma.exp().clamp(0.002, 700.0), gen)
        step_adm = adm
        if cfg.cond_aug:
            concat, step_adm = augmented_condition(base, ae, first_frames[idx], cfg.cond_aug, f, gen)
        keep = (torch.rand(b, generator=gen) >= cfg.p_null).float()
        with autocast(cfg):
            if cfg.context == "motion":
                spatial, temporal = encoder(per_frame[idx], summary[idx])
                if cfg.token_noise:
                    spatial, temporal = perturbed(spatial, cfg.token_noise, gen), perturbed(temporal, cfg.token_noise, gen)
                if cfg.token_merge:
                    merge = torch.rand(b, generator=gen) < cfg.token_merge
                    spatial, temporal = merged_tokens(spatial, merge), merged_tokens(temporal, merge)
            else:
                token = clip_model.visual_projection(pooled[idx])  # [B, D]: what ComfyUI's encode_image returns as image_embeds
                spatial = token[:, None, None, :].expand(b, f, 1, d)
                temporal = token[:, None, :]
            spatial = spatial * keep[:, None, None, None]
            temporal = temporal * keep[:, None, None]
            out = predict_x0(base, step_adm, noisy, sigma_frames, concat, spatial, temporal)
        loss = denoising_loss(out.float(), x0, sigma_frames, sprite_cells[idx].flatten(0, 1), cfg.unet_sprite_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(cfg.ema, (1 + step) / (10 + step))
            for target, source in ((ema, base.diffusion_model), (ema_encoder, encoder), (ema_clip, clip_model)):
                for pe, ps in zip(target.parameters(), source.parameters(), strict=True):
                    pe.lerp_(ps, 1 - decay)
        history.append(loss.item())
        if step % 100 == 0 or step == cfg.unet_steps - 1:
            recent = sum(history[-100:]) / len(history[-100:])
            log(f"unet step {step + 1}/{cfg.unet_steps} loss {recent:.4f} lr {lr:.2e} ({time.perf_counter() - start:.0f} s)")
    return ema, ema_encoder, ema_clip, history


def perturbed(tokens: torch.Tensor, scale: float, gen: torch.Generator) -> torch.Tensor:
    """``tokens`` [..., D] plus Gaussian noise whose std is ``scale`` times each token's RMS (not back-propagated
    through: the encoder learns where the tokens are, the UNet learns to read their neighbourhood)."""
    rms = tokens.detach().float().pow(2).mean(-1, keepdim=True).sqrt()
    noise = torch.randn(tokens.shape, generator=gen)
    return tokens + (scale * rms * noise).to(tokens.dtype)


def merged_tokens(tokens: torch.Tensor, merge: torch.Tensor) -> torch.Tensor:
    """``tokens`` [B, ..., N, D] with the N tokens of the clips where ``merge`` [B] is true replaced by their mean."""
    mean = tokens.mean(-2, keepdim=True).expand_as(tokens)
    return torch.where(merge.view(-1, *[1] * (tokens.dim() - 1)), mean, tokens)


def augmented_condition(base, ae, first_frames: torch.Tensor, max_level: float, frames: int, gen: torch.Generator):
    """SVD's conditioning-frame augmentation for [B, H, W, 3] first frames: on half of them, pixel noise of a level
    log-uniform in [0.02, ``max_level``] before encoding. Returns the concatenated latents [B*F, 4, h, w] (unscaled)
    and the micro-conditioning [B, D] that tells the model each level."""
    b = first_frames.shape[0]
    levels = math.log(0.02) + (math.log(max_level) - math.log(0.02)) * torch.rand(b, generator=gen)
    levels = torch.where(torch.rand(b, generator=gen) < 0.5, torch.zeros(b), levels.exp())
    noisy = first_frames + levels[:, None, None, None] * torch.randn(first_frames.shape, generator=gen)
    with torch.no_grad():
        latent = ae_encode_mean(ae, noisy)
    adm = torch.cat([base.encode_adm(fps=6, motion_bucket_id=127, augmentation_level=float(level)) for level in levels])
    return latent.repeat_interleave(frames, 0), adm


def noised_clip(raw: torch.Tensor, sigma: torch.Tensor, gen: torch.Generator):
    """Raw latents [B, F, 4, h, w] and one noise level per clip -> (x0, first-frame concat, per-frame sigma,
    noisy x0), all [B*F, ...]; x0 in ComfyUI's scaled latent units, the concat unscaled as SVD_img2vid takes it."""
    f = raw.shape[1]
    x0 = raw.flatten(0, 1) * LATENT_SCALE
    concat = raw[:, :1].expand(-1, f, -1, -1, -1).flatten(0, 1)
    sigma_frames = sigma.repeat_interleave(f)
    return x0, concat, sigma_frames, x0 + sigma_frames[:, None, None, None] * torch.randn(x0.shape, generator=gen)


def predict_x0(base, adm, noisy, sigma_frames, concat, spatial, temporal):
    """The UNet's denoised latents (scaled) for [B*F] noisy frames, as ComfyUI's SVD conditioning feeds it: the
    first frame's latent concatenated, frame f's tokens to the spatial cross-attention, the shared ones to the
    temporal cross-attention."""
    b, f = spatial.shape[:2]
    time_context = temporal[:, None].expand(-1, f, -1, -1).flatten(0, 1)
    return base.apply_model(
        noisy, sigma_frames, c_concat=concat, c_crossattn=spatial.flatten(0, 1), time_context=time_context,
        y=adm.expand(b, -1).repeat_interleave(f, 0), num_video_frames=f,
    )


def unet_denoiser(base, encoder):
    """(raw latents [B, F, 4, h, w], motion features, sigma [B], generator) -> one-step denoised latents [B*F, ...]
    (scaled), with the motion tokens of the clip's true trajectory."""
    adm = base.encode_adm(fps=6, motion_bucket_id=127, augmentation_level=0.0)

    def denoise(raw, per_frame, summary, sigma, gen):
        _, concat, sigma_frames, noisy = noised_clip(raw, sigma, gen)
        spatial, temporal = encoder(per_frame, summary)
        return predict_x0(base, adm, noisy, sigma_frames, concat, spatial, temporal)

    return denoise


def saved_denoiser(build_unet, cfg: TrainConfig, tensors: dict):
    """``unet_denoiser`` of a Motion World file's UNet and motion encoder (``tensors`` as saved, so fp16 UNet weights:
    the decoder learns from the UNet as it samples in ComfyUI)."""
    base = build_unet(unet_config(cfg.context_dim, cfg.channels)).float().eval()
    load_prefixed(base.diffusion_model, tensors, "model.diffusion_model.")
    encoder = load_prefixed(MotionEncoder(cfg.context_dim, cfg.tokens), tensors, "motion_encoder.").eval()
    return unet_denoiser(base, encoder)


def _clip_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """ComfyUI's CLIP preprocessing (resize to 224, normalise), differentiable."""
    import comfy.clip_vision

    return comfy.clip_vision.clip_preprocess(pixels).float()


def autoencoder_of(model_tensors: dict) -> dict:
    """A Motion World file's autoencoder as AutoencoderKL keys (float32); empty if the file has none."""
    prefix = "first_stage_model."
    return {k[len(prefix):]: v.float() for k, v in model_tensors.items() if k.startswith(prefix)}


def load_prefixed(module: nn.Module, tensors: dict, prefix: str) -> nn.Module:
    module.load_state_dict({k[len(prefix):]: v.float() for k, v in tensors.items() if k.startswith(prefix)})
    return module


def _prefixed(prefix: str, module: nn.Module, dtype=torch.float16) -> dict:
    return {f"{prefix}{k}": v.to(dtype) for k, v in module.state_dict().items()}


def save(path: Path, cfg: TrainConfig, unet, ae, clip_model, encoder, history, seconds: float, earlier: dict | None = None) -> None:
    tensors = {
        **_prefixed("model.diffusion_model.", unet), **_prefixed("first_stage_model.", ae), **_prefixed("clip_vision.", clip_model),
        **_prefixed("motion_encoder.", encoder, torch.float32),
    }
    save_tensors(path, tensors, cfg, earlier, seconds, final_loss=sum(history[-200:]) / len(history[-200:]))


def save_tensors(path: Path, tensors: dict, cfg: TrainConfig, earlier: dict | None, seconds: float, final_loss: float | None = None) -> None:
    """``final_loss``: the UNet's; None when this run did not train it (the earlier stage's loss stands)."""
    import safetensors.torch

    metadata = {
        "format": FORMAT,
        "unet_config": json.dumps(unet_config(cfg.context_dim, cfg.channels), sort_keys=True),
        "vae_config": json.dumps(VAE_CONFIG, sort_keys=True),
        "clip_vision_config": json.dumps(clip_vision_config(cfg.context_dim), sort_keys=True),
        "train_config": json.dumps(dataclasses.asdict(cfg), sort_keys=True),
        "frames": str(cfg.frames),
        "size": str(cfg.size),
        "context": cfg.context,
        "final_loss": f"{final_loss:.5f}" if final_loss is not None else earlier["final_loss"],
        "train_seconds": f"{seconds:.0f}",
    }
    if earlier is not None:  # a continued run: keep the history of the stages it started from
        stages = json.loads(earlier.get("earlier_stages", "[]")) + [{k: earlier[k] for k in ("train_config", "final_loss", "train_seconds")}]
        metadata["earlier_stages"] = json.dumps(stages)
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    log(f"saved {path} ({path.stat().st_size / 2**20:.1f} MB)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "motion_world" / "motion_world.safetensors")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, all cores)")
    parser.add_argument("--autoencoder", type=Path, help="reuse this trained autoencoder instead of stage 1: a .safetensors of AutoencoderKL keys, or a Motion World file (its autoencoder)")
    parser.add_argument("--resume", type=Path, help="continue training this Motion World file (its autoencoder is kept; --unet-steps more steps)")
    parser.add_argument("--clip-vision", type=Path, help="appearance context: this pretrained tower (motion_world.pretrain_clip), frozen")
    for field in dataclasses.fields(TrainConfig):
        flag = f"--{field.name.replace('_', '-')}"
        if isinstance(field.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default)
        else:
            parser.add_argument(flag, type=type(field.default), default=field.default)
    args = parser.parse_args(argv)
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    if cfg.unet_steps == 0 and not args.resume:
        parser.error("--unet-steps 0 trains no UNet: give the Motion World file whose UNet to keep with --resume FILE")
    if cfg.world not in WORLDS:
        parser.error(f"--world {cfg.world}: expected one of {sorted(WORLDS)}")
    if args.threads:
        torch.set_num_threads(args.threads)

    from testkit.comfy_env import load_comfyui, load_pack, pack_submodule
    from testkit.svd_checkpoint import init_params

    comfy = load_comfyui(use_pytorch_cross_attention=True)
    pack = load_pack(comfy)
    mw = pack_submodule(pack, "nodes.motion_world")
    protect = pack_submodule(pack, "nodes.comfy_denoiser")._protect_saved_norm_inputs
    log(f"training Motion World ({cfg.context} context) with {json.dumps(dataclasses.asdict(cfg))}")
    start = time.perf_counter()
    resume, earlier = None, None
    if args.resume:
        import safetensors
        import safetensors.torch

        resume = safetensors.torch.load_file(str(args.resume))
        with safetensors.safe_open(str(args.resume), framework="pt") as f:
            earlier = f.metadata()
        ae = mw.build_vae(VAE_CONFIG, autoencoder_of(resume)).first_stage_model.float().eval()
        log(f"continuing {args.resume}")
    elif args.autoencoder:
        import safetensors.torch

        tensors = safetensors.torch.load_file(str(args.autoencoder))
        ae_state = autoencoder_of(tensors) or tensors  # a Motion World file's autoencoder, or AutoencoderKL keys as they are
        ae = mw.build_vae(VAE_CONFIG, ae_state).first_stage_model.float().eval()
        log(f"autoencoder loaded from {args.autoencoder}")
    else:
        ae = train_autoencoder(cfg, mw.build_vae, init_params)
    if cfg.unet_steps == 0:  # only the decoder changes: the rest is the resumed file's
        if cfg.decoder_steps:
            ae = finetune_decoder(cfg, ae, saved_denoiser(mw.build_unet, cfg, resume) if cfg.decoder_on_unet else None)
        save_tensors(args.out, {**resume, **_prefixed("first_stage_model.", ae)}, cfg, earlier, time.perf_counter() - start)
        return
    clip_state = None
    if args.clip_vision:
        import safetensors.torch

        clip_state = safetensors.torch.load_file(str(args.clip_vision))
    unet, encoder, clip_model, history = train_unet(cfg, ae, (mw.build_unet, mw.build_clip_vision), init_params, protect, resume, clip_state)
    if cfg.decoder_steps:  # after the UNet, so that the decoder can learn from the UNet's own predictions
        saved_unet = {**_prefixed("model.diffusion_model.", unet), **_prefixed("motion_encoder.", encoder, torch.float32)}
        ae = finetune_decoder(cfg, ae, saved_denoiser(mw.build_unet, cfg, saved_unet) if cfg.decoder_on_unet else None)
    save(args.out, cfg, unet, ae, clip_model, encoder, history, time.perf_counter() - start, earlier)


if __name__ == "__main__":
    main()
