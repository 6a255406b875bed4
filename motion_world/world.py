"""Motion World generator: scenes, motions with exact per-frame ground truth, a train / held-out split, rendering.

Conventions
-----------
* Frames are float32 in [0, 1], layout [T, H, W, 3] (ComfyUI IMAGE), square (H = W = ``size``).
* Pixel coordinates: x to the right, y DOWN; pixel (row i, column j) covers x in [j, j+1], y in [i, i+1], so its
  centre is (j + 0.5, i + 0.5). Sprite centres are continuous pixel coordinates in that frame.
* Motions are described independently of the frame size: displacements in fractions of the frame side, time as
  the clip fraction u = t / (T - 1) in [0, 1] (so one motion renders at any T >= 2 and any size).
* Directions: an angle in degrees measured counter-clockwise AS SEEN ON SCREEN from the +x axis; since the image
  y axis points down, angle a moves along (cos a, -sin a) in pixel coordinates. 0 = right, 90 = up,
  135 = up-left, 180 = left, 270 = down. Turns (``two_segment``) and arc sweeps are signed the same way
  (positive = counter-clockwise on screen).
* Scale s is the sprite size relative to its frame-0 size (s[0] = 1).
* ``Scene.size`` is the sprite's half-extent (radius / half-side) as a fraction of the frame side; every shape
  fits in the axis-aligned box centre +- half-extent, so "inside the frame" is a box test.

Families (``Motion.family`` and its ``params``)
-----------------------------------------------
* ``linear``      angle, distance                      constant velocity, ``distance`` covered over the clip
* ``two_segment`` angle, turn, switch, distance        constant speed, direction ``angle`` until u = ``switch``,
                                                       then ``angle + turn``; ``distance`` is the total path length
                                                       (an L-path is a two_segment with |turn| ~ 90)
* ``arc``         radius, start_angle, sweep           constant angular speed on a circle of ``radius``; the
                                                       sprite starts at polar angle ``start_angle`` around the
                                                       circle's centre and sweeps ``sweep`` degrees
* ``reversal``    angle, distance, turn_at             out along ``angle`` for ``distance`` until u = ``turn_at``,
                                                       then back along the same line, reaching the start at u = 1
* ``pulse``       amplitude, cycles                    in place, s = 1 + amplitude * sin(2 pi cycles u)
* ``still``       (none)
* ``pan``         angle, distance                      the camera pans: background and sprite shift together by
                                                       the same displacement (``angle`` is the direction the
                                                       image content moves)

Train / held-out split (see HELD_OUT and ``is_held_out``)
---------------------------------------------------------
A motion is held out when ANY of these holds:
* it moves in a direction of the sector [112.5, 157.5] degrees (up-left diagonal) -- counting every direction
  in ``direction_arcs``: straight segments (linear, pan, both legs of reversal), the directions swept through by
  a two_segment turn (a per-frame step across the turn points between the two legs) and the tangent directions
  of an arc; so no training clip, at any frame count, ever has a per-frame displacement pointing into the sector;
* two_segment with |turn| in [75, 105] degrees (L-paths);
* arc with radius in [0.18, 0.24] of the frame side;
* reversal with turn_at in [0.50, 0.64] of the clip (the turning frame 4 of an 8-frame clip, u = 4/7);
* pulse with cycles in [1.2, 1.65] per clip, or |amplitude| in [0.33, 0.5].
``sample_training_motion`` samples only outside these regions, with a gap (directions stay at least 5 degrees
outside the sector, bands have margins), so held-out motions are never seen in training, not even nearly.
Held-out motions may lie outside the training ranges in other ways too; only this direction is guaranteed.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

SHAPES = ("square", "disc", "triangle", "diamond", "cross")
FAMILIES = ("linear", "two_segment", "arc", "reversal", "pulse", "still", "pan")
SIZE_RANGE = (0.08, 0.16)  # sprite half-extent, fraction of the frame side
MARGIN = 0.03  # free border kept around sprites when placing them (fraction of the frame side)
EDGE_PX = 1.0  # hard rule when rendering: the sprite's box stays EDGE_PX pixels inside the frame (clipping)
CROSS_ARM = 0.38  # cross arm half-width relative to the half-extent
MIN_SPRITE_BG_DIST = 0.35  # Euclidean RGB distance between the sprite colour and every background pixel
MIN_SPRITE_SPRITE_DIST = 0.45  # between a sprite colour and the colours it must avoid (e.g. the targets')

HELD_OUT = {
    "direction_sector": (112.5, 157.5),  # degrees, screen counter-clockwise from +x (up-left)
    "two_segment_turn": (75.0, 105.0),  # |turn| in degrees: L-paths
    "arc_radius": (0.18, 0.24),  # fraction of the frame side
    "reversal_turn_at": (0.50, 0.64),  # clip fraction (frame 4 of 8)
    "pulse_cycles": (1.2, 1.65),  # cycles per clip
    "pulse_amplitude": (0.33, 0.5),  # |amplitude|
}
# Training ranges (disjoint from HELD_OUT, with gaps).
_SECTOR_GAP = 5.0
_TRAIN_TURN = ((25.0, 70.0), (110.0, 155.0))
_TRAIN_ARC_RADIUS = ((0.09, 0.16), (0.27, 0.45))
_TRAIN_ARC_LENGTH = (0.2, 0.5)
_TRAIN_TURN_AT = ((0.25, 0.46), (0.68, 0.85))
_TRAIN_PULSE_CYCLES = ((0.5, 1.05), (1.8, 2.6))
_TRAIN_PULSE_AMPLITUDE = (0.1, 0.3)
_TRAIN_WEIGHTS = {"linear": 0.24, "two_segment": 0.2, "arc": 0.15, "reversal": 0.15, "pulse": 0.12, "still": 0.05, "pan": 0.09}
_DENSE_U = np.linspace(0.0, 1.0, 257)


# ----------------------------------------------------------------------------------------------- data types


@dataclass
class Motion:
    """A motion, independent of frame size and clip length (see the module docstring for the families)."""

    family: str
    params: dict = field(default_factory=dict)
    name: str = ""

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"unknown motion family {self.family!r}; expected one of {FAMILIES}")
        self.params = {k: float(v) for k, v in self.params.items()}

    def to_dict(self) -> dict:
        return {"family": self.family, "params": dict(self.params), "name": self.name}

    @classmethod
    def from_dict(cls, d: dict) -> Motion:
        return cls(d["family"], dict(d.get("params", {})), d.get("name", ""))


@dataclass
class Background:
    """Smooth background: a two-colour tanh gradient plus low-frequency sinusoids and Gaussian blobs.

    Evaluated in frame-fraction coordinates (u, v) = (x, y) / size, so it is defined beyond the frame (pans)."""

    color0: tuple
    color1: tuple
    angle: float  # gradient direction (radians, pixel-coordinate convention: (cos, sin) with y down)
    sharpness: float  # tanh gain across the frame
    waves: tuple = ()  # ((fu, fv, phase, r, g, b), ...): cycles per frame side, colour amplitude vector
    blobs: tuple = ()  # ((cu, cv, sigma, r, g, b), ...)

    def amplitude_bound(self) -> float:
        """Upper bound of the pattern's deviation from the gradient (Euclidean RGB)."""
        return float(sum(np.linalg.norm(w[3:]) for w in self.waves) + sum(np.linalg.norm(b[3:]) for b in self.blobs))

    def eval(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        c0, c1 = np.asarray(self.color0), np.asarray(self.color1)
        t = 0.5 + 0.5 * np.tanh(self.sharpness * ((u - 0.5) * math.cos(self.angle) + (v - 0.5) * math.sin(self.angle)))
        out = c0 + t[..., None] * (c1 - c0)
        for fu, fv, ph, *col in self.waves:
            out = out + np.sin(2 * np.pi * (fu * u + fv * v) + ph)[..., None] * np.asarray(col)
        for cu, cv, sig, *col in self.blobs:
            out = out + np.exp(-((u - cu) ** 2 + (v - cv) ** 2) / (2 * sig * sig))[..., None] * np.asarray(col)
        return out


@dataclass
class Scene:
    """A background and one sprite. ``position`` is the sprite centre at frame 0 (fractions of the frame side),
    ``size`` its half-extent (fraction of the frame side)."""

    shape: str
    sprite_color: tuple
    size: float
    position: tuple
    background: Background
    name: str = ""


@dataclass
class Trajectory:
    """Per-frame ground truth in pixels for one motion applied to one scene at one frame size."""

    centers: np.ndarray  # [T, 2] (x, y) pixels, after clipping
    scales: np.ndarray  # [T], relative to frame 0, after clipping
    radii: np.ndarray  # [T] half-extent in pixels
    bg_shift: np.ndarray  # [T, 2] background displacement in pixels (pans)
    clipped: np.ndarray  # [T] bool: the motion had to be clipped to keep the sprite inside at that frame


@dataclass
class Clip:
    frames: torch.Tensor  # [T, H, W, 3] float32 in [0, 1]
    masks: torch.Tensor  # [T, H, W] float32 sprite coverage
    centers: torch.Tensor  # [T, 2] float64 pixels
    scales: torch.Tensor  # [T] float64
    radii: torch.Tensor  # [T] float64 half-extent in pixels
    sprite_color: torch.Tensor  # (3,) float32
    background_color_mean: torch.Tensor  # (3,) float32, mean background colour over the clip
    backgrounds: torch.Tensor  # [T, H, W, 3] float32, the frames without the sprite
    clipped: torch.Tensor  # [T] bool
    scene: Scene
    motion: Motion

    @property
    def areas(self) -> torch.Tensor:
        """True sprite area per frame in pixels (sum of the coverage)."""
        return self.masks.sum(dim=(1, 2))


# ----------------------------------------------------------------------------------------------- motion maths


def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _dir(angle_deg: float) -> np.ndarray:
    a = math.radians(angle_deg)
    return np.array([math.cos(a), -math.sin(a)])


def _kinks(motion: Motion) -> list[float]:
    p = motion.params
    if motion.family == "two_segment":
        return [p["switch"]]
    if motion.family == "reversal":
        return [p["turn_at"]]
    return []


def motion_at(motion: Motion, u) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Displacement [N, 2] (fractions of the frame side, relative to u = 0), scale [N] and background shift
    [N, 2] at clip fractions ``u`` (array in [0, 1])."""
    u = np.asarray(u, dtype=np.float64).reshape(-1)
    p, f = motion.params, motion.family
    disp = np.zeros((u.size, 2))
    scale = np.ones(u.size)
    if f in ("linear", "pan"):
        disp = p["distance"] * u[:, None] * _dir(p["angle"])
    elif f == "two_segment":
        d1, d2 = _dir(p["angle"]), _dir(p["angle"] + p["turn"])
        us, dist = p["switch"], p["distance"]
        disp = np.where((u <= us)[:, None], dist * u[:, None] * d1, dist * (us * d1 + (u - us)[:, None] * d2))
    elif f == "reversal":
        ut = p["turn_at"]
        k = np.where(u <= ut, u / ut, (1.0 - u) / (1.0 - ut))
        disp = p["distance"] * k[:, None] * _dir(p["angle"])
    elif f == "arc":
        phi0 = math.radians(p["start_angle"])
        phi = phi0 + math.radians(p["sweep"]) * u
        disp = p["radius"] * np.stack([np.cos(phi) - math.cos(phi0), -(np.sin(phi) - math.sin(phi0))], axis=1)
    elif f == "pulse":
        scale = 1.0 + p["amplitude"] * np.sin(2 * np.pi * p["cycles"] * u)
    bg = disp.copy() if f == "pan" else np.zeros_like(disp)
    return disp, scale, bg


def motion_trajectory(motion: Motion, frames: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``motion_at`` on the frame grid u = t / (frames - 1): displacement [T, 2], scale [T], bg shift [T, 2]."""
    if frames < 2:
        raise ValueError("a clip needs at least 2 frames")
    return motion_at(motion, np.arange(frames) / (frames - 1))


def placement_range(motion: Motion, sprite_size: float, margin: float = MARGIN) -> tuple[float, float, float, float]:
    """Start positions (x_lo, x_hi, y_lo, y_hi), fractions of the frame side, for which a sprite of half-extent
    ``sprite_size`` stays ``margin`` inside the frame during the whole motion (checked on a dense time grid
    that includes the kinks). Empty (lo > hi) when impossible."""
    u = np.concatenate([_DENSE_U, _kinks(motion)])
    disp, scale, _ = motion_at(motion, u)
    r = sprite_size * scale
    lo = np.max(margin + r[:, None] - disp, axis=0)
    hi = np.min(1.0 - margin - r[:, None] - disp, axis=0)
    return float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])


