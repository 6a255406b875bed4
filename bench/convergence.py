"""Inversion convergence: held-out loss against step for the defaults and alternatives.

    COMFYUI_ROOT=... python -m bench.convergence            # ~15 min on 2 CPU cores
    COMFYUI_ROOT=... python -m bench.convergence --quick    # a smoke run (~2 min)

On the Motion World model (models/motion_world.safetensors), one held-out reference motion, through
the pack's own inversion code (the node's trainable copy of the model and reenact_core.invert). Every
variant is scored at checkpoints with the same fixed evaluation draws (the default sigma
distribution), so the numbers are comparable across learning rates, schedules and sigma settings.
The long run (default settings, --long steps) gives the loss the method can reach; the table says
at which step each variant first comes within 5% of it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from bench._common import context_dim
from devkit.motion_world import world

REPO = Path(__file__).resolve().parent.parent
CHECKPOINTS = (25, 50, 100, 150, 200, 300, 400, 600, 800, 1000, 1500, 2000, 3000, 5000)


def variants(default_lr: float) -> dict[str, dict]:
    """Settings tried against the node's defaults (InversionConfig overrides)."""
    return {
        "default": {},
        "lr x3": {"learning_rate": default_lr * 3},
        "lr /3": {"learning_rate": default_lr / 3},
        "cosine schedule": {"schedule": "cosine"},
        "lr x3 + cosine": {"learning_rate": default_lr * 3, "schedule": "cosine"},
        "lower sigmas (log-mean 1.0)": {"sigma_log_mean": 1.0},
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="motion_world.safetensors")
    parser.add_argument("--steps", type=int, default=0, help="steps of each variant (0: 3x the node's default)")
    parser.add_argument("--long", type=int, default=5000, help="steps of the long reference run")
    parser.add_argument("--reference", default="l_path_down_right", help="held-out motion name")
    parser.add_argument("--only", default="", help="comma-separated variant names to run (the long run always runs)")
    parser.add_argument("--quick", action="store_true", help="60-step variants, 200-step long run")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "convergence.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.long = 60, 200

    from devkit.comfy_env import load_comfyui, load_pack, pack_submodule, run_node

    comfy = load_comfyui(use_pytorch_cross_attention=True)
    pack = load_pack(comfy)
    core = pack_submodule(pack, "reenact_core.inversion")
    nodes = pack_submodule(pack, "nodes.comfy_denoiser")
    embedding_cls = pack_submodule(pack, "reenact_core.embedding").MotionEmbedding
    inputs = pack.NODE_CLASS_MAPPINGS["MotionTextualInversion"].INPUT_TYPES()["required"]
    default_steps, default_lr = inputs["steps"][1]["default"], inputs["learning_rate"][1]["default"]
    tokens = inputs["tokens_per_frame"][1]["default"]
    steps = args.steps or 3 * default_steps

    model, _, vae = run_node(comfy, "MotionWorldLoader", model_name=args.model)
    clip = next(c for c in world.held_out_references(8, 64) if c.motion.name == args.reference)
    base_config = core.InversionConfig(steps=steps, learning_rate=default_lr, tokens_per_frame=tokens, seed=0)
    with torch.inference_mode(False), torch.no_grad():
        latents = core.encode_training_clips(clip.frames, lambda x: model.model.process_latent_in(vae.encode(x)), base_config)
    dim = context_dim(model)
    eval_sigmas = core.evaluation_sigmas(base_config, 16)

    table = {}
    runs = variants(default_lr)
    if args.only:
        keep = {name.strip() for name in args.only.split(",")}
        runs = {name: overrides for name, overrides in runs.items() if name in keep}
    runs[f"long run ({args.long} steps)"] = {"steps": args.long}
    with torch.inference_mode(False), nodes.trainable_svd(model, torch.float32, False) as (base, device):
        denoiser = nodes.ComfySVDDenoiser(base, device, 6, 127, 0.0)
        for name, overrides in runs.items():
            config = dataclasses.replace(base_config, **overrides)
            init = core.initial_tokens(8, config, torch.Generator().manual_seed(0), None, dim=dim)
            scores: dict[int, float] = {}

            def on_step(info, scores=scores, config=config):
                if info.step in CHECKPOINTS or info.step == config.steps:
                    emb = embedding_cls(spatial=info.spatial.detach().cpu().clone(), temporal=info.temporal.detach().cpu().clone())
                    scores[info.step] = core.evaluate_loss(denoiser, latents[0].to(device), emb, eval_sigmas, seed=123)

            started = time.perf_counter()
            core.invert(denoiser, latents.to(device), init, config, on_step)
            table[name] = {"scores": scores, "seconds": time.perf_counter() - started, "config": overrides}
            print(f"{name}: " + ", ".join(f"{s}:{v:.4f}" for s, v in sorted(scores.items())), flush=True)

    long_name = next(k for k in table if k.startswith("long run"))
    target = min(table[long_name]["scores"].values())
    print(f"\nMotion World, held-out '{args.reference}', {tokens} tokens/frame; long run best held-out loss {target:.4f}")
    print(f"{'variant':32} {'final loss':>10} {'/ long':>7} {'steps to within 5%':>19} {'s/step':>7}")
    for name, row in table.items():
        scores = row["scores"]
        last = scores[max(scores)]
        within = next((s for s, v in sorted(scores.items()) if v <= 1.05 * target), None)
        row["steps_to_within_5pct"] = within
        per_step = row["seconds"] / max(scores)
        print(f"{name:32} {last:10.4f} {last / target:7.3f} {str(within or 'not reached'):>19} {per_step:7.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"reference": args.reference, "default_steps": default_steps, "long_best": target, "runs": table}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
