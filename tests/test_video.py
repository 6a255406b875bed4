"""Tests for reenact_core.video: decoding, selection, resizing, memory guard, errors, IMAGE batches.

All media is generated on the fly with PyAV / Pillow: a white 16×16 square on black that moves
4 px right per frame, so the square's position tells which source frame a decoded frame is.
"""

from __future__ import annotations

import dataclasses
import fractions
import hashlib
import random

import av
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from reenact_core import video
from reenact_core.video import (
    ReferenceClip,
    ReferenceVideoError,
    clip_from_images,
    fit_frames,
    load_reference_video,
    resample_frames,
)

W, H, N, FPS = 128, 64, 24, 8
SQUARE, STEP = 16, 4
SETTINGS_NAMED = ("frame_load_cap", "select_every_nth", "custom_width", "custom_height")


def _has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
        return True
    except ValueError:  # av.codec.codec.UnknownCodecError
        return False


# H.264 when the wheel has libx264 (PyPI wheels do), else FFmpeg's own MPEG-4 part 2.
H264 = "libx264" if _has_encoder("libx264") else "mpeg4"


def square_frame(i: int) -> np.ndarray:
    a = np.zeros((H, W, 3), np.uint8)
    a[24 : 24 + SQUARE, STEP * i : STEP * i + SQUARE] = 255
    return a


def source_indices(frames: torch.Tensor, scale: float = 1.0, crop_left: float = 0.0) -> list[int]:
    """Which source frame each frame shows, from the square's horizontal centre.

    `scale` / `crop_left` undo a horizontal resize and crop (pixel centres at x + 0.5)."""
    out = []
    for f in frames:
        cols = (f.mean(dim=-1) > 0.5).float().sum(dim=0)
        assert cols.sum() > 0, "no square found"
        centre = float((cols * torch.arange(cols.numel())).sum() / cols.sum()) + 0.5
        src = (centre + crop_left) / scale
        out.append(round((src - SQUARE / 2) / STEP))
    return out


def write_video(path, codec, pix_fmt, *, n=N, fmt=None, pts_ms=None, rgba=None, options=None):
    """Encode the moving square. `rgba` maps a frame index to an RGBA array for alpha sources."""
    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream(codec, rate=30 if pts_ms else FPS, options=options or {})
        s.width, s.height, s.pix_fmt = W, H, pix_fmt
        if pts_ms:
            s.time_base = fractions.Fraction(1, 1000)
        for i in range(n):
            if rgba is not None:
                frame = av.VideoFrame.from_ndarray(rgba(i), format="rgba")
            else:
                frame = av.VideoFrame.from_ndarray(square_frame(i), format="rgb24")
            if pts_ms:
                frame.pts, frame.time_base = pts_ms[i], fractions.Fraction(1, 1000)
            for packet in s.encode(frame):
                c.mux(packet)
        for packet in s.encode(None):
            c.mux(packet)
        if n == 0:
            c.start_encoding()  # writes the header, which otherwise waits for the first packet
    return path


def rgba_square(i: int) -> np.ndarray:
    """Opaque white square; the background is red but fully transparent (must come out black)."""
    a = np.zeros((H, W, 4), np.uint8)
    a[..., 0] = 255
    a[24 : 24 + SQUARE, STEP * i : STEP * i + SQUARE] = 255
    return a


