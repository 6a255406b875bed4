"""The pack's nodes, run in-process in a real ComfyUI on a stock-detectable random-weight SVD checkpoint.

Every node function runs under torch.inference_mode(), as ComfyUI's executor runs it.
"""

from __future__ import annotations

import os

import pytest
import torch

from testkit.comfy_env import run_node
from testkit.media import moving_square_frames, write_video

FRAMES = 4
SIZE = 64


@pytest.fixture(scope="module")
def reference(comfy, pack):
    write_video(moving_square_frames(8, SIZE), os.path.join(comfy.folder_paths.get_input_directory(), "moving_square.mp4"))
    clip, frames, count, _ = run_node(
        comfy, "LoadMotionReference", video="moving_square.mp4", frame_load_cap=0, skip_first_frames=0, select_every_nth=1, custom_width=0, custom_height=0
    )
    assert count == 8 and frames.shape == (8, SIZE, SIZE, 3)
    return clip


@pytest.fixture(scope="module")
def tiny_clip_vision(comfy):
    from testkit.svd_checkpoint import tiny_clip_vision

    return tiny_clip_vision()


def invert(comfy, svd, reference, steps, seed=0, clip_vision=None, **overrides):
    model, _, vae = svd
    inputs = dict(
        model=model,
        vae=vae,
        motion_reference=reference,
        steps=steps,
        learning_rate=0.05,
        tokens_per_frame=3,
        video_frames=FRAMES,
        width=SIZE,
        height=SIZE,
        seed=seed,
        fps=6,
        motion_bucket_id=127,
        augmentation_level=0.0,
        precision="fp32",
        gradient_checkpointing=True,
        options=dict(sigma_log_mean=1.0, sigma_log_std=1.0, eval_draws=6),
    )
    inputs.update(overrides)
    if clip_vision is not None:
        inputs["clip_vision"] = clip_vision
    return run_node(comfy, "MotionTextualInversion", **inputs)[:2]  # the embedding and the loss curve


def weight_fingerprint(model):
    return {k: (float(v.double().sum()), float(v.double().abs().sum())) for k, v in model.model.state_dict().items()}


@pytest.fixture(scope="module")
def inverted(comfy, pack, svd, reference, tiny_clip_vision):
    before = weight_fingerprint(svd[0])
    embedding, curve = invert(comfy, svd, reference, steps=25, clip_vision=tiny_clip_vision)
    return embedding, curve, before


# ---- registration --------------------------------------------------------------------------------


def test_comfyui_registers_every_node_with_tooltips(comfy, pack):
    expected = {"LoadMotionReference", "MotionTextualInversion", "SaveMotionEmbedding", "ApplyMotionEmbedding", "LoadMotionEmbedding"}
    assert expected <= set(pack.nodes.NODE_CLASS_MAPPINGS)
    for name, cls in pack.nodes.NODE_CLASS_MAPPINGS.items():
        assert comfy.nodes.NODE_CLASS_MAPPINGS[name] is cls
        assert name in pack.nodes.NODE_DISPLAY_NAME_MAPPINGS
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for input_name, definition in spec.get(section, {}).items():
                assert definition[1].get("tooltip"), f"{name}.{input_name} has no tooltip"
    assert "motion_embeddings" in comfy.folder_paths.folder_names_and_paths
    assert comfy.folder_paths.folder_names_and_paths["motion_embeddings"][1] == {".safetensors"}


# ---- inversion -------------------------------------------------------------------------------------


def test_inversion_learns_the_reference(inverted, pack):
    embedding, curve, _ = inverted
    assert isinstance(embedding, pack.embedding.MotionEmbedding)
    assert embedding.spatial.shape == (FRAMES, 3, 1024) and embedding.temporal.shape == (3, 1024)
    meta = embedding.metadata
    before, after = float(meta["initial_loss"]), float(meta["final_loss"])
    # held-out (sigma, noise) draws, conditioning on the clip's first frame: clearly lower
    assert after < 0.9 * before, (before, after)
    assert meta["steps"] == "25" and meta["seed"] == "0" and len(meta["reference_sha256"]) == 64
    assert curve.shape[0] == 1 and curve.shape[-1] == 3 and torch.isfinite(curve).all()