def fits(motion: Motion, sprite_size: float = SIZE_RANGE[1], margin: float = MARGIN) -> bool:
    x0, x1, y0, y1 = placement_range(motion, sprite_size, margin)
    return x0 <= x1 and y0 <= y1


# ----------------------------------------------------------------------------------------------- split


def _angle_in(angle: float, sector: tuple[float, float]) -> bool:
    a = angle % 360.0
    return sector[0] <= a <= sector[1]


def _in_band(x: float, band: tuple[float, float]) -> bool:
    return band[0] <= x <= band[1]


def direction_arcs(motion: Motion) -> list[tuple[float, float]]:
    """The directions the sprite (or camera) moves in, as arcs (start angle, signed extent) in degrees: every
    instantaneous velocity AND every chord between two instants of a segment-wise motion lies in them (so the
    per-frame displacement of any clip length does too). A constant direction is an arc of extent 0.

    linear / pan: the direction; two_segment: from the first direction, turning by ``turn`` (a chord across the
    turn points between the two); reversal: the direction and its opposite; arc: the tangent directions swept
    (ccw sweep: start_angle + 90 onwards; cw: start_angle - 90 onwards); pulse / still: none."""
    p, f = motion.params, motion.family
    if f in ("linear", "pan"):
        return [(p["angle"], 0.0)]
    if f == "two_segment":
        return [(p["angle"], p["turn"])]
    if f == "reversal":
        return [(p["angle"], 0.0), (p["angle"] + 180.0, 0.0)]
    if f == "arc":
        tangent = p["start_angle"] + (90.0 if p["sweep"] >= 0 else -90.0)
        return [(tangent, p["sweep"])]
    return []