def write_sequence(d, n=N, mode="RGB", ext="png", name="frame_{}"):
    d.mkdir()
    for i in range(n):
        a = rgba_square(i) if mode == "RGBA" else square_frame(i)
        img = Image.fromarray(a)
        if mode != "RGBA":
            img = img.convert(mode)
        img.save(d / f"{name.format(i)}.{ext}")
    return d


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    t = tmp_path_factory.mktemp("media")
    vfr = [0]
    for i in range(1, N):  # alternating 100 ms / 33 ms gaps: 10 fps and 30 fps
        vfr.append(vfr[-1] + (100 if i % 2 else 33))
    m = {
        "mp4": write_video(t / "clip.mp4", H264, "yuv420p"),
        "mpeg4": write_video(t / "clip_mpeg4.mp4", "mpeg4", "yuv420p"),
        "webm_vp9": write_video(t / "clip_vp9.webm", "libvpx-vp9", "yuv420p"),
        "webm_vp8": write_video(t / "clip_vp8.webm", "libvpx", "yuv420p"),
        "mov": write_video(t / "clip.mov", H264, "yuv420p"),
        "mkv": write_video(t / "clip.mkv", H264, "yuv420p"),
        "gif": write_video(t / "clip.gif", "gif", "rgb8"),
        "gray_mov": write_video(t / "gray.mov", "png", "gray"),
        "alpha_mov": write_video(t / "alpha.mov", "qtrle", "argb", rgba=rgba_square),
        "vfr_mp4": write_video(t / "vfr.mp4", H264, "yuv420p", pts_ms=vfr),
        "png_dir": write_sequence(t / "png_seq"),
        "gray_dir": write_sequence(t / "gray_seq", mode="L"),
        "palette_dir": write_sequence(t / "palette_seq", mode="P"),
        "rgba_dir": write_sequence(t / "rgba_seq", mode="RGBA"),
        "jpg_dir": write_sequence(t / "jpg_seq", ext="jpg"),
    }
    frames = [Image.fromarray(rgba_square(i)) for i in range(N)]
    m["webp_anim"] = t / "anim.webp"
    frames[0].save(
        m["webp_anim"], save_all=True, append_images=frames[1:], duration=125, lossless=True
    )
    m["apng"] = t / "anim.png"
    rgb = [Image.fromarray(square_frame(i)) for i in range(N)]
    rgb[0].save(m["apng"], save_all=True, append_images=rgb[1:], duration=125)
    m["png"] = t / "still.png"
    Image.fromarray(square_frame(5)).save(m["png"])
    return m


# --------------------------------------------------------------------------------------------------
# Formats


FORMATS = [
    "mp4",
    "mpeg4",
    "webm_vp9",
    "webm_vp8",
    "mov",
    "mkv",
    "gif",
    "gray_mov",
    "alpha_mov",
    "vfr_mp4",
    "png_dir",
    "gray_dir",
    "palette_dir",
    "rgba_dir",
    "jpg_dir",
    "webp_anim",
    "apng",
]


@pytest.mark.parametrize("kind", FORMATS)
def test_every_format_decodes_all_frames_in_order(media, kind):
    clip = load_reference_video(media[kind])
    assert isinstance(clip, ReferenceClip)
    assert clip.frames.shape == (N, H, W, 3)
    assert clip.frames.dtype == torch.float32
    assert 0.0 <= float(clip.frames.min()) and float(clip.frames.max()) <= 1.0
    assert source_indices(clip.frames) == list(range(N))
    assert clip.source == str(media[kind])


def test_fps_is_the_average_rate_divided_by_nth(media):
    assert load_reference_video(media["mp4"]).fps == pytest.approx(FPS)
    assert load_reference_video(media["mp4"], select_every_nth=2).fps == pytest.approx(FPS / 2)
    assert load_reference_video(media["gif"]).fps == pytest.approx(FPS, rel=0.05)  # 1/100 s ticks
    assert load_reference_video(media["webp_anim"]).fps == pytest.approx(FPS)
    assert load_reference_video(media["png_dir"]).fps == video.DEFAULT_FPS


def test_variable_frame_rate_selects_by_frame_order(media):
    clip = load_reference_video(media["vfr_mp4"], select_every_nth=3)
    # Every 3rd decoded frame, although the timestamps are uneven.
    assert source_indices(clip.frames) == list(range(0, N, 3))
    assert 10 < clip.fps * 3 < 30  # average of 10 fps and 30 fps gaps (about 15)


def test_sha256_of_file_and_of_sequence(media):
    clip = load_reference_video(media["mp4"], frame_load_cap=2)
    assert clip.sha256 == hashlib.sha256(media["mp4"].read_bytes()).hexdigest()
    files = sorted(media["png_dir"].iterdir(), key=lambda f: int(f.stem.split("_")[1]))
    expected = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()
    assert load_reference_video(media["png_dir"]).sha256 == expected