def test_inversion_leaves_the_shared_model_untouched(inverted, svd):
    _, _, before = inverted
    assert weight_fingerprint(svd[0]) == before
    # no gradient mode or inference mode leaks out of the node
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


def test_same_seed_same_embedding_and_no_clip_fallback(comfy, svd, reference):
    a, _ = invert(comfy, svd, reference, steps=3, seed=11)
    b, _ = invert(comfy, svd, reference, steps=3, seed=11)
    c, _ = invert(comfy, svd, reference, steps=3, seed=12)
    assert torch.equal(a.spatial, b.spatial) and torch.equal(a.temporal, b.temporal)
    assert not torch.equal(a.spatial, c.spatial)


def test_inversion_refuses_a_model_that_is_not_svd(comfy, svd, reference):
    from testkit.comfy_env import run_node as run

    model, _, vae = svd
    sd15_like = model.clone()
    sd15_like.model = object()  # any non-SVD model object
    with pytest.raises(ValueError, match="Stable Video Diffusion"):
        run(comfy, "MotionTextualInversion", model=sd15_like, vae=vae, motion_reference=reference, steps=1, learning_rate=0.01,
            tokens_per_frame=2, video_frames=FRAMES, width=SIZE, height=SIZE, seed=0, fps=6, motion_bucket_id=127,
            augmentation_level=0.0, precision="fp32", gradient_checkpointing=False)


# ---- save / load ---------------------------------------------------------------------------------------


def test_save_then_load_round_trips_bit_exactly(comfy, pack, inverted):
    embedding = inverted[0]
    out = pack.nodes.NODE_CLASS_MAPPINGS["SaveMotionEmbedding"]().save(embedding, "tests/wave")
    relative = out["ui"]["text"][0]
    assert relative.startswith("tests/wave_") and relative.endswith(".safetensors")
    listed = pack.nodes.NODE_CLASS_MAPPINGS["LoadMotionEmbedding"].INPUT_TYPES()["required"]["embedding_name"][0]
    assert relative in listed
    loaded, info = run_node(comfy, "LoadMotionEmbedding", embedding_name=relative)
    assert torch.equal(loaded.spatial, embedding.spatial) and torch.equal(loaded.temporal, embedding.temporal)
    assert f": {embedding.frames} frames x {embedding.tokens} tokens x 1024, at 64x64" in info and "WARNING" not in info
    assert loaded.metadata["final_loss"] == embedding.metadata["final_loss"]
    # a second save never overwrites the first
    second = pack.nodes.NODE_CLASS_MAPPINGS["SaveMotionEmbedding"]().save(embedding, "tests/wave")["ui"]["text"][0]
    assert second != relative


def test_the_bundled_example_says_on_loading_that_it_is_not_a_real_motion(comfy, pack):
    """Workflows 2 and 4 start from the example, learned on the random-weight test model: the loader's info output (and
    the text the pack's web extension draws on the node) opens with a warning taken from the file's metadata."""
    out = pack.nodes.NODE_CLASS_MAPPINGS["LoadMotionEmbedding"]().load("reenact_example_motion.safetensors")
    info = out["result"][1]
    assert out["ui"]["text"] == [info]
    assert info.startswith("WARNING: NOT A REAL MOTION.") and "random-weight test checkpoint" in info and "workflow 1" in info


def test_save_prefix_cannot_escape_the_output_folder(comfy, pack, inverted):
    save = pack.nodes.NODE_CLASS_MAPPINGS["SaveMotionEmbedding"]()
    root = os.path.realpath(os.path.join(comfy.folder_paths.get_output_directory(), "motion_embeddings"))
    for prefix in ("../../escape", "/etc/passwd", "..\\..\\win", "a/../../b", "weird:*?name"):
        relative = save.save(inverted[0], prefix)["ui"]["text"][0]
        path = os.path.realpath(os.path.join(root, relative))
        assert path.startswith(root + os.sep) and os.path.isfile(path), (prefix, path)


