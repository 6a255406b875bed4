"""Regenerate the example inputs shipped in assets/ (deterministic).

    python -m tools.make_examples            # reference clip and target images (no ComfyUI needed)
    python -m tools.make_examples --embedding  # also the example embedding (needs COMFYUI_ROOT)

The example embedding is inverted on the random-weight test checkpoint: it exists so that the apply
workflows run out of the box, not because its motion means anything on real SVD.
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from reenact_core.embedding import NOT_A_REAL_MOTION_KEY
from testkit.media import write_video

EXAMPLES = Path(__file__).resolve().parent.parent / "assets"
WIDTH, HEIGHT, FRAMES = 256, 144, 16
WAN_FRAMES, WAN_FPS = 33, 16


def _background(seed: int, tint) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    checker = ((xx // 16 + yy // 16) % 2) * 0.08
    base = 0.35 + checker + 0.05 * rng.random((HEIGHT, WIDTH))
    return np.clip(base[..., None] * np.array(tint)[None, None, :], 0, 1)


def reference_frames(count: int = FRAMES) -> np.ndarray:
    """A red ball travelling along an arc, left to right, over a tiled floor."""
    frames = []
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    for i in range(count):
        t = i / (count - 1)
        cx = 40 + t * (WIDTH - 80)
        cy = HEIGHT - 40 - math.sin(math.pi * t) * 60
        img = _background(1, (1.0, 1.0, 1.0)).copy()
        ball = (xx - cx) ** 2 + (yy - cy) ** 2 < 16**2
        img[ball] = (0.9, 0.15, 0.1)
        frames.append(img)
    return (np.stack(frames) * 255 + 0.5).astype(np.uint8)


def target_images() -> list[np.ndarray]:
    """Two scenes to animate: a blue box on a warm floor, a green disc on a cool one."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    first = _background(2, (1.0, 0.85, 0.6)).copy()
    first[(abs(xx - 60) < 18) & (abs(yy - 96) < 18)] = (0.15, 0.3, 0.9)
    second = _background(3, (0.6, 0.8, 1.0)).copy()
    second[(xx - 70) ** 2 + (yy - 90) ** 2 < 20**2] = (0.2, 0.8, 0.25)
    return [(img * 255 + 0.5).astype(np.uint8) for img in (first, second)]


def write_inputs() -> None:
    inputs = EXAMPLES / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    write_video(reference_frames(), inputs / "reenact_example_reference.mp4", fps=8)
    # The same arc for the Wan workflows: Wan's own rate and a 4k+1 length (33 frames = 9 latent frames)
    write_video(reference_frames(WAN_FRAMES), inputs / "reenact_wan_example_reference.mp4", fps=WAN_FPS)
    for i, img in enumerate(target_images(), start=1):
        Image.fromarray(img).save(inputs / f"reenact_example_target_{i}.png", optimize=True)


MOTION_WORLD_MOTION = "l_path_down_right"  # a held-out motion: the model never saw an L-path in training


def write_motion_world_inputs() -> None:
    """The Motion World demo's bundled reference clip (lossless, 8 frames, 64x64) and target image."""
    from motion_world import world

    targets = world.target_scenes(5, seed=0)
    reference = next(c for c in world.held_out_references(8, 64, seed=0, targets=targets) if c.motion.name == MOTION_WORLD_MOTION)
    inputs = EXAMPLES / "inputs"
    write_video(reference.frames, inputs / "reenact_motion_world_reference.mp4", fps=8, lossless=True)
    target = world.render_clip(targets[1], reference.motion, 8, 64)
    Image.fromarray((target.frames[0].numpy() * 255 + 0.5).astype(np.uint8)).save(inputs / "reenact_motion_world_target.png", optimize=True)


def write_preview() -> None:
    """docs/example.png for the README: every other reference frame, then the two targets."""
    frames = reference_frames()[::3]
    gap = 6
    strip = np.full((2 * HEIGHT + gap, len(frames) * (WIDTH + gap) - gap, 3), 255, dtype=np.uint8)
    for i, frame in enumerate(frames):
        strip[:HEIGHT, i * (WIDTH + gap) : i * (WIDTH + gap) + WIDTH] = frame
    for i, target in enumerate(target_images()):
        strip[HEIGHT + gap :, i * (WIDTH + gap) : i * (WIDTH + gap) + WIDTH] = target
    (EXAMPLES.parent / "docs").mkdir(exist_ok=True)
    Image.fromarray(strip).resize((strip.shape[1] // 2, strip.shape[0] // 2), Image.LANCZOS).save(EXAMPLES.parent / "docs" / "example.png", optimize=True)


def write_embedding() -> None:
    from testkit.comfy_env import load_comfyui, load_pack, pack_submodule, register_model_folder, run_node
    from testkit.svd_checkpoint import ensure_svd_test_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        comfy = load_comfyui(dirs=tmp)
        checkpoint = ensure_svd_test_checkpoint()
        register_model_folder(comfy, "checkpoints", checkpoint.parent)
        pack = load_pack(comfy)
        shutil.copy(EXAMPLES / "inputs" / "reenact_example_reference.mp4", Path(tmp) / "input")
        model, clip_vision, vae = run_node(comfy, "ImageOnlyCheckpointLoader", ckpt_name=checkpoint.name)
        reference, _, _, _ = run_node(
            comfy, "LoadMotionReference", video="reenact_example_reference.mp4", frame_load_cap=0, skip_first_frames=0,
            select_every_nth=1, custom_width=0, custom_height=0,
        )
        embedding, _, _ = run_node(
            comfy, "MotionTextualInversion", model=model, vae=vae, motion_reference=reference, steps=30, learning_rate=0.05,
            tokens_per_frame=5, video_frames=14, width=64, height=64, seed=0, fps=6, motion_bucket_id=127,
            augmentation_level=0.0, precision="fp32", gradient_checkpointing=True, clip_vision=clip_vision,
        )
        embedding = embedding.with_metadata(
            **{
                "modelspec.title": "Reenact Anything example motion (random-weight test model)",
                "modelspec.description": "Inverted on a random-weight SVD test checkpoint so that the example workflows run "
                "out of the box. Its motion means nothing on real SVD: invert your own reference.",
                "modelspec.date": "2026-11-22T00:00:00+00:00",
                NOT_A_REAL_MOTION_KEY: "Learned on a random-weight test checkpoint so that the example workflows run out "
                "of the box: on real SVD it moves nothing meaningfully. Learn your own motion with workflow 1 "
                "(reenact_1_invert_motion) and load that file instead.",
            }
        )
        fileformat = pack_submodule(pack, "reenact_core.fileformat")
        target = EXAMPLES / "motion_embeddings" / "reenact_example_motion.safetensors"
        target.parent.mkdir(parents=True, exist_ok=True)
        fileformat.save_embedding(embedding, target)
        print(f"wrote {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embedding", action="store_true", help="also regenerate the example embedding (slow, needs COMFYUI_ROOT)")
    args = parser.parse_args()
    write_inputs()
    write_motion_world_inputs()
    write_preview()
    print(f"wrote {EXAMPLES / 'inputs'} and docs/example.png")
    if args.embedding:
        write_embedding()


if __name__ == "__main__":
    main()
