"""The main job, end to end, in a real ComfyUI: learn the motion of a reference clip, save it, load it,
apply it to a different image, and write the video, the embedding and the loss curve to a folder.

Run with ``./dev.sh demo`` (which sets up the environment). The model is the default test checkpoint:
a structurally real SVD with RANDOM weights, since no real SVD weights can be downloaded here. The
pipeline is real; the pictures are noise until a trained model is used.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cache = Path(os.environ.get("REENACT_CACHE", Path.home() / ".cache" / "reenact-anything"))
    parser.add_argument("--output", type=Path, default=cache / "demo-output", help="folder for the results")
    parser.add_argument("--steps", type=int, default=40, help="inversion steps")
    parser.add_argument("--size", type=int, default=64, help="frame size in pixels (square)")
    parser.add_argument("--frames", type=int, default=4, help="video frames")
    args = parser.parse_args(argv)

    from devkit.comfy_env import load_comfyui, load_pack, register_model_folder, run_node
    from devkit.media import moving_square_frames, target_image, write_video
    from devkit.svd_checkpoint import ensure_svd_test_checkpoint

    out = args.output.resolve()
    shutil.rmtree(out / "comfyui", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    comfy = load_comfyui(dirs=str(out / "comfyui"))
    started = time.perf_counter()
    checkpoint = ensure_svd_test_checkpoint()
    register_model_folder(comfy, "checkpoints", checkpoint.parent)
    load_pack(comfy)

    size, frames = args.size, args.frames
    write_video(moving_square_frames(8, size, step=max(1, size // 12)), Path(comfy.folder_paths.get_input_directory()) / "reference.mp4")
    model, clip_vision, vae = run_node(comfy, "ImageOnlyCheckpointLoader", ckpt_name=checkpoint.name)

    reference, _, count = run_node(
        comfy, "LoadMotionReference", video="reference.mp4", frame_load_cap=0, skip_first_frames=0, select_every_nth=1, custom_width=0, custom_height=0
    )
    print(f"reference: {count} frames")
    t0 = time.perf_counter()
    embedding, curve = run_node(
        comfy, "MotionTextualInversion", model=model, vae=vae, motion_reference=reference, steps=args.steps, learning_rate=0.05,
        tokens_per_frame=5, video_frames=frames, width=size, height=size, seed=0, fps=6, motion_bucket_id=127,
        augmentation_level=0.0, precision="auto", gradient_checkpointing=True, clip_vision=clip_vision,
    )
    seconds = time.perf_counter() - t0
    print(f"inversion: {args.steps} steps in {seconds:.1f} s ({seconds / args.steps:.2f} s/step), "
          f"held-out loss {float(embedding.metadata['initial_loss']):.4f} -> {float(embedding.metadata['final_loss']):.4f}")

    saved = comfy.nodes.NODE_CLASS_MAPPINGS["SaveMotionEmbedding"]().save(embedding, "demo")["ui"]["text"][0]
    (reloaded,) = run_node(comfy, "LoadMotionEmbedding", embedding_name=saved)
    positive, negative, latent = run_node(
        comfy, "SVD_img2vid_Conditioning", clip_vision=clip_vision, init_image=target_image(size), vae=vae, width=size, height=size,
        video_frames=frames, motion_bucket_id=127, fps=6, augmentation_level=0.0,
    )
    positive, negative = run_node(comfy, "ApplyMotionEmbedding", positive=positive, negative=negative, motion_embedding=reloaded, latent=latent, strength=1.0)
    (guided,) = run_node(comfy, "VideoLinearCFGGuidance", model=model, min_cfg=1.0)
    (samples,) = run_node(
        comfy, "KSampler", model=guided, seed=0, steps=10, cfg=2.5, sampler_name="euler", scheduler="karras",
        positive=positive, negative=negative, latent_image=latent, denoise=1.0,
    )
    (video,) = run_node(comfy, "VAEDecode", samples=samples, vae=vae)

    embedding_file = out / "motion_embedding.safetensors"
    shutil.copyfile(Path(comfy.folder_paths.get_output_directory()) / "motion_embeddings" / saved, embedding_file)
    write_video(video, out / "result.mp4", fps=6)
    from PIL import Image

    Image.fromarray((curve[0].numpy() * 255).astype("uint8")).save(out / "loss_curve.png")
    print(f"done in {time.perf_counter() - started:.0f} s (random-weight test model: the video shows noise, the pipeline is real)")
    print(f"results in {out}:")
    for name in ("result.mp4", "motion_embedding.safetensors", "loss_curve.png"):
        print(f"  {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