# ---- apply and sample ------------------------------------------------------------------------------------


def conditioning(comfy, svd, frames=FRAMES, seed_image=0):
    model, clip_vision, vae = svd
    g = torch.Generator().manual_seed(seed_image)
    image = torch.rand(1, SIZE, SIZE, 3, generator=g)
    return run_node(
        comfy, "SVD_img2vid_Conditioning", clip_vision=clip_vision, init_image=image, vae=vae, width=SIZE, height=SIZE,
        video_frames=frames, motion_bucket_id=127, fps=6, augmentation_level=0.0,
    )


def sample(comfy, svd, positive, negative, latent, seed=3):
    model, _, vae = svd
    (guided,) = run_node(comfy, "VideoLinearCFGGuidance", model=model, min_cfg=1.0)
    (samples,) = run_node(
        comfy, "KSampler", model=guided, seed=seed, steps=2, cfg=2.5, sampler_name="euler", scheduler="karras",
        positive=positive, negative=negative, latent_image=latent, denoise=1.0,
    )
    (images,) = run_node(comfy, "VAEDecode", samples=samples, vae=vae)
    return images


class AttentionProbe:
    """Records the context every cross-attention (attn2) of the UNet receives."""

    def __init__(self, unet):
        self.spatial, self.temporal, self.handles = [], [], []
        kinds = set()
        for name, module in unet.named_modules():
            if name.endswith("attn2"):
                temporal = ".time_stack." in name
                kinds.add(temporal)
                target = self.temporal if temporal else self.spatial
                self.handles.append(module.register_forward_pre_hook(self._hook(target), with_kwargs=True))
        assert kinds == {True, False}, "expected spatial and temporal cross-attention layers"

    @staticmethod
    def _hook(store):
        def hook(module, args, kwargs):
            context = kwargs.get("context", args[1] if len(args) > 1 else None)
            store.append(context.detach().clone())

        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def test_apply_routes_frame_tokens_and_shared_tokens_into_the_unet(comfy, svd, inverted):
    embedding = inverted[0]
    positive, negative, latent = conditioning(comfy, svd)
    pos, neg, _, _ = run_node(comfy, "ApplyMotionEmbedding", positive=positive, negative=negative, motion_embedding=embedding, latent=latent, strength=1.0)
    probe = AttentionProbe(svd[0].model.diffusion_model)
    try:
        images = sample(comfy, svd, pos, neg, latent)
    finally:
        probe.close()
    assert images.shape == (FRAMES, SIZE, SIZE, 3) and torch.isfinite(images).all()
    assert probe.spatial and probe.temporal

    for context in probe.spatial:
        spatial = embedding.spatial.to(context.dtype)  # ComfyUI casts the context to the model's dtype
        # cond and uncond ran as one batch of 2 videos: [2F, N, D]
        assert context.shape == (2 * FRAMES, 3, 1024)
        halves = [context[:FRAMES], context[FRAMES:]]
        cond = [h for h in halves if h.abs().sum() > 0]
        assert len(cond) == 1, "exactly one half is the (all-zero) unconditional context"
        for f in range(FRAMES):
            assert torch.equal(cond[0][f], spatial[f]), f"frame {f} did not receive row {f}"
    for context in probe.temporal:
        # temporal attention: one context per pixel-column; every one is the shared set (or zeros)
        assert context.shape[1:] == (3, 1024)
        rows = context.reshape(-1, 3 * 1024)
        is_shared = (rows == embedding.temporal.to(context.dtype).reshape(1, -1)).all(dim=1)
        is_zero = (rows == 0).all(dim=1)
        assert bool((is_shared | is_zero).all()) and is_shared.any() and is_zero.any()


