"""The tiny random-weight Wan test models (testkit/wan_checkpoint.py) behave like Wan for the ComfyUI in
COMFYUI_ROOT: its stock loaders detect each file as the right model class without missing or unused
tensors, the models run (a forward pass, the real WanImageToVideo node, a few sampler steps), the
conditioning the pack optimises steers them, and the files are byte-identical when built again.
Skipped on a ComfyUI without Wan (comfy/ldm/wan: Wan 2.1 needs >= 0.3.16, Wan 2.2 >= 0.3.46)."""

from __future__ import annotations

import gc
import os

import pytest
import torch
from conftest import captured_log, comfyui_root

from testkit.comfy_env import load_comfyui, register_model_folder, run_node
from testkit.wan_checkpoint import (
    WAN21_I2V_CONFIG,
    WAN22_TI2V_CONFIG,
    ensure_wan21_i2v_test_model,
    ensure_wan21_vae_test_model,
    ensure_wan22_ti2v_test_model,
    tiny_wan_clip_vision,
)

# 5 video frames of 32x32 px: Wan2.1's VAE gives 2 latent frames of 4x4 (16 channels), 2x2 patches -> 8 tokens.
FRAMES, SIZE = 5, 32
LATENT_FRAMES = (FRAMES - 1) // 4 + 1
TEXT_TOKENS = 8


@pytest.fixture(scope="module")
def comfyui():
    root = comfyui_root()
    if not os.path.isfile(os.path.join(root, "comfy", "ldm", "wan", "model.py")):
        pytest.skip(f"the ComfyUI at {root} has no Wan (comfy/ldm/wan): Wan 2.1 needs ComfyUI >= 0.3.16 (2025-02-26)")
    return load_comfyui()


@pytest.fixture(scope="module")
def wan22(comfyui):
    import comfy.supported_models

    if not hasattr(comfy.supported_models, "WAN22_T2V"):
        pytest.skip(f"the ComfyUI at {comfyui.root} has no Wan 2.2 (supported_models.WAN22_T2V): it needs ComfyUI >= 0.3.46 (2025-07-28)")
    return comfyui


@pytest.fixture(autouse=True)
def _release_models(comfyui):
    yield
    comfyui.model_management.unload_all_models()
    gc.collect()


def load_logged(fn, *args, **kwargs):
    """fn's result and the log messages that say a stored tensor was missing or left unused."""
    with captured_log() as messages, torch.inference_mode():
        out = fn(*args, **kwargs)
    return out, [m for m in messages if any(w in m.lower() for w in ("missing", "unexpected", "left over", "leftover"))]


def _relative_change(a, b):
    return ((a - b).norm() / a.norm()).item()


def _conditioning(gen, n=1):
    """Stand-in for CLIPTextEncode with umT5 (no tiny umT5 can pass CLIPLoader): [[tokens [1, N, 4096], {}]]."""
    return [[torch.randn(1, TEXT_TOKENS, 4096, generator=gen), {}] for _ in range(n)]


# -- Wan2.1 I2V diffusion model ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def i2v_file(comfyui):
    return ensure_wan21_i2v_test_model()


@pytest.fixture(scope="module")
def i2v(comfyui, i2v_file):
    """The I2V model as the stock UNETLoader node loads it from models/diffusion_models, and the log's complaints."""
    register_model_folder(comfyui, "diffusion_models", i2v_file.parent)
    assert i2v_file.name in comfyui.folder_paths.get_filename_list("diffusion_models")
    (model,), complaints = load_logged(run_node, comfyui, "UNETLoader", unet_name=i2v_file.name, weight_dtype="default")
    return model, complaints


def test_i2v_is_detected_as_wan21_i2v(i2v, i2v_file):
    import comfy.latent_formats
    import comfy.model_base
    import comfy.supported_models

    model, complaints = i2v
    assert type(model.model.model_config) is comfy.supported_models.WAN21_I2V
    assert type(model.model) is comfy.model_base.WAN21 and model.model.image_to_video
    assert type(model.model.latent_format) is comfy.latent_formats.Wan21
    dit = model.model.diffusion_model
    assert (dit.dim, dit.num_heads, dit.num_layers, dit.in_dim, dit.out_dim) == (256, 2, 2, 36, 16)
    assert dit.img_emb is not None and dit.model_type == "i2v"
    assert not complaints, complaints
    assert os.path.getsize(i2v_file) < 12e6


def i2v_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, LATENT_FRAMES, SIZE // 8, SIZE // 8, generator=g)
    concat = torch.randn(1, 20, *x.shape[2:], generator=g)  # 4 mask + 16 image-latent channels
    context = torch.randn(1, TEXT_TOKENS, 4096, generator=g)
    clip_fea = torch.randn(1, 257, 1280, generator=g)
    return x, concat, context, clip_fea