def _arc_hits(start: float, extent: float, sector: tuple[float, float]) -> bool:
    lo, width = (start, extent) if extent >= 0 else (start + extent, -extent)
    return (sector[0] - lo) % 360.0 <= width or _angle_in(lo, sector)


def _moves_into(motion: Motion, sector: tuple[float, float]) -> bool:
    return any(_arc_hits(a, e, sector) for a, e in direction_arcs(motion))


def held_out_reasons(motion: Motion) -> list[str]:
    """Why ``motion`` is held out (empty list: it is not)."""
    p, f, h = motion.params, motion.family, HELD_OUT
    reasons = []
    if _moves_into(motion, h["direction_sector"]):
        reasons.append("moves in a direction of the held-out sector")
    if f == "two_segment" and _in_band(abs(p["turn"]), h["two_segment_turn"]):
        reasons.append("turn angle in the held-out band (L-path)")
    if f == "arc" and _in_band(p["radius"], h["arc_radius"]):
        reasons.append("arc radius in the held-out band")
    if f == "reversal" and _in_band(p["turn_at"], h["reversal_turn_at"]):
        reasons.append("reversal turning point in the held-out band")
    if f == "pulse" and _in_band(p["cycles"], h["pulse_cycles"]):
        reasons.append("pulse frequency in the held-out band")
    if f == "pulse" and _in_band(abs(p["amplitude"]), h["pulse_amplitude"]):
        reasons.append("pulse amplitude in the held-out band")
    return reasons