def test_strength_zero_is_stock_svd_and_the_motion_changes_the_video(comfy, svd, inverted):
    embedding = inverted[0]
    positive, negative, latent = conditioning(comfy, svd)
    stock = sample(comfy, svd, positive, negative, latent)
    pos0, neg0, _, _ = run_node(comfy, "ApplyMotionEmbedding", positive=positive, negative=negative, motion_embedding=embedding, latent=latent, strength=0.0)
    neutral = sample(comfy, svd, pos0, neg0, latent)
    pos1, neg1, _, _ = run_node(comfy, "ApplyMotionEmbedding", positive=positive, negative=negative, motion_embedding=embedding, latent=latent, strength=1.0)
    moved = sample(comfy, svd, pos1, neg1, latent)
    assert torch.allclose(neutral, stock, atol=2e-3), float((neutral - stock).abs().max())
    assert float((moved - stock).abs().mean()) > 10 * float((neutral - stock).abs().mean()) + 1e-3


def test_apply_resamples_to_the_latent_frame_count(comfy, svd, inverted, pack):
    embedding = inverted[0]
    positive, negative, latent = conditioning(comfy, svd, frames=7)
    pos, neg, _, _ = run_node(comfy, "ApplyMotionEmbedding", positive=positive, negative=negative, motion_embedding=embedding, latent=latent, strength=1.0)
    expected = embedding.resample_frames(7).spatial
    assert torch.allclose(pos[0][0], expected) and pos[0][0].shape == (7, 3, 1024)
    assert torch.equal(pos[0][1]["time_conditioning"][0], embedding.temporal)
    assert neg[0][0].shape == (7, 3, 1024) and not neg[0][0].any() and not neg[0][1]["time_conditioning"].any()
    images = sample(comfy, svd, pos, neg, latent)
    assert images.shape == (7, SIZE, SIZE, 3) and torch.isfinite(images).all()


def test_apply_rejects_conditioning_that_is_not_svd(comfy, svd, inverted):
    embedding = inverted[0]
    _, _, latent = conditioning(comfy, svd)
    text_like = [[torch.zeros(1, 77, 768), {}]]
    with pytest.raises(ValueError, match="SVD_img2vid_Conditioning"):
        run_node(comfy, "ApplyMotionEmbedding", positive=text_like, negative=text_like, motion_embedding=embedding, latent=latent, strength=1.0)


def test_mix_node(comfy, inverted):
    embedding = inverted[0]
    (mixed,) = run_node(comfy, "MixMotionEmbeddings", embedding_a=embedding, embedding_b=embedding.with_strength(0.0), weight=0.5)
    assert torch.allclose(mixed.spatial, 0.5 * embedding.spatial)


# ---- reference loading ----------------------------------------------------------------------------------


def test_reference_from_an_image_batch(comfy, pack):
    images = torch.rand(10, 32, 48, 3)
    clip, frames, count, _ = run_node(
        comfy, "LoadMotionReference", video="none", frame_load_cap=4, skip_first_frames=1, select_every_nth=2, custom_width=24, custom_height=0, images=images
    )
    assert count == 4 and frames.shape == (4, 16, 24, 3)
    with pytest.raises(ValueError, match="choose a video"):
        run_node(comfy, "LoadMotionReference", video="none", frame_load_cap=0, skip_first_frames=0, select_every_nth=1, custom_width=0, custom_height=0)


def test_reference_video_is_listed_for_the_dropdown(comfy, pack, reference):
    values = pack.nodes.NODE_CLASS_MAPPINGS["LoadMotionReference"].INPUT_TYPES()["required"]["video"][0]
    assert "moving_square.mp4" in values and values[-1] == "none"


def test_too_short_reference_says_what_to_do(comfy, svd, reference):
    with pytest.raises(ValueError, match="lower video_frames"):
        invert(comfy, svd, reference, steps=1, video_frames=9)


# ---- the inversion's denoiser is the sampler's model -------------------------------------------------------


