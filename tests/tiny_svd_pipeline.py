"""A tiny random-weight diffusers Stable Video Diffusion pipeline, built in-process (nothing downloaded).

Structurally SVD (UNetSpatioTemporalConditionModel, AutoencoderKLTemporalDecoder, CLIP vision with
projection, CLIPImageProcessor, EulerDiscreteScheduler configured like SVD's), with the real
cross-attention width 1024 so that embeddings made by the ComfyUI nodes fit, and everything else tiny.
"""

from __future__ import annotations

from pathlib import Path

import torch

FRAMES = 4
SIZE = 64  # pixels; the VAE downsamples 8x like SVD's
DIM = 1024

# stabilityai/stable-video-diffusion-img2vid(-xt) scheduler/scheduler_config.json
SVD_SCHEDULER = dict(
    beta_end=0.012,
    beta_schedule="scaled_linear",
    beta_start=0.00085,
    interpolation_type="linear",
    num_train_timesteps=1000,
    prediction_type="v_prediction",
    sigma_max=700.0,
    sigma_min=0.002,
    steps_offset=1,
    timestep_spacing="leading",
    timestep_type="continuous",
    trained_betas=None,
    use_karras_sigmas=True,
)


def build_pipeline(seed: int = 0, frames: int = FRAMES):
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    unet = UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        layers_per_block=1,
        cross_attention_dim=DIM,
        num_attention_heads=(2, 4),
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=24,
        num_frames=frames,
        sample_size=SIZE // 8,
    )
    vae = AutoencoderKLTemporalDecoder(
        block_out_channels=(32, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        layers_per_block=1,
        latent_channels=4,
        sample_size=SIZE,
    )
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=224, patch_size=56, projection_dim=DIM)
    )
    feature_extractor = CLIPImageProcessor(crop_size=224, size=224)
    scheduler = EulerDiscreteScheduler(**SVD_SCHEDULER)
    for model in (unet, vae, image_encoder):
        model.eval()
    return StableVideoDiffusionPipeline(vae=vae, image_encoder=image_encoder, unet=unet, scheduler=scheduler, feature_extractor=feature_extractor)


def save_pipeline(folder: str | Path, seed: int = 0) -> Path:
    folder = Path(folder)
    build_pipeline(seed).save_pretrained(folder)
    return folder
