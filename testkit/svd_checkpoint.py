"""Deterministic random-weight test models with the real SVD interface.

``ensure_svd_test_checkpoint()`` gives a checkpoint that ComfyUI's stock loaders detect as Stable
Video Diffusion (see /work/shared/COMFYUI.md, "Test models without real weights"):

* ``model.diffusion_model.``: the smallest UNet layout that passes SVD detection ("min320":
  model_channels 320, channel_mult [1], 8 res blocks, transformer_depth [1,1,1,1,1,1,0,0], no
  middle or output transformers), ~117.5 M parameters;
* ``first_stage_model.``: the real-size SVD VAE with its temporal decoder (detection is by key, and
  ComfyUI builds it from a fixed config), ~97.7 M parameters;
* ``conditioner.embedders.0.open_clip.model.visual.``: a real-size ViT-H/14 CLIP vision tower in
  open_clip naming (ComfyUI picks the CLIP vision config by layer count only), ~632 M parameters.

Every module is built with the classes of the ComfyUI that ``load_comfyui`` imported, so the keys are
exactly what its loader expects; weights are random but deterministic and stored as fp16 (~1.6 GiB).
Files are cached under ``$REENACT_CACHE/models`` and named after ``BUILDER_VERSION``: bump it
whenever anything below changes the file's contents.
"""

from __future__ import annotations

import inspect
import json
import os
import pathlib
import tempfile

import torch

from .comfy_env import load_comfyui
from .model_files import ensure_cached, init_params, prefixed, quiet, save_fp16  # init_params: motion_world imports it from here

BUILDER_VERSION = "v1"

SVD_SEED = 20240301
SVD_XT_SEED = 20240302

# Extra gain (on top of the 1/sqrt(fan_in) scale) for the cross-attention to_k/to_v/to_out weights,
# spatial and temporal. The pack optimises the cross-attention tokens, so they must steer the output.
# Measured on the min320 UNet (4 frames, 8x8 latent): with 1.0, swapping 8 random tokens per frame
# changes the denoised output by 35% (sigma 1) to 67% (sigma 10), swapping only time_context by
# 4-8%; 1.5 already lets random tokens outweigh everything else (>100% at sigma >= 3).
CROSS_ATTN_GAIN = 1.0

_UNET_PREFIX = "model.diffusion_model."
_VAE_PREFIX = "first_stage_model."
_CLIP_VISION_PREFIX = "conditioner.embedders.0.open_clip.model.visual."

# What model_detection.detect_unet_config reports for the min320 layout; SVD_img2vid adds its
# unet_extra_config (heads) on top.
_MIN320_UNET_CONFIG = {
    "use_checkpoint": False,
    "image_size": 32,
    "use_spatial_transformer": True,
    "legacy": False,
    "num_classes": "sequential",
    "adm_in_channels": 768,
    "in_channels": 8,
    "out_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [8],
    "channel_mult": [1],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [0] * 9,
    "transformer_depth_middle": -1,  # middle block = one res block, no transformer
    "use_linear_in_transformer": True,
    "context_dim": 1024,
    "extra_ff_mix_layer": True,
    "use_spatial_context": True,
    "merge_strategy": "learned_with_images",
    "merge_factor": 0.0,
    "video_kernel_size": [3, 1, 1],
    "use_temporal_resblock": True,
    "use_temporal_attention": True,
}