def test_inversion_denoiser_matches_comfyui_sampler_on_applied_conditioning(comfy, pack, svd, inverted):
    """What the inversion optimises (ComfySVDDenoiser) is exactly what KSampler/SamplerCustom computes for
    Apply Motion Embedding's conditioning: same tokens per frame, same temporal set, same image, same
    fps/motion-bucket conditioning."""
    embedding = inverted[0]
    model, _, vae = svd
    positive, negative, latent = conditioning(comfy, svd)
    pos, neg, _, _ = run_node(comfy, "ApplyMotionEmbedding", positive=positive, negative=negative, motion_embedding=embedding, latent=latent, strength=1.0)
    seen = {}

    def capture(model_k, x, sigmas, extra_args=None, callback=None, disable=None, **_):
        seen["x"], seen["sigma"] = x.clone(), sigmas[0]
        seen["denoised"] = model_k(x, sigmas[0] * x.new_ones([x.shape[0]]), **(extra_args or {}))
        return seen["denoised"]

    g = torch.Generator().manual_seed(5)
    start = {"samples": torch.randn(FRAMES, 4, SIZE // 8, SIZE // 8, generator=g)}
    run_node(
        comfy, "SamplerCustom", model=model, add_noise=True, noise_seed=9, cfg=1.0, positive=pos, negative=neg,
        sampler=comfy_samplers_ksampler(capture), sigmas=torch.tensor([4.0, 0.0]), latent_image=start,
    )
    denoiser_cls = pack.nodes.inversion.ComfySVDDenoiser
    with torch.inference_mode():
        denoiser = denoiser_cls(model.model, torch.device("cpu"), fps=6, motion_bucket_id=127, augmentation_level=0.0)
        image_latent = model.model.process_latent_in(positive[0][1]["concat_latent_image"])[0]
        ours = denoiser(seen["x"], seen["sigma"], embedding.spatial, embedding.temporal, image_latent)
    assert ours.shape == seen["denoised"].shape
    assert torch.allclose(ours, seen["denoised"].float(), atol=1e-4, rtol=1e-4), float((ours - seen["denoised"]).abs().max())
    # and the check can fail: another frame order gives another result
    with torch.inference_mode():
        shuffled = denoiser(seen["x"], seen["sigma"], embedding.spatial.flip(0), embedding.temporal, image_latent)
    assert not torch.allclose(shuffled, seen["denoised"].float(), atol=1e-4, rtol=1e-4)


def comfy_samplers_ksampler(fn):
    import comfy.samplers as samplers

    return samplers.KSAMPLER(fn)


def test_interrupt_stops_inversion_cleanly(comfy, svd, reference):
    mm = comfy.model_management
    before = weight_fingerprint(svd[0])
    loaded_before = len(mm.current_loaded_models)
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            invert(comfy, svd, reference, steps=50)
    finally:
        mm.interrupt_current_processing(False)
    assert weight_fingerprint(svd[0]) == before
    assert len(mm.current_loaded_models) <= loaded_before + 1  # at most the shared model itself, no private copy
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    embedding, _ = invert(comfy, svd, reference, steps=2)  # the next run works
    assert torch.isfinite(embedding.spatial).all()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_inversion_runs(comfy, svd, reference, precision):
    # fp16 also exercises the loss scaler; on a GPU "auto" picks one of these
    options = dict(sigma_log_mean=1.0, sigma_log_std=1.0, eval_draws=1)  # half precision is slow on CPU
    embedding, _ = invert(comfy, svd, reference, steps=1, precision=precision, options=options)
    assert torch.isfinite(embedding.spatial).all() and embedding.spatial.dtype == torch.float32
    assert float(embedding.metadata["final_loss"]) > 0


def test_gradient_checkpointing_changes_memory_not_results(comfy, svd, reference):
    with_ckpt, _ = invert(comfy, svd, reference, steps=2, gradient_checkpointing=True)
    without, _ = invert(comfy, svd, reference, steps=2, gradient_checkpointing=False)
    assert torch.allclose(with_ckpt.spatial, without.spatial, atol=1e-6)
    assert "moving_square.mp4" in with_ckpt.metadata["modelspec.title"] and "/" not in with_ckpt.metadata["modelspec.title"]
