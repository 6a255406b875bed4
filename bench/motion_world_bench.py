"""Motion World transfer benchmark: does the pack transfer motion, or merely run?

    COMFYUI_ROOT=... python -m bench.motion_world_bench --jobs 2        # the table: 3 seeds x 8 x 5, ~45 min on 2 cores
    COMFYUI_ROOT=... python -m bench.motion_world_bench --quick         # 1 seed x 5 x 4 (~10 min)
    COMFYUI_ROOT=... python -m bench.motion_world_bench --sweep --quick # augmentations and inversion settings
    COMFYUI_ROOT=... python -m bench.motion_world_bench --reference-look target-sprite --only-target 3  # what an embedding keeps

Held-out reference motions (never seen in training) are inverted and applied to target scenes that
differ in shape, colour, position and background, all through the pack's own nodes in a real
ComfyUI: Load Motion Reference -> Motion Textual Inversion -> Apply Motion Embedding ->
VideoLinearCFGGuidance -> KSampler -> VAE Decode. The generated sprite is tracked and compared with
the ideal result: the reference's displacements and scale applied to the target's own sprite.

Conditions: null context (no motion information), one shared token (F'=1, N=1), per-frame tokens
(F+1)x1, (F+1)xN with the pack's default N, and oracle tokens (the model's own motion encoder fed the
reference's true trajectory: the ceiling). Prints a table and writes PNG strips and raw JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import safetensors
import torch

from motion_world import metrics, world
from reenact_core.inversion import InversionConfig
from tools.make_workflows import MOTION_WORLD_CFG, MOTION_WORLD_LR, MOTION_WORLD_OPTIONS, MOTION_WORLD_STEPS

REPO = Path(__file__).resolve().parent.parent
FRAMES, SIZE = 8, 64
TIME_VARYING = {"two_segment", "arc", "reversal", "pulse"}  # motions whose velocity changes over the clip


@dataclasses.dataclass(frozen=True)
class Condition:
    name: str
    tokens: int = 0  # 0: no inversion
    per_frame: bool = True
    options: tuple = ()  # (name, value) pairs for Motion Inversion Options (augmentations, noise levels)
    learning_rate: float = 0.0  # 0: --learning-rate, or the node's default


FULL = -1  # tokens: the pack's default N
REFERENCE_LOOKS = ("own", "target", "target-sprite", "target-background", "target-position")


CONDITIONS = (
    Condition("null context"),
    Condition("shared token F'=1,N=1", tokens=1, per_frame=False),
    Condition("per-frame (F+1)x1", tokens=1),
    Condition("per-frame (F+1)xN", tokens=FULL),
    Condition("oracle tokens"),
)

# --sweep: the anti-leakage augmentations and inversion settings, each as (F+1)xN with one thing changed.
SWEEP = (
    Condition("null context"),
    Condition("per-frame (F+1)xN", tokens=FULL),
    Condition("+ colour jitter 0.3", tokens=FULL, options=(("color_jitter", 0.3),)),
    Condition("+ conditioning noise 0.1", tokens=FULL, options=(("cond_noise", 0.1),)),
    Condition("+ random conditioning frame", tokens=FULL, options=(("random_cond_frame", True),)),
    Condition("+ random crop 0.8", tokens=FULL, options=(("crop_scale", 0.8),)),
    Condition("+ all four", tokens=FULL, options=(("color_jitter", 0.3), ("cond_noise", 0.1), ("random_cond_frame", True), ("crop_scale", 0.8))),
    Condition(
        "lr 0.3 cosine (the node's default)", tokens=FULL, learning_rate=InversionConfig.learning_rate, options=(("schedule", InversionConfig.schedule),)
    ),
    Condition("sigma log-mean 1.0", tokens=FULL, options=(("sigma_log_mean", 1.0),)),
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="motion_world.safetensors", help="file in the pack's motion_world/ folder, or a path")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--targets", type=int, default=5)
    parser.add_argument("--references", type=int, default=8, help="how many of the held-out motions")
    parser.add_argument("--steps", type=int, default=MOTION_WORLD_STEPS, help="inversion steps (default: the Motion World workflow's; 0: the node's default)")
    parser.add_argument("--learning-rate", type=float, default=MOTION_WORLD_LR, help="default: the Motion World workflow's; 0: the node's default")
    parser.add_argument("--sampler-steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=MOTION_WORLD_CFG, help="default: the Motion World workflow's")
    parser.add_argument("--options", default=json.dumps(MOTION_WORLD_OPTIONS), help="JSON overrides for Motion Inversion Options (default: the Motion World workflow's)")
    parser.add_argument("--conditions", default="", help="semicolon-separated subset of condition names")
    parser.add_argument("--sweep", action="store_true", help="measure the augmentations and inversion settings instead (see SWEEP)")
    parser.add_argument("--quick", action="store_true", help="1 seed, 5 references, 4 targets")
    parser.add_argument(
        "--reference-look", choices=REFERENCE_LOOKS, default="own",
        help="what the inverted clip looks like: the reference's own scene (the benchmark), or, per target, the target's scene, "
        "the target's sprite on the reference's background, the reference's sprite on the target's background, or the "
        "reference's scene with its sprite starting where the target's does "
        "(diagnostic: which part of the reference's look an embedding keeps; one inversion per reference and target)",
    )
    parser.add_argument("--only-target", type=int, default=-1, help="only this target scene (index; default: all)")
    parser.add_argument("--invert-size", type=int, default=SIZE, help="invert at this frame size (the generation stays at 64x64): does the embedding's meaning survive a change of size?")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32", help="the inversion's compute precision")
    parser.add_argument("--fps", type=int, default=6, help="the inversion's fps conditioning (0 = the node's auto; the model was trained at 6)")
    parser.add_argument("--jobs", type=int, default=1, help="run the seeds in this many processes (one torch thread each)")
    parser.add_argument("--only-seed", type=int, default=-1, help=argparse.SUPPRESS)  # one worker of --jobs
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "motion_world")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.references, args.targets = 1, 5, 4
    return args


class Harness:
    """The pack's nodes in an in-process ComfyUI, with the Motion World model loaded."""

    def __init__(self, model_name: str, augmentation: float = 0.0):
        from testkit.comfy_env import load_comfyui, load_pack, pack_submodule, run_node

        self.comfy = load_comfyui(use_pytorch_cross_attention=True)
        self.pack = load_pack(self.comfy)
        self.run = lambda name, **kw: run_node(self.comfy, name, **kw)
        self.embedding_cls = pack_submodule(self.pack, "reenact_core.embedding").MotionEmbedding
        bundled = Path(self.pack.__file__).parent / "motion_world" / model_name
        if Path(model_name).name == model_name and bundled.is_file():  # through the node, as a user loads it
            self.model, self.clip_vision, self.vae = self.run("MotionWorldLoader", model_name=model_name)
            path = bundled
        else:  # a model trained elsewhere (e.g. the SVD-like variant): the node's own loading function
            path = Path(model_name).resolve()
            self.model, self.clip_vision, self.vae = pack_submodule(self.pack, "nodes.motion_world").load_motion_world(str(path))
        with safetensors.safe_open(str(path), framework="pt") as f:
            self.context = f.metadata().get("context", "motion")
        self.inversion_defaults = self.pack.NODE_CLASS_MAPPINGS["MotionTextualInversion"].INPUT_TYPES()["required"]
        option_inputs = self.pack.NODE_CLASS_MAPPINGS["MotionInversionOptions"].INPUT_TYPES()
        self.option_defaults = {
            name: spec[1]["default"] for group in ("required", "optional") for name, spec in option_inputs.get(group, {}).items()
        }
        self.encoder = load_motion_encoder(path)
        self.augmentation = augmentation  # SVD_img2vid_Conditioning's augmentation_level, for inversion and sampling

    def default(self, name):
        return self.inversion_defaults[name][1]["default"]

    def invert(self, clip, condition: Condition, seed: int, steps: int, lr: float, options: dict, size: int = SIZE, precision: str = "fp32",
               fps: int = 6):
        reference, _, _, _ = self.run(
            "LoadMotionReference", video="none", frame_load_cap=0, skip_first_frames=0, select_every_nth=1,
            custom_width=0, custom_height=0, images=clip.frames,
        )
        settings = {**self.option_defaults, **options, **dict(condition.options), "per_frame_tokens": condition.per_frame}  # later wins
        (opts,) = self.run("MotionInversionOptions", **settings)
        tokens = self.default("tokens_per_frame") if condition.tokens == FULL else condition.tokens
        lr = condition.learning_rate or lr or self.default("learning_rate")
        started = time.perf_counter()
        embedding, _, _ = self.run(
            "MotionTextualInversion", model=self.model, vae=self.vae, motion_reference=reference,
            steps=steps or self.default("steps"), learning_rate=lr, tokens_per_frame=tokens,
            video_frames=FRAMES, width=size, height=size, seed=seed, fps=fps, motion_bucket_id=127, augmentation_level=self.augmentation,
            precision=precision, gradient_checkpointing=False, clip_vision=self.clip_vision, options=opts,
        )
        return embedding, time.perf_counter() - started

    def oracle(self, clip):
        feats = world.motion_features(clip.motion, FRAMES)
        with torch.no_grad():
            spatial, temporal = self.encoder(torch.from_numpy(feats["per_frame"])[None], torch.from_numpy(feats["summary"])[None])
        return self.embedding_cls(spatial=spatial[0].float(), temporal=temporal[0].float())

    def generate(self, first_frame: torch.Tensor, embedding, strength: float, seed: int, steps: int, cfg: float) -> torch.Tensor:
        positive, negative, latent = self.run(
            "SVD_img2vid_Conditioning", clip_vision=self.clip_vision, init_image=first_frame[None], vae=self.vae,
            width=SIZE, height=SIZE, video_frames=FRAMES, motion_bucket_id=127, fps=6, augmentation_level=self.augmentation,
        )
        positive, negative, _, _ = self.run(
            "ApplyMotionEmbedding", positive=positive, negative=negative, motion_embedding=embedding, latent=latent, strength=strength
        )
        (guided,) = self.run("VideoLinearCFGGuidance", model=self.model, min_cfg=1.0)
        (samples,) = self.run(
            "KSampler", model=guided, seed=seed, steps=steps, cfg=cfg, sampler_name="euler", scheduler="karras",
            positive=positive, negative=negative, latent_image=latent, denoise=1.0,
        )
        (images,) = self.run("VAEDecode", samples=samples, vae=self.vae)
        return images.float().cpu()


