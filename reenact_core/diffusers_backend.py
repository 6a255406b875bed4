"""diffusers' Stable Video Diffusion as a reenact_core Denoiser, and generation with a motion embedding.

Where a frame's tokens enter diffusers' UNet
--------------------------------------------
``UNetSpatioTemporalConditionModel`` takes one context per video, ``encoder_hidden_states``
[B, L, D], and itself

* repeats it over the frames for the *spatial* transformer blocks: the spatial cross-attention of
  batch row ``b*F + f`` (video b, frame f) receives video b's whole context;
* gives the *temporal* transformer blocks the context of each video's first frame (every pixel
  column of video b receives video b's whole context).

So the motion tokens travel packed in ``encoder_hidden_states``: ``pack_tokens`` lays out the
(F+1)·N rows as frame 0's N tokens, frame 1's, ..., frame F-1's, then the shared set. Attention
processors installed on the cross-attention (``attn2``) layers pick their rows before handing the
context to the layer's original processor (nothing of diffusers' forward is copied):

* spatial ``attn2`` (in ``BasicTransformerBlock``): batch row ``i`` is frame ``i mod F`` of its video and
  gets rows ``f*N .. f*N+N-1``;
* temporal ``attn2`` (in ``TemporalBasicTransformerBlock``): every row gets the last N rows, the
  shared set.

Memory: diffusers copies each video's whole context once per pixel for the temporal layers
([B·h·w, L, D]); with L = (F+1)·N that copy would be (F+1)/2 times larger than needed (gigabytes for
SVD-XT at 1024×576). A forward pre-hook on each ``TransformerSpatioTemporalModel`` therefore hands it,
per frame row, only that frame's N tokens followed by the shared N — the packed layout of a one-frame
video, which the processors route the same way. The hook changes no result, only the size of that copy.

This is exactly ComfyUI's routing (``c_crossattn`` row f for frame f, ``time_context`` for the temporal
layers). Stock SVD is N=1 with every row equal to the image's CLIP embedding. The unconditional
(negative) context is the all-zero context of the same shape, as in the pipeline and the nodes.

Preconditioning is SVD's EDM as diffusers' ``EulerDiscreteScheduler`` does it for SVD (v-prediction,
sigma_data = 1, continuous timesteps): c_in = 1/sqrt(s²+1), c_skip = 1/(s²+1), c_out = -s/sqrt(s²+1),
c_noise = log(s)/4. Latents live in the VAE's latent space times ``vae.config.scaling_factor``; the
conditioning image's latent is concatenated *unscaled*, as the pipeline does. ``added_time_ids`` are
[fps - 1, motion_bucket_id, augmentation_level], as the pipeline builds them.

diffusers is an optional dependency (``pip install reenact-anything[diffusers]``): this module imports
it only inside the functions that need it, so the rest of reenact_core (and the ComfyUI node pack)
never needs it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.utils.checkpoint
from PIL import Image

from .embedding import MotionEmbedding

INSTALL_HINT = "install the standalone extra: pip install 'reenact-anything[diffusers]' (diffusers, transformers, accelerate)"
PIPELINE_FOLDERS = ("unet", "vae", "image_encoder", "scheduler", "feature_extractor")


class MissingDependency(ImportError):
    """diffusers/transformers are not installed; the message says how to install them."""


class ModelFolderError(ValueError):
    """The --model folder is not a local diffusers Stable Video Diffusion pipeline."""


def require_diffusers():
    """Import diffusers (and check transformers), or raise MissingDependency saying what to install."""
    try:
        diffusers = importlib.import_module("diffusers")
        importlib.import_module("transformers")
    except ImportError as exc:
        raise MissingDependency(f"the diffusers backend needs {exc.name or 'diffusers'}: {INSTALL_HINT}") from exc
    return diffusers


# --------------------------------------------------------------------------------------------------
# Token routing


def pack_tokens(frame_tokens: torch.Tensor, shared_tokens: torch.Tensor) -> torch.Tensor:
    """[F, N, D] frame tokens + [N, D] shared tokens -> [(F+1)*N, D] (frame 0, ..., frame F-1, shared)."""
    if frame_tokens.ndim != 3 or shared_tokens.ndim != 2 or frame_tokens.shape[1:] != shared_tokens.shape:
        raise ValueError(f"expected frame tokens [F, N, D] and shared tokens [N, D], got {tuple(frame_tokens.shape)} and {tuple(shared_tokens.shape)}")
    return torch.cat([frame_tokens.reshape(-1, frame_tokens.shape[-1]), shared_tokens.to(frame_tokens.dtype)], dim=0)


def _context_frames(length: int, tokens: int) -> int:
    frames = length // tokens - 1
    if length % tokens or frames < 1:
        raise RuntimeError(
            f"motion-token routing: a cross-attention got a context of {length} tokens, which is not (frames + 1) x {tokens} "
            "packed tokens; pass contexts built with pack_tokens"
        )
    return frames


def frame_rows(packed: torch.Tensor, tokens: int) -> torch.Tensor:
    """Spatial layers: [B*F, (F'+1)*N, D] packed contexts -> [B*F, N, D], row i gets frame (i mod F')'s tokens.

    F' is the F of the packed layout (1 for the per-row contexts the compaction hook makes).
    """
    batch_frames = packed.shape[0]
    frames = _context_frames(packed.shape[1], tokens)
    if batch_frames % frames:
        raise RuntimeError(f"motion-token routing: {batch_frames} frame rows are not whole videos of {frames} frames")
    if frames == 1:
        return packed[:, :tokens]
    index = torch.arange(batch_frames, device=packed.device)
    return packed.unflatten(1, (frames + 1, tokens))[index, index % frames]


def shared_rows(packed: torch.Tensor, tokens: int) -> torch.Tensor:
    """Temporal layers: [B*h*w, (F'+1)*N, D] packed contexts -> [B*h*w, N, D], the shared set (the last N)."""
    _context_frames(packed.shape[1], tokens)
    return packed[:, -tokens:]


def compact_rows(packed: torch.Tensor, tokens: int) -> torch.Tensor:
    """[B*F, (F+1)*N, D] (every frame row holds its video's whole packed context) -> [B*F, 2N, D]: frame f's N
    tokens followed by the shared N, i.e. a one-frame packed context per row."""
    return torch.cat([frame_rows(packed, tokens), shared_rows(packed, tokens)], dim=1)


class _RoutedProcessor:
    """Wraps an attn2 layer's own processor: selects this layer's rows of the packed context, then delegates."""

    def __init__(self, inner, routing: MotionTokenRouting, temporal: bool):
        self.inner = inner
        self.routing = routing
        self.temporal = temporal

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        tokens = self.routing.tokens
        if encoder_hidden_states is not None and tokens is not None:
            if self.temporal:  # hidden states [B*h*w, F, C]: attention runs across the F frames of each pixel
                encoder_hidden_states = shared_rows(encoder_hidden_states, tokens)
            else:  # hidden states [B*F, h*w, C]: frames are in the batch
                encoder_hidden_states = frame_rows(encoder_hidden_states, tokens)
        return self.inner(attn, hidden_states, encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask, **kwargs)


class MotionTokenRouting:
    """Installs (and removes) the routing processors on every cross-attention layer of an SVD UNet.

    ``tokens`` (N) says how the packed context is laid out; ``None`` passes contexts through unchanged
    (stock behaviour). ``compact`` adds the memory-saving pre-hooks (see the module docstring); the
    processors route the full packed context just as well without them. The model's weights are never
    touched; :meth:`remove` restores the original processors and removes the hooks.
    """

    def __init__(self, unet, compact: bool = True):
        self.unet = unet
        self.tokens: int | None = None
        self.compact = compact
        self.spatial: dict[str, object] = {}
        self.temporal: dict[str, object] = {}
        self.transformers = [m for m in unet.modules() if type(m).__name__ == "TransformerSpatioTemporalModel"]
        self._hooks: list = []
        for name, module in unet.named_modules():
            kind = type(module).__name__
            attn2 = getattr(module, "attn2", None)
            if attn2 is None:
                continue
            if kind == "TemporalBasicTransformerBlock":
                self.temporal[f"{name}.attn2"] = attn2
            elif kind == "BasicTransformerBlock":
                self.spatial[f"{name}.attn2"] = attn2
        if not self.spatial or not self.temporal:
            raise ValueError(
                f"{type(unet).__name__} has {len(self.spatial)} spatial and {len(self.temporal)} temporal cross-attention layers; "
                "motion embeddings need Stable Video Diffusion's UNetSpatioTemporalConditionModel"
            )
        self._originals: dict[str, object] = {}

    @property
    def installed(self) -> bool:
        return bool(self._originals)

    def install(self, tokens: int | None = None) -> MotionTokenRouting:
        if tokens is not None:
            self.tokens = int(tokens)
        if self.installed:
            return self
        for table, temporal in ((self.spatial, False), (self.temporal, True)):
            for name, attn in table.items():
                current = attn.processor
                if isinstance(current, _RoutedProcessor):
                    raise RuntimeError(f"{name} already has motion-token routing installed (by another MotionTokenRouting)")
                self._originals[name] = current
                attn.set_processor(_RoutedProcessor(current, self, temporal))
        if self.compact:
            self._hooks = [m.register_forward_pre_hook(self._compact_context, with_kwargs=True) for m in self.transformers]
        return self

    def _compact_context(self, module, args, kwargs):
        """Pre-hook of TransformerSpatioTemporalModel: per frame row, only that frame's tokens and the shared set."""
        if self.tokens is None:
            return None
        if "encoder_hidden_states" in kwargs:
            if kwargs["encoder_hidden_states"] is None:
                return None
            return args, dict(kwargs, encoder_hidden_states=compact_rows(kwargs["encoder_hidden_states"], self.tokens))
        if len(args) > 1 and args[1] is not None:
            return (args[0], compact_rows(args[1], self.tokens), *args[2:]), kwargs
        return None

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        for table in (self.spatial, self.temporal):
            for name, attn in table.items():
                original = self._originals.pop(name, None)
                if original is not None and isinstance(attn.processor, _RoutedProcessor) and attn.processor.routing is self:
                    attn.set_processor(original)
        self._originals.clear()

    def __enter__(self) -> MotionTokenRouting:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.remove()


@contextlib.contextmanager
def motion_routing(unet, tokens: int) -> Iterator[MotionTokenRouting]:
    """Route packed motion contexts with N=``tokens`` through ``unet`` for the duration of the block."""
    routing = MotionTokenRouting(unet).install(tokens)
    try:
        yield routing
    finally:
        routing.remove()


# --------------------------------------------------------------------------------------------------
# The Denoiser


def edm_coefficients(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_in, c_skip, c_out, c_noise) of SVD's v-prediction EDM with sigma_data = 1 (EulerDiscreteScheduler's)."""
    sigma = sigma.float()
    scale = (sigma**2 + 1.0).sqrt()
    return 1.0 / scale, 1.0 / (sigma**2 + 1.0), -sigma / scale, 0.25 * sigma.log()


def added_time_ids(fps: int, motion_bucket_id: int, augmentation_level: float) -> torch.Tensor:
    """SVD's micro-conditioning [1, 3] as the pipeline builds it (SVD was trained on fps - 1)."""
    return torch.tensor([[fps - 1, motion_bucket_id, augmentation_level]], dtype=torch.float32)


class DiffusersSVDDenoiser:
    """Adapts diffusers' ``UNetSpatioTemporalConditionModel`` to :class:`reenact_core.denoiser.Denoiser`.

    Installs the routing processors on the UNet when created; :meth:`close` (or leaving a ``with``
    block) removes them. Calls are differentiable with respect to the tokens; the model's weights
    are not modified (freeze them with :func:`frozen_unet` for inversion).
    """

    def __init__(
        self, unet, *, vae_scaling_factor: float, fps: int = 6, motion_bucket_id: int = 127, augmentation_level: float = 0.0, compact: bool = True
    ):
        self.unet = unet
        self.scaling_factor = float(vae_scaling_factor)
        self.time_ids = added_time_ids(fps, motion_bucket_id, augmentation_level)
        self.routing = MotionTokenRouting(unet, compact=compact).install()

    def __call__(self, noisy, sigma, frame_tokens, shared_tokens, image_latent):
        unet = self.unet
        device, dtype = unet.device, unet.dtype
        noisy = noisy.to(device, torch.float32)
        frames = noisy.shape[0]
        c_in, c_skip, c_out, c_noise = edm_coefficients(sigma.reshape(()).to(device))
        raw_image = image_latent.to(device, torch.float32) / self.scaling_factor  # the pipeline concatenates the unscaled VAE latent
        model_input = torch.cat([noisy * c_in, raw_image[None].expand(frames, -1, -1, -1)], dim=1)
        self.routing.tokens = frame_tokens.shape[1]
        context = pack_tokens(frame_tokens.to(device), shared_tokens.to(device))[None]
        output = unet(
            model_input[None].to(dtype),  # [1 video, F, 8, h, w]
            c_noise.reshape(1),  # continuous timestep, float32 as the scheduler gives it
            encoder_hidden_states=context.to(dtype),
            added_time_ids=self.time_ids.to(device, dtype),
            return_dict=False,
        )[0][0]
        return noisy * c_skip + output.float() * c_out

    def close(self) -> None:
        self.routing.remove()

    def __enter__(self) -> DiffusersSVDDenoiser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def frozen_unet(unet, gradient_checkpointing: bool) -> Iterator[None]:
    """Weights frozen, optional gradient checkpointing; the UNet's previous state comes back after.

    With checkpointing the UNet runs in training mode: diffusers before 0.31 only checkpoint when
    ``self.training`` (SVD's UNet has no dropout, so training mode computes the same). diffusers checkpoints
    the spatial transformer blocks but runs the temporal ones plainly; those are wrapped here too."""
    grads = {name: p.requires_grad for name, p in unet.named_parameters()}
    was_training = unet.training
    was_checkpointing = bool(getattr(unet, "is_gradient_checkpointing", False))
    unet.requires_grad_(False)
    unet.train(gradient_checkpointing)
    if gradient_checkpointing and not was_checkpointing:
        unet.enable_gradient_checkpointing()
    elif not gradient_checkpointing and was_checkpointing:
        unet.disable_gradient_checkpointing()
    wrapped = _checkpoint_temporal_blocks(unet) if gradient_checkpointing else []
    try:
        yield
    finally:
        for module in wrapped:
            del module.forward  # back to the class's forward
        if gradient_checkpointing != was_checkpointing:
            (unet.enable_gradient_checkpointing if was_checkpointing else unet.disable_gradient_checkpointing)()
        unet.train(was_training)
        for name, p in unet.named_parameters():
            p.requires_grad_(grads.get(name, False))


def _checkpoint_temporal_blocks(unet) -> list:
    """Recompute the temporal transformer blocks in the backward pass (their activations are as large as the
    spatial blocks'); returns the wrapped modules."""
    wrapped = []
    for module in unet.modules():
        if type(module).__name__ == "TemporalBasicTransformerBlock" and "forward" not in vars(module):
            forward = module.forward

            def checkpointed(*args, _forward=forward, **kwargs):
                return torch.utils.checkpoint.checkpoint(_forward, *args, use_reentrant=False, **kwargs)

            module.forward = checkpointed
            wrapped.append(module)
    return wrapped


# --------------------------------------------------------------------------------------------------
# Loading (local folders only)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto'/None: CUDA if available, else Apple's MPS, else the CPU."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """'auto' = bf16 on GPUs that have it, fp16 on other GPUs, fp32 on CPU (the nodes' precision setting)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
    if dtype not in (None, "auto"):
        if dtype not in names:
            raise ValueError(f"dtype must be auto, fp32, bf16 or fp16, got {dtype!r}")
        return names[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def check_model_folder(path: str | os.PathLike) -> Path:
    """A local diffusers SVD pipeline folder, or ModelFolderError saying what is wrong (nothing is downloaded)."""
    raw = os.fspath(path)
    folder = Path(os.path.expanduser(raw))
    how = (
        "--model must be a local folder holding a diffusers Stable Video Diffusion pipeline (model_index.json, "
        + ", ".join(f"{f}/" for f in PIPELINE_FOLDERS)
        + "), e.g. one made with `hf download stabilityai/stable-video-diffusion-img2vid-xt --local-dir DIR` "
        "or `pipeline.save_pretrained(DIR)`. Nothing is downloaded at run time"
    )
    if not folder.exists():
        hint = " (this looks like a Hub model id; download it first)" if raw.count("/") == 1 and not raw.startswith((".", "/", "~")) else ""
        raise ModelFolderError(f"{raw}: no such folder{hint}. {how}")
    if folder.is_file():
        raise ModelFolderError(f"{raw}: is a file; single-file checkpoints (svd.safetensors) are for ComfyUI. {how}")
    index = folder / "model_index.json"
    if not index.is_file():
        raise ModelFolderError(f"{raw}: has no model_index.json. {how}")
    try:
        spec = json.loads(index.read_text())
    except (OSError, ValueError) as exc:
        raise ModelFolderError(f"{raw}: model_index.json is unreadable ({exc}). {how}") from None
    kind = spec.get("_class_name") if isinstance(spec, dict) else None
    if kind != "StableVideoDiffusionPipeline":
        raise ModelFolderError(f"{raw}: model_index.json describes a {kind or 'unknown'} pipeline, not StableVideoDiffusionPipeline. {how}")
    missing = [f for f in PIPELINE_FOLDERS if not (folder / f).is_dir()]
    if missing:
        raise ModelFolderError(f"{raw}: lacks the sub-folder(s) {', '.join(missing)}. {how}")
    return folder


def load_pipeline(model: str | os.PathLike, *, device: str | torch.device | None = None, dtype: str | torch.dtype | None = "auto", variant: str | None = None):
    """StableVideoDiffusionPipeline from a local folder (``local_files_only``), on ``device`` in ``dtype``."""
    folder = check_model_folder(model)
    diffusers = require_diffusers()
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    try:
        pipe = diffusers.StableVideoDiffusionPipeline.from_pretrained(folder, variant=variant, local_files_only=True, **{_dtype_keyword(): torch_dtype})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelFolderError(f"{folder}: could not load the pipeline ({type(exc).__name__}: {exc})") from exc
    pipe.to(device)
    return pipe


def _dtype_keyword() -> str:
    """from_pretrained's precision argument: ``dtype`` since diffusers deprecated ``torch_dtype`` (2026), else ``torch_dtype``."""
    try:
        deprecation = importlib.import_module("diffusers.utils.deprecation_utils")
    except ImportError:
        return "torch_dtype"
    return "dtype" if hasattr(deprecation, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else "torch_dtype"


def pipeline_device(pipe) -> torch.device:
    return getattr(pipe, "_execution_device", None) or pipe.unet.device


# --------------------------------------------------------------------------------------------------
# Encoders


def to_pil(image: torch.Tensor) -> Image.Image:
    """[H, W, 3] float in [0, 1] -> RGB PIL image."""
    array = (image.detach().float().cpu().clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(array, "RGB")


@torch.no_grad()
def encode_frames(pipe, frames: torch.Tensor, generator: torch.Generator | None = None, chunk: int = 8) -> torch.Tensor:
    """[F, H, W, 3] in [0, 1] -> [F, C, h, w] float32 latents times the VAE's scaling factor (the denoiser's space).

    Samples the VAE's latent distribution (as ComfyUI's VAE does) with ``generator``; fp16 VAEs that ask
    for it are upcast to fp32 while encoding, as the pipeline does.
    """
    vae = pipe.vae
    device = vae.device
    upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    if upcast:
        vae.to(torch.float32)
    try:
        out = []
        for start in range(0, frames.shape[0], chunk):
            pixels = frames[start : start + chunk].permute(0, 3, 1, 2).float() * 2.0 - 1.0
            dist = vae.encode(pixels.to(device, vae.dtype)).latent_dist
            noise = torch.randn(dist.mean.shape, generator=generator, dtype=torch.float32).to(device)
            latents = dist.mean.float() + dist.std.float() * noise
            out.append(latents * vae.config.scaling_factor)
        return torch.cat(out).float()
    finally:
        if upcast:
            vae.to(torch.float16)


@torch.no_grad()
def image_embeddings(pipe, images: list[Image.Image]) -> torch.Tensor:
    """CLIP image embeddings [len(images), D] float32, preprocessed exactly as the pipeline does for its image."""
    embeds = pipe._encode_image(images, pipeline_device(pipe), 1, False)
    return embeds[:, 0].float().cpu()


# --------------------------------------------------------------------------------------------------
# Generation


@dataclasses.dataclass
class GenerationSettings:
    frames: int | None = None  # None: the model's frame count (unet.config.num_frames)
    width: int = 1024
    height: int = 576
    fps: int = 6
    motion_bucket_id: int = 127
    augmentation_level: float = 0.0  # the pipeline's noise_aug_strength
    steps: int = 20
    min_guidance: float = 1.0
    max_guidance: float = 2.5
    seed: int = 0
    decode_chunk_size: int | None = None


def motion_context(embedding: MotionEmbedding, image_token: torch.Tensor, frames: int, strength: float) -> MotionEmbedding:
    """The embedding the model receives: resampled to ``frames`` and blended with the target's neutral context.

    Neutral (strength 0) is N copies of the target's CLIP embedding in every row, i.e. stock SVD for
    that image — the definition Apply Motion Embedding uses.
    """
    motion = embedding.resample_frames(frames)
    neutral = MotionEmbedding.neutral(image_token.reshape(-1).float().cpu(), frames, motion.tokens, motion.dim)
    return motion.with_strength(strength, neutral)


@contextlib.contextmanager
def _image_context(pipe, context: torch.Tensor) -> Iterator[None]:
    """Make the pipeline use ``context`` [1, L, D] instead of the image's CLIP embedding; the negative is zeros of the same shape."""

    def encode(image, device, num_videos_per_prompt, do_classifier_free_guidance):
        batch = len(image) if isinstance(image, list) else (image.shape[0] if isinstance(image, torch.Tensor) and image.ndim == 4 else 1)
        positive = context.to(device).repeat(batch * num_videos_per_prompt, 1, 1)
        if do_classifier_free_guidance:
            return torch.cat([torch.zeros_like(positive), positive])
        return positive

    pipe._encode_image = encode  # instance attribute shadows the method for this call only
    try:
        yield
    finally:
        del pipe._encode_image


def generate(
    pipe,
    embedding: MotionEmbedding | None,
    image: Image.Image,
    settings: GenerationSettings,
    strength: float = 1.0,
    progress: bool = True,
    callback: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Animate ``image`` with the motion ``embedding`` (None: stock SVD). Returns [F, H, W, 3] float32 in [0, 1]."""
    frames = settings.frames or int(pipe.unet.config.num_frames)
    device = pipeline_device(pipe)
    dtype = pipe.image_encoder.dtype
    pipe.set_progress_bar_config(disable=not progress, leave=False, desc="sampling")
    kwargs = dict(
        height=settings.height,
        width=settings.width,
        num_frames=frames,
        num_inference_steps=settings.steps,
        min_guidance_scale=settings.min_guidance,
        max_guidance_scale=settings.max_guidance,
        fps=settings.fps,
        motion_bucket_id=settings.motion_bucket_id,
        noise_aug_strength=settings.augmentation_level,
        decode_chunk_size=settings.decode_chunk_size,
        generator=torch.Generator().manual_seed(settings.seed),
        output_type="pt",
    )
    if callback is not None:

        def on_step(pipeline, step, timestep, callback_kwargs):
            callback(step + 1, settings.steps)
            return {}

        kwargs["callback_on_step_end"] = on_step
    if embedding is None:
        video = pipe(image, **kwargs).frames
    else:
        expected = pipe.unet.config.cross_attention_dim
        if embedding.dim != expected:
            raise ValueError(f"this motion embedding has {embedding.dim}-wide tokens but the model's cross-attention takes {expected}: it was made for another model")
        image_token = image_embeddings(pipe, [image])[0]
        applied = motion_context(embedding, image_token, frames, strength)
        context = pack_tokens(applied.spatial.float(), applied.temporal.float())[None].to(device, dtype)
        with motion_routing(pipe.unet, applied.tokens), _image_context(pipe, context):
            video = pipe(image, **kwargs).frames
    return video[0].permute(0, 2, 3, 1).float().cpu().clamp(0, 1)
