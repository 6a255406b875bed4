"""The bundled Motion World model (motion_world/motion_world.safetensors) in a real ComfyUI: it loads through
the pack's loader node like an SVD checkpoint, and it is a model worth measuring with: its own motion
tokens (the oracle) move the target's sprite along a held-out trajectory far better than no motion
information does, and the sprite survives. The full measurement (trajectory errors, all conditions,
seeds) is bench/motion_world_bench.py; the thresholds here are far below what it reports."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from motion_world import metrics, world
from testkit.comfy_env import run_node
from tools.make_workflows import MOTION_WORLD_CFG

FRAMES, SIZE = 8, 64
MOTIONS = ("unseen_direction_up_left", "l_path_down_right")


@pytest.fixture(scope="module")
def motion_world(comfy, pack):
    return run_node(comfy, "MotionWorldLoader", model_name="motion_world.safetensors")


@pytest.fixture(scope="module")
def oracle(pack):
    from bench.motion_world_bench import load_motion_encoder
    from testkit.comfy_env import pack_submodule

    encoder = load_motion_encoder(pack.module.__path__[0] + "/motion_world/motion_world.safetensors")
    embedding_cls = pack_submodule(pack.module, "reenact_core.embedding").MotionEmbedding

    def tokens(clip):
        feats = world.motion_features(clip.motion, FRAMES)
        with torch.no_grad():
            spatial, temporal = encoder(torch.from_numpy(feats["per_frame"])[None], torch.from_numpy(feats["summary"])[None])
        return embedding_cls(spatial=spatial[0].float(), temporal=temporal[0].float())

    return tokens


def generate(comfy, motion_world, first_frame, embedding, strength):
    model, clip_vision, vae = motion_world
    positive, negative, latent = run_node(
        comfy, "SVD_img2vid_Conditioning", clip_vision=clip_vision, init_image=first_frame[None], vae=vae,
        width=SIZE, height=SIZE, video_frames=FRAMES, motion_bucket_id=127, fps=6, augmentation_level=0.0,
    )
    positive, negative, _, _ = run_node(comfy, "ApplyMotionEmbedding", positive=positive, negative=negative, motion_embedding=embedding, latent=latent, strength=strength)
    (guided,) = run_node(comfy, "VideoLinearCFGGuidance", model=model, min_cfg=1.0)
    (samples,) = run_node(
        comfy, "KSampler", model=guided, seed=0, steps=20, cfg=MOTION_WORLD_CFG, sampler_name="euler", scheduler="karras",
        positive=positive, negative=negative, latent_image=latent, denoise=1.0,
    )
    (images,) = run_node(comfy, "VAEDecode", samples=samples, vae=vae)
    return images.float().cpu()


def test_loader_gives_an_svd_model(comfy, motion_world):
    import comfy.model_base

    model, clip_vision, vae = motion_world
    assert isinstance(model.model, comfy.model_base.SVD_img2vid)
    with torch.inference_mode():  # as ComfyUI runs nodes
        assert clip_vision.encode_image(torch.rand(1, SIZE, SIZE, 3)).image_embeds.shape[-1] == model.model.model_config.unet_config["context_dim"]
        assert vae.encode(torch.rand(1, SIZE, SIZE, 3)).shape == (1, 4, SIZE // 8, SIZE // 8)


@pytest.mark.parametrize("motion", MOTIONS)
def test_oracle_tokens_reproduce_held_out_motion(comfy, motion_world, oracle, motion):
    target = world.target_scenes(2, seed=0)[1]
    clip = next(c for c in world.held_out_references(FRAMES, SIZE) if c.motion.name == motion)
    ideal = world.render_clip(target, clip.motion, FRAMES, SIZE)
    direction, areas = {}, {}
    for name, strength in (("oracle", 1.0), ("null", 0.0)):
        frames = generate(comfy, motion_world, ideal.frames[0], oracle(clip), strength)
        centers, found = metrics.track_sprite(frames, ideal.sprite_color)
        direction[name] = metrics.direction_agreement(centers, ideal.centers.numpy())
        areas[name] = metrics.area_kept(found, ideal.areas.numpy())
    print(direction, areas)
    assert direction["oracle"] > direction["null"] + 0.25, direction  # the tokens steer the sprite along the motion
    assert areas["oracle"] > 0.15 and np.isfinite(areas["oracle"]), areas  # and it is still there to be tracked
