"""Cost of Apply Motion Embedding at sampling time: the stock SVD graph versus the same graph with the node.

    COMFYUI_ROOT=... OMP_NUM_THREADS=1 python -m bench.apply_overhead --model test
    COMFYUI_ROOT=... OMP_NUM_THREADS=1 python -m bench.apply_overhead --model test --quick     # smallest (the test's)
    COMFYUI_ROOT=... OMP_NUM_THREADS=1 python -m bench.apply_overhead --model motion-world
    COMFYUI_ROOT=... python -m bench.apply_overhead --checkpoint svd.safetensors --frames 14 --width 1024 --height 576 --steps 20   # GPU

Both graphs are the shipped apply workflow's, run in-process through the nodes (run_node), same
steps, size, seed and cfg:

    stock:  SVD_img2vid_Conditioning -> VideoLinearCFGGuidance -> KSampler -> VAEDecode
    motion: SVD_img2vid_Conditioning -> ApplyMotionEmbedding -> VideoLinearCFGGuidance -> KSampler -> VAEDecode

SVD_img2vid_Conditioning (CLIP vision + VAE encode of the target image) is identical in both and runs
once (ComfyUI caches it between runs of a graph); it is timed separately and not in the ratio. The
graphs run interleaved (ABBA...) after one warm-up each; times are medians. Memory, in one extra run
of each graph: on CUDA the peak ``max_memory_allocated`` above the allocation before the graph; on CPU
the peak RSS above the level before the graph (psutil, sampled every 2 ms, after glibc malloc_trim).
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import torch

from . import _common as C

TARGET_TIME = 1.02
MODEL_DEFAULTS = {"test": (4, 64, 64), "motion-world": (8, 64, 64)}  # frames, width, height


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("test", "motion-world"), default="test")
    parser.add_argument("--checkpoint", type=Path, default=None, help="an SVD checkpoint file instead of --model (e.g. the GPU check's full-size one)")
    parser.add_argument("--frames", type=int, default=0, help="0: 4 (test), 8 (motion-world)")
    parser.add_argument("--width", type=int, default=0, help="0: 64")
    parser.add_argument("--height", type=int, default=0, help="0: 64")
    parser.add_argument("--steps", type=int, default=10, help="sampler steps")
    parser.add_argument("--cfg", type=float, default=2.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5, help="runs of each graph (interleaved) after one warm-up each")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--quick", action="store_true", help="smallest run: 2 frames at 32x32, 2 steps, 1 repeat (the test uses it)")
    parser.add_argument("--out", type=Path, default=None, help="write the raw numbers as JSON (bench/results/<name>.json)")
    args = parser.parse_args(argv)
    frames, width, height = MODEL_DEFAULTS[args.model]
    if args.quick:
        frames, width, height = 2, 32, 32
        args.steps, args.repeats = min(args.steps, 2), 1
    args.frames, args.width, args.height = args.frames or frames, args.width or width, args.height or height
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    env = C.Env(C.pick_device(args.device))
    model, clip_vision, vae = env.load_checkpoint(args.checkpoint) if args.checkpoint else env.load(args.model)
    embedding_cls = env.sub("reenact_core.embedding").MotionEmbedding
    tokens = env.node_default("MotionTextualInversion", "tokens_per_frame")
    gen = torch.Generator().manual_seed(args.seed)
    dim = C.context_dim(model)
    embedding = embedding_cls(spatial=0.5 * torch.randn(args.frames, tokens, dim, generator=gen),
                              temporal=0.5 * torch.randn(tokens, dim, generator=gen))
    ys, xs = torch.meshgrid(torch.linspace(0, 1, args.height), torch.linspace(0, 1, args.width), indexing="ij")
    image = torch.stack([xs, ys, 0.5 * (xs + ys)], dim=-1)[None]  # [1, H, W, 3] target image

    box = {}

    def condition():
        box["cond"] = env.run("SVD_img2vid_Conditioning", clip_vision=clip_vision, init_image=image, vae=vae, width=args.width,
                              height=args.height, video_frames=args.frames, motion_bucket_id=127, fps=6, augmentation_level=0.0)

    cond_seconds = C.timed(condition, env.device)
    positive, negative, latent = box["cond"]

    def graph(with_motion: bool) -> dict:
        phases = {}
        pos, neg = positive, negative
        if with_motion:
            phases["apply"] = C.timed(lambda: box.update(pn=env.run(
                "ApplyMotionEmbedding", positive=positive, negative=negative, motion_embedding=embedding, latent=latent, strength=1.0)),
                env.device)
            pos, neg = box["pn"][:2]
        phases["guidance"] = C.timed(lambda: box.update(m=env.run("VideoLinearCFGGuidance", model=model, min_cfg=1.0)), env.device)
        phases["sample"] = C.timed(lambda: box.update(s=env.run(
            "KSampler", model=box["m"][0], seed=args.seed, steps=args.steps, cfg=args.cfg, sampler_name="euler", scheduler="karras",
            positive=pos, negative=neg, latent_image=latent, denoise=1.0)), env.device)
        phases["decode"] = C.timed(lambda: box.update(v=env.run("VAEDecode", samples=box["s"][0], vae=vae)), env.device)
        if not bool(torch.isfinite(box["v"][0]).all()):
            raise RuntimeError("the graph produced non-finite frames")
        return phases

    def measured(with_motion: bool) -> dict:
        with C.memory_meter(env.device) as meter:
            graph(with_motion)
        return {"bytes": meter.peak, "method": getattr(meter, "method", "cuda max_memory_allocated above the allocation before the graph")}

    runs = {"stock": [], "motion": []}
    memory = {}
    with _no_progress_bars():
        graph(False)  # warm-up: model loads, allocator, first-call overheads
        graph(True)
        for r in range(args.repeats):
            for name in (("stock", "motion") if r % 2 == 0 else ("motion", "stock")):
                runs[name].append(graph(name == "motion"))
        for name in ("stock", "motion"):  # memory in runs of their own: measuring must not slow the timed ones
            memory[name] = measured(name == "motion")

    result = C.header("apply_overhead", env, args.checkpoint.name if args.checkpoint else args.model)
    result.update(frames=args.frames, size=f"{args.width}x{args.height}", steps=args.steps, cfg=args.cfg, seed=args.seed,
                  repeats=args.repeats, target_time_ratio=TARGET_TIME, conditioning_seconds=cond_seconds,
                  memory_measure=memory["stock"]["method"], runs=runs, memory=memory, rows=[])
    summary = {}
    for name, reps in runs.items():
        summary[name] = {
            "graph_seconds": C.median([sum(v for k, v in p.items() if k in ("apply", "guidance", "sample", "decode")) for p in reps]),
            "sample_seconds": C.median([p["sample"] for p in reps]),
            "apply_seconds": C.median([p.get("apply", 0.0) for p in reps]),
            "memory_bytes": memory[name]["bytes"],
        }
    for name in runs:
        s, base = summary[name], summary["stock"]
        result["rows"].append(dict(
            graph=name, **s,
            time_ratio=s["graph_seconds"] / base["graph_seconds"],
            sample_ratio=s["sample_seconds"] / base["sample_seconds"],
            memory_ratio=s["memory_bytes"] / base["memory_bytes"] if base["memory_bytes"] > 0 else None,
        ))
    print(render(result))
    C.save(result, args.out)
    return result


@contextlib.contextmanager
def _no_progress_bars():
    import comfy.utils

    previous = getattr(comfy.utils, "PROGRESS_BAR_ENABLED", True)
    comfy.utils.PROGRESS_BAR_ENABLED = False
    try:
        yield
    finally:
        comfy.utils.PROGRESS_BAR_ENABLED = previous


def render(result: dict) -> str:
    unit, scale = ("GB", 2**30) if result["device_type"] == "cuda" else ("MB", 2**20)
    headers = ["graph", "graph s", "x stock", "target", "ok", "KSampler s", "x stock", "apply node s", f"memory {unit}", "x stock"]
    rows = []
    for r in result["rows"]:
        motion = r["graph"] == "motion"
        ok = "-" if not motion else ("yes" if r["time_ratio"] <= result["target_time_ratio"] else "NO")
        rows.append([
            "stock SVD" if not motion else "+ ApplyMotionEmbedding", C.fmt(r["graph_seconds"], ".3f"), C.fmt(r["time_ratio"], ".3f", "x"),
            f"<={result['target_time_ratio']}x" if motion else "-", ok, C.fmt(r["sample_seconds"], ".3f"),
            C.fmt(r["sample_ratio"], ".3f", "x"), C.fmt(r["apply_seconds"], ".4f") if motion else "-",
            C.fmt(r["memory_bytes"] / scale, ".1f" if unit == "MB" else ".2f"), C.fmt(r["memory_ratio"], ".2f", "x"),
        ])
    title = (f"Apply overhead: model {result['model']}, {result['frames']} frames at {result['size']}, {result['steps']} steps, "
             f"cfg {result['cfg']}, {result['device']}, median of {result['repeats']} interleaved after 1 warm-up; "
             f"conditioning (shared, once) {result['conditioning_seconds']:.2f} s; memory = {result['memory_measure']}")
    return f"{title}\n{C.table(headers, rows)}"


if __name__ == "__main__":
    main()