def load_motion_encoder(path: Path):
    import safetensors.torch

    from motion_world.train import MotionEncoder, TrainConfig, load_prefixed

    with safetensors.safe_open(str(path), framework="pt") as f:
        saved = json.loads(f.metadata()["train_config"])
    known = {field.name for field in dataclasses.fields(TrainConfig)}  # files from other versions of the script
    cfg = TrainConfig(**{name: value for name, value in saved.items() if name in known})
    return load_prefixed(MotionEncoder(cfg.context_dim, cfg.tokens), safetensors.torch.load_file(str(path)), "motion_encoder.").eval()


def score(frames: torch.Tensor, ideal, reference_color) -> dict:
    centers, areas = metrics.track_sprite(frames, ideal.sprite_color)
    ideal_centers = ideal.centers.numpy()
    lost = np.isnan(centers).any(axis=1)
    # A lost sprite (not found at all) counts as a frame-sized miss instead of vanishing from the mean.
    error = metrics.trajectory_error(centers, ideal_centers, lost_px=SIZE / 2)
    return {
        "trajectory_error": float(error),
        "direction_agreement": float(metrics.direction_agreement(centers, ideal_centers)),
        "area_kept": float(metrics.area_kept(areas, ideal.areas.numpy())),
        "leakage": float(metrics.leakage(frames, reference_color, ideal.sprite_color)),
        "lost_frames": int(lost.sum()),
    }


