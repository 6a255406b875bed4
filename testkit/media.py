"""Small synthetic media for tests and the demo, and writing frames to a video file (PyAV)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from reenact_core.video import encode_video, mp4_codec


def write_video(frames: torch.Tensor | np.ndarray, path: str | Path, fps: float = 8.0, lossless: bool = False) -> Path:
    """[T, H, W, 3] floats in [0, 1] (or uint8) -> H.264 MP4 (MPEG-4 where x264 is missing).

    ``lossless``: H.264 at qp 0 in full-resolution colour (yuv444p), for reference clips whose exact
    colours matter; browsers may not preview it, but every decoder reads it."""
    array = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    path = Path(path)
    codec = mp4_codec()
    lossless = lossless and codec == "libx264"
    encode_video(
        array, path, codec, int(round(fps)), pix_fmt="yuv444p" if lossless else "yuv420p", options={"qp": "0"} if lossless else None
    )
    return path


def moving_square_frames(frames: int = 8, size: int = 64, step: int = 6, color=(255, 255, 255)) -> np.ndarray:
    """A square moving right over a grey gradient: [T, size, size, 3] uint8."""
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    side = size // 4
    for i in range(frames):
        img = np.tile(np.linspace(40, 160, size, dtype=np.uint8)[None, :, None], (size, 1, 3))
        x = min(size - side, size // 16 + step * i)
        top = size // 3
        img[top : top + side, x : x + side] = color
        out[i] = img
    return out


def target_image(size: int = 64, seed: int = 0) -> torch.Tensor:
    """A different scene to animate: a coloured disc on a textured background, IMAGE [1, H, W, 3]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    background = 0.3 + 0.1 * torch.rand(size, size, 3, generator=g)
    disc = ((xx + 0.4) ** 2 + yy**2 < 0.12).float()[..., None]
    color = torch.tensor([0.9, 0.3, 0.1])
    return (background * (1 - disc) + color * disc)[None].clamp(0, 1)


def write_black_png(path: str | Path, width: int, height: int) -> Path:
    """A valid all-black RGB PNG of any size, written row by row without holding its pixels (a 8000x6000
    image is ~150 KB): for memory-guard tests."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row = zlib.compressobj(1), bytes(1 + 3 * width)  # filter byte 0, then the row's pixels
    path = Path(path)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)))
        f.write(chunk(b"IDAT", b"".join(packer.compress(row) for _ in range(height)) + packer.flush()))
        f.write(chunk(b"IEND", b""))
    return path
