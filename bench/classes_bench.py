"""Issue #28: does motion-textual inversion steer a model whose context was trained only as an APPEARANCE
embedding (SVD's CLIP image token of the first frame), in a world where what a sprite is predicts how it moves?

The model: ``python -m motion_world.train --world classes --context appearance ...`` (motion_world/classes.py).
Each test case is a reference clip of class A applied, through the pack's nodes, to one target image of every
other class B. Conditions:

* target's own image token   stock SVD (Apply Motion Embedding at strength 0): B moves in B's own family
* reference's image token    A's look as the context on B's image: the most the appearance slot says by itself
* shared token F'=1,N=1      inversion, one token for every frame (the paper's ablation)
* per-frame (F+1)x1          inversion, one token per frame plus the shared one
* per-frame (F+1)xN          inversion, N tokens per frame (the pack's default layout)

Metrics as motion_world_bench: trajectory error against the reference's motion applied to the target, direction
agreement, area kept, leakage of A's colour into B; reported for motions of A's family, held-out motions of A's
family, and motions of no class's family.

    COMFYUI_ROOT=... python -m bench.classes_bench --model /path/to/classes.safetensors [--quick] [--jobs 2]
    python -m bench.classes_bench --merge seed0/results.json seed1/results.json --out merged   # seeds run apart
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bench.motion_world_bench import FRAMES, FULL, SIZE, Condition, Harness, _mean, run_seeds_in_processes, score
from motion_world import classes, metrics, world
from reenact_core.inversion import InversionConfig
from tools.make_workflows import MOTION_WORLD_CFG, MOTION_WORLD_LR, MOTION_WORLD_OPTIONS, MOTION_WORLD_STEPS

REPO = Path(__file__).resolve().parent.parent
OWN_TOKEN, REFERENCE_TOKEN = "target's own image token", "reference's image token"
CONDITIONS = (
    Condition(OWN_TOKEN),
    Condition(REFERENCE_TOKEN),
    Condition("shared token F'=1,N=1", tokens=1, per_frame=False),
    Condition("per-frame (F+1)x1", tokens=1),
    Condition("per-frame (F+1)xN", tokens=FULL),
)
# --sweep: which anti-leakage augmentation keeps A's look out of B, and what it costs in motion: (F+1)xN with
# one augmentation each (hue shift is the one aimed at colour, the cue that names a class here).
SWEEP = (
    Condition(OWN_TOKEN),
    Condition("per-frame (F+1)xN", tokens=FULL),
    Condition("+ hue shift 0.5", tokens=FULL, options=(("hue_shift", 0.5),)),
    Condition("+ colour jitter 0.3", tokens=FULL, options=(("color_jitter", 0.3),)),
    Condition("+ random conditioning frame", tokens=FULL, options=(("random_cond_frame", True),)),
    Condition("+ conditioning noise 0.1", tokens=FULL, options=(("cond_noise", 0.1),)),
    # and two inversion settings, for when the workflow's do not transfer: the node's rate, noise where motion is decided
    Condition("lr 0.3 cosine (the node's default)", tokens=FULL, learning_rate=InversionConfig.learning_rate,
              options=(("schedule", InversionConfig.schedule),)),
    Condition("sigma log-mean 1.0", tokens=FULL, options=(("sigma_log_mean", 1.0),)),
)
GROUPS = ("all", "family", "family, held-out motion", "no family")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a Motion World file trained with --world classes --context appearance")
    parser.add_argument("--merge", type=Path, nargs="+", help="instead of running: the table of these runs' results.json together "
                        "(e.g. seeds run one by one with --only-seed)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--references", type=int, default=40, help="reference clips; each is applied to 3 targets")
    parser.add_argument("--steps", type=int, default=MOTION_WORLD_STEPS, help="inversion steps (0: the node's default)")
    parser.add_argument("--learning-rate", type=float, default=MOTION_WORLD_LR, help="0: the node's default")
    parser.add_argument("--options", default=json.dumps(MOTION_WORLD_OPTIONS), help="JSON overrides for Motion Inversion Options")
    parser.add_argument("--sampler-steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=MOTION_WORLD_CFG)
    parser.add_argument("--conditions", default="", help="semicolon-separated subset of condition names")
    parser.add_argument("--quick", action="store_true", help="1 seed, 8 references (24 pairs)")
    parser.add_argument("--sweep", action="store_true", help="the anti-leakage augmentations instead of the token layouts")
    parser.add_argument("--augmentation", type=float, default=0.0, help="the conditioning frame's augmentation_level, in inversion and "
                        "sampling (for models trained with --cond-aug: a noisy latent leaves the image token as the surer cue)")
    parser.add_argument("--jobs", type=int, default=1, help="run the seeds in this many processes (one torch thread each)")
    parser.add_argument("--only-seed", type=int, default=-1, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "motion_world" / "classes")
    args = parser.parse_args(argv)
    if not args.model and not args.merge:
        parser.error("--model is required (or --merge)")
    if args.quick:
        args.seeds, args.references = 1, 8
    return args


def selected_conditions(args) -> list[Condition]:
    names = [c.strip() for c in args.conditions.split(";") if c.strip()]
    return [c for c in (SWEEP if args.sweep else CONDITIONS) if not names or c.name in names]


def image_token_embedding(harness: Harness, image: torch.Tensor):
    """A's look as a motion embedding: the model's own image token of ``image`` in every slot (what stock SVD
    would use if the target looked like the reference)."""
    with torch.inference_mode():
        token = harness.clip_vision.encode_image(image[None]).image_embeds.float().reshape(-1).cpu()
    return harness.embedding_cls.neutral(token.clone(), FRAMES, 1, token.shape[0])


def run(args) -> dict:
    harness = Harness(str(Path(args.model).resolve()), args.augmentation)
    options = json.loads(args.options)
    conditions = selected_conditions(args)
    rows, strips = [], []
    started = time.perf_counter()
    seeds = [args.only_seed] if args.only_seed >= 0 else range(args.seeds)
    for seed in seeds:
        for case in classes.test_cases(args.references, FRAMES, SIZE, seed=seed):
            clip = case.reference
            embeddings = {}
            for condition in conditions:
                if condition.name == OWN_TOKEN:
                    embeddings[condition.name] = (image_token_embedding(harness, clip.frames[0]), 0.0, None, None)  # strength 0: ignored
                elif condition.name == REFERENCE_TOKEN:
                    embeddings[condition.name] = (image_token_embedding(harness, clip.frames[0]), 1.0, None, None)
                else:
                    embedding, _ = harness.invert(clip, condition, seed, args.steps, args.learning_rate, options)
                    embeddings[condition.name] = (embedding, 1.0, float(embedding.metadata["final_loss"]), embedding.metadata["inversion_config"])
            for target in case.targets:
                ideal = world.render_clip(target, clip.motion, FRAMES, SIZE)
                generated = {}
                for name, (embedding, strength, final_loss, settings) in embeddings.items():
                    frames = harness.generate(ideal.frames[0], embedding, strength, seed, args.sampler_steps, args.cfg)
                    result = score(frames, ideal, clip.sprite_color)
                    result.update(condition=name, case=case.name, kind=case.kind, held_out=case.held_out, family=clip.motion.family,
                                  reference_class=classes.class_of(clip.scene).name, target_class=classes.class_of(target).name,
                                  seed=seed, final_loss=final_loss, inversion_config=settings)
                    rows.append(result)
                    generated[name] = frames
                if seed == 0 and len(strips) < 8 and target is case.targets[0]:
                    strips.append((case, ideal, generated))
            print(f"  seed {seed} {case.name} ({case.kind}{', held out' if case.held_out else ''}): "
                  f"done ({time.perf_counter() - started:.0f} s)", flush=True)
    return {"rows": rows, "strips": strips, "conditions": [c.name for c in conditions], "seconds": time.perf_counter() - started}


def in_group(row: dict, group: str) -> bool:
    if group == "family":
        return row["kind"] == "family" and not row["held_out"]
    if group == "family, held-out motion":
        return row["kind"] == "family" and row["held_out"]
    return group == "all" or row["kind"] == group


def summarise(rows: list[dict], conditions: list[str]) -> dict:
    """Per group, per condition: the means over pairs, and the spread of the per-seed means of the trajectory error."""
    table = {}
    for group in GROUPS:
        for name in conditions:
            picked = [r for r in rows if r["condition"] == name and in_group(r, group)]
            if not picked:
                continue
            per_seed = [_mean(r["trajectory_error"] for r in picked if r["seed"] == s) for s in sorted({r["seed"] for r in picked})]
            table.setdefault(group, {})[name] = {
                "trajectory_error": _mean(r["trajectory_error"] for r in picked),
                "trajectory_error_per_seed": per_seed,
                "direction_agreement": _mean(r["direction_agreement"] for r in picked),
                "area_kept": _mean(r["area_kept"] for r in picked),
                "leakage": _mean(r["leakage"] for r in picked),
                "final_loss": _mean(r["final_loss"] for r in picked),
                "pairs": len(picked),
            }
    return table


def print_table(table: dict, seconds: float, seeds: int) -> None:
    print(f"\nClass-coupled Motion World transfer ({seeds} seed{'s' * (seeds != 1)}, {FRAMES} frames {SIZE}x{SIZE}; {seconds / 60:.1f} min)")
    for group, rows in table.items():
        print(f"\n{group}:")
        header = f"{'condition':<28} {'pairs':>5} {'traj err px':>11} {'per seed':>18} {'direction':>9} {'area kept':>9} {'leakage':>8} {'final loss':>10}"
        print(header)
        print("-" * len(header))
        for name, row in rows.items():
            per_seed = "/".join(f"{v:.2f}" for v in row["trajectory_error_per_seed"])
            loss = f"{row['final_loss']:>10.4f}" if row["final_loss"] == row["final_loss"] else f"{'-':>10}"
            print(f"{name:<28} {row['pairs']:>5} {row['trajectory_error']:>11.2f} {per_seed:>18} {row['direction_agreement']:>9.3f} "
                  f"{row['area_kept']:>9.3f} {100 * row['leakage']:>7.2f}% {loss}")


def write_strips(strips, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for case, ideal, generated in strips:
        frames = [case.reference.frames, ideal.frames, *generated.values()]
        labels = [f"reference: {case.name}", f"ideal on {classes.class_of(ideal.scene).name}", *generated]
        metrics.strip(frames, labels, out / f"{case.name.replace(':', '_')}.png")


def run_parallel(args, argv) -> dict:
    return run_seeds_in_processes("bench.classes_bench", args, argv, [c.name for c in selected_conditions(args)])


def merged(paths: list[Path]) -> dict:
    """The rows of several runs (each seed once: a seed in two files is an error), conditions in their first order."""
    rows, seeds = [], set()
    for path in paths:
        run_rows = json.loads(path.read_text())["rows"]
        run_seeds = {r["seed"] for r in run_rows}
        if run_seeds & seeds:
            raise SystemExit(f"{path}: seed(s) {sorted(run_seeds & seeds)} are already in an earlier file")
        seeds |= run_seeds
        rows += run_rows
    conditions = list(dict.fromkeys(r["condition"] for r in rows))
    return {"rows": rows, "strips": [], "conditions": conditions, "seconds": 0.0}


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.merge:
        result = merged(args.merge)
    else:
        result = run_parallel(args, argv) if args.jobs > 1 and args.only_seed < 0 else run(args)
    table = summarise(result["rows"], result["conditions"])
    print_table(table, result["seconds"], seeds=len({r["seed"] for r in result["rows"]}))
    args.out.mkdir(parents=True, exist_ok=True)
    write_strips(result["strips"], args.out / "strips")
    (args.out / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "table": table, "rows": result["rows"]}, indent=1))
    print(f"\nstrips and raw numbers in {args.out}")


if __name__ == "__main__":
    main()