def test_single_still_image_is_one_frame(media):
    clip = load_reference_video(media["png"])
    assert clip.frames.shape == (1, H, W, 3)
    assert source_indices(clip.frames) == [5]
    assert clip.fps == video.DEFAULT_FPS


def test_sequence_uses_natural_order_and_ignores_other_files(tmp_path):
    d = write_sequence(tmp_path / "seq", n=12)  # frame_2 must come before frame_10
    (d / "notes.txt").write_text("not a frame")
    (d / ".frame_0.png").write_bytes(b"macOS resource fork junk")
    clip = load_reference_video(d)
    assert source_indices(clip.frames) == list(range(12))


def test_alpha_is_composited_over_black(media):
    for kind in ("alpha_mov", "rgba_dir", "webp_anim"):
        f = load_reference_video(media[kind], frame_load_cap=1).frames[0]
        assert float(f[0, 60].max()) < 0.02, kind  # transparent red background -> black
        assert float(f[30, 8].min()) > 0.98, kind  # opaque white square stays white


def test_half_transparent_pixels_are_darkened(tmp_path):
    a = np.full((4, 4, 4), 255, np.uint8)
    a[..., 3] = 128
    Image.fromarray(a, "RGBA").save(tmp_path / "half.png")
    f = load_reference_video(tmp_path / "half.png").frames
    assert torch.allclose(f, torch.full_like(f, 128 / 255), atol=1 / 255)


def test_grayscale_and_palette_become_rgb(media):
    for kind in ("gray_mov", "gray_dir", "palette_dir"):
        f = load_reference_video(media[kind]).frames
        assert f.shape[-1] == 3
        assert torch.equal(f[..., 0], f[..., 1]) and torch.equal(f[..., 1], f[..., 2]), kind


def test_16bit_grayscale_png_keeps_its_range(tmp_path):
    a = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    f = load_reference_video(tmp_path / "g16.png").frames
    assert float(f.min()) == 0.0 and float(f.max()) == 1.0


# --------------------------------------------------------------------------------------------------
# Selection


@pytest.mark.parametrize(
    ("skip", "nth", "cap", "expected"),
    [
        (0, 1, 0, list(range(N))),
        (3, 2, 5, [3, 5, 7, 9, 11]),
        (0, 5, 0, [0, 5, 10, 15, 20]),
        (20, 3, 0, [20, 23]),
        (0, 1, 4, [0, 1, 2, 3]),
        (23, 1, 0, [23]),
        (0, 100, 0, [0]),
    ],
)
@pytest.mark.parametrize("kind", ["mp4", "webm_vp9", "png_dir", "apng"])
def test_selection_semantics(media, kind, skip, nth, cap, expected):
    clip = load_reference_video(
        media[kind], skip_first_frames=skip, select_every_nth=nth, frame_load_cap=cap
    )
    assert source_indices(clip.frames) == expected


def test_selection_count_matches_decoding():
    for skip, nth, cap, total in [
        (0, 1, 0, 24),
        (3, 2, 5, 24),
        (24, 1, 0, 24),
        (5, 4, 0, 6),
        (0, 7, 2, 30),
    ]:
        sel = video._Selection(skip, nth, cap)
        assert sel.count(total) == len([i for i in range(total) if sel.keeps(i)][: cap or None])


# --------------------------------------------------------------------------------------------------
# Resizing


def test_custom_width_only_keeps_aspect(media):
    clip = load_reference_video(media["mp4"], custom_width=64)
    assert clip.frames.shape == (N, 32, 64, 3)
    assert source_indices(clip.frames, scale=0.5) == list(range(N))


def test_custom_height_only_keeps_aspect(media):
    clip = load_reference_video(media["png_dir"], custom_height=32)
    assert clip.frames.shape == (N, 32, 64, 3)