def run(args) -> dict:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    harness = Harness(args.model)
    options = json.loads(args.options)
    conditions = selected_conditions(args)
    if harness.context != "motion":  # its motion encoder was never trained: there are no oracle tokens
        conditions = [c for c in conditions if c.name != "oracle tokens"]
    targets = world.target_scenes(args.targets, seed=0)
    rows, strips = [], []
    started = time.perf_counter()
    seeds = [args.only_seed] if args.only_seed >= 0 else range(args.seeds)

    def embed(clip) -> dict:
        embeddings = {}
        for condition in conditions:
            if condition.name == "oracle tokens":
                embeddings[condition.name] = (harness.oracle(clip), 1.0, None, 0.0, "")
            elif condition.name == "null context":
                embeddings[condition.name] = (harness.oracle(clip), 0.0, None, 0.0, "")  # strength 0: the image token alone
            else:
                embedding, seconds = harness.invert(clip, condition, seed, args.steps, args.learning_rate, options, args.invert_size, args.precision,
                                                    args.fps)
                settings = embedding.metadata["inversion_config"]  # what the node actually ran with
                embeddings[condition.name] = (embedding, 1.0, float(embedding.metadata["final_loss"]), seconds, settings)
        return embeddings

    for seed in seeds:
        references = world.held_out_references(FRAMES, SIZE, seed=seed, targets=targets)[: args.references]
        for index, clip in enumerate(references):
            own_look = embed(clip) if args.reference_look == "own" else None
            for t_index, target in enumerate(targets):
                if args.only_target >= 0 and t_index != args.only_target:
                    continue
                if own_look is not None:
                    embeddings = own_look
                else:  # the same seed and index as held_out_references, so the reference's own scene is the same one
                    own_scene = world.reference_scene(clip.motion, seed + index, avoid=targets)
                    embeddings = embed(world.render_clip(restyled(own_scene, target, args.reference_look), clip.motion, FRAMES, SIZE))
                ideal = world.render_clip(target, clip.motion, FRAMES, SIZE)
                generated_row = {}
                for name, (embedding, strength, final_loss, seconds, settings) in embeddings.items():
                    frames = harness.generate(ideal.frames[0], embedding, strength, seed, args.sampler_steps, args.cfg)
                    result = score(frames, ideal, clip.sprite_color)
                    result.update(condition=name, motion=clip.motion.name, family=clip.motion.family, target=t_index, seed=seed,
                                  final_loss=final_loss, inversion_seconds=seconds, inversion_config=settings)
                    rows.append(result)
                    generated_row[name] = frames
                if t_index == 0 and seed == 0:
                    strips.append((clip, ideal, generated_row))
            print(f"  seed {seed} {clip.motion.name}: done ({time.perf_counter() - started:.0f} s)", flush=True)
    return {"rows": rows, "strips": strips, "conditions": [c.name for c in conditions], "seconds": time.perf_counter() - started}