def ensure_svd_test_checkpoint(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Path of the cached random-weight SVD checkpoint (built on first use)."""
    return _ensure(f"reenact-test-svd-{BUILDER_VERSION}.safetensors", SVD_SEED, cache_dir)


def ensure_svd_xt_test_checkpoint(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Same architecture with other weights, standing in for SVD-XT (which differs only in use)."""
    return _ensure(f"reenact-test-svd-xt-{BUILDER_VERSION}.safetensors", SVD_XT_SEED, cache_dir)


def tiny_clip_vision(seed: int = 0, **config):
    """A small in-process ``comfy.clip_vision.ClipVisionModel`` (ViT, 2 layers, 1024-d embeddings).

    Stock loaders only accept real-size CLIP vision towers; this one is for tests that call
    ``encode_image`` directly. Deterministic for a given seed. ``config`` overrides entries of the HF CLIP
    vision config below (e.g. ``hidden_size=1280`` for the width Wan2.1-I2V's image branch expects).
    """
    ns = load_comfyui()
    import comfy.clip_vision

    config = {
        "attention_dropout": 0.0,
        "dropout": 0.0,
        "hidden_act": "gelu",
        "hidden_size": 64,
        "image_size": 224,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 256,
        "layer_norm_eps": 1e-05,
        "model_type": "clip_vision_model",
        "num_attention_heads": 4,
        "num_channels": 3,
        "num_hidden_layers": 2,
        "patch_size": 32,
        "projection_dim": 1024,
        "torch_dtype": "float32",
        **config,
    }
    # ComfyUI 2024-03's ClipVisionModel only takes a path to a JSON config.
    with tempfile.TemporaryDirectory(dir=ns.dirs) as tmp:
        path = os.path.join(tmp, "tiny_clip_vision.json")
        with open(path, "w") as f:
            json.dump(config, f)
        clip = comfy.clip_vision.ClipVisionModel(path)
    init_params(clip.model, torch.Generator().manual_seed(seed))
    return clip


# --- building ------------------------------------------------------------------------------------


def _ensure(name: str, seed: int, cache_dir) -> pathlib.Path:
    return ensure_cached(name, lambda tmp: _build(tmp, seed), cache_dir)


def _build(path: pathlib.Path, seed: int) -> None:
    load_comfyui()
    write_checkpoint(path, _unet_state_dict(seed), seed, {"cross_attn_gain": CROSS_ATTN_GAIN})


def write_checkpoint(path: pathlib.Path, unet_state_dict: dict, seed: int, description: dict) -> None:
    """An SVD checkpoint as ComfyUI's ImageOnlyCheckpointLoader reads it: ``unet_state_dict`` (any SVD
    layout) plus the real-size SVD VAE and ViT-H CLIP vision with random weights, all fp16. Used for the
    test checkpoints and for the GPU check's full-size one (bench/gpu_check.py)."""
    sd = {}
    # One component at a time, each converted to fp16 and its fp32 module dropped, to bound RAM.
    sd.update(prefixed(unet_state_dict, _UNET_PREFIX))
    del unet_state_dict
    sd.update(prefixed(_vae_state_dict(seed + 1), _VAE_PREFIX))
    sd.update(prefixed(_clip_vision_state_dict(seed + 2), _CLIP_VISION_PREFIX))
    save_fp16(path, sd, {"builder": BUILDER_VERSION, "seed": seed, **description})


def _unet_state_dict(seed: int) -> dict:
    import comfy.model_detection
    import comfy.supported_models
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    config = dict(_MIN320_UNET_CONFIG)
    if "disable_temporal_crossattention" in inspect.signature(UNetModel.__init__).parameters:
        config["disable_temporal_crossattention"] = False  # newer ComfyUI detects this flag too
    # Build through ComfyUI's own model config so the layout is exactly what its loader rebuilds.
    with quiet():
        model = comfy.supported_models.SVD_img2vid(config).get_model({})
    unet = model.diffusion_model.float()
    init_params(unet, torch.Generator().manual_seed(seed), gain=_unet_gain)
    sd = unet.state_dict()
    detected = comfy.model_detection.model_config_from_unet({_UNET_PREFIX + k: v for k, v in sd.items()}, _UNET_PREFIX)
    if type(detected) is not comfy.supported_models.SVD_img2vid:
        raise RuntimeError(f"test UNet is detected as {type(detected).__name__}, not SVD_img2vid")
    return sd


def _unet_gain(name: str) -> float:
    # attn2 = cross-attention, both in the spatial transformer blocks and the temporal time_stack.
    if ".attn2.to_k." in name or ".attn2.to_v." in name or ".attn2.to_out." in name:
        return CROSS_ATTN_GAIN
    return 1.0


def _vae_state_dict(seed: int) -> dict:
    import comfy.sd

    # comfy.sd.VAE picks the SVD temporal-decoder architecture from this one key, exactly as it does
    # when loading a real SVD checkpoint; the (expected) "missing keys" warning is silenced.
    with quiet():
        vae = comfy.sd.VAE(sd={"decoder.mid.block_1.mix_factor": torch.zeros(1)})
    ae = vae.first_stage_model.float()
    init_params(ae, torch.Generator().manual_seed(seed))
    return ae.state_dict()


def _clip_vision_state_dict(seed: int) -> dict:
    import comfy.clip_model
    import comfy.clip_vision
    import comfy.ops

    with open(os.path.join(os.path.dirname(comfy.clip_vision.__file__), "clip_vision_config_h.json")) as f:
        config = json.load(f)
    # fp16 from the start: 632 M parameters in fp32 would cost 2.5 GB. Values are drawn in fp32 and
    # rounded on copy, exactly like an fp32 build cast afterwards.
    model = comfy.clip_model.CLIPVisionModelProjection(config, torch.float16, "cpu", comfy.ops.manual_cast)
    init_params(model, torch.Generator().manual_seed(seed))
    hf = model.state_dict()
    open_clip = _to_open_clip(hf, config["num_hidden_layers"])
    # The key mapping must be the exact inverse of what the loader applies.
    back = comfy.clip_vision.convert_to_transformers({_CLIP_VISION_PREFIX + k: v for k, v in open_clip.items()},
                                                     _CLIP_VISION_PREFIX)
    if set(back) != set(hf) or any(not torch.equal(back[k], hf[k]) for k in hf):
        raise RuntimeError("open_clip key mapping does not round-trip through convert_to_transformers")
    return open_clip


def _to_open_clip(hf: dict, layers: int) -> dict:
    """Inverse of comfy.clip_vision.convert_to_transformers (open_clip -> HF CLIP naming)."""
    v = "vision_model."
    out = {
        "class_embedding": hf[v + "embeddings.class_embedding"],
        "conv1.weight": hf[v + "embeddings.patch_embedding.weight"],
        "positional_embedding": hf[v + "embeddings.position_embedding.weight"],
        "ln_pre.weight": hf[v + "pre_layrnorm.weight"],
        "ln_pre.bias": hf[v + "pre_layrnorm.bias"],
        "ln_post.weight": hf[v + "post_layernorm.weight"],
        "ln_post.bias": hf[v + "post_layernorm.bias"],
        "proj": hf["visual_projection.weight"].t(),  # open_clip stores x @ proj
    }
    renames = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1",
               "mlp.c_proj": "mlp.fc2", "attn.out_proj": "self_attn.out_proj"}
    for i in range(layers):
        src, dst = f"{v}encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for oc, t in renames.items():
            for y in ("weight", "bias"):
                out[f"{dst}{oc}.{y}"] = hf[f"{src}{t}.{y}"]
        for y in ("weight", "bias"):  # open_clip keeps q, k, v stacked in one in_proj
            out[f"{dst}attn.in_proj_{y}"] = torch.cat([hf[f"{src}self_attn.{p}_proj.{y}"] for p in "qkv"])
    return out