def is_held_out(motion: Motion) -> bool:
    """True when ``motion`` lies in the held-out region (see the module docstring)."""
    return bool(held_out_reasons(motion))


def _uniform_bands(rng: np.random.Generator, bands) -> float:
    widths = np.array([b - a for a, b in bands])
    i = rng.choice(len(bands), p=widths / widths.sum())
    return float(rng.uniform(*bands[i]))


_GAP_SECTOR = (HELD_OUT["direction_sector"][0] - _SECTOR_GAP, HELD_OUT["direction_sector"][1] + _SECTOR_GAP)


def _training_candidate(rng: np.random.Generator, family: str) -> Motion:
    """One draw from the training ranges; directions are drawn freely and rejected by the caller when the motion
    moves within _SECTOR_GAP degrees of the held-out sector."""
    a = float(rng.uniform(0.0, 360.0))
    if family in ("linear", "pan"):
        dist = rng.uniform(0.12, 0.5) if family == "linear" else rng.uniform(0.08, 0.3)
        return Motion(family, {"angle": a, "distance": dist})
    if family == "two_segment":
        turn = _uniform_bands(rng, _TRAIN_TURN) * rng.choice([-1.0, 1.0])
        return Motion(family, {"angle": a, "turn": turn, "switch": rng.uniform(0.3, 0.7), "distance": rng.uniform(0.25, 0.6)})
    if family == "arc":
        radius = _uniform_bands(rng, _TRAIN_ARC_RADIUS)
        sweep = min(math.degrees(rng.uniform(*_TRAIN_ARC_LENGTH) / radius), 270.0) * rng.choice([-1.0, 1.0])
        return Motion(family, {"radius": radius, "start_angle": a, "sweep": sweep})
    if family == "reversal":
        return Motion(family, {"angle": a, "distance": rng.uniform(0.12, 0.45), "turn_at": _uniform_bands(rng, _TRAIN_TURN_AT)})
    if family == "pulse":
        amp = rng.uniform(*_TRAIN_PULSE_AMPLITUDE) * rng.choice([-1.0, 1.0])
        return Motion(family, {"amplitude": amp, "cycles": _uniform_bands(rng, _TRAIN_PULSE_CYCLES)})
    return Motion("still", {})


