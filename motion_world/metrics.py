"""Motion World metrics: measure a generated clip against the ideal transfer, from its frames alone.

Only the generated frames are known, plus the target's sprite colour (and the reference's, for leakage). The
sprite is found by colour: a soft per-pixel coverage estimate (alpha matting against a locally estimated
background), whose weighted centroid and sum give the centre and area. Pixel coordinates as in ``world``:
x right, y down, pixel (i, j) has its centre at (j + 0.5, i + 0.5).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

LEAKAGE_THRESHOLD = 0.2  # Euclidean RGB distance under which a pixel "matches" a sprite colour
MIN_STEP_PX = 0.5  # ideal per-step displacements shorter than this are ignored by direction_agreement


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy().astype(np.float64)
    return np.asarray(x, dtype=np.float64)


# The tracker works in numpy: on a small, busy CPU torch's intra-op threading costs far more than these tiny
# [T, 64, 64] operations themselves.


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """[T, H, W] bool -> Chebyshev dilation by ``radius`` pixels (separable running maximum)."""
    out = mask
    for axis in (1, 2):
        n = out.shape[axis]
        padded = np.zeros_like(out)
        for k in range(-radius, radius + 1):
            src = [slice(None)] * 3
            dst = [slice(None)] * 3
            src[axis] = slice(max(0, k), n + min(0, k))
            dst[axis] = slice(max(0, -k), n + min(0, -k))
            padded[tuple(dst)] |= out[tuple(src)]
        out = padded
    return out


def _gauss_matrix(n: int, sigma: float) -> np.ndarray:
    i = np.arange(n)
    d = i[:, None] - i[None, :]
    return np.exp(-0.5 * (d / sigma) ** 2) * (np.abs(d) <= math.ceil(4 * sigma))


def _local_linear_background(img: np.ndarray, ring: np.ndarray, sigma: float) -> np.ndarray:
    """Background colour at every pixel from the ``ring`` pixels: a Gaussian-weighted local LINEAR fit centred on
    the pixel (first-order normalized convolution), exact for a linear colour gradient. Falls back to the frame's
    mean ring colour where no ring pixel is near. img [T, H, W, 3], ring [T, H, W] bool -> [T, H, W, 3]."""
    t, h, w, _ = img.shape
    gh, gw = _gauss_matrix(h, sigma), _gauss_matrix(w, sigma)

    def blur(a):  # [T, H, W, C] -> same, Gaussian along H and W (zero outside); einsum avoids BLAS threads
        a = np.einsum("ij,tjwc->tiwc", gh, a)
        return np.einsum("kj,thjc->thkc", gw, a)

    y, x = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    r = ring.astype(np.float64)
    one, xs, ys = r, r * x, r * y
    # Moments and colour moments around each pixel p: sums of G(p - q) ring(q) [1, dx, dy] (x) [1, dx, dy] with
    # dx = x_q - x_p, from the blurred absolute moments.
    m = blur(np.stack([one, xs, ys, xs * x, xs * y, ys * y], axis=-1))
    c = blur(np.concatenate([one[..., None] * img, xs[..., None] * img, ys[..., None] * img], axis=-1))
    s0, sx, sy, sxx, sxy, syy = (m[..., i] for i in range(6))
    x, y = x[None], y[None]
    a00 = s0
    a01 = sx - x * s0
    a02 = sy - y * s0
    a11 = sxx - 2 * x * sx + x * x * s0
    a12 = sxy - x * sy - y * sx + x * y * s0
    a22 = syy - 2 * y * sy + y * y * s0
    b0 = c[..., 0:3]
    b1 = c[..., 3:6] - x[..., None] * b0
    b2 = c[..., 6:9] - y[..., None] * b0
    ridge = 1e-2 * s0  # damps the slopes only, so sparse / one-sided rings fall back towards a constant fit
    a11, a22 = a11 + ridge, a22 + ridge
    # Intercept = first row of the inverse of the symmetric 3x3 system times the right-hand side.
    c00 = a11 * a22 - a12 * a12
    c01 = a02 * a12 - a01 * a22
    c02 = a01 * a12 - a02 * a11
    det = a00 * c00 + a01 * c01 + a02 * c02
    bg = (c00[..., None] * b0 + c01[..., None] * b1 + c02[..., None] * b2) / np.where(np.abs(det) > 1e-300, det, 1.0)[..., None]
    mean = (r[..., None] * img).sum(axis=(1, 2)) / np.maximum(r.sum(axis=(1, 2)), 1.0)[:, None]
    far = (s0 < 1e-4) | (np.abs(det) <= 1e-12 * np.maximum(s0, 1e-300) ** 3)
    return np.where(far[..., None], mean[:, None, None, :], bg)


def sprite_alpha(
    frames,
    sprite_color,
    background=None,
    *,
    core_threshold: float = 0.25,
    region_radius: int = 3,
    ring_width: int = 3,
    sigma: float = 3.0,
    perp_tolerance: tuple[float, float] = (0.08, 0.2),
) -> np.ndarray:
    """Soft sprite coverage [T, H, W] in [0, 1] (numpy float64).

    Core pixels are those within ``core_threshold`` (Euclidean RGB) of ``sprite_color``; the sprite region is the
    core dilated by ``region_radius`` pixels (catching antialiased edges and thin tips). The background at each
    region pixel is ``background`` when given (a colour (3,), an image [H, W, 3] or frames [T, H, W, 3]),
    otherwise estimated from a ring of ``ring_width`` pixels around the region by a local linear fit. A pixel's
    coverage is its colour projected on the background -> sprite colour line, clipped to [0, 1], softly gated
    off when the pixel lies far from that line (other colours)."""
    img = _np(frames)
    if img.ndim == 3:
        img = img[None]
    s = _np(sprite_color).reshape(1, 1, 1, 3)
    core = np.linalg.norm(img - s, axis=-1) < core_threshold
    region = _dilate(core, region_radius)
    if background is None:
        ring = _dilate(region, ring_width) & ~region
        bg = np.zeros_like(img)
        for i in range(img.shape[0]):  # per frame, cropped to the ring's bounding box (it encloses the region)
            rows, cols = np.flatnonzero(ring[i].any(axis=1)), np.flatnonzero(ring[i].any(axis=0))
            if rows.size:
                box = (i, slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
                bg[box] = _local_linear_background(img[box][None], ring[box][None], sigma)[0]
    else:
        bg = np.broadcast_to(_np(background), img.shape)
    sb = s - bg
    alpha = np.clip((((img - bg) * sb).sum(-1) / np.maximum((sb * sb).sum(-1), 1e-6)), 0.0, 1.0)
    perp = np.linalg.norm(img - bg - alpha[..., None] * sb, axis=-1)
    lo, hi = perp_tolerance
    gate = np.clip((hi - perp) / (hi - lo), 0.0, 1.0)
    return alpha * gate * region


def track_sprite(frames, sprite_color, background=None, *, min_area: float = 0.5, **alpha_options) -> tuple[np.ndarray, np.ndarray]:
    """Locate the sprite of colour ``sprite_color`` in every frame of ``frames`` [T, H, W, 3].

    Returns (centers [T, 2] (x, y) pixels, areas [T] pixels), numpy float64: the centroid and sum of
    ``sprite_alpha``. A frame where the sprite is not found (area < ``min_area``) has NaN centre and area 0."""
    alpha = sprite_alpha(frames, sprite_color, background, **alpha_options)
    t, h, w = alpha.shape
    area = alpha.sum(axis=(1, 2))
    xs = np.arange(w) + 0.5
    ys = np.arange(h) + 0.5
    cx = (alpha.sum(axis=1) * xs).sum(axis=1) / np.maximum(area, 1e-12)
    cy = (alpha.sum(axis=2) * ys).sum(axis=1) / np.maximum(area, 1e-12)
    centers = np.stack([cx, cy], axis=1)
    lost = area < min_area
    centers[lost] = np.nan
    area = np.where(lost, 0.0, area)
    return centers, area


def trajectory_error(pred_centers, ideal_centers, *, lost_px: float | None = None) -> float:
    """Mean Euclidean error in pixels over frames 1..T-1 (frame 0 is given to the model). Lost frames (NaN
    centres) make the result NaN, or count as ``lost_px`` pixels when given."""
    pred, ideal = _np(pred_centers), _np(ideal_centers)
    err = np.linalg.norm(pred[1:] - ideal[1:], axis=1)
    if lost_px is not None:
        err = np.where(np.isnan(err), lost_px, err)
    return float(err.mean())


def direction_agreement(pred_centers, ideal_centers, *, min_step: float = MIN_STEP_PX) -> float:
    """Mean cosine similarity between predicted and ideal per-step displacements (c[t] - c[t-1]), over the steps
    whose ideal displacement is at least ``min_step`` pixels (still steps carry no direction and are skipped).
    A predicted step of length ~0 (or lost) scores 0. NaN when no ideal step moves (still, pulse)."""
    pred, ideal = np.diff(_np(pred_centers), axis=0), np.diff(_np(ideal_centers), axis=0)
    ni, npred = np.linalg.norm(ideal, axis=1), np.linalg.norm(pred, axis=1)
    keep = ni >= min_step
    if not keep.any():
        return float("nan")
    cos = (pred * ideal).sum(axis=1) / np.maximum(ni * npred, 1e-9)
    cos = np.where(np.isfinite(cos) & (npred > 1e-6), cos, 0.0)
    return float(cos[keep].mean())


def area_kept(pred_areas, ideal_area) -> float:
    """Per-frame pred_area / ideal_area clipped to [0, 1], averaged over frames. ``ideal_area`` is a number or
    per-frame [T] (scale changes); lost frames (NaN or 0 area) count 0."""
    pred = np.nan_to_num(_np(pred_areas), nan=0.0)
    ideal = np.broadcast_to(_np(ideal_area), pred.shape)
    return float(np.clip(pred / np.maximum(ideal, 1e-9), 0.0, 1.0).mean())


def leakage(frames, reference_sprite_color, target_sprite_color, *, threshold: float = LEAKAGE_THRESHOLD) -> float:
    """Appearance leakage: the fraction of pixels (all frames) within ``threshold`` (Euclidean RGB) of the
    reference sprite's colour and not within ``threshold`` of the target sprite's colour."""
    img = _np(frames)
    ref = np.linalg.norm(img - _np(reference_sprite_color), axis=-1) < threshold
    tgt = np.linalg.norm(img - _np(target_sprite_color), axis=-1) < threshold
    return float((ref & ~tgt).mean())


def evaluate_transfer(frames, ideal, reference_sprite_color=None) -> dict:
    """All metrics of generated ``frames`` against ``ideal`` (a ``world.Clip``: the target scene rendered with the
    reference motion). Tracks with the target's sprite colour only (no ground truth of ``frames``)."""
    centers, areas = track_sprite(frames, ideal.sprite_color)
    out = {
        "trajectory_error_px": trajectory_error(centers, ideal.centers),
        "direction_agreement": direction_agreement(centers, ideal.centers),
        "area_kept": area_kept(areas, ideal.areas),
        "lost_frames": int(np.isnan(centers[:, 0]).sum()),
    }
    if reference_sprite_color is not None:
        out["leakage"] = leakage(frames, reference_sprite_color, ideal.sprite_color)
    return out


