"""Motion-textual inversion and motion transfer without ComfyUI, on diffusers' Stable Video Diffusion.

::

    from reenact_core.api import load_pipeline, invert_motion, apply_motion

    pipe = load_pipeline("models/svd-xt")  # a local diffusers folder; nothing is ever downloaded
    result = invert_motion("wave.mp4", pipe, output="wave.safetensors")
    video = apply_motion("wave.safetensors", "cat.png", pipe, output="cat_waving.mp4")

The method is the nodes' own: the same reference loading (``reenact_core.video``), the same loop
(``reenact_core.inversion.invert``), the same embedding files (``reenact_core.fileformat``; files made
here load in ComfyUI's Load Motion Embedding and vice versa), and the same options with the same
defaults as Motion Textual Inversion, Motion Inversion Options, SVD_img2vid_Conditioning and Apply
Motion Embedding. Only the model backend differs: :mod:`reenact_core.diffusers_backend`.

Needs the optional extra: ``pip install 'reenact-anything[diffusers]'``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .augment import Augmentations
from .diffusers_backend import (
    DiffusersSVDDenoiser,
    GenerationSettings,
    encode_frames,
    frozen_unet,
    generate,
    image_embeddings,
    load_pipeline,
    to_pil,
)
from .embedding import MotionEmbedding, fps_conditioning, motion_timing
from .fileformat import EmbeddingFileError, load_embedding, save_embedding
from .inversion import (
    CONDITIONING_AUGMENTATIONS,
    InversionConfig,
    InversionDiverged,
    InversionResult,
    StepInfo,
    conditioning_pixel_noise,
    derived_seed,
    encode_training_clips,
    initial_tokens,
    invert,
    labelled_embedding,
)
from .plot import render_loss_curve
from .video import (
    IMAGE_EXTENSIONS,
    SAMPLINGS,
    ReferenceClip,
    ReferenceVideoError,
    clip_from_images,
    encode_video,
    fit_frames,
    frames_for_inversion,
    load_reference_video,
    mp4_codec,
    pyav,
    resample_frames,
    select_and_resize,
)

__all__ = [
    "BatchResult",
    "apply_motion",
    "inversion_config",
    "invert_folder",
    "invert_motion",
    "list_clips",
    "load_pipeline",
    "save_video",
]

log = logging.getLogger("reenact")

# The Motion Textual Inversion node's defaults that are not fields of InversionConfig.
VIDEO_FRAMES = 14
WIDTH, HEIGHT = 512, 288
FPS = 6
MOTION_BUCKET_ID = 127
AUGMENTATION_LEVEL = 0.0

# Motion Inversion Options' settings: InversionConfig fields plus the augmentations (augment_variants = Augmentations.variants).
AUGMENTATION_OPTIONS = ("hflip", "crop_scale", "color_jitter", "hue_shift", "random_cond_frame", "cond_noise", "augment_variants")
CONFIG_OPTIONS = ("sigma_log_mean", "sigma_log_std", "warmup_steps", "schedule", "weight_decay", "grad_clip", "per_frame_tokens", "init_noise", "eval_draws",
                  "learning_rate_unit", "conditioning_augmentation")
OPTION_NAMES = CONFIG_OPTIONS + AUGMENTATION_OPTIONS
# Load Motion Reference's settings.
SELECTION_OPTIONS = ("frame_load_cap", "skip_first_frames", "select_every_nth", "custom_width", "custom_height")

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".gif", ".webp", ".mpg", ".mpeg", ".wmv", ".flv", ".ts"})
PYAV_OUTPUTS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}
PILLOW_OUTPUTS = {".webp": "WEBP", ".gif": "GIF"}


def inversion_config(
    *,
    steps: int = InversionConfig.steps,
    learning_rate: float = InversionConfig.learning_rate,
    tokens_per_frame: int = InversionConfig.tokens_per_frame,
    seed: int = 0,
    augmentation_level: float = AUGMENTATION_LEVEL,
    **options,
) -> InversionConfig:
    """InversionConfig from the node inputs and Motion Inversion Options' settings (same names, same defaults)."""
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        raise TypeError(f"unknown inversion option(s) {', '.join(unknown)}; valid: {', '.join(OPTION_NAMES)}")
    aug_defaults = Augmentations()
    augment = Augmentations(
        hflip=options.pop("hflip", aug_defaults.hflip),
        crop_scale=options.pop("crop_scale", aug_defaults.crop_scale),
        color_jitter=options.pop("color_jitter", aug_defaults.color_jitter),
        hue_shift=options.pop("hue_shift", aug_defaults.hue_shift),
        random_cond_frame=options.pop("random_cond_frame", aug_defaults.random_cond_frame),
        cond_noise=options.pop("cond_noise", aug_defaults.cond_noise),
        variants=options.pop("augment_variants", aug_defaults.variants),
    )
    pixel_noise = conditioning_pixel_noise(options.pop("conditioning_augmentation", CONDITIONING_AUGMENTATIONS[0]), augmentation_level)
    return InversionConfig(steps=steps, learning_rate=learning_rate, tokens_per_frame=tokens_per_frame, seed=seed, augment=augment,
                           conditioning_pixel_noise=pixel_noise, **options)


