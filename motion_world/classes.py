"""Class-coupled Motion World (issue #28): what a sprite is predicts how it moves.

In the original world any sprite may make any motion, so a model whose context is only the first frame's
appearance (as SVD's CLIP image token is) has no reason to read motion from its context. Real video is not like
that: dogs run, leaves flutter, cars drive. Here each sprite class (a shape and a band of hues) has its own
motion family, with variation inside it (direction, speed, phase, from ``world.sample_training_motion``):

    orbiter   disc      reds      arcs
    runner    square    greens    straight lines
    pulser    diamond   blues     pulsation in place
    bouncer   triangle  yellows   out and back (reversal)

and one family belongs to no class: ``two_segment`` (turns and L-paths) is never seen in training.

What the test holds out:
* every class x motion combination across classes: B never makes A's family in training, so the ideal transfer
  of A's motion onto B is always an unseen combination;
* motions of no class's family (``two_segment``);
* inside each family, the held-out regions of ``world.is_held_out`` (e.g. the up-left direction sector), which
  ``world.sample_training_motion`` never samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import world


@dataclass(frozen=True)
class SpriteClass:
    name: str
    shape: str
    hue: tuple[float, float]  # band of hues (HSV, in [0, 1); the band may wrap around 1)
    family: str


CLASSES = (
    SpriteClass("orbiter", "disc", (-0.03, 0.03), "arc"),
    SpriteClass("runner", "square", (0.30, 0.38), "linear"),
    SpriteClass("pulser", "diamond", (0.58, 0.66), "pulse"),
    SpriteClass("bouncer", "triangle", (0.12, 0.17), "reversal"),
)
NO_CLASS_FAMILY = "two_segment"
TARGET_SIZE = (0.085, 0.115)  # targets' half-extent: near the lower end, so most motions fit without clipping


def class_named(name: str) -> SpriteClass:
    for c in CLASSES:
        if c.name == name:
            return c
    raise KeyError(name)


def class_of(scene: world.Scene) -> SpriteClass:
    """The class a scene's sprite belongs to (by shape)."""
    for c in CLASSES:
        if c.shape == scene.shape:
            return c
    raise ValueError(f"shape {scene.shape!r} belongs to no class")


def class_color(rng: np.random.Generator, sprite_class: SpriteClass) -> np.ndarray:
    hue = float(rng.uniform(*sprite_class.hue)) % 1.0
    return world._random_sprite_color(rng, hue=hue)


def class_scene(rng, sprite_class: SpriteClass, motion: world.Motion | None = None, size_range=world.SIZE_RANGE, name: str = "") -> world.Scene:
    """A random scene with a sprite of ``sprite_class`` on a random background, placed (and if needed shrunk) so
    that ``motion`` stays inside the frame, as ``world.random_scene`` does."""
    rng = world._rng(rng)
    scene = world.random_scene(rng, motion, shape=sprite_class.shape, size_range=size_range)
    color = class_color(rng, sprite_class)
    background = world._random_background(rng, avoid_colors=[color])
    return world.Scene(sprite_class.shape, tuple(map(float, color)), scene.size, scene.position, background, name)


def sample_training_clip(rng, frames: int = 8, size: int = 64) -> world.Clip:
    """One training example: a random class, a training motion of its family (never in a held-out region), its look."""
    rng = world._rng(rng)
    sprite_class = CLASSES[rng.integers(len(CLASSES))]
    motion = world.sample_training_motion(rng, families=[sprite_class.family])
    return world.render_clip(class_scene(rng, sprite_class, motion), motion, frames, size)


@dataclass
class TestCase:
    """A transfer test: ``reference`` (a clip of one class) applied to ``targets``, one scene of every other class."""

    reference: world.Clip
    targets: list[world.Scene]
    kind: str  # "family": the motion is of the reference class's family; "no family": of no class's family
    held_out: bool  # the motion lies in a held-out region of world.is_held_out

    @property
    def name(self) -> str:
        return f"{class_of(self.reference.scene).name}:{self.reference.motion.name or self.reference.motion.family}"


def _test_motion(rng: np.random.Generator, family: str, held_out: bool) -> world.Motion:
    """A motion of ``family``: from the training ranges (a new instance), or one of world's fixed held-out ones."""
    if held_out:
        options = [m for m in world.held_out_motions() if m.family == family]
        return options[rng.integers(len(options))]
    return world.sample_training_motion(rng, families=[family])  # for two_segment: the original world's ranges


def test_cases(references: int = 40, frames: int = 8, size: int = 64, seed: int = 0, no_family_share: float = 0.25) -> list[TestCase]:
    """``references`` deterministic cases, the reference classes in turn, each with a target of every other class
    (40 references: 120 pairs). A quarter of the references make a motion of no class's family; a quarter of the
    rest a held-out motion of their family (``world.held_out_motions``)."""
    rng = np.random.default_rng([seed, 28])
    cases = []
    for i in range(references):
        reference_class = CLASSES[i % len(CLASSES)]
        no_family = rng.uniform() < no_family_share
        family = NO_CLASS_FAMILY if no_family else reference_class.family
        held_out = (not no_family) and rng.uniform() < 0.25 and any(m.family == family for m in world.held_out_motions())
        motion = _test_motion(rng, family, held_out)
        reference = world.render_clip(class_scene(rng, reference_class, motion, name="reference"), motion, frames, size)
        targets = [class_scene(rng, c, motion, size_range=TARGET_SIZE, name=f"target_{c.name}") for c in CLASSES if c is not reference_class]
        cases.append(TestCase(reference, targets, "no family" if no_family else "family", world.is_held_out(motion)))
    return cases


def family_share(clips: Sequence[world.Clip]) -> dict[str, dict[str, float]]:
    """For each class, the share of ``clips`` of that class in each motion family (a check of the coupling)."""
    counts: dict[str, dict[str, float]] = {}
    for clip in clips:
        row = counts.setdefault(class_of(clip.scene).name, {})
        row[clip.motion.family] = row.get(clip.motion.family, 0) + 1
    return {name: {family: n / sum(row.values()) for family, n in row.items()} for name, row in counts.items()}