def strip(frames_list: Sequence, labels: Sequence[str] | None, path, *, zoom: int = 2, label_width: int = 200) -> str:
    """Write a PNG: one row per clip ([T, H, W, 3] in [0, 1], torch or numpy), one column per frame, the label at
    the left of each row. Returns the path."""
    from PIL import Image, ImageDraw

    clips = [np.clip(_np(f), 0.0, 1.0) for f in frames_list]
    labels = list(labels) if labels is not None else [""] * len(clips)
    h = max(c.shape[1] for c in clips) * zoom
    w = max(c.shape[2] for c in clips) * zoom
    cols = max(c.shape[0] for c in clips)
    pad = 2
    lw = label_width if any(labels) else 0
    canvas = Image.new("RGB", (lw + cols * (w + pad), len(clips) * (h + pad)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, (clip, label) in enumerate(zip(clips, labels, strict=True)):
        y = r * (h + pad)
        for c, frame in enumerate(clip):
            im = Image.fromarray((frame * 255 + 0.5).astype(np.uint8)).resize((frame.shape[1] * zoom, frame.shape[0] * zoom), Image.NEAREST)
            canvas.paste(im, (lw + c * (w + pad), y))
        if lw:
            draw.text((4, y + h // 2 - 6), str(label), fill=(0, 0, 0))
    canvas.save(path)
    return str(path)
