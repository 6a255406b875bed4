"""Motion World: the small SVD-interface model bundled with the pack, loaded like a real SVD checkpoint.

The file holds a small image-to-video UNet built from ComfyUI's own SVD classes (so every node, sampler
and the inversion run on it unchanged), a small autoencoder in ComfyUI's AutoencoderKL format, a tiny
CLIP-vision tower, and their configurations as JSON metadata. Training: motion_world/train.py.
"""

from __future__ import annotations

import json
import os
import tempfile

import comfy.clip_vision
import comfy.model_patcher
import comfy.sd
import comfy.supported_models
import safetensors
import safetensors.torch
import torch

from .private_model import default_devices

CATEGORY = "Reenact Anything"
MODELS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "motion_world")
UNET_PREFIX, VAE_PREFIX, CLIP_PREFIX = "model.diffusion_model.", "first_stage_model.", "clip_vision."


def list_motion_world_models() -> list[str]:
    if not os.path.isdir(MODELS_DIR):
        return []
    return sorted(f for f in os.listdir(MODELS_DIR) if f.endswith(".safetensors"))


def read_configs(metadata: dict[str, str]) -> tuple[dict, dict, dict]:
    return tuple(json.loads(metadata[key]) for key in ("unet_config", "vae_config", "clip_vision_config"))


def build_unet(unet_config: dict, dtype: torch.dtype = torch.float32):
    """The SVD_img2vid model (ComfyUI's own class) for a small UNet configuration."""
    model_config = comfy.supported_models.SVD_img2vid(dict(unet_config))
    model_config.set_inference_dtype(dtype, None)
    return model_config.get_model({})


def build_vae(vae_config: dict, state_dict: dict | None = None):
    """ComfyUI's VAE wrapper around an AutoencoderKL with this (small) configuration."""
    return comfy.sd.VAE(sd=state_dict or {}, config={"params": {"ddconfig": vae_config, "embed_dim": vae_config["z_channels"]}})


def build_clip_vision(clip_config: dict, state_dict: dict | None = None):
    # ComfyUI 2024-03's ClipVisionModel takes a JSON file path only.
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(clip_config, f)
    try:
        clip = comfy.clip_vision.ClipVisionModel(f.name)
    finally:
        os.unlink(f.name)
    if state_dict is not None:
        clip.load_sd(state_dict)
    return clip


def _with_prefix(state_dict: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def load_motion_world(path: str):
    """(MODEL patcher, CLIP_VISION, VAE) from a Motion World file."""
    with safetensors.safe_open(path, framework="pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != "reenact-anything/motion-world":
        raise ValueError(f"{os.path.basename(path)} is not a Motion World model file")
    unet_config, vae_config, clip_config = read_configs(metadata)
    state_dict = safetensors.torch.load_file(path)
    model = build_unet(unet_config)
    model.load_model_weights(state_dict, UNET_PREFIX)
    load_device, offload_device = default_devices()
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)
    vae = build_vae(vae_config, {k: v.float() for k, v in _with_prefix(state_dict, VAE_PREFIX).items()})
    clip_vision = build_clip_vision(clip_config, _with_prefix(state_dict, CLIP_PREFIX))
    return patcher, clip_vision, vae


class MotionWorldLoader:
    DESCRIPTION = (
        "Loads Motion World, the small SVD-interface model trained on synthetic sprite motion that ships with the pack. "
        "It returns MODEL, CLIP_VISION and VAE like Image Only Checkpoint Loader, so the rest of the graph is the same as "
        "with real SVD (use 8 frames at 64x64)."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL", "CLIP_VISION", "VAE")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model_name": (list_motion_world_models(), {"tooltip": "A Motion World model bundled with the pack (its motion_world/ folder)."})}}

    def load(self, model_name: str):
        return load_motion_world(os.path.join(MODELS_DIR, os.path.basename(model_name)))
