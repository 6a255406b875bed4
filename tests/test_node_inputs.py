"""Every input of every node changes what it should (issue #30): a test here fails if an input is
ignored, swapped with another or clamped. Where the effect only shows on a GPU (precision, the VRAM
preflight) the decision is tested: the dtype the private copy runs in, the preflight's verdict on a given
free-memory figure. Runs in the real ComfyUI on the random-weight SVD test checkpoint."""

from __future__ import annotations

import os

import pytest
import torch

from testkit.comfy_env import pack_submodule, run_node
from testkit.media import moving_square_frames, write_video

FRAMES, SIZE = 4, 32
BASE_OPTIONS = dict(
    sigma_log_mean=1.0, sigma_log_std=1.0, warmup_steps=-1, schedule="cosine", weight_decay=0.0, grad_clip=1.0,
    per_frame_tokens=True, init_noise=0.1, hflip=False, crop_scale=1.0, color_jitter=0.0, random_cond_frame=False,
    cond_noise=0.0, augment_variants=2, eval_draws=0, hue_shift=0.0,
)


@pytest.fixture(scope="module")
def reference(comfy, pack):
    write_video(moving_square_frames(8, SIZE), os.path.join(comfy.folder_paths.get_input_directory(), "inputs_square.mp4"))
    clip, _, _, _ = run_node(comfy, "LoadMotionReference", video="inputs_square.mp4", frame_load_cap=0, skip_first_frames=0,
                          select_every_nth=1, custom_width=0, custom_height=0)
    return clip


@pytest.fixture(scope="module")
def modules(pack):
    return {name: pack_submodule(pack.module, f"nodes.{name}") for name in ("inversion", "private_model", "comfy_denoiser")}


def invert(comfy, svd, reference, options=None, **overrides):
    model, _, vae = svd
    (options_out,) = run_node(comfy, "MotionInversionOptions", **dict(BASE_OPTIONS, **(options or {})))
    inputs = dict(model=model, vae=vae, motion_reference=reference, steps=2, learning_rate=0.05, tokens_per_frame=2,
                  video_frames=FRAMES, width=SIZE, height=SIZE, seed=0, fps=6, motion_bucket_id=127, augmentation_level=0.0,
                  precision="fp32", gradient_checkpointing=False, options=options_out)
    inputs.update(overrides)
    return run_node(comfy, "MotionTextualInversion", **inputs)[0]


class ModelCalls:
    """What the inversion's private SVD receives in every forward (ComfyUI's SVD_img2vid.apply_model)."""

    def __init__(self, monkeypatch):
        import comfy.model_base

        self.calls: list[dict] = []
        apply_model = comfy.model_base.SVD_img2vid.apply_model
        log = self.calls

        def recording(model, x, t, *args, **kwargs):
            log.append({"y": kwargs.get("y"), "dtype": next(model.diffusion_model.parameters()).dtype, "shape": tuple(x.shape),
                        "context": kwargs.get("c_crossattn")})
            return apply_model(model, x, t, *args, **kwargs)

        monkeypatch.setattr(comfy.model_base.SVD_img2vid, "apply_model", recording)


def record_training_encodes(monkeypatch, modules, describe) -> list:
    """Records ``describe(config, latents)`` for every encode_training_clips call the inversion node makes."""
    seen = []
    encode = modules["inversion"].encode_training_clips

    def recording(frames, encoder, config):
        latents = encode(frames, encoder, config)
        seen.append(describe(config, latents))
        return latents

    monkeypatch.setattr(modules["inversion"], "encode_training_clips", recording)
    return seen


def differs(a, b) -> bool:
    return not (torch.equal(a.spatial, b.spatial) and torch.equal(a.temporal, b.temporal))


@pytest.fixture(scope="module")
def baseline(comfy, svd, reference):
    return invert(comfy, svd, reference)


# ---- Motion Textual Inversion ----------------------------------------------------------------------------


def test_fps_motion_bucket_and_augmentation_level_reach_the_model_as_comfyui_encodes_them(comfy, svd, reference, monkeypatch):
    """Distinct values for the three: a swap or a dropped value gives another ``y`` than ComfyUI's own encode_adm."""
    calls = ModelCalls(monkeypatch)
    invert(comfy, svd, reference, fps=11, motion_bucket_id=40, augmentation_level=0.3)
    expected = svd[0].model.encode_adm(fps=11, motion_bucket_id=40, augmentation_level=0.3)
    assert calls.calls
    for call in calls.calls:
        torch.testing.assert_close(call["y"][0].float().cpu(), expected[0].float().cpu())


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_precision_is_the_dtype_the_private_copy_computes_in(comfy, svd, reference, monkeypatch, precision, dtype):
    calls = ModelCalls(monkeypatch)
    invert(comfy, svd, reference, precision=precision, steps=1)
    assert {call["dtype"] for call in calls.calls} == {dtype}