def test_both_custom_sizes_cover_and_centre_crop(media):
    full = load_reference_video(media["png_dir"]).frames
    clip = load_reference_video(media["png_dir"], custom_width=32, custom_height=32)
    assert clip.frames.shape == (N, 32, 32, 3)
    # Same as loading at full size and fitting afterwards (up to 8-bit rounding while loading).
    assert torch.allclose(clip.frames, fit_frames(full, 32, 32), atol=1 / 255 + 1e-6)
    # 128x64 -> 64x32, then columns 16..47 kept: the (now 8 px) square lies wholly inside them
    # in frames 8..20, partly in 5..7 and 21..23, and not at all in 0..4.
    inside = list(range(8, 21))
    assert source_indices(clip.frames[inside], scale=0.5, crop_left=16) == inside
    assert [i for i in range(N) if float(clip.frames[i].max()) > 0.5] == list(range(5, N))


def test_upscaling_works(media):
    clip = load_reference_video(media["mp4"], custom_width=256, frame_load_cap=3)
    assert clip.frames.shape == (3, 128, 256, 3)
    assert source_indices(clip.frames, scale=2.0) == [0, 1, 2]


# --------------------------------------------------------------------------------------------------
# Memory guard


def _no_decoding(*args, **kwargs):
    raise AssertionError("decoding started although the estimate exceeds the budget")


@pytest.mark.parametrize("kind", ["mp4", "webm_vp9", "png_dir", "webp_anim"])
def test_memory_guard_fires_before_decoding(media, monkeypatch, kind):
    monkeypatch.setattr(video, "_decoded_av_frames", _no_decoding)
    monkeypatch.setattr(video, "_read_still", _no_decoding)
    monkeypatch.setattr(video, "_pil_to_rgb", _no_decoding)
    with pytest.raises(ReferenceVideoError) as info:
        load_reference_video(media[kind], memory_budget_bytes=1000)
    msg = str(info.value)
    assert f"{N} frames at {W}×{H}" in msg
    assert "memory budget" in msg
    for name in SETTINGS_NAMED:
        assert name in msg


def test_memory_guard_boundary_is_exact(media):
    need = 5 * H * W * 3 * 4
    clip = load_reference_video(media["mp4"], frame_load_cap=5, memory_budget_bytes=need)
    assert clip.frames.shape[0] == 5
    with pytest.raises(ReferenceVideoError, match="5 frames at 128×64"):
        load_reference_video(media["mp4"], frame_load_cap=5, memory_budget_bytes=need - 1)
    # Resizing shrinks the estimate: the same budget holds 20 frames at 64×32.
    clip = load_reference_video(
        media["mp4"], frame_load_cap=20, custom_width=64, memory_budget_bytes=need
    )
    assert clip.frames.shape == (20, 32, 64, 3)


def test_memory_guard_also_checks_while_decoding(media, monkeypatch):
    # Metadata without a frame count: only the running check can stop the load.
    monkeypatch.setattr(video, "_estimate_frame_count", lambda container, stream: None)
    with pytest.raises(ReferenceVideoError) as info:
        load_reference_video(media["webm_vp9"], memory_budget_bytes=10 * H * W * 3 * 4)
    msg = str(info.value)
    assert "11 frames" in msg and "while decoding" in msg
    for name in SETTINGS_NAMED:
        assert name in msg


def test_metadata_frame_count_estimates(media):
    for kind in ("mp4", "webm_vp9", "mkv", "gif"):
        with av.open(str(media[kind])) as c:
            assert video._estimate_frame_count(c, c.streams.video[0]) in (N - 1, N, N + 1), kind


# --------------------------------------------------------------------------------------------------
# Errors


def _error(path, **kwargs) -> str:
    with pytest.raises(ReferenceVideoError) as info:
        load_reference_video(path, **kwargs)
    return str(info.value)


def test_missing_path(tmp_path):
    msg = _error(tmp_path / "nope.mp4")
    assert "not found" in msg and "check the path" in msg