def sample_training_motion(rng, families: Sequence[str] | None = None) -> Motion:
    """A random motion from the training distribution: never held out, and it fits in the frame (with MARGIN)
    for every sprite size in SIZE_RANGE. ``families`` restricts the families (default: all, weighted)."""
    rng = _rng(rng)
    names = list(families) if families is not None else list(_TRAIN_WEIGHTS)
    w = np.array([_TRAIN_WEIGHTS[n] for n in names])
    while True:
        family = names[rng.choice(len(names), p=w / w.sum())]
        m = _training_candidate(rng, family)
        if not _moves_into(m, _GAP_SECTOR) and fits(m):
            return m


def held_out_motions() -> list[Motion]:
    """Fixed named held-out reference motions (all satisfy ``is_held_out``)."""
    return [
        Motion("linear", {"angle": 135.0, "distance": 0.28}, "unseen_direction_up_left"),
        Motion("reversal", {"angle": 0.0, "distance": 0.24, "turn_at": 4 / 7}, "reversal_mid_turn"),
        Motion("arc", {"radius": 0.21, "start_angle": 270.0, "sweep": 100.0}, "arc_ccw"),
        Motion("arc", {"radius": 0.2, "start_angle": 90.0, "sweep": -100.0}, "arc_cw"),
        Motion("two_segment", {"angle": 270.0, "turn": 90.0, "switch": 0.5, "distance": 0.4}, "l_path_down_right"),
        Motion("pulse", {"amplitude": 0.25, "cycles": 1.4}, "pulse_mid_frequency"),
        Motion("pulse", {"amplitude": 0.4, "cycles": 1.0}, "pulse_large"),
        Motion("pan", {"angle": 135.0, "distance": 0.2}, "pan_up_left"),
    ]


# ----------------------------------------------------------------------------------------------- scenes


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v))


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    ab = b - a
    t = np.clip(np.dot(p - a, ab) / max(np.dot(ab, ab), 1e-12), 0.0, 1.0)
    return float(np.linalg.norm(p - (a + t * ab)))


def color_to_background_distance(color, background: Background) -> float:
    """Lower bound of the Euclidean RGB distance between ``color`` and any background pixel (anywhere)."""
    c = np.asarray(color, dtype=np.float64)
    return _segment_distance(c, np.asarray(background.color0), np.asarray(background.color1)) - background.amplitude_bound()


def _random_background(rng: np.random.Generator, avoid_colors=()) -> Background:
    while True:
        waves = []
        for _ in range(2):
            f = rng.uniform(0.6, 2.0)
            th = rng.uniform(0, 2 * np.pi)
            col = rng.normal(size=3)
            col = col / np.linalg.norm(col) * rng.uniform(0.01, 0.03)
            waves.append((f * math.cos(th), f * math.sin(th), rng.uniform(0, 2 * np.pi), *col))
        blobs = []
        for _ in range(2):
            col = rng.normal(size=3)
            col = col / np.linalg.norm(col) * rng.uniform(0.02, 0.05)
            blobs.append((rng.uniform(-0.1, 1.1), rng.uniform(-0.1, 1.1), rng.uniform(0.12, 0.25), *col))
        bound = sum(np.linalg.norm(w[3:]) for w in waves) + sum(np.linalg.norm(b[3:]) for b in blobs)
        c0 = np.clip(_hsv(rng.uniform(), rng.uniform(0.05, 0.55), rng.uniform(0.2, 0.85)), bound, 1 - bound)
        c1 = np.clip(_hsv(rng.uniform(), rng.uniform(0.05, 0.55), rng.uniform(0.2, 0.85)), bound, 1 - bound)
        if np.linalg.norm(c0 - c1) < 0.15:
            continue
        bg = Background(
            tuple(map(float, c0)),
            tuple(map(float, c1)),
            float(rng.uniform(0, 2 * np.pi)),
            float(rng.uniform(1.5, 3.0)),
            tuple(tuple(map(float, w)) for w in waves),
            tuple(tuple(map(float, b)) for b in blobs),
        )
        if all(color_to_background_distance(c, bg) >= MIN_SPRITE_BG_DIST for c in avoid_colors):
            return bg