def load_reference(
    reference: str | os.PathLike | ReferenceClip | torch.Tensor,
    *,
    frame_load_cap: int = 0,
    skip_first_frames: int = 0,
    select_every_nth: int = 1,
    custom_width: int = 0,
    custom_height: int = 0,
) -> ReferenceClip:
    """A video/GIF/WebP file or folder of frames, a ReferenceClip, or frames [T, H, W, 3] in [0, 1] (Load Motion Reference's options)."""
    selection = dict(
        frame_load_cap=frame_load_cap,
        skip_first_frames=skip_first_frames,
        select_every_nth=select_every_nth,
        custom_width=custom_width,
        custom_height=custom_height,
    )
    if isinstance(reference, (str, os.PathLike)):
        return load_reference_video(reference, **selection)
    if isinstance(reference, torch.Tensor):
        reference = clip_from_images(reference)
    if not isinstance(reference, ReferenceClip):
        raise ReferenceVideoError(f"reference must be a path, a ReferenceClip or a frames tensor, got {type(reference).__name__}")
    return select_and_resize(reference, **selection)


def _pipeline(model, device, dtype, variant):
    if isinstance(model, (str, os.PathLike)):
        return load_pipeline(model, device=device, dtype=dtype, variant=variant)
    if not all(hasattr(model, name) for name in ("unet", "vae", "image_encoder", "feature_extractor")):
        raise TypeError(f"model must be a local diffusers SVD folder or a StableVideoDiffusionPipeline, got {type(model).__name__}")
    return model


def _progress_bar(total: int, desc: str, enabled: bool, leave: bool = True):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=leave, dynamic_ncols=True, unit="step")