def test_auto_precision_is_decided_per_device(modules, monkeypatch):
    compute_dtype = modules["comfy_denoiser"].compute_dtype
    gpu = torch.device("cuda", 0)
    assert compute_dtype("auto", torch.device("cpu")) == torch.float32
    monkeypatch.setattr(modules["private_model"], "bf16_supported", lambda device: True)
    assert compute_dtype("auto", gpu) == torch.bfloat16
    monkeypatch.setattr(modules["private_model"], "bf16_supported", lambda device: False)
    assert compute_dtype("auto", gpu) == torch.float16
    assert [compute_dtype(p, gpu) for p in ("fp32", "bf16", "fp16")] == [torch.float32, torch.bfloat16, torch.float16]


def test_the_vram_preflight_passes_what_fits_and_stops_what_does_not(comfy, svd, reference, modules, monkeypatch):
    """The preflight runs only off CPU; here it is made to run on CPU with a given free-memory figure."""
    monkeypatch.setattr(modules["inversion"], "_preflight_applies", lambda device: True)
    monkeypatch.setattr(modules["private_model"], "free_vram", lambda device: 2**40)
    invert(comfy, svd, reference, steps=1)  # fits: no error
    monkeypatch.setattr(modules["private_model"], "free_vram", lambda device: 2**20)
    with pytest.raises(modules["comfy_denoiser"].NotEnoughMemory, match="GB of free VRAM"):
        invert(comfy, svd, reference, steps=1)


def test_width_height_and_video_frames_set_the_latents_the_model_sees(comfy, svd, reference, monkeypatch):
    calls = ModelCalls(monkeypatch)
    embedding = invert(comfy, svd, reference, video_frames=3, width=48, height=32, steps=1)
    assert {call["shape"] for call in calls.calls} == {(3, 4, 4, 6)}
    assert embedding.frames == 3 and embedding.metadata["resolution"] == "48x32"


def test_tokens_per_frame_is_the_number_of_tokens_each_frame_attends_to(comfy, svd, reference, monkeypatch):
    calls = ModelCalls(monkeypatch)
    embedding = invert(comfy, svd, reference, tokens_per_frame=5, steps=1)
    assert embedding.tokens == 5 and {call["context"].shape[1] for call in calls.calls} == {5}


def test_steps_seed_and_learning_rate_each_change_the_result(comfy, svd, reference, baseline):
    assert differs(baseline, invert(comfy, svd, reference, steps=3))
    assert differs(baseline, invert(comfy, svd, reference, seed=1))
    assert not differs(baseline, invert(comfy, svd, reference, seed=0))
    assert differs(baseline, invert(comfy, svd, reference, learning_rate=0.2))
    assert baseline.metadata["steps"] == "2" and invert(comfy, svd, reference, steps=3).metadata["steps"] == "3"


def test_gradient_checkpointing_wraps_the_unet_layers_only_when_on(comfy, svd, reference, monkeypatch):
    import torch.utils.checkpoint

    calls = []
    checkpoint = torch.utils.checkpoint.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return checkpoint(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting)
    invert(comfy, svd, reference, gradient_checkpointing=False, steps=1)
    assert not calls
    invert(comfy, svd, reference, gradient_checkpointing=True, steps=1)
    assert calls


def test_clip_vision_sets_the_starting_tokens(comfy, svd, reference, baseline):
    from testkit.svd_checkpoint import tiny_clip_vision

    assert differs(baseline, invert(comfy, svd, reference, clip_vision=tiny_clip_vision()))


@pytest.mark.parametrize(
    "field, value",
    [("sigma_log_mean", 2.0), ("sigma_log_std", 0.2), ("warmup_steps", 2), ("schedule", "constant"), ("weight_decay", 0.5),
     ("grad_clip", 0.001), ("init_noise", 0.5), ("crop_scale", 0.7), ("color_jitter", 0.5),
     ("random_cond_frame", True), ("cond_noise", 0.5), ("hue_shift", 0.4), ("learning_rate_unit", "token spread")],
)
def test_each_inversion_option_changes_the_result(comfy, svd, reference, baseline, field, value):
    assert differs(baseline, invert(comfy, svd, reference, options={field: value}))


