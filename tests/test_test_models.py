"""The random-weight test models behave like SVD for the ComfyUI in COMFYUI_ROOT.

Stock loaders must detect the checkpoint as SVD, the unchanged stock SVD graph must run on it, and
the CLIP-token context must materially steer the UNet (the pack optimises exactly those tokens).
"""

from __future__ import annotations

import gc
import os

import pytest
import torch
from conftest import captured_log

from testkit.comfy_env import load_comfyui, register_model_folder, run_node
from testkit.svd_checkpoint import (
    ensure_svd_test_checkpoint,
    ensure_svd_xt_test_checkpoint,
    tiny_clip_vision,
)

FRAMES = 4


@pytest.fixture(scope="module")
def comfyui():
    return load_comfyui()


@pytest.fixture(scope="module")
def ckpt(comfyui):
    return ensure_svd_test_checkpoint()


@pytest.fixture(autouse=True)
def _release_models(comfyui):
    # ComfyUI keeps every model it sampled with in model_management; each load of the checkpoint
    # costs ~2 GB on CPU, so drop them between tests to keep the run's peak RAM low.
    yield
    comfyui.model_management.unload_all_models()
    gc.collect()


@pytest.fixture(scope="class")
def loaded(comfyui, ckpt):
    """The stock loader's result plus every log message it produced."""
    with captured_log() as messages, torch.inference_mode():
        out = comfyui.sd.load_checkpoint_guess_config(str(ckpt), output_vae=True, output_clip=False, output_clipvision=True)
    model, _clip, vae, clip_vision = out[:4]
    return model, vae, clip_vision, messages


def _relative_change(a, b):
    return ((a - b).norm() / a.norm()).item()


class TestStockLoader:
    """comfy.sd.load_checkpoint_guess_config on the checkpoint (one load shared by these tests)."""

    def test_detected_as_svd(self, loaded):
        import comfy.clip_vision
        import comfy.model_base
        import comfy.sd

        model, vae, clip_vision, messages = loaded
        assert type(model.model) is comfy.model_base.SVD_img2vid
        assert isinstance(vae, comfy.sd.VAE)
        assert type(vae.first_stage_model.decoder).__name__ == "VideoDecoder"  # the temporal SVD decoder
        assert isinstance(clip_vision, comfy.clip_vision.ClipVisionModel)
        assert len(clip_vision.model.vision_model.encoder.layers) == 32  # ViT-H/14
        # Every stored tensor is used and every expected one is present.
        suspicious = [m for m in messages if any(w in m.lower() for w in ("missing", "unexpected", "left over"))]
        assert not suspicious, suspicious

    def test_context_steers_unet(self, loaded):
        model = loaded[0].model
        gen = torch.Generator().manual_seed(1)
        x0, noise, concat = (torch.randn(FRAMES, 4, 8, 8, generator=gen) for _ in range(3))
        # Per-frame token sets, the shape the pack feeds as c_crossattn: [frames, tokens, 1024].
        ctx_a, ctx_b = (torch.randn(FRAMES, 8, 1024, generator=gen) for _ in range(2))
        with torch.inference_mode():
            y = model.encode_adm(fps=6, motion_bucket_id=127, augmentation_level=0.0).repeat(FRAMES, 1)

            def denoise(sigma, context, **extra):
                x = x0 + sigma * noise
                return model.apply_model(x, torch.full((FRAMES,), sigma), c_concat=concat, c_crossattn=context,
                                         y=y, num_video_frames=FRAMES, transformer_options={}, **extra)

            for sigma in (1.0, 10.0):
                a, b = denoise(sigma, ctx_a), denoise(sigma, ctx_b)
                assert torch.isfinite(a).all() and torch.isfinite(b).all()
                assert _relative_change(a, b) > 0.10, sigma
                # Temporal cross-attention alone (time_context, which defaults to the context) matters too.
                t = denoise(sigma, ctx_a, time_context=ctx_b)
                assert _relative_change(a, t) > 0.02, sigma


def test_stock_svd_graph_runs(comfyui, ckpt):
    register_model_folder(comfyui, "checkpoints", ckpt.parent)
    assert ckpt.name in comfyui.folder_paths.get_filename_list("checkpoints")

    model, clip_vision, vae = run_node(comfyui, "ImageOnlyCheckpointLoader", ckpt_name=ckpt.name)
    gen = torch.Generator().manual_seed(0)
    init_image = torch.rand(1, 64, 64, 3, generator=gen)
    positive, negative, latent = run_node(
        comfyui, "SVD_img2vid_Conditioning", clip_vision=clip_vision, init_image=init_image, vae=vae,
        width=64, height=64, video_frames=FRAMES, motion_bucket_id=127, fps=6, augmentation_level=0.0,
    )
    assert latent["samples"].shape == (FRAMES, 4, 8, 8)
    (guided,) = run_node(comfyui, "VideoLinearCFGGuidance", model=model, min_cfg=1.0)
    (samples,) = run_node(
        comfyui, "KSampler", model=guided, seed=0, steps=2, cfg=2.5, sampler_name="euler",
        scheduler="karras", positive=positive, negative=negative, latent_image=latent, denoise=1.0,
    )
    assert torch.isfinite(samples["samples"]).all()
    (images,) = run_node(comfyui, "VAEDecode", samples=samples, vae=vae)
    assert images.shape == (FRAMES, 64, 64, 3)
    assert torch.isfinite(images).all()

    # The stock save node (V1 in 2024-03, V3 in new ComfyUI) accepts the decoded frames.
    run_node(comfyui, "SaveAnimatedWEBP", images=images, filename_prefix="test_models", fps=6.0,
             lossless=False, quality=80, method="default")
    out_dir = comfyui.folder_paths.get_output_directory()
    assert any(f.startswith("test_models") and f.endswith(".webp") for f in os.listdir(out_dir))


def test_tiny_clip_vision():
    clip = tiny_clip_vision()
    gen = torch.Generator().manual_seed(2)
    images = torch.rand(2, 96, 128, 3, generator=gen)
    with torch.inference_mode():
        embeds = clip.encode_image(images)["image_embeds"]
        again = tiny_clip_vision().encode_image(images)["image_embeds"]
    assert embeds.shape == (2, 1024)
    assert torch.isfinite(embeds).all()
    assert _relative_change(embeds[0], embeds[1]) > 0.01
    assert torch.equal(embeds, again)  # deterministic


def test_xt_checkpoint_is_a_different_svd(ckpt):
    from safetensors import safe_open

    xt = ensure_svd_xt_test_checkpoint()
    assert xt != ckpt and xt.parent == ckpt.parent
    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    with safe_open(str(ckpt), "pt") as f1, safe_open(str(xt), "pt") as f2:
        assert set(f1.keys()) == set(f2.keys())
        assert f1.get_tensor(key).dtype == torch.float16
        assert not torch.equal(f1.get_tensor(key), f2.get_tensor(key))