def invert_motion(
    reference: str | os.PathLike | ReferenceClip | torch.Tensor,
    model,
    *,
    output: str | os.PathLike | None = None,
    steps: int = InversionConfig.steps,
    learning_rate: float = InversionConfig.learning_rate,
    tokens_per_frame: int = InversionConfig.tokens_per_frame,
    video_frames: int = VIDEO_FRAMES,
    width: int = WIDTH,
    height: int = HEIGHT,
    seed: int = 0,
    fps: int = 0,
    motion_bucket_id: int = MOTION_BUCKET_ID,
    augmentation_level: float = AUGMENTATION_LEVEL,
    gradient_checkpointing: bool = True,
    clip_init: bool = True,
    frame_sampling: str = SAMPLINGS[0],
    options: dict | None = None,
    frame_load_cap: int = 0,
    skip_first_frames: int = 0,
    select_every_nth: int = 1,
    custom_width: int = 0,
    custom_height: int = 0,
    loss_curve: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = "auto",
    variant: str | None = None,
    progress: bool = True,
    callback: Callable[[StepInfo], None] | None = None,
) -> InversionResult:
    """Learn the motion of ``reference``; the model stays frozen. Returns the InversionResult (``.embedding``).

    ``model`` is a local diffusers SVD folder (loaded on ``device`` in ``dtype``) or a loaded
    StableVideoDiffusionPipeline (used where it is). ``options`` takes Motion Inversion Options'
    settings (:data:`OPTION_NAMES`). ``clip_init`` starts the tokens from the reference frames' CLIP
    embeddings (the nodes do when CLIP vision is connected, as in the shipped workflows). With
    ``output`` the embedding is saved (atomically) in the nodes' file format; ``loss_curve`` writes the
    loss plot as PNG. ``callback`` is called after every step; raise from it to cancel.
    """
    config = inversion_config(steps=steps, learning_rate=learning_rate, tokens_per_frame=tokens_per_frame, seed=seed,
                              augmentation_level=augmentation_level, **(options or {}))
    for name, value in (("width", width), ("height", height)):
        if value < 8 or value % 8:
            raise ValueError(f"{name} must be a multiple of 8 (the VAE's downsampling), got {value}")
    clip = load_reference(
        reference,
        frame_load_cap=frame_load_cap,
        skip_first_frames=skip_first_frames,
        select_every_nth=select_every_nth,
        custom_width=custom_width,
        custom_height=custom_height,
    )
    frames, motion_fps = frames_for_inversion(clip, video_frames, frame_sampling)
    frames = fit_frames(frames, width, height)
    fps = fps or fps_conditioning(motion_fps)  # 0 = auto: the frame rate the learned frames have, as the node does
    pipe = _pipeline(model, device, dtype, variant)
    unet = pipe.unet
    dim = int(unet.config.cross_attention_dim)

    # The VAE samples its latent distribution: that noise is seeded too, so the embedding is reproducible.
    vae_noise = torch.Generator().manual_seed(derived_seed(seed, 3))
    training_latents = encode_training_clips(frames, lambda c: encode_frames(pipe, c, vae_noise), config)
    if not bool(torch.isfinite(training_latents).all()):
        raise ValueError("the VAE produced NaN or infinite latents for the reference frames (an fp16 VAE can overflow): use --dtype fp32 or bf16")
    if training_latents.shape[2] != unet.config.out_channels:
        raise ValueError(f"the VAE gives {training_latents.shape[2]}-channel latents but the UNet denoises {unet.config.out_channels}: the model folder is inconsistent")
    frame_embeds = None
    if clip_init:
        frame_embeds = image_embeddings(pipe, [to_pil(f) for f in frames])
        if frame_embeds.shape[-1] != dim:
            raise ValueError(f"the image encoder gives {frame_embeds.shape[-1]}-wide embeddings but the UNet's cross-attention takes {dim}; use --no-clip-init")
    init = initial_tokens(video_frames, config, torch.Generator().manual_seed(seed), frame_embeds, dim=dim)

    compute_dtype = unet.dtype
    bar = _progress_bar(steps, f"inverting {Path(clip.source).name}", progress, leave=True)

    def on_step(info: StepInfo) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{info.loss:.4g}", refresh=False)
        if callback is not None:
            callback(info)

    try:
        with frozen_unet(unet, gradient_checkpointing), DiffusersSVDDenoiser(
            unet, vae_scaling_factor=pipe.vae.config.scaling_factor, fps=fps, motion_bucket_id=motion_bucket_id, augmentation_level=augmentation_level
        ) as denoiser:
            result = invert(denoiser, training_latents.to(unet.device), init, config, on_step, loss_scaling=compute_dtype == torch.float16)
    finally:
        bar.close()

    result.embedding = labelled_embedding(
        result, config, clip.source, clip.sha256, fps=fps, motion_bucket_id=motion_bucket_id,
        augmentation_level=augmentation_level, width=width, height=height, backend="diffusers", base_model="svd",
        motion_fps=round(motion_fps, 3), reference_fps=round(clip.fps, 3), frame_sampling=frame_sampling,
        orientation=clip.orientation or "as stored",
    )
    if output is not None:
        save_embedding(result.embedding, output)
    if loss_curve is not None:
        curve = render_loss_curve(result.loss_history, steps, before=result.initial_eval_loss, after=result.final_eval_loss)
        _atomic_write(Path(loss_curve), lambda tmp: curve.save(tmp, format="PNG"))
    return result