def _random_sprite_color(rng: np.random.Generator, hue: float | None = None, avoid: Sequence[Scene] = ()) -> np.ndarray:
    for _ in range(10000):
        h = rng.uniform() if hue is None else hue
        c = _hsv(h, rng.uniform(0.75, 1.0), rng.uniform(0.8, 1.0))
        if all(np.linalg.norm(c - np.asarray(s.sprite_color)) >= MIN_SPRITE_SPRITE_DIST for s in avoid) and all(
            color_to_background_distance(c, s.background) >= MIN_SPRITE_BG_DIST for s in avoid
        ):
            return c
    raise RuntimeError("no sprite colour is distinct enough from the scenes to avoid")


def random_scene(
    rng,
    motion: Motion | None = None,
    *,
    shape: str | None = None,
    size_range: tuple[float, float] = SIZE_RANGE,
    avoid: Sequence[Scene] = (),
    margin: float = MARGIN,
) -> Scene:
    """A random scene. With ``motion``, the start position (and if needed a smaller size) is chosen so the
    sprite stays ``margin`` inside the frame for the whole motion; if even the smallest size cannot fit, the
    sprite starts centred on the feasible box and rendering clips the motion (``Clip.clipped``).
    ``avoid``: scenes whose sprite colours and backgrounds this scene's sprite colour must differ from
    (reference scenes vs target scenes, so appearance leakage is measurable)."""
    rng = _rng(rng)
    shape = shape if shape is not None else SHAPES[rng.integers(len(SHAPES))]
    color = _random_sprite_color(rng, avoid=avoid)
    background = _random_background(rng, avoid_colors=[color])
    size = float(rng.uniform(*size_range))
    if motion is None:
        lo, hi = margin + size, 1.0 - margin - size
        position = (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))
    else:
        x0, x1, y0, y1 = placement_range(motion, size, margin)
        while (x0 > x1 or y0 > y1) and size > size_range[0]:
            size = max(size_range[0], size * 0.9)
            x0, x1, y0, y1 = placement_range(motion, size, margin)
        if x0 <= x1 and y0 <= y1:
            position = (float(rng.uniform(x0, x1)), float(rng.uniform(y0, y1)))
        else:
            position = ((x0 + x1) / 2, (y0 + y1) / 2)
    return Scene(shape, tuple(map(float, color)), size, position, background)


_TARGET_POSITIONS = ((0.44, 0.46), (0.56, 0.55), (0.5, 0.42), (0.42, 0.58), (0.58, 0.44), (0.5, 0.5))


def target_scenes(n: int = 5, seed: int = 0) -> list[Scene]:
    """``n`` fixed target scenes (deterministic for ``seed``): shapes cycle through SHAPES, sprite hues are evenly
    spaced around the colour wheel, positions differ (near the centre so most motions fit without clipping),
    backgrounds are random."""
    rng = np.random.default_rng([seed, 20240611])
    offset = rng.uniform()
    scenes = []
    for i in range(n):
        color = _random_sprite_color(rng, hue=offset + i / n)
        background = _random_background(rng, avoid_colors=[color])
        if i < len(_TARGET_POSITIONS):
            pos = _TARGET_POSITIONS[i]
        else:
            pos = (float(rng.uniform(0.4, 0.6)), float(rng.uniform(0.4, 0.6)))
        size = float(rng.uniform(0.085, 0.115))
        scenes.append(Scene(SHAPES[i % len(SHAPES)], tuple(map(float, color)), size, pos, background, f"target_{i}"))
    return scenes