def test_i2v_forward_pass_and_its_conditioning_steers_it(i2v):
    model = i2v[0].model
    x, concat, context, clip_fea = i2v_inputs()
    _, _, other_context, other_clip = i2v_inputs(seed=1)

    def velocity(sigma, context, clip_fea):
        with torch.inference_mode():
            denoised = model.apply_model(x, torch.tensor([sigma]), c_concat=concat, c_crossattn=context, clip_fea=clip_fea,
                                         transformer_options={})
        return (x - denoised) / sigma  # flow matching: denoised = x - sigma * v

    for sigma in (0.3, 0.9):
        v = velocity(sigma, context, clip_fea)
        assert v.shape == x.shape and torch.isfinite(v).all()
        # The text tokens (what the pack learns) and the CLIP image branch both matter.
        assert _relative_change(v, velocity(sigma, other_context, clip_fea)) > 0.1, sigma
        assert _relative_change(v, velocity(sigma, context, other_clip)) > 0.02, sigma


# -- Wan2.2 TI2V diffusion model --------------------------------------------------------------------------------------


def test_ti2v_is_detected_as_wan22_and_runs_with_per_frame_timesteps(wan22):
    import comfy.latent_formats
    import comfy.model_base
    import comfy.sd
    import comfy.supported_models

    path = ensure_wan22_ti2v_test_model()
    patcher, complaints = load_logged(comfy.sd.load_diffusion_model, str(path))
    assert not complaints, complaints
    model = patcher.model
    assert type(model.model_config) is comfy.supported_models.WAN22_T2V
    assert type(model) is comfy.model_base.WAN22
    assert type(model.latent_format) is comfy.latent_formats.Wan22 and model.latent_format.latent_channels == 48
    dit = model.diffusion_model
    assert (dit.dim, dit.in_dim, dit.out_dim, dit.img_emb) == (256, 48, 48, None)
    assert os.path.getsize(path) < 8e6

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 48, LATENT_FRAMES, 4, 4, generator=g)  # TI2V-5B's VAE: 16x spatial, 4x temporal
    context = torch.randn(1, TEXT_TOKENS, 4096, generator=g)
    mask = torch.ones(1, 1, *x.shape[2:])
    mask[:, :, 0] = 0.0  # the first latent frame is the given image: timestep 0 there
    with torch.inference_mode():
        out = model.apply_model(x, torch.tensor([0.7]), c_crossattn=context, denoise_mask=mask, transformer_options={})
        plain = model.apply_model(x, torch.tensor([0.7]), c_crossattn=context, transformer_options={})
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert _relative_change(plain, out) > 1e-3  # the per-frame timestep path (WAN22.process_timestep) ran

    # A sampler run on such a latent (what Wan22ImageToVideoLatent gives: first frame kept by noise_mask).
    latent = {"samples": x, "noise_mask": mask}
    (samples,) = run_node(wan22, "KSampler", model=patcher, seed=0, steps=2, cfg=1.0, sampler_name="euler",
                          scheduler="simple", positive=[[context, {}]], negative=[[context, {}]], latent_image=latent, denoise=1.0)
    assert samples["samples"].shape == x.shape and torch.isfinite(samples["samples"]).all()
    torch.testing.assert_close(samples["samples"][:, :, 0], x[:, :, 0])


# -- Wan2.1 VAE -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vae(comfyui):
    path = ensure_wan21_vae_test_model()
    register_model_folder(comfyui, "vae", path.parent)
    (vae,), complaints = load_logged(run_node, comfyui, "VAELoader", vae_name=path.name)
    return vae, complaints, path


