"""Inversion convergence: held-out loss against step for the defaults and alternatives.

    COMFYUI_ROOT=... python -m bench.convergence            # ~25 min on one CPU core
    COMFYUI_ROOT=... python -m bench.convergence --quick    # a smoke run (~2 min)

On the Motion World model (motion_world/motion_world.safetensors), one held-out reference motion, through
the pack's own inversion code (the node's trainable copy of the model and reenact_core.invert). Every
variant is scored at checkpoints with the same fixed evaluation draws (the default sigma
distribution), so the numbers are comparable across learning rates, schedules and sigma settings.
The long run (the published recipe, lr 1e-2 for --long steps) gives the loss to reach; the table says
at which step each variant first comes within 5% of it (for a decaying schedule only its last step
counts: earlier checkpoints are not what that setting delivers).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from bench._common import context_dim
from motion_world import world

REPO = Path(__file__).resolve().parent.parent
CHECKPOINTS = (25, 50, 100, 150, 200, 300, 400, 500, 600, 800, 1000, 1500, 2000, 3000, 4000, 5000)


def variants() -> dict[str, dict]:
    """The node's defaults and the alternatives tried against them (InversionConfig overrides; each run
    has its own step count because a decaying schedule is shaped by it)."""
    return {
        "default": {},
        "lr 1e-2 constant, 1000": {"learning_rate": 1e-2, "schedule": "constant", "steps": 1000},
        "lr 1e-1 cosine, 1000": {"learning_rate": 1e-1, "schedule": "cosine", "steps": 1000},
        "lr 3e-1 cosine, 300": {"learning_rate": 3e-1, "schedule": "cosine", "steps": 300},
        "lr 3e-1 cosine, 500": {"learning_rate": 3e-1, "schedule": "cosine", "steps": 500},
        "lr 3e-1 cosine, 1000": {"learning_rate": 3e-1, "schedule": "cosine", "steps": 1000},
        "lr 3e-1 constant, 500": {"learning_rate": 3e-1, "schedule": "constant", "steps": 500},
        "lr 1 cosine, 500": {"learning_rate": 1.0, "schedule": "cosine", "steps": 500},
        "lr 3e-1 cosine, 500, sigma log-mean 1.0": {"learning_rate": 3e-1, "schedule": "cosine", "steps": 500, "sigma_log_mean": 1.0},
    }


def long_runs(steps: int) -> dict[str, dict]:
    """The reference: the published recipe (the unofficial code's AdamW lr 1e-2, constant after a 10%
    warm-up, 5000 steps; about an hour per motion on an A100). Its final loss is the target."""
    return {f"long: lr 1e-2 constant, {steps}": {"learning_rate": 1e-2, "schedule": "constant", "steps": steps}}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="motion_world.safetensors")
    parser.add_argument("--steps", type=int, default=0, help="override every variant's step count (a smoke run)")
    parser.add_argument("--long", type=int, default=5000, help="steps of the long reference run")
    parser.add_argument("--reference", default="l_path_down_right", help="held-out motion name")
    parser.add_argument("--only", default="", help="semicolon-separated variant names to run (the long run always runs)")
    parser.add_argument("--eval-draws", type=int, default=32, help="fixed (sigma, noise) draws that score an embedding")
    parser.add_argument("--quick", action="store_true", help="60-step variants, 200-step long run")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "convergence.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.long = 60, 200

    from testkit.comfy_env import load_comfyui, load_pack, pack_submodule, run_node

    comfy = load_comfyui(use_pytorch_cross_attention=True)
    pack = load_pack(comfy)
    core = pack_submodule(pack, "reenact_core.inversion")
    nodes = pack_submodule(pack, "nodes.comfy_denoiser")
    embedding_cls = pack_submodule(pack, "reenact_core.embedding").MotionEmbedding
    inputs = pack.NODE_CLASS_MAPPINGS["MotionTextualInversion"].INPUT_TYPES()["required"]
    default_steps, default_lr = inputs["steps"][1]["default"], inputs["learning_rate"][1]["default"]
    tokens = inputs["tokens_per_frame"][1]["default"]

    model, _, vae = run_node(comfy, "MotionWorldLoader", model_name=args.model)
    clip = next(c for c in world.held_out_references(8, 64) if c.motion.name == args.reference)
    base_config = core.InversionConfig(steps=default_steps, learning_rate=default_lr, tokens_per_frame=tokens, seed=0)
    with torch.inference_mode(False), torch.no_grad():
        latents = core.encode_training_clips(clip.frames, lambda x: model.model.process_latent_in(vae.encode(x)), base_config)
    dim = context_dim(model)
    eval_sigmas = core.evaluation_sigmas(base_config, args.eval_draws)

    table = {}
    runs = variants()
    if args.only:
        keep = {name.strip() for name in args.only.split(";")}
        runs = {name: overrides for name, overrides in runs.items() if name in keep}
    if args.steps:
        runs = {name: {**overrides, "steps": args.steps} for name, overrides in runs.items()}
    longs = long_runs(args.long)
    runs.update(longs)
    with torch.inference_mode(False), nodes.trainable_model(model, torch.float32, False) as (base, device):
        denoiser = nodes.ComfySVDDenoiser(base, device, 6, 127, 0.0)
        done: dict[str, str] = {}  # config -> variant name: an alternative equal to the defaults is not run twice
        for name, overrides in runs.items():
            config = dataclasses.replace(base_config, **overrides)
            if repr(config) in done:
                table[name] = {**table[done[repr(config)]], "config": overrides, "same_as": done[repr(config)]}
                continue
            done[repr(config)] = name
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

    target = min(min(table[name]["scores"].values()) for name in longs)
    best = min(min(row["scores"].values()) for row in table.values())
    print(f"\nMotion World, held-out '{args.reference}', {tokens} tokens/frame; node defaults: {default_steps} steps, "
          f"lr {default_lr:g}, {base_config.schedule}; long run's loss {target:.4f} (lowest of any run {best:.4f})")
    print(f"{'variant':44} {'final loss':>10} {'/ long':>7} {'steps to within 5%':>19} {'s/step':>7}")
    for name, row in table.items():
        scores = row["scores"]
        last = scores[max(scores)]
        # A decaying schedule is only finished at its last step, so only constant runs count earlier checkpoints.
        schedule = row["config"].get("schedule", base_config.schedule)
        counted = sorted(scores.items()) if schedule == "constant" else [(max(scores), last)]
        within = next((s for s, v in counted if v <= 1.05 * target), None)
        row["steps_to_within_5pct"] = within
        per_step = row["seconds"] / max(scores)
        print(f"{name:44} {last:10.4f} {last / target:7.3f} {str(within or 'not reached'):>19} {per_step:7.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"reference": args.reference, "default_steps": default_steps, "default_learning_rate": default_lr,
                                    "default_schedule": base_config.schedule, "long_best": target, "runs": table}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
