"""Loading the reference video whose motion is learned, and shaping its frames for the model.

Frames are float32 tensors ``[T, H, W, 3]`` in ``[0, 1]`` on the CPU (ComfyUI's IMAGE layout).

Decoding:

* Videos (mp4, webm, mov, mkv, gif, and anything else FFmpeg can open) go through PyAV.
* Still images and the animated formats FFmpeg reads poorly (animated WebP: FFmpeg's webp decoder
  rejects it; APNG) go through Pillow: files ending in .png/.jpg/.jpeg/.webp/.bmp, and directories
  of such files (an image sequence, natural sort order: ``frame_2`` before ``frame_10``; other
  and hidden files are ignored; each file is one frame).

Choices worth knowing:

* Selection (``skip_first_frames``, ``select_every_nth``, ``frame_load_cap``; the names and meaning
  of VideoHelperSuite's Load Video) counts decoded frames in presentation order and ignores
  timestamps, so a variable-frame-rate video is treated as its sequence of frames. The reported fps
  is the source's *average* rate divided by ``select_every_nth``, i.e. the rate of the returned frames.
* Alpha is composited over black (transparent areas often hold garbage colour; black is a neutral
  background for a motion reference). Grayscale and palette sources are converted to RGB.
* Rotation metadata of videos (display matrix) and non-square pixels are ignored: frames come out
  as stored. EXIF orientation of still images is applied.
* Every frame is resized as soon as it is decoded, so the full-resolution clip is never held, and
  the output size is checked against a memory budget before decoding (and again while decoding,
  because container metadata can be missing or wrong).
* Every failure raises :class:`ReferenceVideoError` saying what is wrong and what to do.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import re
import struct
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, ImageSequence

if TYPE_CHECKING:
    import av

log = logging.getLogger(__name__)

DEFAULT_FPS = 8.0  # for sources without timing (stills, image sequences)
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
REEXPORT_HINT = "re-export it as H.264 MP4 (or a folder of PNG frames)"
_SELECTION_HINT = "lower frame_load_cap, raise select_every_nth or set custom_width/custom_height"


class ReferenceVideoError(ValueError):
    """The reference video (or IMAGE batch) cannot be used; the message says why and what to do."""


@dataclass
class ReferenceClip:
    frames: torch.Tensor  # [T, H, W, 3] float32 in [0, 1], CPU
    fps: float  # rate of the returned frames (the source's rate divided by select_every_nth)
    source: str  # absolute path, or a description such as "IMAGE batch"
    sha256: str  # of the source bytes (file / concatenated sequence files) or of `frames`
    orientation: str = ""  # what was done to show the clip as its file says it is seen ("" = nothing)
    fps_known: bool = True  # False: the source has no timing (stills, sequences, IMAGE batches) and fps is assumed

    def describe(self) -> str:
        """One line for the node's text: frames, size, frame rate, orientation."""
        t, h, w = self.frames.shape[:3]
        rate = f"{self.fps:.3g} fps" if self.fps_known else f"{self.fps:.3g} fps (assumed: the source has no timing)"
        text = f"{t} frames of {w}x{h} at {rate}, {t / self.fps:.2f} s"
        return text + (f"; {self.orientation}" if self.orientation else "")


SAMPLINGS = ("spread over the clip", "first frames at the clip's rate")