def restyled(reference: world.Scene, target: world.Scene, look: str) -> world.Scene:
    """The scene a reference motion is inverted on for --reference-look: the target's scene, or the reference's
    scene with one thing of the target's: its sprite (shape and colour), its background, or its sprite's start."""
    if look == "target":
        return target
    if look == "target-sprite":
        return dataclasses.replace(reference, shape=target.shape, sprite_color=target.sprite_color)
    if look == "target-background":
        return dataclasses.replace(reference, background=target.background)
    return dataclasses.replace(reference, position=target.position)


def selected_conditions(args) -> list[Condition]:
    names = [c.strip() for c in args.conditions.split(";") if c.strip()]
    return [c for c in (SWEEP if args.sweep else CONDITIONS) if not names or c.name in names]


def _mean(values) -> float:
    """Mean over the values that were measured (None: not applicable, NaN: undefined for that pair)."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def summarise(rows: list[dict], conditions: list[str]) -> dict:
    table = {}
    for name in conditions:
        picked = [r for r in rows if r["condition"] == name]
        if not picked:
            continue
        varying = [r for r in picked if r["family"] in TIME_VARYING]
        table[name] = {
            "trajectory_error": _mean(r["trajectory_error"] for r in picked),
            # the mean is dominated by frames where the sprite's colour drifted out of the tracker's reach (a
            # 32 px miss each); the median and the lost-frame count show the two failure kinds apart
            "trajectory_error_median": float(np.median([r["trajectory_error"] for r in picked])),
            "lost_frames": _mean(r["lost_frames"] for r in picked),
            "trajectory_error_time_varying": _mean(r["trajectory_error"] for r in varying),
            "direction_agreement": _mean(r["direction_agreement"] for r in picked),
            "area_kept": _mean(r["area_kept"] for r in picked),
            "leakage": _mean(r["leakage"] for r in picked),
            "final_loss": _mean(r["final_loss"] for r in picked),
            "inversion_seconds": _mean(r["inversion_seconds"] for r in picked),
            "pairs": len(picked),
        }
    return table


def summarise_by_target(rows: list[dict], conditions: list[str]) -> dict:
    """Mean error / area / lost frames per target scene: shows whether a miss is the model's overall or one
    scene's (a colour or shape it renders poorly)."""
    table = {}
    for name in conditions:
        per_target = {}
        for target in sorted({r["target"] for r in rows if r["condition"] == name}):
            picked = [r for r in rows if r["condition"] == name and r["target"] == target]
            per_target[str(target)] = {key: _mean(r[key] for r in picked) for key in ("trajectory_error", "area_kept", "lost_frames")}
        if per_target:
            table[name] = per_target
    return table


def print_by_target(by_target: dict, targets: list) -> None:
    print("\nPer target scene: trajectory error px / area kept")
    print(f"{'condition':<24} " + " ".join(f"{_describe(t):>22}" for t in targets))
    for name, per_target in by_target.items():
        cells = [per_target.get(str(i)) for i in range(len(targets))]
        print(f"{name:<24} " + " ".join(f"{c['trajectory_error']:>15.2f} / {c['area_kept']:.2f}" if c else f"{'-':>22}" for c in cells))


def _describe(scene) -> str:
    r, g, b = scene.sprite_color
    return f"{scene.shape} ({r:.1f},{g:.1f},{b:.1f})"