def load_target(image: str | os.PathLike | Image.Image | torch.Tensor, width: int, height: int) -> Image.Image:
    """The target image resized and centre-cropped to exactly width x height (as SVD_img2vid_Conditioning does)."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(os.path.expanduser(os.fspath(image)))
        try:
            with Image.open(path) as img:
                img.load()
                pil = ImageOps.exif_transpose(img)
                pixels = np.asarray(pil.convert("RGB"), dtype=np.float32) / 255.0
        except FileNotFoundError:
            raise ValueError(f"{path}: target image not found") from None
        except (OSError, Image.DecompressionBombError) as exc:
            raise ValueError(f"{path}: could not be read as an image ({exc})") from None
        tensor = torch.from_numpy(pixels)
    elif isinstance(image, Image.Image):
        tensor = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
    elif isinstance(image, torch.Tensor):
        tensor = image[0] if image.ndim == 4 else image
        if tensor.ndim != 3 or tensor.shape[-1] != 3:
            raise ValueError(f"target image tensor must be [H, W, 3] or [1, H, W, 3] in [0, 1], got {tuple(image.shape)}")
    else:
        raise TypeError(f"target image must be a path, a PIL image or a tensor, got {type(image).__name__}")
    return to_pil(fit_frames(tensor[None].float(), width, height)[0])


def apply_motion(
    embedding: str | os.PathLike | MotionEmbedding | None,
    image: str | os.PathLike | Image.Image | torch.Tensor,
    model,
    *,
    output: str | os.PathLike | None = None,
    strength: float = 1.0,
    frames: int | None = None,
    width: int = 1024,
    height: int = 576,
    fps: int = FPS,
    motion_bucket_id: int = MOTION_BUCKET_ID,
    augmentation_level: float = AUGMENTATION_LEVEL,
    steps: int = 20,
    min_guidance: float = 1.0,
    max_guidance: float = 2.5,
    seed: int = 0,
    decode_chunk_size: int | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = "auto",
    variant: str | None = None,
    progress: bool = True,
    keep_speed: bool = False,
) -> torch.Tensor:
    """Animate ``image`` with a motion (a file or MotionEmbedding; None = stock SVD). Returns [F, H, W, 3] in [0, 1].

    ``frames`` defaults to the model's own frame count (14 for SVD, 25 for SVD-XT); the motion is
    resampled in time to it. ``strength`` 0 is stock SVD for this image, 1 the learned motion, >1
    exaggerates. The negative is the zero context; guidance rises linearly over the frames from
    ``min_guidance`` to ``max_guidance`` (the pipeline's and VideoLinearCFGGuidance's CFG).
    ``augmentation_level`` is the pipeline's noise_aug_strength. With ``output`` the video is written
    (.mp4/.mov/.mkv/.webm with PyAV, .webp/.gif with Pillow) at ``fps``. ``keep_speed`` (as Apply Motion
    Embedding's): the fps conditioning and the video's rate become the rate that keeps the motion's learned speed
    over ``frames`` (:func:`reenact_core.embedding.motion_timing`).
    """
    for name, value in (("width", width), ("height", height)):
        if value < 8 or value % 8:
            raise ValueError(f"{name} must be a multiple of 8, got {value}")
    if output is not None:
        _output_kind(Path(output))  # refuse an unsupported extension before sampling
    if isinstance(embedding, (str, os.PathLike)):
        embedding = load_embedding(embedding)
    target = load_target(image, width, height)
    pipe = _pipeline(model, device, dtype, variant)
    if keep_speed and embedding is not None:
        timing = motion_timing(embedding, frames or int(pipe.unet.config.num_frames))
        fps = timing["playback_fps_rounded"] or fps
    settings = GenerationSettings(
        frames=frames,
        width=width,
        height=height,
        fps=fps,
        motion_bucket_id=motion_bucket_id,
        augmentation_level=augmentation_level,
        steps=steps,
        min_guidance=min_guidance,
        max_guidance=max_guidance,
        seed=seed,
        decode_chunk_size=decode_chunk_size,
    )
    video = generate(pipe, embedding, target, settings, strength=strength, progress=progress)
    if output is not None:
        save_video(video, output, fps)
    return video


# --------------------------------------------------------------------------------------------------
# Batch inversion


@dataclasses.dataclass
class BatchResult:
    done: list[Path] = dataclasses.field(default_factory=list)  # embeddings written by this run
    skipped: list[Path] = dataclasses.field(default_factory=list)  # already there from an earlier run
    failed: dict[Path, str] = dataclasses.field(default_factory=dict)  # clip -> why


def list_clips(folder: str | os.PathLike) -> list[Path]:
    """Clips of a folder: video/GIF/WebP files, and sub-folders of frames (image sequences), in natural order."""
    folder = Path(os.path.expanduser(os.fspath(folder)))
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder of reference clips")
    clips = []
    for entry in folder.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.suffix.lower() in VIDEO_EXTENSIONS:
            clips.append(entry)
        elif entry.is_dir() and any(f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".") for f in entry.iterdir()):
            clips.append(entry)
    return sorted(clips, key=lambda p: [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)])


def batch_outputs(clips: Iterable[Path], out_dir: Path) -> dict[Path, Path]:
    """clip -> out_dir/<stem>.safetensors; clips sharing a stem (wave.mp4, wave.gif) get the extension too."""
    clips = list(clips)
    stems: dict[str, int] = {}
    for clip in clips:
        stems[clip.stem] = stems.get(clip.stem, 0) + 1
    outputs = {}
    for clip in clips:
        name = clip.stem if stems[clip.stem] == 1 else f"{clip.stem}_{clip.suffix.lstrip('.') or 'frames'}"
        outputs[clip] = out_dir / f"{name}.safetensors"
    return outputs


def _finished(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        load_embedding(path)
    except EmbeddingFileError as exc:
        log.warning("%s exists but is not a usable embedding (%s); inverting again", path, exc)
        return False
    return True


def _remove_stale_temporaries(path: Path) -> None:
    """Temporary files an interrupted save left behind (save_embedding writes .<name>.<uuid>.tmp, then renames)."""
    for tmp in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):
        try:
            tmp.unlink()
        except OSError:
            pass


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def invert_folder(
    folder: str | os.PathLike,
    model,
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    loss_curves: bool = False,
    progress: bool = True,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = "auto",
    variant: str | None = None,
    on_clip: Callable[[Path, str], None] | None = None,
    **invert_kwargs,
) -> BatchResult:
    """Invert every clip of ``folder`` into ``out_dir/<clip name>.safetensors``.

    Clips whose embedding already exists (and loads) are skipped, so an interrupted run continues
    where it stopped when started again; files are written atomically, so a killed run never leaves a
    half-written embedding. A clip that fails (too short, unreadable, diverged) is reported and the
    rest go on. ``invert_kwargs`` are :func:`invert_motion`'s options. ``on_clip(clip, status)`` is
    called with status "start", "done", "skipped" or "failed".
    """
    clips = list_clips(folder)
    out = Path(os.path.expanduser(os.fspath(out_dir)))
    out.mkdir(parents=True, exist_ok=True)
    outputs = batch_outputs(clips, out)
    selection = {name: invert_kwargs.pop(name) for name in SELECTION_OPTIONS if name in invert_kwargs}
    video_frames = invert_kwargs.get("video_frames", VIDEO_FRAMES)
    result = BatchResult()
    todo = []
    for clip in clips:
        target = outputs[clip]
        if not overwrite and _finished(target):
            result.skipped.append(target)
            if on_clip is not None:
                on_clip(clip, "skipped")
        else:
            todo.append(clip)
    pipe = None  # loaded once, when the first clip that can be inverted comes up
    bar = _progress_bar(len(todo), "clips", progress and len(todo) > 1)
    try:
        for clip in todo:
            target = outputs[clip]
            _remove_stale_temporaries(target)
            if on_clip is not None:
                on_clip(clip, "start")
            try:
                reference = load_reference(clip, **selection)
                resample_frames(reference.frames, video_frames)  # a clip that is too short fails before any model work
                if pipe is None:
                    pipe = _pipeline(model, device, dtype, variant)
                invert_motion(
                    reference,
                    pipe,
                    output=target,
                    loss_curve=target.with_suffix(".loss.png") if loss_curves else None,
                    progress=progress,
                    **invert_kwargs,
                )
            except (ReferenceVideoError, InversionDiverged) as exc:
                result.failed[clip] = str(exc)
                log.error("%s: %s", clip.name, exc)
                if on_clip is not None:
                    on_clip(clip, "failed")
            else:
                result.done.append(target)
                if on_clip is not None:
                    on_clip(clip, "done")
            bar.update(1)
    finally:
        bar.close()
    return result


# --------------------------------------------------------------------------------------------------
# Writing videos


def _output_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in PYAV_OUTPUTS:
        return "pyav"
    if suffix in PILLOW_OUTPUTS:
        return "pillow"
    supported = ", ".join(sorted(PYAV_OUTPUTS) + sorted(PILLOW_OUTPUTS))
    raise ValueError(f"{path.name}: cannot write {suffix or 'files without an extension'}; use one of {supported}")


def _atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """``write`` a temporary file next to ``path`` (same extension), then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    return path


def save_video(frames: torch.Tensor, path: str | os.PathLike, fps: float = FPS) -> Path:
    """Write [F, H, W, 3] frames in [0, 1]: .mp4/.mov/.mkv (H.264) and .webm (VP9) with PyAV, .webp/.gif with Pillow."""
    path = Path(os.path.expanduser(os.fspath(path)))
    kind = _output_kind(path)
    array = (frames.detach().float().cpu().clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"frames must be [F, H, W, 3], got {tuple(frames.shape)}")
    if kind == "pillow":
        images = [Image.fromarray(f, "RGB") for f in array]
        duration = max(1, round(1000 / fps))
        extra = {"lossless": False, "quality": 90} if path.suffix.lower() == ".webp" else {}

        def write(tmp: Path) -> None:
            images[0].save(tmp, format=PILLOW_OUTPUTS[path.suffix.lower()], save_all=True, append_images=images[1:], duration=duration, loop=0, **extra)

    else:

        def write(tmp: Path) -> None:
            _write_pyav(array, tmp, fps, PYAV_OUTPUTS[path.suffix.lower()])

    return _atomic_write(path, write)


def _write_pyav(array: np.ndarray, path: Path, fps: float, container_format: str) -> None:
    import fractions

    av = pyav()
    if container_format == "webm":
        codec = next((c for c in ("libvpx-vp9", "libvpx") if c in av.codecs_available), None)
        if codec is None:
            raise ValueError("this PyAV build has no VP8/VP9 encoder; write .mp4 instead")
    else:
        codec = mp4_codec()
    options = {"crf": "18"} if codec == "libx264" else {}
    encode_video(array, path, codec, fractions.Fraction(fps).limit_denominator(1001), options=options, container_format=container_format)