def test_empty_file(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert "empty (0 bytes)" in _error(tmp_path / "empty.mp4")
    (tmp_path / "empty.png").write_bytes(b"")
    assert "empty (0 bytes)" in _error(tmp_path / "empty.png")


def test_corrupt_bytes(tmp_path):
    p = tmp_path / "noise.mp4"
    p.write_bytes(random.Random(0).randbytes(50_000))
    assert "re-export" in _error(p)


def test_text_file_named_mp4(tmp_path):
    p = tmp_path / "notes.mp4"
    p.write_text("These are my notes, not a video.\n" * 50)
    assert "re-export" in _error(p) or "no video stream" in _error(p)


def test_truncated_mp4(media, tmp_path):
    data = media["mp4"].read_bytes()
    p = tmp_path / "truncated.mp4"
    p.write_bytes(data[: len(data) // 2])  # the index (moov) is at the end: nothing to read
    assert "re-export" in _error(p)


def test_zero_decodable_frames(media, tmp_path):
    data = bytearray(media["mp4"].read_bytes())
    start = data.find(b"mdat") + 4
    end = start + int.from_bytes(data[start - 8 : start - 4], "big") - 8
    data[start:end] = bytes(end - start)  # container intact, every packet garbage
    p = tmp_path / "zeroed.mp4"
    p.write_bytes(bytes(data))
    msg = _error(p)
    assert "0 decodable frames" in msg and "re-export it as H.264 MP4" in msg


def test_video_stream_without_frames(tmp_path):
    p = tmp_path / "no_frames.mkv"
    write_video(p, H264, "yuv420p", n=0)
    assert "re-export" in _error(p)


def test_unsupported_codec(media, tmp_path):
    data = media["webm_vp8"].read_bytes()
    assert data.count(b"V_VP8") == 1
    p = tmp_path / "unknown_codec.webm"
    p.write_bytes(data.replace(b"V_VP8", b"V_QQQ"))  # a codec id no FFmpeg knows
    msg = _error(p)
    assert "codec" in msg and "re-export" in msg


def test_audio_only_file(tmp_path):
    p = tmp_path / "tone.wav"
    with av.open(str(p), "w") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 800), np.int16), format="s16", layout="mono"
        )
        frame.sample_rate = 8000
        for packet in s.encode(frame):
            c.mux(packet)
    assert "no video stream" in _error(p)


def test_all_frames_skipped(media):
    msg = _error(media["mp4"], skip_first_frames=100)
    assert "skip_first_frames" in msg and f"{N} frame" in msg
    assert "skip_first_frames" in _error(media["png_dir"], skip_first_frames=N)


def test_empty_directory(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    assert "no images" in _error(tmp_path)


def test_corrupt_image_in_sequence_names_the_file(tmp_path):
    d = write_sequence(tmp_path / "seq", n=4)
    (d / "frame_2.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    msg = _error(d)
    assert "frame_2.png" in msg and "re-export" in msg
    # Skipped files are never opened, so a selection around the bad frame still loads.
    assert load_reference_video(d, select_every_nth=3).frames.shape[0] == 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"skip_first_frames": -1},
        {"select_every_nth": 0},
        {"frame_load_cap": -2},
        {"custom_width": -1},
        {"custom_height": 1.5},
        {"memory_budget_bytes": 0},
    ],
)
def test_invalid_settings(media, kwargs):
    name = next(iter(kwargs))
    assert name in _error(media["mp4"], **kwargs)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 2**32 - 1),
    flips=st.integers(1, 40),
    suffix=st.sampled_from([".mp4", ".png"]),
)
def test_damaged_files_never_raise_raw_errors(media, tmp_path, seed, flips, suffix):
    rng = random.Random(seed)
    data = bytearray((media["mp4"] if suffix == ".mp4" else media["png"]).read_bytes())
    for _ in range(flips):
        data[rng.randrange(len(data))] = rng.randrange(256)
    p = tmp_path / f"damaged{suffix}"
    p.write_bytes(bytes(data))
    try:
        clip = load_reference_video(p)
    except ReferenceVideoError:
        return
    assert clip.frames.ndim == 4 and clip.frames.shape[-1] == 3


# --------------------------------------------------------------------------------------------------
# IMAGE batches