def reference_scene(motion: Motion, seed: int = 0, avoid: Sequence[Scene] = ()) -> Scene:
    """A deterministic scene for rendering ``motion`` as a reference (fits without clipping), with a sprite
    colour distinct from the ``avoid`` scenes (default: none)."""
    s = random_scene(np.random.default_rng([seed, 99]), motion, avoid=avoid)
    s.name = f"reference_{motion.name or motion.family}"
    return s


def held_out_references(frames: int = 8, size: int = 64, seed: int = 0, targets: Sequence[Scene] | None = None) -> list[Clip]:
    """Every held-out motion rendered on its own reference scene, whose sprite colour avoids the target scenes'
    colours and backgrounds (default targets: ``target_scenes(5, seed)``)."""
    targets = target_scenes(5, seed) if targets is None else targets
    return [render_clip(reference_scene(m, seed + i, avoid=targets), m, frames, size) for i, m in enumerate(held_out_motions())]


# ----------------------------------------------------------------------------------------------- rendering


def apply_motion_to_target(motion: Motion, target_scene: Scene, frames: int = 8, size: int = 64) -> Trajectory:
    """The ideal transfer of ``motion`` to ``target_scene``: the motion's per-frame displacement (relative to its
    frame 0, in fractions of the frame side, so a reference of any size transfers) and scale ratio, applied to
    the target sprite's own start position and size. Then clipped per frame so the sprite's box stays EDGE_PX
    pixels inside the frame: the scale is capped so the sprite fits, and the centre is clamped
    (``Trajectory.clipped`` marks the frames where that changed anything)."""
    disp, scale, bg = motion_trajectory(motion, frames)
    r0 = target_scene.size * size
    scale_c = np.minimum(scale, (size / 2 - EDGE_PX) / r0)
    radii = r0 * scale_c
    raw = (np.asarray(target_scene.position)[None, :] + disp) * size
    lo, hi = (radii + EDGE_PX)[:, None], (size - radii - EDGE_PX)[:, None]
    centers = np.clip(raw, lo, hi)
    clipped = np.any(np.abs(centers - raw) > 1e-9, axis=1) | (scale_c != scale)
    return Trajectory(centers, scale_c, radii, bg * size, clipped)


def _box_sdf(px, py, hx, hy):
    qx, qy = np.abs(px) - hx, np.abs(py) - hy
    return np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0)) + np.minimum(np.maximum(qx, qy), 0.0)


def shape_sdf(shape: str, px: np.ndarray, py: np.ndarray, r) -> np.ndarray:
    """Signed distance (pixels, negative inside) to ``shape`` of half-extent ``r`` centred at the origin
    (px, py: offsets in pixel coordinates, y down). Every shape's area centroid is its centre (triangle:
    equilateral, apex up, centred on its centroid = circumcentre, circumradius r)."""
    if shape == "disc":
        return np.hypot(px, py) - r
    if shape == "square":
        return _box_sdf(px, py, r, r)
    if shape == "diamond":
        return (np.abs(px) + np.abs(py) - r) / math.sqrt(2.0)
    if shape == "cross":
        w = CROSS_ARM * r
        return np.minimum(_box_sdf(px, py, r, w), _box_sdf(px, py, w, r))
    if shape == "triangle":  # Inigo Quilez's exact equilateral-triangle distance, y up
        k = math.sqrt(3.0)
        h = r * k / 2  # half side
        x = np.abs(px) - h
        y = -py + h / k
        fold = x + k * y > 0
        x, y = np.where(fold, (x - k * y) / 2, x), np.where(fold, (-k * x - y) / 2, y)
        x = x - np.clip(x, -2 * h, 0.0)
        return -np.hypot(x, y) * np.sign(y)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def render_background(background: Background, size: int, shifts: np.ndarray | None = None) -> np.ndarray:
    """[T, H, W, 3] (or [1, H, W, 3] when ``shifts`` is None) float64 background, content shifted by ``shifts``
    [T, 2] pixels."""
    c = (np.arange(size) + 0.5) / size
    shifts = np.zeros((1, 2)) if shifts is None else np.asarray(shifts, dtype=np.float64)
    u = c[None, None, :] - shifts[:, 0, None, None] / size
    v = c[None, :, None] - shifts[:, 1, None, None] / size
    return background.eval(np.broadcast_to(u, (len(shifts), size, size)), np.broadcast_to(v, (len(shifts), size, size)))