def print_table(table: dict, args, seconds: float, seeds: int) -> None:
    print(f"\nMotion World transfer ({seeds} seed{'s' * (seeds != 1)} x {args.references} held-out motions x {args.targets} targets, "
          f"{FRAMES} frames {SIZE}x{SIZE}; {seconds / 60:.1f} min)")
    header = (f"{'condition':<24} {'traj err px':>11} {'median':>6} {'lost/clip':>9} {'time-varying':>12} {'direction':>9} {'area kept':>9} "
              f"{'leakage':>8} {'final loss':>10} {'inv s':>6}")
    print(header)
    print("-" * len(header))
    for name, row in table.items():
        print(f"{name:<24} {row['trajectory_error']:>11.2f} {row['trajectory_error_median']:>6.2f} {row['lost_frames']:>9.2f} "
              f"{row['trajectory_error_time_varying']:>12.2f} {row['direction_agreement']:>9.3f} "
              f"{row['area_kept']:>9.3f} {100 * row['leakage']:>7.2f}% {row['final_loss']:>10.4f} {row['inversion_seconds']:>6.1f}")
    oracle, null = table.get("oracle tokens"), table.get("null context")
    full, shared = table.get("per-frame (F+1)xN"), table.get("shared token F'=1,N=1")
    if oracle and null and full:
        print("\nRatios measured in this run:")
        print(f"  (F+1)xN / oracle          = {full['trajectory_error'] / oracle['trajectory_error']:.2f}   (target <= 1.25)")
        print(f"  (F+1)xN / null            = {full['trajectory_error'] / null['trajectory_error']:.2f}   (target <= 0.40)")
        if shared:
            print(f"  (F+1)xN / shared, time-varying motions = "
                  f"{full['trajectory_error_time_varying'] / shared['trajectory_error_time_varying']:.2f}   (target < 1)")
        print(f"  oracle trajectory error   = {oracle['trajectory_error']:.2f} px (target <= {0.6 * SIZE / 16:.1f} px at {SIZE}x{SIZE}), "
              f"area kept {oracle['area_kept']:.2f} (target >= 0.85)")
        print(f"  leakage ((F+1)xN)         = {100 * full['leakage']:.2f}% of pixels (target < 1%)")


def write_strips(strips, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for clip, ideal, generated in strips:
        frames = [clip.frames, ideal.frames] + list(generated.values())
        labels = [f"reference: {clip.motion.name}", "ideal on target"] + list(generated)
        metrics.strip(frames, labels, out / f"{clip.motion.name}.png")


def run_parallel(args, argv) -> dict:
    return run_seeds_in_processes("bench.motion_world_bench", args, argv, [c.name for c in selected_conditions(args)])


def run_seeds_in_processes(module: str, args, argv, conditions: list[str]) -> dict:
    """The seeds of bench ``module`` in separate processes (a small model does not use many cores well), each
    with ``--only-seed``; their rows merged."""
    import subprocess
    import sys

    started = time.perf_counter()
    argv = list(argv if argv is not None else sys.argv[1:])
    pending, workers, rows = list(range(args.seeds)), [], []
    while pending or workers:
        while pending and len(workers) < args.jobs:
            seed = pending.pop(0)
            out = args.out / f"seed{seed}"
            cmd = [sys.executable, "-m", module, *argv, "--jobs", "1", "--only-seed", str(seed), "--out", str(out)]
            workers.append((seed, out, subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO)))
        seed, out, proc = workers.pop(0)
        if proc.wait() != 0:
            raise SystemExit(f"seed {seed} failed")
        rows += json.loads((out / "results.json").read_text())["rows"]
    return {"rows": rows, "strips": [], "conditions": conditions, "seconds": time.perf_counter() - started}


def main(argv=None) -> None:
    args = parse_args(argv)
    result = run_parallel(args, argv) if args.jobs > 1 and args.only_seed < 0 else run(args)
    table = summarise(result["rows"], result["conditions"])
    by_target = summarise_by_target(result["rows"], result["conditions"])
    print_table(table, args, result["seconds"], seeds=len({r["seed"] for r in result["rows"]}))  # a --jobs worker ran one
    print_by_target(by_target, world.target_scenes(args.targets, seed=0))
    args.out.mkdir(parents=True, exist_ok=True)
    write_strips(result["strips"], args.out / "strips")
    (args.out / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "table": table, "by_target": by_target, "rows": result["rows"]}, indent=1))
    print(f"\nstrips and raw numbers in {args.out}")


if __name__ == "__main__":
    main()
