"""Motion World: deterministic generation, sprites inside the frame, a train / held-out split that never
overlaps, sub-pixel tracking, and metrics that score the ideal transfer perfectly and wrong motions badly."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch
from PIL import Image

from motion_world import metrics as M
from motion_world import world as W


def _training_clips(n: int, seed: int, **kw) -> list:
    rng = np.random.default_rng(seed)
    return [W.sample_training_clip(rng, **kw) for _ in range(n)]


def test_generation_is_deterministic():
    a, b = _training_clips(6, seed=11), _training_clips(6, seed=11)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.frames, y.frames) and torch.equal(x.centers, y.centers)
        assert x.motion == y.motion
    assert not torch.equal(a[0].frames, _training_clips(1, seed=12)[0].frames)
    assert W.held_out_motions() == W.held_out_motions()
    assert [s.sprite_color for s in W.target_scenes(5, 3)] == [s.sprite_color for s in W.target_scenes(5, 3)]
    refs1, refs2 = W.held_out_references(), W.held_out_references()
    assert all(torch.equal(x.frames, y.frames) for x, y in zip(refs1, refs2, strict=True))


def test_clip_layout_and_ground_truth():
    clip = W.render_clip(W.target_scenes(1)[0], W.held_out_motions()[0], frames=14, size=48)
    assert clip.frames.shape == (14, 48, 48, 3) and clip.frames.dtype == torch.float32
    assert 0.0 <= clip.frames.min() and clip.frames.max() <= 1.0
    assert clip.masks.shape == (14, 48, 48) and clip.centers.shape == (14, 2) and clip.scales.shape == (14,)
    assert clip.scales[0] == 1.0
    # Coverage is antialiased (fractional edge pixels) and a sub-pixel shift changes the frame.
    edge = clip.masks[(clip.masks > 0) & (clip.masks < 1)]
    assert edge.numel() > 10
    scene = W.target_scenes(1)[0]
    nudged = W.Scene(scene.shape, scene.sprite_color, scene.size, (scene.position[0] + 0.1 / 48, scene.position[1]), scene.background)
    still = W.Motion("still")
    assert (W.render_clip(nudged, still, 2, 48).frames - W.render_clip(scene, still, 2, 48).frames).abs().max() > 0.01


@pytest.mark.parametrize("family", W.FAMILIES)
def test_training_sprites_stay_inside(family):
    for clip in _training_clips(15, seed=W.FAMILIES.index(family), families=[family]):
        assert not clip.clipped.any()
        size = clip.frames.shape[1]
        lo = clip.centers - clip.radii[:, None]
        hi = clip.centers + clip.radii[:, None]
        assert lo.min() >= W.EDGE_PX and hi.max() <= size - W.EDGE_PX
        m = clip.masks
        assert m[:, 0].max() == 0 and m[:, -1].max() == 0 and m[:, :, 0].max() == 0 and m[:, :, -1].max() == 0
        # The sprite colour stands out from every background pixel.
        dist = (clip.backgrounds - clip.sprite_color).norm(dim=-1)
        assert dist.min() >= W.MIN_SPRITE_BG_DIST - 1e-4


def test_held_out_split_is_disjoint():
    held = W.held_out_motions()
    assert len(held) >= 5 and len({m.name for m in held}) == len(held)
    assert all(W.is_held_out(m) for m in held)
    assert {"linear", "reversal", "arc", "two_segment", "pulse"} <= {m.family for m in held}
    assert any(m.family == "two_segment" and abs(abs(m.params["turn"]) - 90) < 1e-9 for m in held)  # an L-path
    rng = np.random.default_rng(0)
    samples = [W.sample_training_motion(rng) for _ in range(20000)]
    assert not any(W.is_held_out(m) for m in samples)
    assert {m.family for m in samples} == set(W.FAMILIES)
    # No per-frame step of any training clip (any frame count) points into the held-out sector.
    sector = W.HELD_OUT["direction_sector"]
    for m in samples[:2000]:
        for frames in (8, 14):
            steps = np.diff(W.motion_trajectory(m, frames)[0], axis=0)
            steps = steps[np.linalg.norm(steps, axis=1) > 1e-9]
            angles = np.degrees(np.arctan2(-steps[:, 1], steps[:, 0])) % 360
            assert not np.any((angles >= sector[0]) & (angles <= sector[1])), m
    # ... and every training motion fits the largest sprite.
    assert all(W.fits(m) for m in samples[:2000])


def test_is_held_out_regions():
    assert W.is_held_out(W.Motion("linear", {"angle": 135, "distance": 0.3}))
    assert W.is_held_out(W.Motion("linear", {"angle": 135 - 360, "distance": 0.3}))
    assert not W.is_held_out(W.Motion("linear", {"angle": 45, "distance": 0.3}))
    assert W.is_held_out(W.Motion("reversal", {"angle": 315, "distance": 0.3, "turn_at": 0.3}))  # returns up-left
    assert W.is_held_out(W.Motion("two_segment", {"angle": 0, "turn": -90, "switch": 0.5, "distance": 0.3}))
    assert not W.is_held_out(W.Motion("two_segment", {"angle": 0, "turn": -45, "switch": 0.5, "distance": 0.3}))
    assert W.is_held_out(W.Motion("arc", {"radius": 0.2, "start_angle": 0, "sweep": 90}))
    assert not W.is_held_out(W.Motion("arc", {"radius": 0.12, "start_angle": 270, "sweep": 90}))  # moves 0..90
    assert W.is_held_out(W.Motion("arc", {"radius": 0.12, "start_angle": 0, "sweep": 90}))  # moves 90..180
    assert W.is_held_out(W.Motion("two_segment", {"angle": 180, "turn": -120, "switch": 0.5, "distance": 0.3}))
    assert W.is_held_out(W.Motion("pulse", {"amplitude": -0.4, "cycles": 1.0}))
    assert not W.is_held_out(W.Motion("still"))


def test_motion_trajectories_and_transfer():
    scene = W.target_scenes(1)[0]
    m = W.Motion("linear", {"angle": 90.0, "distance": 0.25})  # straight up
    traj = W.apply_motion_to_target(m, scene, frames=8, size=64)
    np.testing.assert_allclose(traj.centers[-1] - traj.centers[0], [0.0, -16.0], atol=1e-9)
    np.testing.assert_allclose(traj.centers[0], np.array(scene.position) * 64)
    # The transfer is size-independent (fractions), and clipping keeps the sprite inside near the border.
    t32 = W.apply_motion_to_target(m, scene, frames=8, size=32)
    np.testing.assert_allclose(t32.centers * 2, traj.centers, atol=1e-9)
    far = W.apply_motion_to_target(W.Motion("linear", {"angle": 0.0, "distance": 0.9}), scene)
    assert far.clipped[-1] and not far.clipped[0] and far.centers[-1, 0] == pytest.approx(64 - far.radii[-1] - W.EDGE_PX)
    rev = W.motion_trajectory(W.held_out_motions()[1], 8)[0]
    assert np.argmax(rev[:, 0]) == 4 and np.allclose(rev[-1], 0)  # reversal turns at frame 4, comes back
    lp = W.motion_trajectory(W.held_out_motions()[4], 9)[0]
    assert np.allclose(lp[4], [0, 0.2]) and np.allclose(lp[8], [0.2, 0.2])  # L-path: down then right
    # Held-out references render without clipping; all held-out motions fit the target scenes.
    assert not any(c.clipped.any() for c in W.held_out_references())
    assert not any(W.apply_motion_to_target(m, t).clipped.any() for m in W.held_out_motions() for t in W.target_scenes())


def test_target_scenes_differ():
    targets = W.target_scenes(5, seed=0)
    assert len({t.shape for t in targets}) == 5
    assert len({t.position for t in targets}) == 5
    assert len({t.background.color0 for t in targets}) == 5
    colors = np.array([t.sprite_color for t in targets])
    d = np.linalg.norm(colors[:, None] - colors[None], axis=-1)
    assert d[~np.eye(5, dtype=bool)].min() > 0.3
    for ref in W.held_out_references(targets=targets):
        for t in targets:
            assert np.linalg.norm(ref.sprite_color.numpy() - np.array(t.sprite_color)) >= W.MIN_SPRITE_SPRITE_DIST


def test_motion_features():
    f = W.motion_features(W.held_out_motions()[0], frames=8)
    assert f["per_frame"].shape == (8, len(W.PER_FRAME_FEATURES)) and f["summary"].shape == (len(W.SUMMARY_FEATURES),)
    pf = f["per_frame"]
    assert np.allclose(pf[0], 0) and pf[-1, 3] == 1.0
    assert pf[-1, 0] < 0 and pf[-1, 1] < 0  # up-left: x decreases, y decreases (y down)
    s = dict(zip(f["summary_names"], f["summary"], strict=True))
    assert s["path_length"] == pytest.approx(0.28, abs=1e-6) and s["max_scale_dev"] == 0
    pulse = W.motion_features(W.held_out_motions()[6], frames=8)
    assert (
        np.allclose(pulse["per_frame"][:, :2], 0)
        and dict(zip(pulse["summary_names"], pulse["summary"], strict=True))["max_scale_dev"] > 0.3
    )
    pan = W.motion_features(W.held_out_motions()[7], frames=8)["per_frame"]
    assert np.allclose(pan[:, 4:], pan[:, :2])


def test_tracking_is_subpixel_accurate():
    errors, area_errors = {s: [] for s in W.SHAPES}, []
    rng = np.random.default_rng(5)
    for i in range(40):
        shape = W.SHAPES[i % len(W.SHAPES)]
        motion = W.sample_training_motion(rng, families=["linear", "two_segment", "arc", "reversal", "pulse", "pan"])
        clip = W.render_clip(W.random_scene(rng, motion, shape=shape), motion)
        centers, areas = M.track_sprite(clip.frames, clip.sprite_color)
        errors[shape].append(np.linalg.norm(centers - clip.centers.numpy(), axis=1))
        area_errors.append(np.abs(areas / clip.areas.numpy() - 1))
    for shape, e in errors.items():
        assert np.mean(e) < 0.3 and np.max(e) < 0.5, (shape, np.mean(e), np.max(e))
    assert np.mean(area_errors) < 0.02 and np.max(area_errors) < 0.06
    # Known background: same answer.
    clip = W.render_clip(W.target_scenes(1)[0], W.held_out_motions()[2])
    c_known, _ = M.track_sprite(clip.frames, clip.sprite_color, background=clip.backgrounds)
    assert np.abs(c_known - clip.centers.numpy()).max() < 0.1
    # Nothing of that colour: NaN and zero area.
    c_none, a_none = M.track_sprite(torch.full((3, 16, 16, 3), 0.5), [1.0, 0.0, 0.0])
    assert np.isnan(c_none).all() and (a_none == 0).all()


def test_metrics_score_ideal_still_and_reversed():
    targets = W.target_scenes()
    for ref in W.held_out_references(targets=targets):
        for target in targets[:2]:
            ideal = W.render_clip(target, ref.motion)
            scores = M.evaluate_transfer(ideal.frames, ideal, ref.sprite_color)
            assert scores["trajectory_error_px"] < 0.2 and scores["area_kept"] > 0.98 and scores["lost_frames"] == 0
            assert scores["leakage"] == 0.0
            if ref.motion.family != "pulse":
                assert scores["direction_agreement"] > 0.99
            else:
                assert np.isnan(scores["direction_agreement"])
    target, motion = targets[0], W.held_out_motions()[0]
    ideal = W.render_clip(target, motion)
    still = W.render_clip(target, W.Motion("still"))
    s = M.evaluate_transfer(still.frames, ideal)
    assert s["trajectory_error_px"] > 5.0 and s["direction_agreement"] == 0.0
    backwards = M.evaluate_transfer(ideal.frames.flip(0), ideal)
    assert backwards["direction_agreement"] < -0.99 and backwards["trajectory_error_px"] > 5.0
    opposite = W.render_clip(target, W.Motion("linear", {"angle": 315.0, "distance": 0.28}))
    assert M.evaluate_transfer(opposite.frames, ideal)["direction_agreement"] < -0.99
    # area_kept: a shrunken sprite keeps less than all of its area.
    assert M.area_kept([50.0, 100.0, np.nan], 100.0) == pytest.approx(0.5)
    assert M.trajectory_error([[0, 0], [3, 4], [np.nan, np.nan]], [[0, 0], [0, 0], [0, 0]], lost_px=10.0) == pytest.approx(7.5)


def test_leakage():
    ref = W.held_out_references()[0]
    target = W.target_scenes()[1]
    clip = W.render_clip(target, ref.motion)
    assert M.leakage(clip.frames, ref.sprite_color, clip.sprite_color) == 0.0
    painted = clip.frames.clone()
    painted[:, 2:10, 2:10] = ref.sprite_color
    leak = M.leakage(painted, ref.sprite_color, clip.sprite_color)
    assert leak == pytest.approx(64 / 64**2, rel=0.05)
    # A patch of the TARGET's colour is not leakage.
    painted[:, 2:10, 2:10] = clip.sprite_color
    assert M.leakage(painted, ref.sprite_color, clip.sprite_color) == 0.0


def test_strip_png(tmp_path):
    clips = [W.render_clip(W.target_scenes(2)[i], m) for i, m in enumerate(W.held_out_motions()[:2])]
    path = M.strip([c.frames for c in clips], ["a", "b"], tmp_path / "strip.png", zoom=1, label_width=40)
    im = Image.open(path)
    assert im.size == (40 + 8 * 66, 2 * 66)


# -- the class-coupled world (issue #28) --------------------------------------------------------------------------------


def test_class_coupled_world_each_class_makes_only_its_family_never_held_out():
    from motion_world import classes as C

    rng = np.random.default_rng(5)
    clips = [C.sample_training_clip(rng) for _ in range(80)]
    share = C.family_share(clips)
    assert set(share) == {c.name for c in C.CLASSES}
    assert all(share[c.name] == {c.family: 1.0} for c in C.CLASSES)
    assert not any(W.is_held_out(c.motion) or c.motion.family == C.NO_CLASS_FAMILY for c in clips)
    for clip in clips:  # the look says the class: its shape and a hue in its band
        sprite_class = C.class_of(clip.scene)
        hue = colorsys.rgb_to_hsv(*clip.scene.sprite_color)[0]
        lo, hi = sprite_class.hue
        assert lo <= hue <= hi or lo <= hue - 1 <= hi, (sprite_class.name, hue)
        assert not clip.clipped.any()


def test_class_coupled_test_cases_cross_classes_and_cover_the_questions():
    from motion_world import classes as C

    cases = C.test_cases(40, seed=0)
    assert len(cases) == 40 and sum(len(c.targets) for c in cases) == 120
    for case in cases:
        reference_class = C.class_of(case.reference.scene)
        assert sorted(C.class_of(t).name for t in case.targets) == sorted(c.name for c in C.CLASSES if c != reference_class)
        family = case.reference.motion.family
        assert (family == C.NO_CLASS_FAMILY) == (case.kind == "no family")
        assert case.kind == "no family" or family == reference_class.family
    assert {(c.kind, c.held_out) for c in cases} >= {("family", False), ("family", True), ("no family", False)}
    again = C.test_cases(40, seed=0)
    assert all(torch.equal(a.reference.frames, b.reference.frames) and a.targets == b.targets for a, b in zip(cases, again, strict=True))
    assert not torch.equal(cases[0].reference.frames, C.test_cases(1, seed=1)[0].reference.frames)