def test_clip_from_images_float_passthrough():
    x = torch.rand(3, 8, 10, 3)
    clip = clip_from_images(x, fps=12)
    assert torch.equal(clip.frames, x) and clip.fps == 12.0 and clip.source == "IMAGE batch"
    assert clip.sha256 == hashlib.sha256(x.numpy().tobytes()).hexdigest()
    assert clip_from_images(x + 0).sha256 == clip.sha256
    assert clip_from_images(x.flip(0)).sha256 != clip.sha256


def test_clip_from_images_channels_and_dtypes():
    gray = torch.rand(2, 4, 4, 1)
    assert torch.equal(clip_from_images(gray).frames, gray.repeat(1, 1, 1, 3))
    rgba = torch.rand(2, 4, 4, 4)
    assert torch.equal(clip_from_images(rgba).frames, rgba[..., :3])
    u8 = torch.tensor([0, 51, 255], dtype=torch.uint8).reshape(1, 1, 1, 3)
    assert torch.allclose(
        clip_from_images(u8).frames, torch.tensor([0.0, 0.2, 1.0]).reshape(1, 1, 1, 3)
    )
    half = torch.full((1, 2, 2, 3), 1.5, dtype=torch.float16)
    out = clip_from_images(half).frames
    assert out.dtype == torch.float32 and float(out.max()) == 1.0  # clamped


@pytest.mark.parametrize(
    ("images", "expected"),
    [
        (torch.rand(8, 8, 3), "(8, 8, 3)"),
        (torch.rand(2, 8, 8, 2), "2 channels"),
        (torch.rand(2, 3, 16, 16), "channels-first"),
        (torch.zeros(2, 8, 8, 3, dtype=torch.int64), "torch.int64"),
        (torch.full((1, 2, 2, 3), float("nan")), "NaN"),
        (torch.full((1, 2, 2, 3), float("inf")), "infinite"),
        (torch.zeros(0, 8, 8, 3), "at least one frame"),
        (np.zeros((1, 8, 8, 3), np.float32), "ndarray"),
    ],
)
def test_clip_from_images_rejects(images, expected):
    with pytest.raises(ReferenceVideoError, match="expected|NaN|infinite") as info:
        clip_from_images(images)
    assert expected in str(info.value)


def test_clip_from_images_rejects_bad_fps():
    with pytest.raises(ReferenceVideoError, match="fps"):
        clip_from_images(torch.rand(1, 2, 2, 3), fps=0)


# --------------------------------------------------------------------------------------------------
# resample_frames / fit_frames


def _numbered(t: int) -> torch.Tensor:
    return torch.arange(t, dtype=torch.float32).reshape(t, 1, 1, 1).expand(t, 2, 2, 3).contiguous()


@pytest.mark.parametrize(
    ("t", "n", "expected"),
    [(10, 4, [0, 3, 6, 9]), (5, 5, [0, 1, 2, 3, 4]), (7, 1, [0]), (25, 14, None), (2, 2, [0, 1])],
)
def test_resample_frames_indices(t, n, expected):
    out = resample_frames(_numbered(t), n)
    assert out.shape == (n, 2, 2, 3)
    if expected is None:
        expected = np.round(np.linspace(0, t - 1, n)).astype(int).tolist()
    assert out[:, 0, 0, 0].long().tolist() == expected
    assert out[0, 0, 0, 0] == 0 and out[-1, 0, 0, 0] == (t - 1 if n > 1 else 0)


def test_resample_frames_too_few():
    with pytest.raises(ReferenceVideoError) as info:
        resample_frames(_numbered(3), 5)
    msg = str(info.value)
    assert "only 3 frames but 5 are needed" in msg
    assert "frame_load_cap" in msg and "video_frames" in msg


def test_fit_frames_cover_crop():
    x = torch.zeros(2, 64, 128, 3)
    x[:, :, 64:] = 1.0  # right half white
    out = fit_frames(x, 32, 32)  # 128x64 -> 64x32, keep columns 16..47
    assert out.shape == (2, 32, 32, 3) and out.dtype == torch.float32
    assert float(out[:, :, :15].max()) == 0.0 and float(out[:, :, 17:].min()) == 1.0
    tall = fit_frames(x, 16, 64)  # 128x64 -> 128x64, keep columns 56..71
    assert tall.shape == (2, 64, 16, 3)
    assert float(tall[:, :, :7].max()) == 0.0 and float(tall[:, :, 9:].min()) == 1.0


