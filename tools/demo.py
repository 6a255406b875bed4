"""The main job, as a user runs it: a real ComfyUI server, headless, with the pack installed, runs the
shipped workflow workflows/reenact_5_motion_world_demo.json on the embedded default model (Motion
World, bundled with the pack): it learns the motion of the bundled reference clip and applies it to
the bundled target image. The result video, a side-by-side strip (reference | result), the learned
embedding and the loss curve are copied to a folder this prints.

Run it with ``./dev.sh demo`` (which sets everything up first).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageSequence

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = REPO / "workflows" / "reenact_5_motion_world_demo.json"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cache = Path(os.environ.get("REENACT_CACHE", Path.home() / ".cache" / "reenact-anything"))
    parser.add_argument("--output", type=Path, default=cache / "demo-output", help="folder for the results")
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI_ROOT"), help="ComfyUI checkout (./dev.sh sets it)")
    args = parser.parse_args(argv)
    if not args.comfyui:
        print("no ComfyUI: run ./dev.sh demo, or pass --comfyui /path/to/ComfyUI", file=sys.stderr)
        return 2

    from reenact_core.fileformat import load_embedding
    from reenact_core.video import load_reference_video
    from testkit.comfy_server import ComfyServer, execution_error
    from testkit.media import write_video
    from tools.workflow_convert import ui_to_api

    out = args.output.resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    started = time.perf_counter()
    print(f"starting ComfyUI ({args.comfyui}) headless with the pack ...", flush=True)
    with ComfyServer(args.comfyui, out / "comfyui") as server:
        print(f"  up at {server.url} in {time.perf_counter() - started:.0f} s; queueing {WORKFLOW.name}", flush=True)
        prompt = ui_to_api(json.loads(WORKFLOW.read_text()), server.get("/object_info"))
        t0 = time.perf_counter()
        entry = server.run(prompt, timeout=1800)
        error = execution_error(entry)
        if error:
            print(f"the workflow failed in {error.get('node_type')}: {error.get('exception_message')}", file=sys.stderr)
            return 1
        print(f"  workflow ran in {time.perf_counter() - t0:.0f} s", flush=True)
        infos = [info for output in entry["outputs"].values() for info in output.get("images", []) + output.get("motion_embeddings", [])]
        paths = [server.output_path(info) for info in infos]
        video = next(p for p in paths if p.suffix == ".webp")  # SaveAnimatedWEBP
        curve = next(p for p in paths if p.suffix == ".png")  # the loss curve preview
        embedding = next(p for p in paths if p.suffix == ".safetensors")  # SaveMotionEmbedding
        reference = load_reference_video(server.base / "input" / "reenact_motion_world_reference.mp4").frames.numpy()

    frames = np.stack([np.asarray(f.convert("RGB"), dtype=np.float32) / 255 for f in ImageSequence.Iterator(Image.open(video))])
    shutil.copyfile(video, out / "result.webp")
    write_video(frames, out / "result.mp4", fps=6)
    shutil.copyfile(embedding, out / "motion_embedding.safetensors")
    shutil.copyfile(curve, out / "loss_curve.png")
    side_by_side(reference, frames, out / "strip.png")
    meta = load_embedding(out / "motion_embedding.safetensors").metadata
    print(f"done in {time.perf_counter() - started:.0f} s; held-out inversion loss {float(meta['initial_loss']):.4f} -> {float(meta['final_loss']):.4f}")
    print(f"results in {out}:")
    for name in ("result.mp4", "result.webp", "strip.png", "motion_embedding.safetensors", "loss_curve.png"):
        print(f"  {out / name}")
    return 0


def side_by_side(reference: np.ndarray, result: np.ndarray, path: Path, zoom: int = 3) -> None:
    """Two rows, frame by frame: the reference clip, then the target animated with its motion."""
    rows = [("reference", reference), ("result", result[: len(reference)])]
    h, w = reference.shape[1:3]
    label = 90
    canvas = Image.new("RGB", (label + len(reference) * (w * zoom + 4), len(rows) * (h * zoom + 4)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, (name, frames) in enumerate(rows):
        y = r * (h * zoom + 4)
        draw.text((6, y + h * zoom // 2 - 6), name, fill=(0, 0, 0))
        for i, frame in enumerate(frames):
            tile = Image.fromarray((np.clip(frame, 0, 1) * 255 + 0.5).astype(np.uint8)).resize((w * zoom, h * zoom), Image.NEAREST)
            canvas.paste(tile, (label + i * (w * zoom + 4), y))
    canvas.save(path)


if __name__ == "__main__":
    sys.exit(main())
