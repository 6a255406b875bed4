"""The motion plays as it was filmed (issue #26): the reference's frame rate after selection and sampling
reaches SVD's fps conditioning (fps 0 = auto), is recorded in the embedding and reported; a short motion can
be learned at the clip's own rate; Apply Motion Embedding says what playing it over other frame counts does
and can keep its speed; phone clips are learned upright. In the real ComfyUI on the test checkpoint."""

from __future__ import annotations

import os

import av
import numpy as np
import pytest
import torch

from testkit.comfy_env import pack_submodule, run_node

SIZE = 32


def _clip(path, frames: int, rate: int, rotation: int = 0, width: int = 48, height: int = 32):
    """A square moving right, ``frames`` frames at ``rate`` fps, stored with a display rotation."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.set_display_rotation(rotation)
        for i in range(frames):
            image = np.full((height, width, 3), 30, np.uint8)
            x = 2 + (width - 12) * i // max(1, frames - 1)
            image[4:12, x : x + 8] = 230
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def load(comfy, name, **selection):
    inputs = dict(frame_load_cap=0, skip_first_frames=0, select_every_nth=1, custom_width=0, custom_height=0) | selection
    return run_node(comfy, "LoadMotionReference", video=name, **inputs)


@pytest.fixture(scope="module")
def long_clip(comfy, pack):
    _clip(os.path.join(comfy.folder_paths.get_input_directory(), "timing_30fps.mp4"), frames=45, rate=30)
    return "timing_30fps.mp4"


def invert(comfy, svd, reference, **overrides):
    model, _, vae = svd
    inputs = dict(model=model, vae=vae, motion_reference=reference, steps=1, learning_rate=0.05, tokens_per_frame=2, video_frames=4,
                  width=SIZE, height=SIZE, seed=0, fps=0, motion_bucket_id=127, augmentation_level=0.0, precision="fp32",
                  gradient_checkpointing=False, options=dict(sigma_log_mean=1.0, sigma_log_std=1.0, eval_draws=0))
    return run_node(comfy, "MotionTextualInversion", **(inputs | overrides))


class FpsSeen:
    """The fps SVD is conditioned on in the inversion's forwards (decoded from ComfyUI's own encode_adm)."""

    def __init__(self, monkeypatch, model):
        import comfy.model_base

        self.ys = []
        apply_model = comfy.model_base.SVD_img2vid.apply_model

        def recording(base, x, t, *args, **kwargs):
            self.ys.append(kwargs["y"][0].float().cpu())
            return apply_model(base, x, t, *args, **kwargs)

        monkeypatch.setattr(comfy.model_base.SVD_img2vid, "apply_model", recording)
        self.model = model

    def was(self, fps: int) -> bool:
        expected = self.model.model.encode_adm(fps=fps, motion_bucket_id=127, augmentation_level=0.0)[0].float().cpu()
        return bool(self.ys) and all(torch.allclose(y, expected) for y in self.ys)


def test_auto_fps_is_the_rate_the_learned_frames_have(comfy, svd, long_clip, monkeypatch):
    """45 frames at 30 fps (1.47 s) spread over 4 frames: 3 steps in 1.47 s, 2.05 fps, so SVD is told 2."""
    reference, _, count, info = load(comfy, long_clip)
    assert count == 45 and "30 fps" in info
    seen = FpsSeen(monkeypatch, svd[0])
    embedding, _, report = invert(comfy, svd, reference)
    assert seen.was(2)
    meta = embedding.metadata
    assert float(meta["reference_fps"]) == 30.0 and float(meta["motion_fps"]) == pytest.approx(30 * 3 / 44, abs=1e-3)
    assert meta["fps"] == "2" and meta["frame_sampling"] == "spread over the clip"
    assert "2.05 fps" in report and "(auto)" in report and "each learned frame steps over 14.7 filmed ones" in report


def test_the_first_frames_at_the_clips_rate_and_a_hand_set_fps(comfy, svd, long_clip, monkeypatch, pack):
    reference, *_ = load(comfy, long_clip, select_every_nth=2)  # 15 fps
    seen = FpsSeen(monkeypatch, svd[0])
    frames_seen = []
    inversion = pack_submodule(pack.module, "nodes.inversion")
    encode = inversion.encode_training_clips
    monkeypatch.setattr(inversion, "encode_training_clips", lambda frames, *a: frames_seen.append(frames) or encode(frames, *a))
    embedding, _, report = invert(comfy, svd, reference, frame_sampling="first frames at the clip's rate")
    assert seen.was(15) and float(embedding.metadata["motion_fps"]) == 15.0
    fit = pack_submodule(pack.module, "reenact_core.video").fit_frames
    torch.testing.assert_close(frames_seen[0], fit(reference.frames[:4], SIZE, SIZE))  # the first 4, as filmed
    seen.ys.clear()
    embedding, _, report = invert(comfy, svd, reference, fps=9)
    assert seen.was(9) and embedding.metadata["fps"] == "9" and "set by hand" in report


def test_a_phone_clip_is_learned_upright(comfy, pack):
    """Stored landscape with a display rotation of 90 degrees clockwise (a phone held upright): loaded as portrait,
    the square that moves right in the stored frames moves down, as the viewer sees it."""
    _clip(os.path.join(comfy.folder_paths.get_input_directory(), "timing_portrait.mp4"), frames=6, rate=30, rotation=-90)
    reference, frames, _, info = load(comfy, "timing_portrait.mp4")
    assert tuple(frames.shape[1:3]) == (48, 32) and "rotated 90° clockwise" in info
    rows = [int(torch.argmax(f.mean(-1).mean(1))) for f in frames]  # the bright rows' position per frame
    assert rows == sorted(rows) and rows[-1] > rows[0] + 10


def test_an_image_batch_says_its_frame_rate_is_assumed(comfy, pack):
    reference, _, _, info = load(comfy, "none", images=torch.rand(6, 16, 16, 3))
    assert reference.fps == 8.0 and not reference.fps_known and "assumed" in info


@pytest.fixture(scope="module")
def conditioning(comfy, svd):
    from testkit.svd_checkpoint import tiny_clip_vision

    _, _, vae = svd
    return run_node(comfy, "SVD_img2vid_Conditioning", clip_vision=tiny_clip_vision(), init_image=torch.rand(1, SIZE, SIZE, 3), vae=vae,
                    width=SIZE, height=SIZE, video_frames=7, motion_bucket_id=127, fps=6, augmentation_level=0.0)


def test_apply_says_what_the_frame_count_does_to_the_speed_and_can_keep_it(comfy, pack, conditioning):
    positive, negative, latent = conditioning  # 7 frames
    g = torch.Generator().manual_seed(0)
    motion = pack.embedding.MotionEmbedding(torch.randn(4, 2, 1024, generator=g), torch.randn(2, 1024, generator=g),
                                            {"motion_fps": "2.0", "fps": "2"})
    kept_pos, kept_neg, info, _ = run_node(comfy, "ApplyMotionEmbedding", positive=positive, negative=negative, motion_embedding=motion,
                                        latent=latent, strength=1.0, keep_speed=True)
    # 4 frames at 2 fps = 1.5 s of motion; over 7 frames the same 1.5 s needs 4 fps (SVD_img2vid_Conditioning said 6).
    assert kept_pos[0][1]["fps"] == 4 and kept_neg[0][1]["fps"] == 4
    assert "at 2 fps" in info and "keeps its speed at 4 fps" in info and "set to 4 (keep_speed)" in info
    plain_pos, plain_neg, info, _ = run_node(comfy, "ApplyMotionEmbedding", positive=positive, negative=negative, motion_embedding=motion,
                                          latent=latent, strength=1.0)
    assert plain_pos[0][1]["fps"] == plain_neg[0][1]["fps"] == 6
    assert "left at 6 (keep_speed off)" in info and "Save the video at 4 fps" in info