def test_fit_frames_is_antialiased_and_clamped():
    x = torch.zeros(1, 64, 64, 3)
    x[:, :, ::2] = 1.0  # 1-px stripes average to grey when downscaled 4x
    out = fit_frames(x, 16, 16)
    inner = out[:, 1:-1, 1:-1]  # the outermost columns see a lopsided window at the border
    assert torch.allclose(inner, torch.full_like(inner, 0.5), atol=0.02)
    assert float(fit_frames(torch.full((1, 4, 4, 3), 1.2), 8, 8).max()) == 1.0


@settings(max_examples=40, deadline=None)
@given(
    t=st.integers(1, 3),
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    height=st.integers(1, 40),
    width=st.integers(1, 40),
)
def test_fit_frames_exact_shape(t, h, w, height, width):
    out = fit_frames(torch.rand(t, h, w, 3), width, height)
    assert out.shape == (t, height, width, 3)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_fit_frames_rejects_bad_input():
    with pytest.raises(ReferenceVideoError):
        fit_frames(torch.rand(4, 4, 3), 2, 2)
    with pytest.raises(ReferenceVideoError, match="width"):
        fit_frames(torch.rand(1, 4, 4, 3), 0, 2)


def test_select_and_resize_image_batch_matches_loader_semantics():
    from reenact_core.video import clip_from_images, select_and_resize

    images = torch.arange(10.0)[:, None, None, None].expand(10, 6, 8, 3) / 10
    clip = clip_from_images(images, fps=10.0)
    out = select_and_resize(clip, skip_first_frames=1, select_every_nth=2, frame_load_cap=3, custom_width=4)
    assert out.frames.shape == (3, 3, 4, 3)
    assert torch.allclose(out.frames[:, 0, 0, 0], torch.tensor([0.1, 0.3, 0.5]))
    assert out.fps == 5.0 and out.sha256 == clip.sha256
    assert select_and_resize(clip).frames.shape == (10, 6, 8, 3)
    with pytest.raises(ReferenceVideoError, match="all 10 frames were skipped"):
        select_and_resize(clip, skip_first_frames=10)


def test_without_pyav_the_core_imports_stills_load_and_videos_say_what_to_install(tmp_path):
    """PyAV is imported only where a video is decoded or written (the GPU check's machine has none)."""
    import subprocess
    import sys
    from pathlib import Path

    still = tmp_path / "still.png"
    Image.fromarray(np.full((16, 24, 3), 128, np.uint8)).save(still)
    (tmp_path / "clip.mp4").write_bytes(b"not opened: PyAV is missing")
    code = r"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "av":
            raise ModuleNotFoundError("No module named 'av'", name=name)
sys.meta_path.insert(0, Block())
import reenact_core.api, reenact_core.cli
from reenact_core.video import ReferenceVideoError, load_reference_video
clip = load_reference_video(sys.argv[1])
assert tuple(clip.frames.shape) == (1, 16, 24, 3), clip.frames.shape
try:
    load_reference_video(sys.argv[2])
except ReferenceVideoError as e:
    assert "pip install av" in str(e), e
    print("ASKS-FOR-PYAV")
assert "av" not in sys.modules
"""
    repo = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", code, str(still), str(tmp_path / "clip.mp4")], cwd=repo, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ASKS-FOR-PYAV" in result.stdout, result.stdout + result.stderr


# ---- timing and orientation (issue #26) -------------------------------------------------------------------


def _marked_clip(path, frames=6, rate=30, width=64, height=32, rotation=0, hflip=False, vflip=False):
    """A clip whose stored frames have a white marker in the top-left corner, with a display matrix."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(video.mp4_codec(), rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.set_display_rotation(rotation, hflip=hflip, vflip=vflip)
        for _ in range(frames):
            image = np.zeros((height, width, 3), np.uint8)
            image[:8, :8] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _brightest_corner(frame: torch.Tensor) -> str:
    f = frame.float().mean(-1)
    corners = {"top-left": f[:4, :4], "top-right": f[:4, -4:], "bottom-left": f[-4:, :4], "bottom-right": f[-4:, -4:]}
    return max(corners, key=lambda k: float(corners[k].mean()))


