"""The loss curve as a picture (Pillow only), for the node's IMAGE output and live preview."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw

BACKGROUND = (24, 24, 28)
AXIS = (110, 110, 120)
RAW = (70, 90, 140)
SMOOTH = (120, 200, 255)
TEXT = (230, 230, 235)
DRIFT = (255, 170, 60)


def render_loss_curve(
    history: list[float],
    total_steps: int | None = None,
    title: str = "motion inversion loss",
    before: float | None = None,
    after: float | None = None,
    width: int = 640,
    height: int = 320,
    drift: list[float] | None = None,
    evals: list[tuple[int, float]] | None = None,
    verdict: str | None = None,
) -> Image.Image:
    """Raw per-step loss (dim) and its moving average (bright), log-scaled y axis; held-out losses at a few
    steps (white dots, same axis); the tokens' drift from their start (orange, its own linear axis on the
    right, in units of the initial tokens' spread); a verdict line under the title."""
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 56, width - 12, 28, height - 26
    draw.rectangle([left, top, right, bottom], outline=AXIS)
    caption = title
    if before is not None and after is not None:
        caption += f"   eval loss {before:.4g} -> {after:.4g}"
    draw.text((left, 8), caption, fill=TEXT)

    values = np.array([v for v in history if math.isfinite(v) and v > 0], dtype=np.float64)
    steps = max(total_steps or 0, len(history), 1)
    draw.text((left, bottom + 6), "step 1", fill=TEXT)
    draw.text((right - 60, bottom + 6), f"step {steps}", fill=TEXT)
    if values.size == 0:
        draw.text((left + 10, (top + bottom) // 2), "no steps yet", fill=TEXT)
        return image

    logs = np.log10(values)
    lo, hi = float(logs.min()), float(logs.max())
    if hi - lo < 1e-6:
        lo, hi = lo - 0.5, hi + 0.5
    draw.text((4, top), f"{10**hi:.3g}", fill=TEXT)
    draw.text((4, bottom - 12), f"{10**lo:.3g}", fill=TEXT)

    def point(i: int, log_value: float) -> tuple[float, float]:
        x = left + (right - left) * (i / max(steps - 1, 1))
        y = bottom - (bottom - top) * (log_value - lo) / (hi - lo)
        return x, y

    draw.line([point(i, v) for i, v in enumerate(logs)] if len(logs) > 1 else [point(0, logs[0])] * 2, fill=RAW, width=1)
    window = max(1, len(logs) // 25)
    smooth = np.convolve(logs, np.ones(window) / window, mode="valid")
    offset = (window - 1) // 2
    if len(smooth) > 1:
        draw.line([point(i + offset, v) for i, v in enumerate(smooth)], fill=SMOOTH, width=2)
    for step, value in evals or ():
        if math.isfinite(value) and value > 0:
            x, y = point(max(step - 1, 0), min(max(math.log10(value), lo), hi))
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=TEXT)
    moved = [d for d in drift or () if math.isfinite(d)]
    if moved:
        top_drift = max(max(moved), 1e-6)
        draw.text((right - 150, top + 4), f"drift (orange) up to {top_drift:.2g}", fill=DRIFT)
        path = [(left + (right - left) * (i / max(steps - 1, 1)), bottom - (bottom - top) * d / top_drift) for i, d in enumerate(moved)]
        draw.line(path if len(path) > 1 else path * 2, fill=DRIFT, width=1)
    if verdict:
        draw.text((left + 4, top + 4), verdict, fill=TEXT)
    return image


def pil_to_image_batch(image: Image.Image) -> torch.Tensor:
    """PIL image -> ComfyUI IMAGE tensor [1, H, W, 3] in [0, 1]."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)[None]
