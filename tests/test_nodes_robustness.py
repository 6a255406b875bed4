"""Bad inputs, cancellation and failed saves, run through the pack's nodes in-process in a real ComfyUI
(see tests/test_e2e_robustness.py for the same through a server's HTTP API).

Every node call runs under torch.inference_mode(), as ComfyUI's executor runs it. The messages checked
here are the ones docs/errors.md documents.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import shutil
import weakref
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from test_nodes import FRAMES, SIZE, conditioning, invert, weight_fingerprint

from testkit.comfy_env import pack_submodule, run_node
from testkit.media import moving_square_frames, write_black_png, write_video

# These runs are about what happens around the optimisation: the cheapest one (2 frames, no held-out
# loss evaluation, no gradient checkpointing).
FAST = dict(video_frames=2, gradient_checkpointing=False, options=dict(sigma_log_mean=1.0, sigma_log_std=1.0, eval_draws=0))
REFERENCE_DEFAULTS = dict(frame_load_cap=0, skip_first_frames=0, select_every_nth=1, custom_width=0, custom_height=0)
EXAMPLE_EMBEDDING = "reenact_example_motion.safetensors"


def load_reference(comfy, video="none", **inputs):
    return run_node(comfy, "LoadMotionReference", video=video, **(REFERENCE_DEFAULTS | inputs))[:3]  # not the info text


@pytest.fixture(scope="module")
def reference(comfy, pack):
    write_video(moving_square_frames(8, SIZE), os.path.join(comfy.folder_paths.get_input_directory(), "robust_square.mp4"))
    clip, _, count = load_reference(comfy, "robust_square.mp4")
    assert count == 8
    return clip


@pytest.fixture(scope="module")
def baseline(comfy, svd, reference):
    """A short deterministic inversion: every run after a failure or an interrupt must reproduce it exactly."""
    return invert(comfy, svd, reference, steps=2, seed=7, **FAST)[0]


def assert_clean_state(comfy, svd, before_weights):
    """No mode leaks out of the node, the shared model is unchanged."""
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    assert not torch.is_autocast_enabled("cpu") and not torch.is_autocast_enabled("cuda")
    assert weight_fingerprint(svd[0]) == before_weights


class _Refs(list):
    loaded_before: set


@pytest.fixture
def private_copies(comfy, pack, monkeypatch):
    """Weak references to every private model copy an inversion builds (ComfySVDDenoiser gets it), and
    the models ComfyUI had loaded before."""
    refs = _Refs()
    refs.loaded_before = {id(m.model) for m in comfy.model_management.current_loaded_models if m.model is not None}
    cls = pack.nodes.comfy_denoiser.ComfySVDDenoiser
    real_init = cls.__init__

    def init(self, base_model, *args, **kwargs):
        refs.append(weakref.ref(base_model))
        real_init(self, base_model, *args, **kwargs)

    monkeypatch.setattr(cls, "__init__", init)
    return refs


def assert_released(comfy, svd, refs, built=True):
    """The private copy is gone (garbage-collectable once the node has returned or raised) and ComfyUI's
    loaded-model list holds only models that were loaded before, or the shared SVD model and its VAE.
    built=False: the node may have stopped before it made one (an interrupt before it started)."""
    assert refs or not built, "the inversion did not build its private copy"
    gc.collect()
    assert all(r() is None for r in refs), "the private model copy is still alive"
    allowed = refs.loaded_before | {id(svd[0]), id(svd[2].patcher)}
    for loaded in comfy.model_management.current_loaded_models:
        assert loaded.model is None or id(loaded.model) in allowed, f"unexpected loaded model {type(loaded.model).__name__}"


# ---- reference video -------------------------------------------------------------------------------------


def test_a_file_deleted_after_it_was_listed_says_so(comfy, pack):
    path = os.path.join(comfy.folder_paths.get_input_directory(), "gone.mp4")
    write_video(moving_square_frames(4, 32), path)
    assert "gone.mp4" in pack.nodes.NODE_CLASS_MAPPINGS["LoadMotionReference"].INPUT_TYPES()["required"]["video"][0]
    os.remove(path)
    with pytest.raises(pack.video.ReferenceVideoError, match="gone.mp4: not found in ComfyUI's input folder.*upload it again"):
        load_reference(comfy, "gone.mp4")


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("grayscale", "gray"),
        ("alpha", "alpha over black"),
        ("variable frame rate", "all frames in order"),
    ],
)
def test_unusual_but_valid_videos_load_as_rgb(comfy, pack, kind, expected):
    name = f"unusual_{kind.replace(' ', '_')}"
    frames = moving_square_frames(6, 32, step=3)
    input_dir = comfy.folder_paths.get_input_directory()
    if kind == "variable frame rate":
        with av.open(os.path.join(input_dir, name + ".mp4"), "w") as container:  # irregular gaps: 10 fps and 30 fps
            stream = container.add_stream("mpeg4", rate=30)
            stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
            stream.time_base = Fraction(1, 1000)
            for i, frame in enumerate(frames):
                video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
                video_frame.pts, video_frame.time_base = sum(100 if j % 2 else 33 for j in range(i)), Fraction(1, 1000)
                for packet in stream.encode(video_frame):
                    container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
        video = name + ".mp4"
    else:
        folder = os.path.join(input_dir, name)
        os.makedirs(folder, exist_ok=True)
        for i, frame in enumerate(frames):
            if kind == "grayscale":
                Image.fromarray(frame).convert("L").save(os.path.join(folder, f"{i:03}.png"))
            else:  # the square opaque, everything else fully transparent red
                rgba = np.concatenate([frame, np.zeros_like(frame[..., :1])], axis=-1)
                rgba[frame.min(axis=-1) == 255, 3] = 255
                rgba[rgba[..., 3] == 0, :3] = (255, 0, 0)
                Image.fromarray(rgba, "RGBA").save(os.path.join(folder, f"{i:03}.png"))
        video = name + "/"
    _, images, count = load_reference(comfy, video)
    assert count == 6 and images.shape == (6, 32, 32, 3) and images.dtype == torch.float32, expected
    if kind == "grayscale":
        assert torch.equal(images[..., 0], images[..., 1]) and torch.equal(images[..., 1], images[..., 2])
    if kind == "alpha":
        assert float(images[..., 0].max()) == 1.0 and float(images.sum(-1).min()) == 0.0  # red background became black
        assert not bool(((images[..., 0] > 0.5) & (images[..., 1] < 0.5)).any())
    if kind == "variable frame rate":  # the square moves right frame by frame: no frame dropped or repeated
        columns = [int((f.mean(-1) > 0.85).any(0).float().argmax()) for f in images]
        assert columns == sorted(columns) and len(set(columns)) == len(columns)


def test_a_huge_reference_is_refused_before_decoding(comfy, pack, monkeypatch):
    folder = os.path.join(comfy.folder_paths.get_input_directory(), "huge_frames")
    os.makedirs(folder, exist_ok=True)
    write_black_png(os.path.join(folder, "000.png"), 8000, 6000)
    for i in range(1, 8):
        shutil.copyfile(os.path.join(folder, "000.png"), os.path.join(folder, f"{i:03}.png"))
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size))  # would decode pixels
    with pytest.raises(pack.video.ReferenceVideoError, match=r"would need 4\.3 GB to hold 8 frames at 8000×6000, more than the memory budget of 4\.0 GB"):
        load_reference(comfy, "huge_frames/")
    assert not decoded


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.rand(4, 3, 32, 32), "looks channels-first"),
        (torch.rand(32, 32, 3), "3 dimensions"),
        (torch.zeros(4, 32, 32, 3, dtype=torch.int64), "dtype torch.int64"),
        (torch.full((4, 32, 32, 3), float("nan")), "NaN or infinite"),
        (torch.rand(0, 32, 32, 3), "holds no pixels"),
    ],
    ids=["channels first", "no batch dimension", "int64", "NaN", "empty batch"],
)
def test_an_image_batch_with_the_wrong_shape_or_dtype_says_what_is_expected(comfy, pack, images, message):
    with pytest.raises(pack.video.ReferenceVideoError, match=message) as info:
        load_reference(comfy, images=images)
    assert "IMAGE batch" in str(info.value)


def test_a_one_frame_reference_has_no_motion_to_learn(comfy, pack, svd):
    clip, _, count = load_reference(comfy, images=torch.rand(1, 32, 32, 3))
    assert count == 1  # loading a still is fine; learning a motion from it is not
    with pytest.raises(pack.video.ReferenceVideoError, match="only 1 frame, and a single image has no motion to learn"):
        invert(comfy, svd, clip, steps=1)


# ---- models the inversion cannot use ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd15_like_model(comfy):
    """A real ComfyUI model that is not SVD: SD1.5's model class (768-wide text context), tiny UNet."""
    from comfy.model_patcher import ModelPatcher
    from comfy.supported_models import SD15

    from testkit.svd_checkpoint import init_params

    config = dict(
        use_checkpoint=False, image_size=32, use_spatial_transformer=True, legacy=False, in_channels=4, out_channels=4,
        model_channels=32, num_res_blocks=[1], channel_mult=[1], transformer_depth=[1], transformer_depth_output=[0, 0],
        transformer_depth_middle=-1, use_linear_in_transformer=False, context_dim=768, adm_in_channels=None, num_classes=None,
    )
    model = SD15(config).get_model({})
    init_params(model.diffusion_model, torch.Generator().manual_seed(0))
    mm = comfy.model_management
    return ModelPatcher(model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


def test_inversion_refuses_a_real_non_svd_model(comfy, pack, svd, reference, sd15_like_model):
    with pytest.raises(pack.nodes.comfy_denoiser.NotAnSVDModel, match="needs a Stable Video Diffusion model.*this MODEL is BaseModel"):
        invert(comfy, (sd15_like_model, None, svd[2]), reference, steps=1)


def test_svd_conditioning_on_a_non_svd_model_fails_in_the_sampler(comfy, pack, svd, sd15_like_model):
    """Apply Motion Embedding has no MODEL input: the sampler is where the conditioning meets the model.
    There stock SVD conditioning and the applied motion fail alike, with ComfyUI's shape error naming
    SVD's 1024-wide tokens against the model's 768 (docs/errors.md explains it)."""
    embedding, _ = run_node(comfy, "LoadMotionEmbedding", embedding_name=EXAMPLE_EMBEDDING)
    positive, negative, latent = conditioning(comfy, svd)
    applied = run_node(comfy, "ApplyMotionEmbedding", positive=positive, negative=negative, motion_embedding=embedding, latent=latent, strength=1.0)[:2]
    for pos, neg in ((positive, negative), applied):
        with pytest.raises(RuntimeError, match=r"mat1 and mat2 shapes cannot be multiplied \(\d+x1024 and 768x\d+\)"):
            run_node(comfy, "KSampler", model=sd15_like_model, seed=0, steps=1, cfg=2.5, sampler_name="euler", scheduler="karras",
                     positive=pos, negative=neg, latent_image=latent, denoise=1.0)


@pytest.fixture(scope="module")
def quarter_scale_vae(comfy):
    """A real ComfyUI VAE with another latent layout: the SD x4 upscaler's (4 channels at 1/4 size)."""
    import logging

    from comfy.sd import VAE

    from testkit.svd_checkpoint import init_params

    logging.disable(logging.WARNING)  # "missing VAE keys": the weights are set right below
    try:
        vae = VAE(sd={"decoder.conv_in.weight": torch.zeros(512, 4, 3, 3), "post_quant_conv.weight": torch.zeros(4, 4, 1, 1)})
    finally:
        logging.disable(logging.NOTSET)
    init_params(vae.first_stage_model, torch.Generator().manual_seed(0))
    assert vae.downscale_ratio == 4
    return vae


def test_a_vae_that_does_not_match_the_model_is_refused(comfy, pack, svd, reference, quarter_scale_vae):
    before = weight_fingerprint(svd[0])
    message = r"latents of shape 4x16x16 .* but SVD works on 4x8x8: connect the VAE from the same checkpoint"
    with pytest.raises(pack.nodes.inversion.VAEMismatch, match=message):
        invert(comfy, (svd[0], None, quarter_scale_vae), reference, steps=1)

    class NaNVAE:  # what an fp16 VAE that overflows gives
        def encode(self, pixels):
            return svd[2].encode(pixels) * float("nan")

    with pytest.raises(pack.nodes.inversion.VAEMismatch, match="NaN or infinite latents.*--fp32-vae"):
        invert(comfy, (svd[0], None, NaNVAE()), reference, steps=1)
    assert_clean_state(comfy, svd, before)


# ---- divergence and cancellation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, message",
    [
        (float("inf"), r"the embedding became non-finite at step 2; lower learning_rate \(now 0\.05\)"),
        (1e30, r"the loss became (nan|inf) at step 3 of 5: the model produced non-finite values \(learning rate 0\.05\)\. Lower learning_rate"),
    ],
    ids=["tokens become inf", "loss becomes NaN"],
)
def test_a_diverging_learning_rate_stops_with_a_clear_message_and_emits_nothing(comfy, pack, svd, reference, private_copies, monkeypatch, value, message):
    """What too high a learning rate does on a real model, forced after the second optimiser step: the
    tokens overflow to inf, or grow so large (finite) that the next forward's loss is NaN."""
    real_step = torch.optim.AdamW.step
    steps = []

    def diverging_step(self, *args, **kwargs):
        result = real_step(self, *args, **kwargs)
        steps.append(1)
        if len(steps) >= 2:
            with torch.no_grad():
                for group in self.param_groups:
                    for p in group["params"]:
                        p.fill_(value)
        return result

    before = weight_fingerprint(svd[0])
    diverged = pack_submodule(pack.module, "reenact_core.inversion").InversionDiverged
    with monkeypatch.context() as m, pytest.raises(diverged, match=message):
        m.setattr(torch.optim.AdamW, "step", diverging_step)
        invert(comfy, svd, reference, steps=5, **FAST)
    assert_clean_state(comfy, svd, before)
    assert_released(comfy, svd, private_copies)