@pytest.mark.parametrize(
    "rotation, hflip, vflip, size, corner, words",
    [
        (0, False, False, (32, 64), "top-left", ""),
        (-90, False, False, (64, 32), "top-right", "rotated 90° clockwise"),  # a phone held upright
        (90, False, False, (64, 32), "bottom-left", "rotated 90° counter-clockwise"),
        (180, False, False, (32, 64), "bottom-right", "rotated 180°"),
        (0, True, False, (32, 64), "top-right", "mirrored left-right"),  # a front camera
        (0, False, True, (32, 64), "bottom-left", "flipped upside down"),
        (-90, True, False, (64, 32), "top-left", "rotated 90° clockwise, then mirrored left-right"),
    ],
)
def test_a_clips_display_rotation_and_mirror_are_applied_before_anything_else(tmp_path, rotation, hflip, vflip, size, corner, words):
    """What players show, as PyAV's display matrix describes it (rotate counter-clockwise, then mirror): the
    marker in the stored frames' top-left corner ends up where the viewer sees it, in every loaded frame,
    and sizes/crops apply to the upright picture."""
    path = _marked_clip(tmp_path / "clip.mp4", rotation=rotation, hflip=hflip, vflip=vflip)
    clip = load_reference_video(path)
    assert tuple(clip.frames.shape[1:3]) == size
    assert {_brightest_corner(f) for f in clip.frames} == {corner}
    assert clip.orientation == words and (words in clip.describe())
    resized = load_reference_video(path, custom_width=size[1] // 2)  # half the upright width, aspect kept
    assert tuple(resized.frames.shape[1:3]) == (size[0] // 2, size[1] // 2)
    assert {_brightest_corner(f) for f in resized.frames} == {corner}


@pytest.mark.parametrize(
    "selection, count, fps",
    [({}, 60, 30.0), ({"select_every_nth": 2}, 30, 15.0), ({"select_every_nth": 3, "frame_load_cap": 10}, 10, 10.0),
     ({"skip_first_frames": 20, "frame_load_cap": 14}, 14, 30.0)],
)
def test_the_clip_knows_the_rate_of_the_frames_it_kept(tmp_path, selection, count, fps):
    clip = load_reference_video(_marked_clip(tmp_path / "long.mp4", frames=60, rate=30), **selection)
    assert clip.frames.shape[0] == count and clip.fps == pytest.approx(fps) and clip.fps_known
    assert f"{fps:.3g} fps" in clip.describe()


def test_frames_for_inversion_spread_or_first_and_their_frame_rate():
    frames = torch.arange(30, dtype=torch.float32)[:, None, None, None].expand(30, 2, 2, 3) / 29
    clip = video.ReferenceClip(frames=frames, fps=15.0, source="x", sha256="")
    spread, spread_fps = video.frames_for_inversion(clip, 14, video.SAMPLINGS[0])
    assert spread[0, 0, 0, 0] == 0 and spread[-1, 0, 0, 0] == 1  # the whole clip
    assert spread_fps == pytest.approx(15.0 * 13 / 29)  # 29/15 s of motion in 13 steps
    first, first_fps = video.frames_for_inversion(clip, 14, video.SAMPLINGS[1])
    assert torch.equal(first, frames[:14]) and first_fps == 15.0
    with pytest.raises(ReferenceVideoError, match="only 10 frames but 14"):
        video.frames_for_inversion(dataclasses.replace(clip, frames=frames[:10]), 14, video.SAMPLINGS[1])


def test_sources_without_timing_say_their_rate_is_assumed(tmp_path):
    folder = tmp_path / "seq"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (i * 60,) * 3).save(folder / f"{i}.png")
    clip = load_reference_video(folder)
    assert not clip.fps_known and clip.fps == video.DEFAULT_FPS and "assumed" in clip.describe()
