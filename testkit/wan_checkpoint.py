"""Deterministic tiny random-weight Wan 2.x test models that ComfyUI's stock loaders detect.

Each is one safetensors file, fp16, built with the classes of the ComfyUI that ``load_comfyui`` imported
(so the keys are exactly what its loaders expect), cached under ``$REENACT_CACHE/models`` and named after
``BUILDER_VERSION`` (bump it whenever anything below changes a file's contents); see ``model_files``.
Wan 2.1 needs ComfyUI >= 0.3.16 (2025-02-26), Wan 2.2 >= 0.3.46 (2025-07-28).

* :func:`ensure_wan21_i2v_test_model`: a diffusion model (the file users put in models/diffusion_models,
  loaded by UNETLoader / ``comfy.sd.load_diffusion_model``) detected as ``supported_models.WAN21_I2V``
  (``model_base.WAN21``, image_to_video): dim 256 (2 heads; detection sets num_heads = dim // 128), 2
  blocks, ffn 512, patch_embedding in_dim 36 (16 noise + 4 mask + 16 image latent), CLIP branch
  ``img_emb`` (1280-d CLIP-H penultimate states in), text_embedding from 4096-d umT5 states; ~5.5 M
  parameters, ~11 MB.
* :func:`ensure_wan22_ti2v_test_model`: shaped like Wan2.2 TI2V-5B (in_dim = out_dim = 48, no CLIP
  branch), detected as ``supported_models.WAN22_T2V`` (that is what ComfyUI calls TI2V-5B: out_dim 48 ->
  ``model_base.WAN22``, ``latent_formats.Wan22``, per-frame timesteps from the denoise mask); same tiny
  size otherwise.
* :func:`ensure_wan21_vae_test_model`: a Wan2.1 VAE of width 8 (ComfyUI reads the width from
  ``decoder.head.0.gamma``; 16 latent channels, 8x spatial / 4x temporal compression), ~0.9 M
  parameters, ~1.9 MB.
* :func:`tiny_wan_clip_vision`: an in-process CLIP vision model whose ``penultimate_hidden_states``
  have Wan2.1-I2V's shape [B, 257, 1280] (for ``WanImageToVideo``'s ``clip_vision_output``).

What cannot be tiny (checked against ComfyUI v0.3.75, 2025-12):

* umT5 text encoder (``CLIPLoader`` type "wan"): ``sd.detect_te_model`` only calls a file T5-XXL when it
  holds ``encoder.block.23.layer.1.DenseReluDense.wi_1.weight`` (24 blocks) with last dimension 4096;
  anything smaller is taken for another model (T5-base / ACE / SA-T5) whatever the type. For T5-XXL with
  type "wan", ``text_encoders.wan.UMT5XXlModel`` builds the encoder from the fixed
  ``umt5_config_xxl.json`` (d_model 4096, d_ff 10240, 24 layers, 64 heads, vocabulary 256384: ~5.7 G
  parameters), never from the file's shapes, and loads the weights with ``load_state_dict(strict=False)``,
  which raises on every smaller shape; missing tensors stay ``torch.empty``. The tokenizer also needs the
  SentencePiece model stored in the file as ``spiece_model``. So the smallest umT5 that loads is the
  real-size one (~11.4 GB fp16; a 512-token encode is ~5 TFLOP): tests feed the Wan models conditioning
  tensors [B, L, 4096] directly instead.
* CLIP vision for Wan2.1-I2V (``CLIPVisionLoader``): ``clip_vision.load_clipvision_from_sd`` picks the
  fixed ``clip_vision_config_h.json`` (ViT-H/14, 32 layers, width 1280, ~632 M parameters) by the presence
  of ``vision_model.encoder.layers.30.layer_norm1.weight`` alone and loads with ``strict=False``: smaller
  shapes raise, left-out tensors stay uninitialised. A standalone file therefore cannot be smaller than
  the SVD test checkpoint's ViT-H (~1.26 GB fp16); the SVD test checkpoint's CLIP vision (via
  ImageOnlyCheckpointLoader) is a loader-made ViT-H, and :func:`tiny_wan_clip_vision` serves in-process
  tests.
* The Wan2.2 VAE (48 latent channels, 16x spatial): ``comfy.sd.VAE`` builds ``vae2_2.WanVAE`` with fixed
  widths (dim 160, dec_dim 256): 704.7 M parameters, 1.41 GB fp16 -- not built here (too large for a test
  model); tests of TI2V feed 48-channel latents directly.
"""

from __future__ import annotations

import math
import os
import pathlib

import torch

from .comfy_env import load_comfyui
from .model_files import ensure_cached, init_params, params_state_dict, prefixed, quiet, save_fp16

BUILDER_VERSION = "v1"

