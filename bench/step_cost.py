"""Cost of one inversion step versus one plain UNet forward of the same model, measured side by side.

    COMFYUI_ROOT=... OMP_NUM_THREADS=1 python -m bench.step_cost --model test            # CPU, test checkpoint
    COMFYUI_ROOT=... OMP_NUM_THREADS=1 python -m bench.step_cost --model test --quick    # smallest (the test's)
    COMFYUI_ROOT=... python -m bench.step_cost --model motion-world                      # motion_world/motion_world.safetensors
    COMFYUI_ROOT=... python -m bench.step_cost --model svd-full --out bench/results/svd_full_<gpu>.json     # GPU
    COMFYUI_ROOT=... python -m bench.step_cost --model svd-xt-full --out bench/results/svd_xt_full_<gpu>.json
    COMFYUI_ROOT=... python -m bench.step_cost --model svd-full --frames 2 --width 64 --height 64   # CPU smoke run

A step is exactly what the Motion Textual Inversion node runs per step: ``reenact_core.inversion.invert``
with ``steps=1`` (no evaluation draws) on the node's private frozen copy of the UNet
(``nodes.comfy_denoiser.trainable_model``: weights frozen, SDPA attention, optional per-layer gradient
checkpointing): sample sigma and noise, forward, EDM loss, backward down to the embedding only, AdamW.
The forward is one call of the same denoiser under ``torch.inference_mode()``. Per repeat the forward,
the step without and the step with checkpointing run one after the other (two private copies of the
model are loaded at once), in rotating order; times are medians after warm-up.

Memory: on CUDA, ``torch.cuda.max_memory_allocated`` above what was allocated before the call (weights
and inputs excluded), plus the total peak; on CPU, the activation bytes autograd keeps for the backward
pass (``saved_tensors_hooks``, weight storages excluded; a forward under inference mode keeps none), so
the CPU memory ratio is checkpointing versus no checkpointing. ``preflight`` is the node's own estimate
(``activation_profile`` / ``activation_bytes``) for the same size. FLOPs are counted with
``torch.utils.flop_counter.FlopCounterMode`` (CPU SDPA kernels added), in separate untimed runs.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from . import _common as C

TARGETS = {False: 2.2, True: 3.2}  # step / forward, without and with gradient checkpointing
MODEL_FRAMES = {"test": 4, "motion-world": 8, "svd-full": 14, "svd-xt-full": 25}
FPS, MOTION_BUCKET, AUG = 6, 127, 0.0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=C.MODELS, default="test")
    parser.add_argument("--frames", type=int, default=0, help="0: 4 (test), 8 (motion-world), 14 (svd-full), 25 (svd-xt-full)")
    parser.add_argument("--width", type=int, default=0, help="with --height: one size; default 64x64 on the small models, "
                        "1024x576 and the node's default optimisation size on the full-size ones")
    parser.add_argument("--height", type=int, default=0)
    parser.add_argument("--dtypes", default="", help="comma-separated of fp32,bf16,fp16; default fp32,bf16 (small models), bf16 (full-size)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 matrix rate (default: from a table of GPUs)")
    parser.add_argument("--no-flops", action="store_true", help="skip counting FLOPs")
    parser.add_argument("--no-estimate", action="store_true", help="skip the preflight's memory estimate")
    parser.add_argument("--quick", action="store_true", help="smallest run: 2 frames at 32x32, 1 repeat (the test uses it)")
    parser.add_argument("--out", type=Path, default=None, help="write the raw numbers as JSON (bench/results/<name>.json)")
    args = parser.parse_args(argv)
    full = args.model.endswith("-full")
    if args.quick:
        args.frames = args.frames or 2
        args.width, args.height = args.width or 32, args.height or 32
        args.repeats, args.warmup = 1, min(args.warmup, 1)
    args.frames = args.frames or MODEL_FRAMES[args.model]
    args.dtype_names = [d.strip() for d in (args.dtypes or ("bf16" if full else "fp32,bf16")).split(",") if d.strip()]
    for name in args.dtype_names:
        if name not in C.DTYPES:
            parser.error(f"unknown dtype {name!r}")
    if bool(args.width) != bool(args.height):
        parser.error("give both --width and --height")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = C.pick_device(args.device)
    env = C.Env(device)
    name = C.device_name(device)
    peak = C.peak_bf16_tflops(name, args.peak_tflops) if device == "cuda" or args.peak_tflops else None
    default_steps = env.node_default("MotionTextualInversion", "steps")
    if args.width:
        sizes = [(args.width, args.height)]
    elif args.model.endswith("-full"):
        node_size = (env.node_default("MotionTextualInversion", "width"), env.node_default("MotionTextualInversion", "height"))
        sizes = [(1024, 576)] + ([node_size] if node_size != (1024, 576) else [])
    else:
        sizes = [(64, 64)]
    result = C.header("step_cost", env, args.model)
    result.update(
        frames=args.frames, sizes=[f"{w}x{h}" for w, h in sizes], repeats=args.repeats, warmup=args.warmup,
        default_steps=default_steps, peak_bf16_tflops=peak, targets={"no_checkpointing": TARGETS[False], "checkpointing": TARGETS[True]},
        memory_measure=("cuda max_memory_allocated above the allocation before the call" if device == "cuda"
                        else "activation bytes saved for backward (saved_tensors_hooks, weights excluded)"),
        rows=[],
    )
    for dtype_name in args.dtype_names:
        result["rows"] += measure_dtype(env, args, C.DTYPES[dtype_name], dtype_name, sizes, peak, default_steps)
    print(render(result))
    C.save(result, args.out)
    return result


def measure_dtype(env, args, dtype, dtype_name, sizes, peak, default_steps) -> list[dict]:
    cd = env.sub("nodes.comfy_denoiser")
    full = args.model.endswith("-full")
    source = env.full_svd(dtype) if full else env.load(args.model)[0]
    profiles = []
    dim = C.context_dim(source)

    def capture(base, device):
        if not args.no_estimate:
            probe = cd.ComfySVDDenoiser(base, device, FPS, MOTION_BUCKET, AUG)
            profiles.append(cd.activation_profile(base, probe, env.node_default("MotionTextualInversion", "tokens_per_frame"), dim, device))

    rows = []
    try:
        with contextlib.ExitStack() as stack:
            plain, device = stack.enter_context(cd.trainable_model(source, dtype, False, preflight=capture))
            ckpt, _ = stack.enter_context(cd.trainable_model(source, dtype, True))
            for width, height in sizes:
                rows += measure_size(env, args, (plain, ckpt), device, dtype_name, width, height, profiles[0] if profiles else None,
                                     peak, default_steps, dim)
    finally:
        if full:
            env.mm.unload_all_models()  # the source patcher is one of ComfyUI's loaded models
            del source
        gc.collect()
        if env.device == "cuda":
            torch.cuda.empty_cache()
    return rows


def measure_size(env, args, bases, device, dtype_name, width, height, profile, peak, default_steps, dim) -> list[dict]:
    inv = env.sub("reenact_core.inversion")
    cd = env.sub("nodes.comfy_denoiser")
    frames, dev = args.frames, env.device
    tokens = env.node_default("MotionTextualInversion", "tokens_per_frame")
    config = inv.InversionConfig(steps=1, eval_draws=0, tokens_per_frame=tokens, seed=0)
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, frames, 4, height // 8, width // 8, generator=gen).to(device)
    init = inv.initial_tokens(frames, config, gen, dim=dim)
    plain_den, ckpt_den = (cd.ComfySVDDenoiser(b, device, FPS, MOTION_BUCKET, AUG) for b in bases)
    sigma = torch.tensor(math.exp(config.sigma_log_mean), device=device)
    noisy = (latents[0] + sigma * torch.randn(latents[0].shape, generator=gen).to(device)).contiguous()
    spatial, temporal = init.spatial.to(device), init.temporal.to(device)

    def forward():
        with torch.inference_mode():
            plain_den(noisy, sigma, spatial, temporal, latents[0, 0])

    runs = {
        "forward": forward,
        "step": lambda: inv.invert(plain_den, latents, init, config),
        "step_ckpt": lambda: inv.invert(ckpt_den, latents, init, config),
    }
    errors: dict[str, str] = {}
    if dev == "cuda" and profile is not None:  # the preflight's verdict: skip what cannot fit instead of thrashing
        free = torch.cuda.mem_get_info()[0]
        for key, ckpt in (("step", False), ("step_ckpt", True)):
            need = cd.activation_bytes(profile, frames, height, width, ckpt)
            if need > free:
                errors[key] = f"skipped: the preflight estimates {need / 2**30:.1f} GB of activations, {free / 2**30:.1f} GB free"

    def attempt(key, measure):
        if key in errors:
            return None
        try:
            return measure(runs[key])
        except torch.cuda.OutOfMemoryError as e:
            errors[key] = f"CUDA out of memory: {str(e).splitlines()[0]}"
            gc.collect()
            torch.cuda.empty_cache()
            return None

    times = {k: [] for k in runs}
    order = list(runs)
    for _ in range(args.warmup):
        for key in order:
            attempt(key, lambda fn: C.timed(fn, dev))
    for r in range(args.repeats):
        for key in order[r % 3 :] + order[: r % 3]:  # rotate, so no run always follows the same one
            t = attempt(key, lambda fn: C.timed(fn, dev))
            if t is not None:
                times[key].append(t)
    memory = {key: attempt(key, lambda fn, key=key: measure_memory(fn, bases[key == "step_ckpt"], dev, key)) or {} for key in runs}
    flops = {key: (None if args.no_flops else attempt(key, count_flops)) for key in runs}
    weights = sum(p.numel() * p.element_size() for p in bases[0].diffusion_model.parameters())

    t_fwd = C.median(times["forward"])
    rows = []
    for key in runs:
        ckpt = key == "step_ckpt"
        t = C.median(times[key])
        mem = memory[key].get("bytes")
        row = {
            "size": f"{width}x{height}", "frames": frames, "dtype": dtype_name, "run": key,
            "checkpointing": ckpt if key != "forward" else None,
            "seconds": t, "seconds_all": times[key], "time_ratio": t / t_fwd,
            "target": None if key == "forward" else TARGETS[ckpt],
            "memory_bytes": mem,
            # CUDA: one private UNet copy (what the node holds during the loop) plus this run's peak above it
            "vram_bytes": weights + mem if (dev == "cuda" and mem is not None) else None,
            "max_memory_allocated": memory[key].get("peak_total"),
            "unet_weight_bytes": weights,
            "flops": flops[key], "tflops_per_s": flops[key] / t / 1e12 if (flops[key] and math.isfinite(t)) else None,
            "error": errors.get(key),
        }
        if key != "forward":
            row["minutes_per_motion"] = t * default_steps / 60
            if profile is not None:
                row["preflight_estimate_bytes"] = cd.activation_bytes(profile, frames, height, width, ckpt)
        if peak and dtype_name == "bf16" and row["tflops_per_s"]:
            row["fraction_of_bf16_peak"] = row["tflops_per_s"] / peak
        rows.append(row)
    base_mem = (memory["forward"] if dev == "cuda" else memory["step"]).get("bytes")
    for row in rows:
        row["memory_ratio"] = row["memory_bytes"] / base_mem if (base_mem and row["memory_bytes"] is not None) else None
    return rows


def measure_memory(fn, base, dev: str, key: str) -> dict:
    if dev == "cuda":
        with C.CudaPeak() as m:
            fn()
        return {"bytes": m.peak, "peak_total": m.peak_total}
    if key == "forward":
        return {"bytes": 0}  # inference mode: autograd keeps nothing
    weights = {t.untyped_storage().data_ptr() for t in list(base.parameters()) + list(base.buffers())}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return {"bytes": sum(seen.values())}


def _cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def count_flops(fn) -> int:
    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):  # not in torch's own table
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _cpu_sdpa_backward
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return int(counter.get_total_flops())


def render(result: dict) -> str:
    cuda = result["device_type"] == "cuda"
    unit, scale = ("GB", 2**30) if cuda else ("MB", 2**20)
    digits = ".2f" if cuda else ".1f"
    mem_head = f"act. peak {unit} (x fwd)" if cuda else f"saved {unit} (x no-ckpt)"
    headers = ["size", "dtype", "run", "s/step", "x fwd", "target", "ok", mem_head, f"preflight {unit}", "TFLOP/s", "% bf16 peak",
               f"min/motion@{result['default_steps']}"]
    if cuda:
        headers.insert(8, "VRAM GB")
    rows, notes = [], []
    for r in result["rows"]:
        label = {"forward": "forward (inference)", "step": "step", "step_ckpt": "step + ckpt"}[r["run"]]
        ratio = r["time_ratio"]
        ok = "-" if (r["target"] is None or ratio is None or not math.isfinite(ratio)) else ("yes" if ratio <= r["target"] else "NO")
        if r["memory_bytes"] is None or (not cuda and r["run"] == "forward"):
            mem = "-"
        else:
            mem = f"{r['memory_bytes'] / scale:{digits}} ({C.fmt(r['memory_ratio'], '.2f', 'x')})"
        estimate = r.get("preflight_estimate_bytes")
        cells = [r["size"], r["dtype"], label, C.fmt(r["seconds"], ".3f"), C.fmt(ratio, ".2f", "x"),
                 "-" if r["target"] is None else f"<={r['target']}x", ok, mem,
                 C.fmt(estimate / scale if estimate is not None else None, digits),
                 C.fmt(r["tflops_per_s"], ".1f" if cuda else ".3f"),
                 C.fmt(100 * r["fraction_of_bf16_peak"] if r.get("fraction_of_bf16_peak") is not None else None, ".1f", "%"),
                 C.fmt(r.get("minutes_per_motion"), ".1f")]
        if cuda:
            cells.insert(8, C.fmt(r["vram_bytes"] / 2**30 if r.get("vram_bytes") is not None else None, ".2f"))
        rows.append(cells)
        if r.get("error"):
            notes.append(f"  {r['size']} {r['dtype']} {label}: {r['error']}")
    title = (f"Inversion step vs plain forward: model {result['model']}, {result['frames']} frames, {result['device']}, "
             f"median of {result['repeats']} after {result['warmup']} warm-up; memory = {result['memory_measure']}")
    if cuda:
        title += "; VRAM = one private UNet copy + the activation peak"
    if result.get("peak_bf16_tflops"):
        title += f"; bf16 peak {result['peak_bf16_tflops']:.0f} TFLOPS"
    return "\n".join([title, C.table(headers, rows)] + notes)


if __name__ == "__main__":
    main()