def test_vae_is_detected_as_wan21_and_round_trips_a_clip(vae):
    import comfy.ldm.wan.vae

    vae, complaints, path = vae
    assert type(vae.first_stage_model) is comfy.ldm.wan.vae.WanVAE
    assert vae.latent_channels == 16 and vae.first_stage_model.decoder.head[0].gamma.shape[0] == 8
    assert not complaints, complaints
    assert os.path.getsize(path) < 3e6

    video = torch.rand(FRAMES, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        latent = vae.encode(video)
        assert latent.shape == (1, 16, LATENT_FRAMES, SIZE // 8, SIZE // 8)
        assert torch.isfinite(latent).all()
        frames = vae.decode(latent)
    assert frames.shape == (1, FRAMES, SIZE, SIZE, 3)
    assert torch.isfinite(frames).all()


# -- the real WanImageToVideo node, then sampling and decoding -------------------------------------------------------------


def test_wan_image_to_video_with_the_test_models(comfyui, i2v, vae):
    model, vae = i2v[0], vae[0]
    gen = torch.Generator().manual_seed(3)
    start_image = torch.rand(1, SIZE, SIZE, 3, generator=gen)
    with torch.inference_mode():
        clip_vision_output = tiny_wan_clip_vision().encode_image(start_image)
    assert clip_vision_output.penultimate_hidden_states.shape == (1, 257, 1280)

    positive, negative, latent = run_node(
        comfyui, "WanImageToVideo", positive=_conditioning(gen), negative=_conditioning(gen), vae=vae, width=SIZE,
        height=SIZE, length=FRAMES, batch_size=1, start_image=start_image, clip_vision_output=clip_vision_output,
    )
    shape = (1, 16, LATENT_FRAMES, SIZE // 8, SIZE // 8)
    assert latent["samples"].shape == shape
    for cond in (positive, negative):
        assert len(cond) == 1 and cond[0][0].shape == (1, TEXT_TOKENS, 4096)
        extra = cond[0][1]
        assert extra["concat_latent_image"].shape == shape
        assert extra["concat_mask"].shape == (1, 1, *shape[2:])
        assert extra["concat_mask"][:, :, 0].eq(0).all() and extra["concat_mask"][:, :, 1:].eq(1).all()
        assert extra["clip_vision_output"] is clip_vision_output

    (samples,) = run_node(comfyui, "KSampler", model=model, seed=0, steps=2, cfg=2.0, sampler_name="euler",
                          scheduler="simple", positive=positive, negative=negative, latent_image=latent, denoise=1.0)
    assert samples["samples"].shape == shape and torch.isfinite(samples["samples"]).all()
    (images,) = run_node(comfyui, "VAEDecode", samples=samples, vae=vae)
    assert images.shape[-3:] == (SIZE, SIZE, 3) and images.reshape(-1, SIZE, SIZE, 3).shape[0] == FRAMES
    assert torch.isfinite(images).all()


# -- files --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ensure", [ensure_wan21_i2v_test_model, ensure_wan22_ti2v_test_model, ensure_wan21_vae_test_model],
                         ids=["wan21_i2v", "wan22_ti2v", "wan21_vae"])
def test_files_are_byte_identical_when_built_again(comfyui, tmp_path, ensure):
    import comfy.supported_models

    if ensure is ensure_wan22_ti2v_test_model and not hasattr(comfy.supported_models, "WAN22_T2V"):
        pytest.skip("Wan 2.2 needs ComfyUI >= 0.3.46 (2025-07-28)")
    first, second = ensure(tmp_path / "a"), ensure(tmp_path / "b")
    assert first.name == second.name == ensure().name
    assert first.read_bytes() == second.read_bytes()
    assert (first.stat().st_mode & 0o777) == 0o644


def test_files_hold_fp16_tensors_and_say_how_they_were_built(comfyui):
    import json

    from safetensors import safe_open

    for path, config in ((ensure_wan21_i2v_test_model(), WAN21_I2V_CONFIG), (ensure_wan21_vae_test_model(), None)):
        with safe_open(str(path), "pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
            info = json.loads(f.metadata()["reenact_test_model"])
        assert info["builder"] == "v1" and isinstance(info["seed"], int)
        if config is not None:
            assert info["config"] == json.loads(json.dumps(config))
    assert WAN22_TI2V_CONFIG["in_dim"] == WAN22_TI2V_CONFIG["out_dim"] == 48


# -- why there is no tiny umT5 or CLIP vision file ----------------------------------------------------------------------


def test_stock_loaders_take_only_full_size_umt5_and_clip_vision(comfyui):
    """What testkit/wan_checkpoint.py's docstring says; if this fails, a tiny text encoder may now be possible."""
    import json

    import comfy.clip_vision
    import comfy.sd
    import comfy.text_encoders.wan

    tiny_t5 = {"encoder.block.0.layer.0.SelfAttention.k.weight": torch.zeros(64, 64),
               "encoder.block.1.layer.1.DenseReluDense.wi_1.weight": torch.zeros(128, 64),
               "encoder.final_layer_norm.weight": torch.zeros(64)}
    assert comfy.sd.detect_te_model(tiny_t5) != comfy.sd.TEModel.T5_XXL
    with open(os.path.join(os.path.dirname(comfy.text_encoders.wan.__file__), "umt5_config_xxl.json")) as f:
        config = json.load(f)
    assert (config["d_model"], config["num_layers"], config["vocab_size"]) == (4096, 24, 256384)

    tiny_clip = {"vision_model.encoder.layers.1.layer_norm1.weight": torch.zeros(64)}
    assert comfy.clip_vision.load_clipvision_from_sd(tiny_clip) is None