def test_per_frame_tokens_off_learns_one_token_set_for_all_frames(comfy, svd, reference):
    shared = invert(comfy, svd, reference, options={"per_frame_tokens": False})
    assert shared.frames == 1
    assert invert(comfy, svd, reference).frames == FRAMES


def test_augmentation_options_reach_the_encoder_field_by_field(comfy, svd, reference, monkeypatch, modules, pack):
    """Each augmentation field arrives as set (hflip's effect is random per copy, so it is checked here, and
    its flipping in test_core), and augment_variants is the number of copies encoded."""
    seen = record_training_encodes(monkeypatch, modules, lambda config, latents: (config.augment, latents.shape[0]))
    chosen = dict(hflip=True, crop_scale=0.7, color_jitter=0.5, hue_shift=0.4, random_cond_frame=True, cond_noise=0.5)
    invert(comfy, svd, reference, steps=1, options=dict(chosen, augment_variants=3))
    invert(comfy, svd, reference, steps=1, options={"hflip": True, "augment_variants": 1})
    augment = pack_submodule(pack.module, "reenact_core.augment").Augmentations
    assert seen == [(augment(**chosen, variants=3), 3), (augment(hflip=True, variants=1), 1)]


def test_conditioning_augmentation_noisy_pixels_encodes_a_noisy_conditioning_frame_at_the_augmentation_level(
        comfy, svd, reference, monkeypatch, modules):
    """'noisy pixels, as SVD' gives the encoder one more frame (frame 0 with pixel noise of std augmentation_level)
    and the default keeps the old meaning: the level only in the micro-conditioning, no extra frame."""
    seen = record_training_encodes(monkeypatch, modules, lambda config, latents: (config.conditioning_pixel_noise, latents.shape[1]))
    calls = ModelCalls(monkeypatch)
    invert(comfy, svd, reference, steps=1, augmentation_level=0.3)
    plain_calls = len(calls.calls)
    noisy = invert(comfy, svd, reference, steps=1, augmentation_level=0.3, options={"conditioning_augmentation": "noisy pixels, as SVD"})
    assert seen == [(0.0, FRAMES), (0.3, FRAMES + 1)]
    assert noisy.frames == FRAMES  # the conditioning frame is not a frame of the motion
    expected = svd[0].model.encode_adm(fps=6, motion_bucket_id=127, augmentation_level=0.3)
    assert len(calls.calls) == 2 * plain_calls  # same work both ways; the level also reaches SVD in both
    for call in calls.calls:
        torch.testing.assert_close(call["y"][0].float().cpu(), expected[0].float().cpu())


def test_sv3d_is_refused_before_anything_runs(comfy, svd, reference):
    """SV3D subclasses SVD_img2vid but is conditioned on camera angles: it cannot learn a motion."""
    import types

    import comfy.model_base as model_base  # (not `import comfy.model_base`: that would shadow the fixture)

    for name in ("SV3D_u", "SV3D_p"):
        sv3d = types.SimpleNamespace(model=object.__new__(getattr(model_base, name)))
        with pytest.raises(Exception, match=f"{name}.*Stable Video 3D.*svd.safetensors"):
            invert(comfy, svd, reference, model=sv3d)


def test_base_model_in_the_embedding_comes_from_the_model_not_the_frame_count(comfy, svd, reference, pack):
    """SVD and SVD-XT share a UNet: 25 frames on SVD is still 'svd', and Motion World's UNet says so."""
    clip_25, _, _, _ = run_node(comfy, "LoadMotionReference", video="none", frame_load_cap=0, skip_first_frames=0, select_every_nth=1,
                                custom_width=0, custom_height=0, images=torch.rand(25, SIZE, SIZE, 3))
    assert invert(comfy, svd, clip_25, steps=1, video_frames=25).metadata["base_model"] == "svd"  # the frame count once said svd_xt
    family = pack_submodule(pack.module, "nodes.comfy_denoiser").model_family
    import types

    world = types.SimpleNamespace(model=types.SimpleNamespace(model_config=types.SimpleNamespace(unet_config={"context_dim": 64})))
    assert family(world) == "motion_world"


def test_eval_draws_decides_whether_the_loss_before_and_after_is_measured(comfy, svd, reference, baseline):
    assert "final_loss" not in baseline.metadata
    measured = invert(comfy, svd, reference, options={"eval_draws": 2})
    assert float(measured.metadata["final_loss"]) > 0 and float(measured.metadata["initial_loss"]) > 0


