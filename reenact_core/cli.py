"""The ``reenact`` command: motion-textual inversion and motion transfer on diffusers' SVD, without ComfyUI.

::

    reenact invert REF.mp4 --model DIR -o motion.safetensors
    reenact invert-batch CLIPS/ --model DIR -o MOTIONS/
    reenact apply motion.safetensors TARGET.png --model DIR -o out.mp4
    reenact info motion.safetensors

``--model`` is a local diffusers Stable Video Diffusion folder; nothing is downloaded. Options and
defaults are the nodes' (Motion Textual Inversion, Motion Inversion Options, SVD_img2vid_Conditioning,
Apply Motion Embedding, KSampler in the shipped workflows). Needs ``pip install 'reenact-anything[diffusers]'``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from . import __version__
from .augment import Augmentations
from .inversion import CONDITIONING_AUGMENTATIONS, LEARNING_RATE_UNITS, InversionConfig
from .video import SAMPLINGS

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_runtime(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and runtime")
    group.add_argument("-m", "--model", required=True, metavar="DIR", help="local diffusers Stable Video Diffusion folder (model_index.json, unet/, vae/, ...)")
    group.add_argument("--device", default="auto", help="cuda, cuda:1, cpu, mps or auto (default: auto = CUDA if available)")
    group.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"], help="compute precision (auto = bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPU)")
    group.add_argument("--variant", default=None, help="load weight files of this variant, e.g. fp16 (diffusion_pytorch_model.fp16.safetensors)")
    group.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _add_inversion(parser: argparse.ArgumentParser) -> None:
    d, a = InversionConfig(), Augmentations()
    group = parser.add_argument_group("inversion (Motion Textual Inversion)")
    group.add_argument("--steps", type=_positive_int, default=d.steps, help="optimisation steps (default: %(default)s)")
    group.add_argument("--learning-rate", "--lr", type=float, default=d.learning_rate, help="AdamW learning rate after warm-up (default: %(default)s)")
    group.add_argument("--tokens-per-frame", type=_positive_int, default=d.tokens_per_frame, help="N tokens per frame and in the shared set (default: %(default)s)")
    group.add_argument("--video-frames", type=_positive_int, default=14, help="frames the motion is learned for: 14 for SVD, 25 for SVD-XT (default: %(default)s)")
    group.add_argument("--width", type=int, default=512, help="optimisation width, multiple of 8 (default: %(default)s)")
    group.add_argument("--height", type=int, default=288, help="optimisation height, multiple of 8 (default: %(default)s)")
    group.add_argument("--seed", type=int, default=0, help="seed for noise, noise levels and augmentations (default: %(default)s)")
    group.add_argument("--fps", type=int, default=0, help="SVD's fps conditioning; 0 = auto, the frame rate the learned frames have (default: %(default)s)")
    group.add_argument("--frame-sampling", choices=SAMPLINGS, default=SAMPLINGS[0],
                       help="spread the --video-frames over the whole reference, or take the first ones at the clip's rate (default: %(default)s)")
    group.add_argument("--motion-bucket-id", type=int, default=127, help="SVD's motion bucket conditioning (default: %(default)s)")
    group.add_argument("--augmentation-level", type=float, default=0.0, help="SVD's augmentation-level conditioning (default: %(default)s)")
    group.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True, help="recompute activations in the backward pass: much less memory, ~30%% more time (default: on)")
    group.add_argument("--clip-init", action=argparse.BooleanOptionalAction, default=True, help="start the tokens from the reference frames' CLIP embeddings; off: from the empty context (default: on)")

    group = parser.add_argument_group("advanced (Motion Inversion Options)")
    group.add_argument("--sigma-log-mean", type=float, default=d.sigma_log_mean, help="mean of log(sigma) of the training noise levels (default: %(default)s)")
    group.add_argument("--sigma-log-std", type=float, default=d.sigma_log_std, help="spread of log(sigma) (default: %(default)s)")
    group.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="linear learning-rate warm-up; -1 = 10%% of the steps (default: %(default)s)")
    group.add_argument("--schedule", choices=["constant", "cosine"], default=d.schedule, help="learning rate after warm-up (default: %(default)s)")
    group.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay (default: %(default)s)")
    group.add_argument("--grad-clip", type=float, default=d.grad_clip, help="clip the embedding's gradient norm; 0 = off (default: %(default)s)")
    group.add_argument("--per-frame-tokens", action=argparse.BooleanOptionalAction, default=d.per_frame_tokens, help="own tokens per frame; off = one set for all frames (default: on)")
    group.add_argument("--init-noise", type=float, default=d.init_noise, help="relative noise on the initial tokens (default: %(default)s)")
    group.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=a.hflip, help="also train on the mirrored clip (default: off)")
    group.add_argument("--crop-scale", type=float, default=a.crop_scale, help="random crops keeping at least this fraction; 1 = off (default: %(default)s)")
    group.add_argument("--color-jitter", type=float, default=a.color_jitter, help="random brightness/contrast/saturation change; 0 = off (default: %(default)s)")
    group.add_argument("--conditioning-augmentation", choices=CONDITIONING_AUGMENTATIONS, default=CONDITIONING_AUGMENTATIONS[0],
                       help="use --augmentation-level only in SVD's micro-conditioning, or also as noise on the conditioning frame's pixels, as SVD was trained (default: %(default)s)")
    group.add_argument("--learning-rate-unit", choices=LEARNING_RATE_UNITS, default=d.learning_rate_unit,
                       help="absolute: the rate moves each token element by about that much; token spread: in units of the initial tokens' std (default: %(default)s)")
    group.add_argument("--hue-shift", type=float, default=a.hue_shift, help="random hue rotation, fraction of the colour circle (0.5 = any hue); 0 = off (default: %(default)s)")
    group.add_argument("--random-cond-frame", action=argparse.BooleanOptionalAction, default=a.random_cond_frame, help="conditioning image from a random frame (default: off)")
    group.add_argument("--cond-noise", type=float, default=a.cond_noise, help="noise on the conditioning latent, relative to its std (default: %(default)s)")
    group.add_argument("--augment-variants", type=_positive_int, default=a.variants, help="augmented copies encoded up front (default: %(default)s)")
    group.add_argument("--eval-draws", type=int, default=d.eval_draws, help="fixed noise draws for the before/after loss; 0 = skip (default: %(default)s)")

    group = parser.add_argument_group("reference (Load Motion Reference)")
    group.add_argument("--frame-load-cap", type=int, default=0, help="keep at most this many frames; 0 = all (default: %(default)s)")
    group.add_argument("--skip-first-frames", type=int, default=0, help="skip this many frames at the start (default: %(default)s)")
    group.add_argument("--select-every-nth", type=_positive_int, default=1, help="keep every nth frame (default: %(default)s)")
    group.add_argument("--custom-width", type=int, default=0, help="resize the loaded frames to this width; 0 = keep (default: %(default)s)")
    group.add_argument("--custom-height", type=int, default=0, help="resize the loaded frames to this height; 0 = keep (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reenact",
        description="Reenact Anything without ComfyUI: learn the motion of a video as an embedding for Stable Video Diffusion "
        "(motion-textual inversion) and apply it to any image, on diffusers. Models load from local folders only.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("invert", help="learn the motion of one reference video", description="Learn the motion of a reference video as a motion embedding (.safetensors).")
    p.add_argument("reference", help="video file (mp4, webm, gif, ...), animated WebP or folder of frames")
    p.add_argument("-o", "--output", help="embedding file to write (default: <reference name>.safetensors)")
    p.add_argument("--loss-curve", metavar="PNG", help="also write the loss curve as PNG")
    _add_runtime(p)
    _add_inversion(p)

    p = commands.add_parser(
        "invert-batch",
        help="learn the motion of every clip of a folder (skips finished ones; resumes after interruption)",
        description="Invert every clip of FOLDER into OUTDIR/<clip name>.safetensors. Embeddings that already exist are "
        "skipped, so running the same command again after an interruption continues with the unfinished clips.",
    )
    p.add_argument("folder", help="folder of reference clips (videos, GIFs, WebPs, and sub-folders of frames)")
    p.add_argument("-o", "--output-dir", required=True, metavar="OUTDIR", help="folder for the embeddings")
    p.add_argument("--overwrite", action="store_true", help="invert again even where an embedding exists")
    p.add_argument("--loss-curves", action="store_true", help="also write <name>.loss.png next to each embedding")
    _add_runtime(p)
    _add_inversion(p)

    p = commands.add_parser("apply", help="animate an image with a motion embedding", description="Animate a target image with a motion embedding and write the video.")
    p.add_argument("motion", help="motion embedding (.safetensors from `reenact invert` or the ComfyUI nodes)")
    p.add_argument("target", help="target image (png, jpg, webp, ...)")
    p.add_argument("-o", "--output", help="video to write: .mp4, .mov, .mkv, .webm, .webp or .gif (default: <target>_<motion>.mp4)")
    p.add_argument("--strength", type=float, default=1.0, help="0 = plain SVD, 1 = the learned motion, >1 exaggerates (default: %(default)s)")
    p.add_argument("--frames", type=_positive_int, default=None, help="frames to generate (default: the model's, 14 for SVD, 25 for SVD-XT); the motion is resampled")
    p.add_argument("--width", type=int, default=1024, help="video width, multiple of 8 (default: %(default)s)")
    p.add_argument("--height", type=int, default=576, help="video height, multiple of 8 (default: %(default)s)")
    p.add_argument("--fps", type=int, default=6, help="SVD's fps conditioning and the video's frame rate (default: %(default)s)")
    p.add_argument("--motion-bucket-id", type=int, default=127, help="SVD's motion bucket conditioning (default: %(default)s)")
    p.add_argument("--augmentation-level", type=float, default=0.0, help="noise added to the target image (the pipeline's noise_aug_strength; default: %(default)s)")
    p.add_argument("--steps", type=_positive_int, default=20, help="sampling steps (default: %(default)s)")
    p.add_argument("--min-guidance", type=float, default=1.0, help="CFG scale of the first frame (default: %(default)s)")
    p.add_argument("--max-guidance", type=float, default=2.5, help="CFG scale of the last frame; linear in between (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    p.add_argument("--decode-chunk-size", type=_positive_int, default=None, help="frames the VAE decodes at once (default: all; lower it to save memory)")
    p.add_argument("--keep-speed", action="store_true", help="set the fps conditioning and the video's rate so the motion keeps the speed it was learned at over --frames")
    _add_runtime(p)

    p = commands.add_parser("info", help="show a motion embedding's shape and metadata")
    p.add_argument("motion", help="motion embedding (.safetensors)")
    return parser


def _inversion_kwargs(args: argparse.Namespace) -> dict:
    from .api import OPTION_NAMES  # the one list of Motion Inversion Options' settings (imported where the API is used anyway)

    options = {name: getattr(args, name) for name in OPTION_NAMES}
    return dict(
        steps=args.steps,
        learning_rate=args.learning_rate,
        tokens_per_frame=args.tokens_per_frame,
        video_frames=args.video_frames,
        width=args.width,
        height=args.height,
        seed=args.seed,
        fps=args.fps,
        motion_bucket_id=args.motion_bucket_id,
        augmentation_level=args.augmentation_level,
        gradient_checkpointing=args.gradient_checkpointing,
        clip_init=args.clip_init,
        frame_sampling=args.frame_sampling,
        options=options,
        frame_load_cap=args.frame_load_cap,
        skip_first_frames=args.skip_first_frames,
        select_every_nth=args.select_every_nth,
        custom_width=args.custom_width,
        custom_height=args.custom_height,
    )


def _runtime_kwargs(args: argparse.Namespace) -> dict:
    return dict(device=args.device, dtype=args.dtype, variant=args.variant, progress=not args.quiet)


def _say(message: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)


def _loss_summary(result) -> str:
    if result.initial_eval_loss is None or result.final_eval_loss is None:
        return f"final step loss {result.loss_history[-1]:.4g}"
    return f"eval loss {result.initial_eval_loss:.4g} -> {result.final_eval_loss:.4g}"


def _cmd_invert(args) -> int:
    from .api import invert_motion

    output = Path(args.output) if args.output else Path(f"{Path(args.reference.rstrip('/')).stem}.safetensors")
    if output.suffix.lower() != ".safetensors":
        raise ValueError(f"{output}: motion embeddings are .safetensors files")
    result = invert_motion(args.reference, args.model, output=output, loss_curve=args.loss_curve, **_inversion_kwargs(args), **_runtime_kwargs(args))
    _say(f"wrote {output} ({result.embedding.frames}x{result.embedding.tokens}x{result.embedding.dim}; {_loss_summary(result)}; {result.seconds:.0f} s)")
    return 0


def _cmd_invert_batch(args) -> int:
    from .api import invert_folder

    def report(clip: Path, status: str) -> None:
        if status != "start":
            _say(f"{status:8} {clip.name}")

    result = invert_folder(
        args.folder,
        args.model,
        args.output_dir,
        overwrite=args.overwrite,
        loss_curves=args.loss_curves,
        on_clip=report,
        **_inversion_kwargs(args),
        **_runtime_kwargs(args),
    )
    _say(f"{len(result.done)} inverted, {len(result.skipped)} already done, {len(result.failed)} failed -> {args.output_dir}")
    for clip, why in result.failed.items():
        _say(f"failed: {clip.name}: {why}")
    return EXIT_FAILED if result.failed else 0


def _cmd_apply(args) -> int:
    from .api import apply_motion

    output = Path(args.output) if args.output else Path(f"{Path(args.target).stem}_{Path(args.motion).stem}.mp4")
    video = apply_motion(
        args.motion,
        args.target,
        args.model,
        output=output,
        strength=args.strength,
        frames=args.frames,
        width=args.width,
        height=args.height,
        fps=args.fps,
        motion_bucket_id=args.motion_bucket_id,
        augmentation_level=args.augmentation_level,
        steps=args.steps,
        min_guidance=args.min_guidance,
        max_guidance=args.max_guidance,
        seed=args.seed,
        decode_chunk_size=args.decode_chunk_size,
        keep_speed=args.keep_speed,
        **_runtime_kwargs(args),
    )
    _say(f"wrote {output} ({video.shape[0]} frames, {video.shape[2]}x{video.shape[1]})")
    return 0


def _cmd_info(args) -> int:
    from .fileformat import load_embedding

    embedding = load_embedding(args.motion)
    print(f"{args.motion}: {embedding.frames} frames x {embedding.tokens} tokens x {embedding.dim} (+ {embedding.tokens} shared temporal tokens)")
    for key in sorted(embedding.metadata):
        print(f"  {key}: {embedding.metadata[key]}")
    return 0


COMMANDS = {"invert": _cmd_invert, "invert-batch": _cmd_invert_batch, "apply": _cmd_apply, "info": _cmd_info}


def main(argv: list[str] | None = None) -> int:
    # Never reach for the network: models come from local folders only.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="reenact: %(message)s")
    if getattr(args, "quiet", False):
        _quiet_libraries()

    from .diffusers_backend import MissingDependency, ModelFolderError
    from .fileformat import EmbeddingFileError
    from .inversion import InversionDiverged
    from .video import ReferenceVideoError

    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        _say("reenact: interrupted (nothing half-written was left behind)")
        return EXIT_INTERRUPTED
    except (MissingDependency, ModelFolderError, EmbeddingFileError, ReferenceVideoError, InversionDiverged, ValueError) as exc:
        print(f"reenact {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _quiet_libraries() -> None:
    for name in ("diffusers", "transformers"):
        try:
            module = __import__(f"{name}.utils", fromlist=["logging"])
            module.logging.disable_progress_bar()
            module.logging.set_verbosity_error()
        except (ImportError, AttributeError):
            pass


if __name__ == "__main__":
    sys.exit(main())