STEPS = 4


def test_cancelling_an_inversion_at_the_first_step_mid_way_and_at_the_last_step(comfy, pack, svd, reference, baseline, private_copies, monkeypatch):
    """POST /interrupt sets ComfyUI's interrupt flag; here it is set when the progress bar reports a step.
    'at the last step': the flag is set as the last step reports, so only the check after the loop stops
    the node from emitting. 'before the first step': the flag is already set when the node starts (the
    node, or on newer ComfyUI its VAE encode, stops before it builds a private copy). After each: the
    node raised ComfyUI's interrupt, reported no further step, leaked no mode, left the shared model as
    it was and released its private copy; then the next run is exactly a fresh run."""
    from comfy.utils import ProgressBar

    mm = comfy.model_management
    real_update = ProgressBar.update_absolute
    before = weight_fingerprint(svd[0])
    cases = (("before the first step", None), ("at the first step", 1), ("mid-way", STEPS // 2), ("at the last step", STEPS))
    for when, interrupt_at in cases:
        reported = []

        def update(self, value, total=None, preview=None, reported=reported, interrupt_at=interrupt_at):
            reported.append(value)
            real_update(self, value, total, preview)
            if value == interrupt_at:
                mm.interrupt_current_processing(True)

        with monkeypatch.context() as m:
            m.setattr(ProgressBar, "update_absolute", update)
            if interrupt_at is None:
                mm.interrupt_current_processing(True)
            try:
                with pytest.raises(mm.InterruptProcessingException):
                    invert(comfy, svd, reference, steps=STEPS, **FAST)
            finally:
                mm.interrupt_current_processing(False)
        assert max(reported, default=0) == (interrupt_at or 0), when  # the steps before the interrupt, no more
        assert_clean_state(comfy, svd, before)
        assert_released(comfy, svd, private_copies, built=interrupt_at is not None)
        private_copies.clear()
    again, _ = invert(comfy, svd, reference, steps=2, seed=7, **FAST)
    assert torch.equal(again.spatial, baseline.spatial) and torch.equal(again.temporal, baseline.temporal)


# ---- saving -----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _failing(monkeypatch, pack, how: str):
    fileformat = pack.fileformat

    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def open_read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    with monkeypatch.context() as m:
        if how == "disk full":
            m.setattr(fileformat.os, "fsync", fsync)
        else:  # a read-only folder (simulated: these tests may run as root, which chmod cannot stop)
            m.setattr(fileformat, "open", open_read_only, raising=False)
        yield


@pytest.mark.parametrize("how, reason", [("disk full", "No space left on device"), ("read-only folder", "Read-only file system")])
def test_a_failed_save_leaves_no_file_and_says_why(comfy, pack, how, reason, monkeypatch):
    embedding, _ = run_node(comfy, "LoadMotionEmbedding", embedding_name=EXAMPLE_EMBEDDING)
    subfolder = "failing-" + how.replace(" ", "-")
    folder = os.path.join(comfy.folder_paths.get_output_directory(), "motion_embeddings", subfolder)
    with _failing(monkeypatch, pack, how), pytest.raises(pack.fileformat.EmbeddingFileError) as info:
        run_node(comfy, "SaveMotionEmbedding", motion_embedding=embedding, filename_prefix=f"{subfolder}/{how}")
    message = str(info.value)
    assert message.startswith("Could not save the motion embedding") and reason in message
    assert "Nothing was written" in message and "free space" in message
    assert not os.path.isdir(folder) or os.listdir(folder) == []  # no partial file, no temporary file
    run_node(comfy, "SaveMotionEmbedding", motion_embedding=embedding, filename_prefix=f"{subfolder}/ok")  # works again
    assert [n for n in os.listdir(folder) if n.startswith(".") or how in n] == []


def test_a_folder_in_the_way_of_a_save_gives_a_clear_error(comfy, pack):
    embedding, _ = run_node(comfy, "LoadMotionEmbedding", embedding_name=EXAMPLE_EMBEDDING)
    blocker = os.path.join(comfy.folder_paths.get_output_directory(), "motion_embeddings", "blocked")
    os.makedirs(os.path.dirname(blocker), exist_ok=True)
    with open(blocker, "w") as f:
        f.write("a file where the prefix wants a folder")
    with pytest.raises(pack.fileformat.EmbeddingFileError, match="Could not save the motion embedding: .*blocked: Not a directory. Nothing was written"):
        run_node(comfy, "SaveMotionEmbedding", motion_embedding=embedding, filename_prefix="blocked/x")


# ---- applying -------------------------------------------------------------------------------------------------


def test_an_svd_motion_on_an_svd_xt_latent_is_resampled(comfy, svd):
    embedding, _ = run_node(comfy, "LoadMotionEmbedding", embedding_name=EXAMPLE_EMBEDDING)
    assert embedding.frames == 14
    positive, negative, latent = conditioning(comfy, svd, frames=25)
    pos, neg, _, _ = run_node(comfy, "ApplyMotionEmbedding", positive=positive, negative=negative, motion_embedding=embedding, latent=latent, strength=1.0)
    spatial = pos[0][0]
    assert spatial.shape == (25, embedding.tokens, 1024) and neg[0][0].shape == spatial.shape
    assert torch.equal(spatial[0], embedding.spatial[0]) and torch.allclose(spatial[-1], embedding.spatial[-1])


@pytest.mark.parametrize("dim", [768, 1280, 64])
def test_an_embedding_with_another_token_width_is_refused_where_it_is_applied(comfy, pack, svd, dim):
    """The file itself is valid (a small model such as Motion World has 64-wide tokens): Apply Motion
    Embedding refuses it because SVD's conditioning has 1024-wide tokens."""
    motion = pack.embedding.MotionEmbedding(torch.randn(FRAMES, 2, dim), torch.randn(2, dim))
    positive, negative, latent = conditioning(comfy, svd)
    message = f"The positive conditioning has 1024-wide tokens but this motion embedding has {dim}-wide tokens: connect the outputs of SVD_img2vid_Conditioning"
    with pytest.raises(ValueError, match=message + r".*use an embedding learned with the same model"):
        run_node(comfy, "ApplyMotionEmbedding", positive=positive, negative=negative, motion_embedding=motion, latent=latent, strength=1.0)


def test_an_embedding_applied_to_a_text_conditioning_is_refused(comfy, pack, svd):
    """SD1.5's text conditioning (77 tokens of 768) and SD2.x's (77 of 1024: the width matches SVD's, but
    it carries no image latent) are not SVD's conditioning."""
    embedding, _ = run_node(comfy, "LoadMotionEmbedding", embedding_name=EXAMPLE_EMBEDDING)
    _, _, latent = conditioning(comfy, svd)
    sd15 = [[torch.zeros(1, 77, 768), {}]]
    sd2 = [[torch.zeros(1, 77, 1024), {"pooled_output": torch.zeros(1, 1024)}]]
    with pytest.raises(ValueError, match="The positive conditioning has 768-wide tokens but this motion embedding has 1024-wide tokens"):
        run_node(comfy, "ApplyMotionEmbedding", positive=sd15, negative=sd15, motion_embedding=embedding, latent=latent, strength=1.0)
    with pytest.raises(ValueError, match=r"The positive conditioning is not from SVD_img2vid_Conditioning \(it has no image latent\)"):
        run_node(comfy, "ApplyMotionEmbedding", positive=sd2, negative=sd2, motion_embedding=embedding, latent=latent, strength=1.0)