WAN21_I2V_SEED = 20250226
WAN22_TI2V_SEED = 20250728
WAN21_VAE_SEED = 20250227

# The configs detect_unet_config reports for the files (model_detection.py, "Wan 2.1" branch); the builder
# checks that the saved state dict is detected as exactly this.
_DIT_COMMON = {
    "image_model": "wan2.1",
    "dim": 256,
    "num_heads": 2,
    "ffn_dim": 512,
    "num_layers": 2,
    "patch_size": (1, 2, 2),
    "freq_dim": 256,
    "window_size": (-1, -1),
    "qk_norm": True,
    "cross_attn_norm": True,
    "eps": 1e-6,
}
WAN21_I2V_CONFIG = {**_DIT_COMMON, "model_type": "i2v", "in_dim": 36, "out_dim": 16}
WAN22_TI2V_CONFIG = {**_DIT_COMMON, "model_type": "t2v", "in_dim": 48, "out_dim": 48}

WAN21_VAE_DIM = 8


def ensure_wan21_i2v_test_model(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Path of the cached tiny Wan2.1-I2V diffusion model (built on first use)."""
    return _ensure_dit(f"reenact-test-wan21-i2v-{BUILDER_VERSION}.safetensors", "WAN21_I2V", WAN21_I2V_CONFIG,
                       WAN21_I2V_SEED, cache_dir)


def ensure_wan22_ti2v_test_model(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Path of the cached tiny Wan2.2-TI2V-5B-shaped diffusion model (built on first use)."""
    return _ensure_dit(f"reenact-test-wan22-ti2v-{BUILDER_VERSION}.safetensors", "WAN22_T2V", WAN22_TI2V_CONFIG,
                       WAN22_TI2V_SEED, cache_dir)


def ensure_wan21_vae_test_model(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Path of the cached tiny Wan2.1 VAE (built on first use)."""
    name = f"reenact-test-wan21-vae-{BUILDER_VERSION}.safetensors"

    def build(path: pathlib.Path) -> None:
        load_comfyui()
        sd = prefixed(_wan21_vae_state_dict(WAN21_VAE_SEED, WAN21_VAE_DIM))
        save_fp16(path, sd, {"builder": BUILDER_VERSION, "seed": WAN21_VAE_SEED, "model": "wan21_vae", "dim": WAN21_VAE_DIM})

    return ensure_cached(name, build, cache_dir)


def ensure_clip_vision_h_test_model(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Path of a standalone ViT-H CLIP vision file (what ``CLIPVisionLoader`` loads as clip_vision_h): the
    random-weight SVD test checkpoint's image encoder, in open_clip's ``visual.*`` layout, which ComfyUI's
    ``clip_vision.load`` converts. ~1.26 GB fp16: the smallest standalone file that loader accepts (see above)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from .svd_checkpoint import ensure_svd_test_checkpoint

    source = ensure_svd_test_checkpoint(cache_dir)
    prefix = "conditioner.embedders.0.open_clip.model."

    def build(path: pathlib.Path) -> None:
        with safe_open(str(source), framework="pt") as f:
            tensors = {key[len(prefix):]: f.get_tensor(key) for key in f.keys() if key.startswith(prefix + "visual.")}
        save_file(tensors, str(path), metadata={"reenact_test_model": f"clip_vision_h from {source.name}"})

    return ensure_cached(f"reenact-test-clip-vision-h-{BUILDER_VERSION}.safetensors", build, cache_dir)


def tiny_wan_clip_vision(seed: int = 0):
    """An in-process ``ClipVisionModel`` (2 layers, width 1280, 224 px, patch 14) whose
    ``encode_image(...).penultimate_hidden_states`` is [B, 257, 1280], the shape Wan2.1-I2V's ``img_emb``
    takes. Stock loaders only accept the real-size ViT-H (see the module docstring)."""
    from .svd_checkpoint import tiny_clip_vision

    return tiny_clip_vision(seed, hidden_size=1280, intermediate_size=1280, num_attention_heads=16, patch_size=14)


class StandInWan22VAE:
    """Where no Wan2.2 VAE can load (see above): ``encode`` [F, H, W, 3] -> [1, 48, (F-1)//4 + 1, H/16, W/16],
    a fixed linear map of 16x16 patches of the frames, the first latent frame from the first video frame alone
    and each later one from the mean of 4 frames (as Wan's causal VAE groups them). ``decode`` maps back with
    the pseudo-inverse, 1 + 4 (T - 1) frames, as VAEDecode expects of a Wan VAE. Enough for the nodes that
    encode (the inversion, Wan22ImageToVideoLatent) and decode (VAEDecode) to run; it is not an autoencoder of
    any quality."""

    def __init__(self, seed: int = 5):
        self.weight = torch.randn(48, 3 * 16 * 16, generator=torch.Generator().manual_seed(seed)) / 30
        self.latent_channels = 48

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        f, h, w, _ = pixels.shape
        groups = [pixels[:1]] + [pixels[i:i + 4] for i in range(1, f - 3, 4)]
        pooled = torch.stack([g.float().mean(0) for g in groups])  # [T, H, W, 3]
        patches = pooled.reshape(len(groups), h // 16, 16, w // 16, 16, 3).permute(0, 1, 3, 5, 2, 4).flatten(3)  # [T, h, w, 768]
        return (patches @ self.weight.to(patches.device).T).permute(3, 0, 1, 2)[None]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, 48, T, h, w] -> [B, 1 + 4 (T - 1), 16 h, 16 w, 3] in [0, 1]: each latent frame after the first gives
        4 frames blending from the previous one to it (4 copies would be merged by the animated-WEBP writer)."""
        b, _, t, h, w = latents.shape
        patches = latents.float().permute(0, 2, 3, 4, 1) @ torch.linalg.pinv(self.weight).T.to(latents.device)  # [B, T, h, w, 768]
        keys = patches.reshape(b, t, h, w, 3, 16, 16).permute(0, 1, 2, 5, 3, 6, 4).reshape(b, t, 16 * h, 16 * w, 3)
        frames = [keys[:, :1]]
        for i in range(1, t):
            blend = torch.arange(1, 5, device=keys.device).view(1, 4, 1, 1, 1) / 4
            frames.append(keys[:, i - 1:i] * (1 - blend) + keys[:, i:i + 1] * blend)
        return torch.cat(frames, dim=1).clamp(0, 1)


# --- building ------------------------------------------------------------------------------------


def _ensure_dit(name: str, supported_model: str, config: dict, seed: int, cache_dir) -> pathlib.Path:
    def build(path: pathlib.Path) -> None:
        load_comfyui()
        sd = prefixed(_dit_state_dict(supported_model, config, seed))
        save_fp16(path, sd, {"builder": BUILDER_VERSION, "seed": seed, "model": supported_model, "config": config})

    return ensure_cached(name, build, cache_dir)


def _dit_state_dict(supported_model: str, config: dict, seed: int) -> dict:
    import comfy.model_detection
    import comfy.supported_models

    model_config_class = getattr(comfy.supported_models, supported_model, None)
    if model_config_class is None:
        raise RuntimeError(f"this ComfyUI has no supported_models.{supported_model} (Wan 2.1 needs >= 0.3.16, Wan 2.2 >= 0.3.46)")
    # Build through ComfyUI's own model config so the layout is exactly what its loader rebuilds.
    with quiet():
        model = model_config_class(dict(config)).get_model({})
    dit = model.diffusion_model.float()
    gen = torch.Generator().manual_seed(seed)

    def modulation(name: str, p: torch.nn.Parameter) -> torch.Tensor | None:
        # The blocks' and head's learned AdaLN offsets (nn.Parameter, torch.empty in ComfyUI): Wan's own init.
        if name.rsplit(".", 1)[-1] == "modulation":
            return torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1])
        return None

    init_params(dit, gen, special=modulation)
    sd = params_state_dict(dit)
    detected = comfy.model_detection.model_config_from_unet(sd, "")
    if type(detected) is not model_config_class:
        raise RuntimeError(f"test Wan model is detected as {type(detected).__name__}, not {supported_model}")
    if detected.unet_config != config:
        raise RuntimeError(f"test Wan model is detected with config {detected.unet_config}, built with {config}")
    return sd


def _wan21_vae_state_dict(seed: int, dim: int) -> dict:
    import comfy.ldm.wan.vae
    import comfy.sd

    # comfy.sd.VAE picks the Wan2.1 VAE from these keys (middle block: 4 x dim channels, ComfyUI's dim_mult
    # [1, 2, 4, 4]) and reads its width from the head, exactly as when it loads a real file; ComfyUI since 2026 also
    # reads the image channels from the first and last convolutions (3 each; older ones ignore those keys).
    probe = {"decoder.middle.0.residual.0.gamma": torch.ones(4 * dim, 1, 1, 1), "decoder.head.0.gamma": torch.ones(dim, 1, 1, 1),
             "encoder.conv1.weight": torch.ones(dim, 3, 3, 3, 3), "decoder.head.2.weight": torch.ones(3, dim, 3, 3, 3)}
    with quiet():
        vae = comfy.sd.VAE(sd=probe)
    ae = vae.first_stage_model.float()
    if type(ae) is not comfy.ldm.wan.vae.WanVAE:
        raise RuntimeError(f"comfy.sd.VAE built {type(ae).__name__} for the Wan2.1 VAE keys")
    init_params(ae, torch.Generator().manual_seed(seed))
    return params_state_dict(ae)