def frames_for_inversion(clip: ReferenceClip, num_frames: int, sampling: str = SAMPLINGS[0]) -> tuple[torch.Tensor, float]:
    """The ``num_frames`` frames the inversion learns from, and the frame rate they have.

    "spread over the clip" picks them evenly over the whole clip (first and last included): the whole motion, at a
    lower frame rate than filmed when the clip is longer than ``num_frames``. "first frames at the clip's rate"
    takes the first ``num_frames`` frames as they are: a short motion at its own frame rate."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"frame sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if sampling == SAMPLINGS[1]:
        frames = resample_frames(clip.frames[:num_frames], num_frames)  # same checks: enough frames, more than one
        return frames, clip.fps
    frames = resample_frames(clip.frames, num_frames)
    total = clip.frames.shape[0]
    # The same duration, (total - 1) / fps seconds, in num_frames - 1 steps.
    return frames, clip.fps * (num_frames - 1) / (total - 1) if total > 1 else clip.fps


# --------------------------------------------------------------------------------------------------
# Public API


def load_reference_video(
    path: str | os.PathLike,
    *,
    skip_first_frames: int = 0,
    select_every_nth: int = 1,
    frame_load_cap: int = 0,
    custom_width: int = 0,
    custom_height: int = 0,
    memory_budget_bytes: int = 4 * 2**30,
) -> ReferenceClip:
    """Decode a video file, animated/still image or image directory into a :class:`ReferenceClip`.

    Skips the first ``skip_first_frames`` decoded frames, then keeps every ``select_every_nth``,
    stopping after ``frame_load_cap`` kept frames (0 = no cap). ``custom_width``/``custom_height``:
    both 0 keeps the source size, one 0 keeps the aspect ratio, both set resizes and centre-crops
    ("cover") to exactly that size. The hash covers the source bytes only, not these settings.
    """
    sel = _Selection(
        skip=_check_int("skip_first_frames", skip_first_frames, 0),
        nth=_check_int("select_every_nth", select_every_nth, 1),
        cap=_check_int("frame_load_cap", frame_load_cap, 0),
    )
    size = _SizeRule(
        _check_int("custom_width", custom_width, 0), _check_int("custom_height", custom_height, 0)
    )
    budget = _check_int("memory_budget_bytes", memory_budget_bytes, 1)
    p = _resolve(path)
    try:
        if p.is_dir():
            files = _sequence_files(p)
            frames, rate, orientation = _load_sequence(p, files, sel, size, budget)
        else:
            files = [p]
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                frames, rate, orientation = _load_image_file(p, sel, size, budget)
            else:
                frames, rate, orientation = _load_with_pyav(p, sel, size, budget)
        digest = _sha256_files(files)
    except ReferenceVideoError:
        raise
    except PermissionError as e:
        raise ReferenceVideoError(
            f"{p}: cannot be read ({_describe(e)}); check the file's permissions"
        ) from e
    except MemoryError as e:
        raise ReferenceVideoError(f"{p}: ran out of memory while loading; {_SELECTION_HINT}") from e
    except (*_ffmpeg_errors(), OSError, EOFError) as e:
        raise ReferenceVideoError(
            f"{p}: could not be read as a video ({_describe(e)}); the file may be corrupt, "
            f"truncated or not a video: {REEXPORT_HINT}"
        ) from e
    # The rate of the returned frames: every nth of the source's (sources without timing: DEFAULT_FPS assumed).
    fps = (rate or DEFAULT_FPS) / sel.nth
    return ReferenceClip(frames=frames, fps=fps, source=str(p), sha256=digest, orientation=orientation, fps_known=rate is not None)


def clip_from_images(
    images: torch.Tensor, fps: float = DEFAULT_FPS, source: str = "IMAGE batch", fps_known: bool = False
) -> ReferenceClip:
    """Validate an IMAGE batch ``[T, H, W, C]`` from another node and wrap it as a clip.

    C=1 is repeated to RGB, C=4 loses its alpha; uint8 is scaled by 1/255; values are clamped.
    """
    if (
        isinstance(fps, bool)
        or not isinstance(fps, (int, float))
        or not (math.isfinite(fps) and fps > 0)
    ):
        raise ReferenceVideoError(f"{source}: fps must be a positive number, got {fps!r}")
    expected = (
        "expected an IMAGE batch: a torch tensor [frames, height, width, 3] with values in [0, 1]"
    )
    if not isinstance(images, torch.Tensor):
        raise ReferenceVideoError(
            f"{source}: got a {type(images).__name__}, {expected}; connect an IMAGE output "
            "(e.g. Load Image or a video loader)"
        )
    shape = tuple(images.shape)
    if images.ndim != 4:
        raise ReferenceVideoError(
            f"{source}: got a tensor of shape {shape} ({images.ndim} dimensions), {expected}"
        )
    t, h, w, c = shape
    if c not in (1, 3, 4):
        hint = ""
        if h in (1, 3, 4):
            hint = "; it looks channels-first [T, C, H, W]: permute it to [T, H, W, C]"
        raise ReferenceVideoError(
            f"{source}: got shape {shape} with {c} channels, {expected} (1 or 4 channels are also "
            f"accepted){hint}"
        )
    if t < 1 or h < 1 or w < 1:
        raise ReferenceVideoError(
            f"{source}: got shape {shape}, which holds no pixels; {expected} with at least one frame"
        )
    if images.dtype == torch.uint8:
        x = images.detach().cpu().to(torch.float32) / 255.0
    elif images.is_floating_point():
        x = images.detach().cpu().to(torch.float32)
        if not bool(torch.isfinite(x).all()):
            raise ReferenceVideoError(
                f"{source}: contains NaN or infinite values; check the node that produced it "
                "(e.g. a VAE decode in the wrong precision)"
            )
    else:
        raise ReferenceVideoError(
            f"{source}: got dtype {images.dtype}, expected float (values in [0, 1]) or uint8 (0-255)"
        )
    if c == 1:
        x = x.expand(t, h, w, 3)
    elif c == 4:
        x = x[..., :3]
    x = x.clamp(0.0, 1.0).contiguous()
    return ReferenceClip(
        frames=x, fps=float(fps), source=source, sha256=hashlib.sha256(x.numpy()).hexdigest(), fps_known=fps_known
    )


def select_and_resize(
    clip: ReferenceClip,
    *,
    skip_first_frames: int = 0,
    select_every_nth: int = 1,
    frame_load_cap: int = 0,
    custom_width: int = 0,
    custom_height: int = 0,
) -> ReferenceClip:
    """The selection and size settings of :func:`load_reference_video`, applied to a decoded clip
    (an IMAGE batch from another node), with the same meaning."""
    sel = _Selection(
        skip=_check_int("skip_first_frames", skip_first_frames, 0),
        nth=_check_int("select_every_nth", select_every_nth, 1),
        cap=_check_int("frame_load_cap", frame_load_cap, 0),
    )
    size = _SizeRule(
        _check_int("custom_width", custom_width, 0), _check_int("custom_height", custom_height, 0)
    )
    total = clip.frames.shape[0]
    keep = [i for i in range(total) if sel.keeps(i)][: sel.count(total)]
    if not keep:
        raise ReferenceVideoError(
            f"{clip.source}: all {total} frames were skipped by the selection "
            f"(skip_first_frames={sel.skip}, select_every_nth={sel.nth}); lower skip_first_frames"
        )
    frames = clip.frames[keep]
    width, height = size.output(frames.shape[2], frames.shape[1])
    if (width, height) != (frames.shape[2], frames.shape[1]):
        frames = fit_frames(frames, width, height)
    return dataclasses.replace(clip, frames=frames, fps=clip.fps / sel.nth)


def resample_frames(frames: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Pick ``num_frames`` frames evenly spaced over the whole clip (first and last included).

    A clip with fewer frames than needed is an error, not repeated frames: repeating would silently
    teach a slower, jerkier motion than the reference shows. One frame has no motion at all.
    """
    _check_frames(frames, "resample_frames")
    n = _check_int("num_frames", num_frames, 1)
    t = frames.shape[0]
    if t == 1 and n > 1:
        raise ReferenceVideoError(
            f"the reference has only 1 frame, and a single image has no motion to learn: load a video "
            f"(or a folder of frames) with at least {n} frames"
        )
    if t < n:
        raise ReferenceVideoError(
            f"the reference has only {t} frames but {n} are needed: load more frames "
            "(frame_load_cap / select_every_nth) or lower video_frames"
        )
    index = torch.linspace(0, t - 1, n, dtype=torch.float64).round().long()
    return frames[index]