# ---- Apply / Mix -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def conditioning(comfy, svd):
    model, clip_vision, vae = svd
    image = torch.rand(1, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(0))
    from testkit.svd_checkpoint import tiny_clip_vision

    return run_node(comfy, "SVD_img2vid_Conditioning", clip_vision=tiny_clip_vision(), init_image=image, vae=vae, width=SIZE,
                    height=SIZE, video_frames=FRAMES, motion_bucket_id=127, fps=6, augmentation_level=0.0)


def _embedding(pack, seed, frames=FRAMES, tokens=2):
    g = torch.Generator().manual_seed(seed)
    return pack.embedding.MotionEmbedding(torch.randn(frames, tokens, 1024, generator=g), torch.randn(tokens, 1024, generator=g))


@pytest.mark.parametrize("strength", [0.5, 2.0])
def test_strength_scales_the_motion_away_from_the_targets_own_token_beyond_one_too(comfy, pack, conditioning, strength):
    positive, negative, latent = conditioning
    motion = _embedding(pack, 1)
    (applied_positive, applied_negative, _, _) = run_node(comfy, "ApplyMotionEmbedding", positive=positive, negative=negative,
                                                   motion_embedding=motion, latent=latent, strength=strength)
    image_token = positive[0][0].reshape(-1, 1024).float().mean(0)
    expected = image_token + strength * (motion.spatial - image_token)
    torch.testing.assert_close(applied_positive[0][0], expected)
    torch.testing.assert_close(applied_positive[0][1]["time_conditioning"][0], image_token + strength * (motion.temporal - image_token))
    assert not applied_negative[0][0].any()  # the negative stays SVD's empty context, whatever the strength


def test_mix_weight_is_bs_share_and_a_and_b_are_not_interchangeable(comfy, pack):
    a, b = _embedding(pack, 2), _embedding(pack, 3)
    (mixed,) = run_node(comfy, "MixMotionEmbeddings", embedding_a=a, embedding_b=b, weight=0.25)
    torch.testing.assert_close(mixed.spatial, 0.75 * a.spatial + 0.25 * b.spatial)
    torch.testing.assert_close(mixed.temporal, 0.75 * a.temporal + 0.25 * b.temporal)
    (other,) = run_node(comfy, "MixMotionEmbeddings", embedding_a=b, embedding_b=a, weight=0.25)
    assert not torch.allclose(mixed.spatial, other.spatial)


def test_mix_resamples_b_to_as_frame_count(comfy, pack):
    a, b = _embedding(pack, 4, frames=4), _embedding(pack, 5, frames=7)
    (mixed,) = run_node(comfy, "MixMotionEmbeddings", embedding_a=a, embedding_b=b, weight=1.0)
    assert mixed.frames == 4
    torch.testing.assert_close(mixed.spatial[[0, -1]], b.spatial[[0, -1]])  # first and last rows kept


# ---- Load Motion Reference ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def numbered_frames(comfy, pack):
    """12 frames whose brightness is their index, as a PNG sequence (so every selection can be read back)."""
    from PIL import Image

    folder = os.path.join(comfy.folder_paths.get_input_directory(), "numbered")
    os.makedirs(folder, exist_ok=True)
    for i in range(12):
        Image.new("RGB", (40, 24), (20 * i, 20 * i, 20 * i)).save(os.path.join(folder, f"f_{i:02d}.png"))
    return "numbered"


def _indices(frames) -> list[int]:
    return [round(float(f.mean()) * 255 / 20) for f in frames]


@pytest.mark.parametrize(
    "cap, skip, nth, expected",
    [(0, 0, 1, list(range(12))), (5, 0, 1, [0, 1, 2, 3, 4]), (0, 7, 1, [7, 8, 9, 10, 11]), (0, 0, 4, [0, 4, 8]), (2, 3, 2, [3, 5])],
)
def test_reference_selection_inputs_pick_exactly_these_frames(comfy, numbered_frames, cap, skip, nth, expected):
    _, frames, count, _ = run_node(comfy, "LoadMotionReference", video=numbered_frames, frame_load_cap=cap, skip_first_frames=skip,
                                select_every_nth=nth, custom_width=0, custom_height=0)
    assert _indices(frames) == expected and count == len(expected)


def test_reference_custom_size_sets_width_and_height(comfy, numbered_frames):
    _, frames, _, _ = run_node(comfy, "LoadMotionReference", video=numbered_frames, frame_load_cap=1, skip_first_frames=0,
                            select_every_nth=1, custom_width=32, custom_height=16)
    assert tuple(frames.shape) == (1, 16, 32, 3)