def render_clip(scene: Scene, motion: Motion, frames: int = 8, size: int = 64) -> Clip:
    """Render ``motion`` applied to ``scene`` (the ideal transfer when ``scene`` is a target): sprite coverage is
    antialiased analytically (coverage = clamp(0.5 - signed distance, 0, 1), a one-pixel ramp), so sub-pixel
    motion changes the pixels. Positions are clipped as in ``apply_motion_to_target``."""
    traj = apply_motion_to_target(motion, scene, frames, size)
    pan = bool(np.any(traj.bg_shift != 0))
    bg = render_background(scene.background, size, traj.bg_shift if pan else None)
    bg = np.broadcast_to(bg, (frames, size, size, 3))
    c = np.arange(size) + 0.5
    px = c[None, None, :] - traj.centers[:, 0, None, None]
    py = c[None, :, None] - traj.centers[:, 1, None, None]
    mask = np.clip(0.5 - shape_sdf(scene.shape, px, py, traj.radii[:, None, None]), 0.0, 1.0)
    color = np.asarray(scene.sprite_color)
    img = bg + mask[..., None] * (color - bg)
    bgt = torch.from_numpy(np.ascontiguousarray(bg, dtype=np.float32))
    bg_mean = bg.reshape(-1, 3).mean(axis=0) if pan else bg[0].reshape(-1, 3).mean(axis=0)
    return Clip(
        frames=torch.from_numpy(np.clip(img, 0.0, 1.0).astype(np.float32)),
        masks=torch.from_numpy(mask.astype(np.float32)),
        centers=torch.from_numpy(traj.centers.copy()),
        scales=torch.from_numpy(traj.scales.copy()),
        radii=torch.from_numpy(traj.radii.copy()),
        sprite_color=torch.tensor(color, dtype=torch.float32),
        background_color_mean=torch.tensor(bg_mean, dtype=torch.float32),
        backgrounds=bgt,
        clipped=torch.from_numpy(traj.clipped.copy()),
        scene=scene,
        motion=motion,
    )


def sample_training_clip(rng, frames: int = 8, size: int = 64, families: Sequence[str] | None = None) -> Clip:
    """One training example: a training motion on a random scene placed so the motion is never clipped."""
    rng = _rng(rng)
    motion = sample_training_motion(rng, families)
    return render_clip(random_scene(rng, motion), motion, frames, size)


# ----------------------------------------------------------------------------------------------- features

PER_FRAME_FEATURES = ("dx", "dy", "log_scale", "t", "bg_dx", "bg_dy")
SUMMARY_FEATURES = ("mean_vx", "mean_vy", "net_dx", "net_dy", "path_length", "max_displacement", "max_scale_dev")


def trajectory_features(disp, scale, bg_shift=None) -> dict:
    """Features of a trajectory given as displacement [T, 2] relative to frame 0 (fractions of the frame side;
    x right, y down), scale [T] relative to frame 0, optional background shift [T, 2] (fractions).

    per_frame [T, 6]: dx, dy, log(scale), t / (T - 1), bg_dx, bg_dy.
    summary [7]: mean velocity (vx, vy per frame step), net displacement (dx, dy at the last frame), path length,
    largest distance from the start, max |scale - 1|. Works on tracked trajectories too
    (disp = (centers - centers[0]) / size)."""
    disp = np.asarray(disp, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    bg = np.zeros_like(disp) if bg_shift is None else np.asarray(bg_shift, dtype=np.float64)
    t = disp.shape[0]
    per_frame = np.column_stack([disp, np.log(scale), np.arange(t) / max(t - 1, 1), bg])
    steps = np.diff(disp, axis=0)
    summary = np.array(
        [
            *(steps.mean(axis=0) if t > 1 else np.zeros(2)),
            *disp[-1],
            np.linalg.norm(steps, axis=1).sum(),
            np.linalg.norm(disp, axis=1).max(),
            np.abs(scale - 1.0).max(),
        ]
    )
    return {
        "per_frame": per_frame.astype(np.float32),
        "per_frame_names": PER_FRAME_FEATURES,
        "summary": summary.astype(np.float32),
        "summary_names": SUMMARY_FEATURES,
    }


def motion_features(motion: Motion, frames: int = 8) -> dict:
    """``trajectory_features`` of ``motion`` sampled at ``frames`` frames (size-independent, before clipping)."""
    return trajectory_features(*motion_trajectory(motion, frames))