def fit_frames(frames: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Resize preserving the aspect ratio until the frame covers ``height x width``, then crop the
    centre: exactly ``[T, height, width, C]``, antialiased bilinear, float32 clamped to [0, 1]."""
    _check_frames(frames, "fit_frames")
    width = _check_int("width", width, 1)
    height = _check_int("height", height, 1)
    t, h, w, c = frames.shape
    scale = max(height / h, width / w)
    # max() guards against rounding just below the target on one side.
    rh, rw = max(height, round(h * scale)), max(width, round(w * scale))
    top, left = (rh - height) // 2, (rw - width) // 2
    out = torch.empty((t, height, width, c), dtype=torch.float32)
    for start in range(0, t, 16):  # chunks bound the temporary [n, C, rh, rw] copies
        x = frames[start : start + 16].to(torch.float32).permute(0, 3, 1, 2)
        if (rh, rw) != (h, w):
            x = F.interpolate(
                x, size=(rh, rw), mode="bilinear", antialias=True, align_corners=False
            )
        out[start : start + 16] = x[:, :, top : top + height, left : left + width].permute(
            0, 2, 3, 1
        )
    return out.clamp_(0.0, 1.0)


def pyav():
    """PyAV, imported where a video is decoded or written: the pack, stills and PNG sequences work without it."""
    try:
        import av
    except ImportError as e:
        raise ReferenceVideoError(
            "reading or writing video files needs PyAV: install the pack's requirements (pip install av), "
            "or use a still image or a folder of PNG frames"
        ) from e
    return av


def _ffmpeg_errors() -> tuple[type[BaseException], ...]:
    """PyAV's error class where PyAV is loaded (it is, once a video was opened), for except clauses."""
    av = sys.modules.get("av")
    return (av.error.FFmpegError,) if av is not None else ()


def mp4_codec() -> str:
    """H.264 where this PyAV build has x264, else MPEG-4 Part 2 (always built in)."""
    return "libx264" if "libx264" in pyav().codecs_available else "mpeg4"


def encode_video(
    frames: np.ndarray, path: str | os.PathLike, codec: str, rate, *, pix_fmt: str = "yuv420p", options: dict | None = None, container_format: str | None = None
) -> None:
    """Encode uint8 frames [T, H, W, 3] with PyAV. Odd sizes are padded by one edge pixel (yuv420p
    needs even sizes)."""
    av = pyav()
    height, width = frames.shape[1:3]
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate, options=options or {})
        stream.width, stream.height = width + width % 2, height + height % 2
        stream.pix_fmt = pix_fmt
        for frame in frames:
            if frame.shape[:2] != (stream.height, stream.width):
                frame = np.pad(frame, ((0, stream.height - height), (0, stream.width - width), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# --------------------------------------------------------------------------------------------------
# Selection, sizing, memory


@dataclass(frozen=True)
class _Selection:
    skip: int
    nth: int
    cap: int

    def keeps(self, index: int) -> bool:
        return index >= self.skip and (index - self.skip) % self.nth == 0

    def full(self, kept: int) -> bool:
        return self.cap > 0 and kept >= self.cap

    def count(self, total: int) -> int:
        """How many of `total` decoded frames are kept."""
        n = max(0, -(-(total - self.skip) // self.nth))
        return min(n, self.cap) if self.cap else n


@dataclass(frozen=True)
class _SizeRule:
    width: int
    height: int

    def output(self, src_w: int, src_h: int) -> tuple[int, int]:
        """(width, height) of the returned frames for a `src_w x src_h` source."""
        if self.width and self.height:
            return self.width, self.height
        if self.width:
            return self.width, max(1, round(src_h * self.width / src_w))
        if self.height:
            return max(1, round(src_w * self.height / src_h)), self.height
        return src_w, src_h


def _check_budget(
    source: Path, frames: int, size: tuple[int, int], budget: int, *, while_decoding: bool
) -> None:
    w, h = size
    need = frames * h * w * 3 * 4  # float32 RGB
    if need <= budget:
        return
    what = (
        f"already holds {frames} frames at {w}×{h} while decoding (the length was unknown or "
        f"under-reported before decoding), which needs {_fmt_bytes(need)}"
        if while_decoding
        else f"would need {_fmt_bytes(need)} to hold {frames} frames at {w}×{h}"
    )
    raise ReferenceVideoError(
        f"{source}: {what}, more than the memory budget of {_fmt_bytes(budget)}; {_SELECTION_HINT}"
    )


def _collect(
    items: Iterable,
    to_rgb: Callable[[object], np.ndarray],
    sel: _Selection,
    size: _SizeRule,
    budget: int,
    source: Path,
) -> tuple[list[np.ndarray], int]:
    """Apply the selection to decoded `items`, converting and resizing only the kept ones.

    Returns the kept frames (uint8 [H, W, 3]; a quarter of the float size while loading) and how
    many items were seen. The first kept frame fixes the output size; later frames of another size
    (mixed-size sequences, mid-stream resolution changes) are fitted to it by cover-crop."""
    kept: list[np.ndarray] = []
    seen = 0
    out_size: tuple[int, int] | None = None
    for item in items:
        index, seen = seen, seen + 1
        if not sel.keeps(index):
            continue
        rgb = to_rgb(item)
        if out_size is None:
            out_size = size.output(rgb.shape[1], rgb.shape[0])
        _check_budget(source, len(kept) + 1, out_size, budget, while_decoding=True)
        kept.append(_fit_uint8(rgb, out_size))
        if sel.full(len(kept)):
            break
    return kept, seen


def _fit_uint8(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    w, h = size
    if rgb.shape[:2] == (h, w):
        return rgb
    x = torch.from_numpy(rgb)[None].to(torch.float32).div_(255.0)
    return fit_frames(x, w, h)[0].mul_(255.0).round_().to(torch.uint8).numpy()


def _to_tensor(kept: list[np.ndarray]) -> torch.Tensor:
    h, w, _ = kept[0].shape
    out = torch.empty((len(kept), h, w, 3), dtype=torch.float32)
    for i in range(len(kept)):
        out[i] = torch.from_numpy(kept[i])
        kept[i] = None  # free the uint8 copy as we go: peak stays near the float size
    return out.div_(255.0)


def _finish(kept: list[np.ndarray], seen: int, sel: _Selection, source: Path) -> torch.Tensor:
    if not kept:
        raise ReferenceVideoError(
            f"{source}: has {seen} frame(s) and skip_first_frames={sel.skip} skips them all; "
            f"set skip_first_frames below {seen}"
        )
    return _to_tensor(kept)


# --------------------------------------------------------------------------------------------------
# PyAV (videos, gif)


def _load_with_pyav(
    p: Path, sel: _Selection, size: _SizeRule, budget: int
) -> tuple[torch.Tensor, float | None, str]:
    """Frames shown upright as the file's display matrix says, the source's frame rate (None: no timing),
    and what was done to orient them."""
    av = pyav()
    try:
        # Local files only: a playlist-like file (HLS, concat...) must never make FFmpeg fetch URLs.
        container = av.open(
            str(p), mode="r", metadata_errors="ignore", container_options={"protocol_whitelist": "file"}
        )
    except av.error.FFmpegError as e:
        raise ReferenceVideoError(
            f"{p}: could not be opened as a video ({_describe(e)}); it may be corrupt, truncated or "
            f"not a video at all: {REEXPORT_HINT}"
        ) from e
    with container:
        if not container.streams.video:
            raise ReferenceVideoError(
                f"{p}: contains no video stream (audio only or not a video); choose a video file"
            )
        stream = container.streams.best("video") or container.streams.video[0]
        if stream.codec_context is None:
            raise ReferenceVideoError(
                f"{p}: its video stream uses a codec this PyAV/FFmpeg build cannot decode; "
                f"{REEXPORT_HINT}"
            )
        stream.thread_type = "AUTO"
        ctx = stream.codec_context
        if ctx.width and ctx.height:  # metadata-based check, before any decoding
            total = _estimate_frame_count(container, stream)
            estimate = sel.count(total) if total is not None else 1
            _check_budget(
                p,
                max(1, estimate),
                size.output(ctx.width, ctx.height),
                budget,
                while_decoding=False,
            )
        stats = _DecodeStats()
        oriented = _DisplayOrientation()
        kept, seen = _collect(
            _decoded_av_frames(container, stream, p, stats), oriented, sel, size, budget, p
        )
        if seen == 0:
            detail = (
                f" ({stats.bad_packets} damaged packets; {stats.first_error})"
                if stats.bad_packets
                else ""
            )
            raise ReferenceVideoError(f"{p}: has 0 decodable frames{detail}; {REEXPORT_HINT}")
        if stats.bad_packets:
            log.warning(
                "%s: skipped %d undecodable packets (%s)", p, stats.bad_packets, stats.first_error
            )
        frames = _finish(kept, seen, sel, p)
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate and float(rate) > 0 else stats.measured_fps()
    return frames, fps, oriented.description


class _DecodeStats:
    def __init__(self) -> None:
        self.decoded = 0
        self.bad_packets = 0
        self.first_error = ""
        self.times: list[float] = []  # presentation times (s), for sources without a rate

    def measured_fps(self) -> float | None:
        if len(self.times) < 2 or self.times[-1] <= self.times[0]:
            return None
        return (len(self.times) - 1) / (self.times[-1] - self.times[0])


def _estimate_frame_count(
    container: av.container.InputContainer, stream: av.VideoStream
) -> int | None:
    """Frame count from metadata: exact for mp4/mov, duration × rate for mkv/webm, else None."""
    av = pyav()
    if stream.frames:
        return stream.frames
    rate = stream.average_rate or stream.guessed_rate
    if stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration:
        seconds = container.duration / av.time_base
    else:
        return None
    return max(1, round(seconds * float(rate))) if rate and seconds > 0 else None


def _decoded_av_frames(
    container: av.container.InputContainer, stream: av.VideoStream, p: Path, stats: _DecodeStats
) -> Iterator[av.VideoFrame]:
    """Decoded frames in presentation order. Damaged packets are skipped (as players do) and a
    container that breaks part-way ends the clip there; both are counted or logged."""
    av = pyav()
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.FFmpegError as e:
            if stats.decoded:  # some frames came out: keep them, the tail is lost
                log.warning("%s: stopped reading after a container error (%s)", p, _describe(e))
                return
            raise
        try:
            frames = packet.decode()
        except av.error.FFmpegError as e:
            stats.bad_packets += 1
            stats.first_error = stats.first_error or _describe(e)
            continue
        for frame in frames:
            stats.decoded += 1
            if frame.time is not None:
                stats.times.append(frame.time)
            yield frame


class _DisplayOrientation:
    """Decoded frame -> RGB as the file says it is shown. Phones store portrait clips as landscape frames with
    a display matrix (rotation, sometimes a mirror); players apply it, so a clip learned without it moves
    sideways ("up" becomes "left"). Frame by frame (the matrix is per frame side data in FFmpeg 6+; older
    PyAV only gives ``frame.rotation``); ``description`` says what was done to the first frame."""

    def __init__(self) -> None:
        self.description: str | None = None

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        rgb = _av_frame_to_rgb(frame)
        matrix = _display_matrix(frame)
        if matrix is not None:
            rgb, description = _apply_display_matrix(rgb, matrix)
        else:  # older PyAV: the angle only (counter-clockwise degrees, as FFmpeg's av_display_rotation_get)
            quarter = round(float(getattr(frame, "rotation", 0) or 0) / 90) % 4
            rgb, description = np.rot90(rgb, quarter), _ROTATIONS[quarter]
        if self.description is None:
            self.description = description
        return np.ascontiguousarray(rgb)


_ROTATIONS = ("", "rotated 90° counter-clockwise", "rotated 180°", "rotated 90° clockwise")  # quarter turns ccw


def _display_matrix(frame) -> tuple[int, ...] | None:
    for data in getattr(frame, "side_data", None) or ():
        if "DISPLAYMATRIX" in str(getattr(data, "type", "")):
            raw = bytes(data)
            if len(raw) == 36:
                return struct.unpack("<9i", raw)
    return None


def _apply_display_matrix(rgb: np.ndarray, matrix: tuple[int, ...]) -> tuple[np.ndarray, str]:
    """FFmpeg's display matrix maps a source pixel (p, q) to p' = a*p + c*q, q' = b*p + d*q (16.16 fixed
    point, plus a translation). Right-angle rotations and mirrors are exact index operations; other angles
    are left alone (no phone writes them)."""
    a, b, c, d = (0 if abs(v) < 0x8000 else (1 if v > 0 else -1) for v in (matrix[0], matrix[1], matrix[3], matrix[4]))
    if b == c == 0 and a and d:

        def transform(x):  # rows follow q' = d*q, columns p' = a*p
            return x[:: -1 if d < 0 else 1, :: -1 if a < 0 else 1]

    elif a == d == 0 and b and c:

        def transform(x):  # rows follow q' = b*p, columns p' = c*q: the axes swap
            return x.swapaxes(0, 1)[:: -1 if b < 0 else 1, :: -1 if c < 0 else 1]

    else:
        return rgb, ""
    return transform(rgb), _describe_transform(transform)


def _describe_transform(transform) -> str:
    """Name a right-angle transform by what it does to a small asymmetric pattern."""
    probe = np.arange(6).reshape(2, 3)
    moved = transform(probe)
    if np.array_equal(moved, probe[::-1]):
        return "flipped upside down"
    for quarter in range(4):
        for mirror in (False, True):
            candidate = np.rot90(probe, quarter)
            candidate = candidate[:, ::-1] if mirror else candidate
            if candidate.shape == moved.shape and np.array_equal(candidate, moved):
                return ", then ".join(([_ROTATIONS[quarter]] if quarter else []) + (["mirrored left-right"] if mirror else []))
    return "re-oriented"


def _av_frame_to_rgb(frame: av.VideoFrame) -> np.ndarray:
    fmt = frame.format
    # pal8 carries alpha in its palette (gif, png) without flagging an alpha component.
    if fmt.name == "pal8" or any(c.is_alpha for c in fmt.components):
        return _over_black(frame.to_ndarray(format="rgba"))
    return frame.to_ndarray(format="rgb24")


# --------------------------------------------------------------------------------------------------
# Pillow (still images, animated webp/png, image sequences)


def _load_image_file(
    p: Path, sel: _Selection, size: _SizeRule, budget: int
) -> tuple[torch.Tensor, float | None, str]:
    img = _open_image(p)
    with img:
        n = getattr(img, "n_frames", 1)
        _check_budget(p, max(1, sel.count(n)), size.output(*img.size), budget, while_decoding=False)
        durations: list[float] = []

        def frames() -> Iterator[Image.Image]:
            for frame in ImageSequence.Iterator(img):
                try:
                    frame.load()
                except Exception as e:  # Pillow raises many types on bad data
                    raise _bad_image(p, e) from e
                if frame.info.get("duration"):
                    durations.append(float(frame.info["duration"]))
                yield frame

        kept, seen = _collect(frames(), lambda im: _pil_to_rgb(im, p), sel, size, budget, p)
        result = _finish(kept, seen, sel, p)
        exif = _orientation(img)
    fps = 1000.0 / (sum(durations) / len(durations)) if durations and n > 1 else None
    return result, fps, f"turned upright by its EXIF orientation ({exif})" if exif != 1 else ""


def _sequence_files(d: Path) -> list[Path]:
    # Hidden files are skipped: macOS leaves "._frame_001.png" resource forks next to real frames.
    files = [
        f
        for f in d.iterdir()
        if f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".") and f.is_file()
    ]
    if not files:
        raise ReferenceVideoError(
            f"{d}: the directory contains no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
            "point at a video file or a folder of numbered frames"
        )
    return sorted(files, key=lambda f: _natural_key(f.name))


def _load_sequence(
    d: Path, files: list[Path], sel: _Selection, size: _SizeRule, budget: int
) -> tuple[torch.Tensor, None, str]:
    """Each file is one frame (the first frame of an animated file); selection is by file order."""
    count = sel.count(len(files))
    if count:  # header-only read of the first kept file gives the size
        first = files[sel.skip]
        with _open_image(first) as img:
            src = _header_size(img)
        _check_budget(d, count, size.output(*src), budget, while_decoding=False)
    kept, seen = _collect(files, _read_still, sel, size, budget, d)
    return _finish(kept, seen, sel, d), None, ""


def _read_still(f: Path) -> np.ndarray:
    with _open_image(f) as img:
        try:
            img.load()
        except Exception as e:  # Pillow raises many types on bad data
            raise _bad_image(f, e) from e
        return _pil_to_rgb(img, f)


def _open_image(f: Path) -> Image.Image:
    if f.stat().st_size == 0:
        raise ReferenceVideoError(f"{f}: the file is empty (0 bytes); re-export or re-copy it")
    try:
        return Image.open(f)
    except Image.DecompressionBombError as e:
        raise ReferenceVideoError(
            f"{f}: the image is too large to decode safely ({e}); save the frames at a smaller size"
        ) from e
    except Exception as e:
        raise _bad_image(f, e) from e


def _header_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) as displayed, from the file's header alone (no pixel is decoded): EXIF
    orientations 5-8 swap them. A PNG's EXIF chunk may follow the pixels, and Pillow decodes the whole
    image to find it; only an EXIF block read with the header is used then."""
    if img.format == "PNG" and "exif" not in img.info:
        return img.size
    return img.size[::-1] if _orientation(img) in (5, 6, 7, 8) else img.size


def _orientation(img: Image.Image) -> int:
    try:
        return img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block just means "no rotation"
        return 1


def _has_rotation(img: Image.Image) -> bool:
    return _orientation(img) != 1  # EXIF Orientation


def _pil_to_rgb(img: Image.Image, f: Path) -> np.ndarray:
    try:
        if _has_rotation(img):
            img = ImageOps.exif_transpose(img)
        if img.mode.startswith("I;16") or img.mode == "I":
            # 16-bit grayscale; Pillow's convert("RGB") would clip it to 0..255.
            g = np.clip(np.asarray(img, dtype=np.float32) / 257.0, 0, 255).round().astype(np.uint8)
            return np.repeat(g[:, :, None], 3, axis=2)
        # np.array (a copy): np.asarray of a Pillow image is read-only, which torch warns about.
        if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
            return _over_black(np.array(img.convert("RGBA")))
        return np.array(img.convert("RGB"))
    except ReferenceVideoError:
        raise
    except Exception as e:
        raise _bad_image(f, e) from e


def _bad_image(f: Path, e: Exception) -> ReferenceVideoError:
    return ReferenceVideoError(
        f"{f}: could not be decoded as an image ({_describe(e)}); the file may be corrupt or "
        "truncated: re-export it (PNG is safest)"
    )


# --------------------------------------------------------------------------------------------------
# Small helpers


def _over_black(rgba: np.ndarray) -> np.ndarray:
    a = rgba[:, :, 3:4].astype(np.uint16)
    return ((rgba[:, :, :3].astype(np.uint16) * a + 127) // 255).astype(np.uint8)


def _resolve(path: str | os.PathLike) -> Path:
    if isinstance(path, str):
        path = path.strip().strip("\"'")  # pasted paths often carry quotes
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ReferenceVideoError(f"no reference video path given (got {path!r}); set the path")
    p = Path(os.path.expanduser(os.fspath(path))).absolute()
    if not p.exists():
        raise ReferenceVideoError(
            f"{p}: not found; check the path (relative paths start at {Path.cwd()})"
        )
    if not (p.is_file() or p.is_dir()):
        raise ReferenceVideoError(f"{p}: is not a regular file or directory; choose a video file")
    if p.is_file() and p.stat().st_size == 0:
        raise ReferenceVideoError(f"{p}: the file is empty (0 bytes); re-export or re-copy it")
    return p


def _sha256_files(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ReferenceVideoError(f"{name} must be a whole number ≥ {minimum}, got {value!r}")
    return int(value)


def _check_frames(frames: object, where: str) -> None:
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or 0 in frames.shape:
        got = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise ReferenceVideoError(
            f"{where}: expected frames [T, H, W, 3] with T, H, W ≥ 1, got {got}"
        )


def _fmt_bytes(n: int) -> str:
    for unit, size in (("GB", 2**30), ("MB", 2**20), ("kB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".rstrip(": ")