def test_blocks_to_swap_keeps_that_many_unet_layers_in_ram_and_changes_nothing_learned(comfy, svd, reference, block_swaps):
    """Block swap on SVD (its checkpointed units are the UNet's layers): the report says how many stay in RAM, gradient
    checkpointing is turned on for it (so at most two layers' copies are on the device at once), and the embedding is
    what the resident UNet learns."""
    resident = invert(comfy, svd, reference, gradient_checkpointing=True, options={"blocks_to_swap": 0})
    model, _, vae = svd
    (options,) = run_node(comfy, "MotionInversionOptions", **dict(BASE_OPTIONS, blocks_to_swap=3))
    swapped, _, report = run_node(comfy, "MotionTextualInversion", model=model, vae=vae, motion_reference=reference, steps=2,
                                  learning_rate=0.05, tokens_per_frame=2, video_frames=FRAMES, width=SIZE, height=SIZE, seed=0, fps=6,
                                  motion_bucket_id=127, augmentation_level=0.0, precision="fp32", gradient_checkpointing=False,
                                  options=options)
    assert "Block swap: 3 of the model's" in report and "Gradient checkpointing was turned on" in report
    assert len(block_swaps[-1].swapped) == 3 and block_swaps[-1].copies > 0 and block_swaps[-1].peak_blocks_in_flight <= 2
    torch.testing.assert_close(swapped.spatial, resident.spatial, rtol=1e-5, atol=1e-6)


# Every node's inputs and outputs as released, in order. Saved workflows address widgets by position and links by output
# index, so a node only ever gains inputs and outputs at the end: a rename, a removal or an insertion fails here.
RELEASED_INPUTS = {
    "LoadMotionReference": ["video", "frame_load_cap", "skip_first_frames", "select_every_nth", "custom_width", "custom_height", "images"],
    "MotionTextualInversion": ["model", "vae", "motion_reference", "steps", "learning_rate", "tokens_per_frame", "video_frames", "width",
                               "height", "seed", "fps", "motion_bucket_id", "augmentation_level", "precision", "gradient_checkpointing",
                               "clip_vision", "options", "frame_sampling"],
    "MotionInversionOptions": ["sigma_log_mean", "sigma_log_std", "warmup_steps", "schedule", "weight_decay", "grad_clip",
                               "per_frame_tokens", "init_noise", "hflip", "crop_scale", "color_jitter", "random_cond_frame", "cond_noise",
                               "augment_variants", "eval_draws", "hue_shift", "learning_rate_unit", "conditioning_augmentation",
                               "blocks_to_swap"],
    "SaveMotionEmbedding": ["motion_embedding", "filename_prefix"],
    "LoadMotionEmbedding": ["embedding_name"],
    "ApplyMotionEmbedding": ["positive", "negative", "motion_embedding", "latent", "strength", "keep_speed", "model"],
    "MixMotionEmbeddings": ["embedding_a", "embedding_b", "weight"],
    "MotionWorldLoader": ["model_name"],
}
RELEASED_OUTPUTS = {
    "LoadMotionReference": ["motion_reference", "frames", "frame_count", "info"],
    "MotionTextualInversion": ["motion_embedding", "loss_curve", "report"],
    "MotionInversionOptions": ["options"],
    "SaveMotionEmbedding": [],
    "LoadMotionEmbedding": ["motion_embedding", "info"],
    "ApplyMotionEmbedding": ["positive", "negative", "info", "model"],
    "MixMotionEmbeddings": ["motion_embedding"],
    "MotionWorldLoader": ["MODEL", "CLIP_VISION", "VAE"],
}


def test_nodes_only_gain_inputs_and_outputs_at_the_end(pack):
    assert set(pack.module.NODE_CLASS_MAPPINGS) >= set(RELEASED_INPUTS)
    for node_id, released in RELEASED_INPUTS.items():
        node = pack.module.NODE_CLASS_MAPPINGS[node_id]
        spec = node.INPUT_TYPES()
        inputs = [name for group in ("required", "optional") for name in spec.get(group, {})]
        assert inputs[:len(released)] == released, node_id
        assert all(name in spec.get("optional", {}) for name in inputs[len(released):]), f"{node_id}: a new input must be optional"
        outputs = list(getattr(node, "RETURN_NAMES", node.RETURN_TYPES))
        assert outputs[:len(RELEASED_OUTPUTS[node_id])] == RELEASED_OUTPUTS[node_id], node_id
