"""Motion Textual Inversion node: learn a motion embedding from a reference clip with the SVD in the graph."""

from __future__ import annotations

import comfy.utils
import torch

from ..reenact_core.augment import Augmentations
from ..reenact_core.embedding import fps_conditioning
from ..reenact_core.inversion import (
    CONDITIONING_AUGMENTATIONS,
    LEARNING_RATE_UNITS,
    InversionConfig,
    NoTokenGradient,
    conditioning_pixel_noise,
    convergence_verdict,
    encode_training_clips,
    initial_tokens,
    invert,
    labelled_embedding,
    seeded_rng,
)
from ..reenact_core.plot import pil_to_image_batch, render_loss_curve
from ..reenact_core.video import SAMPLINGS, ReferenceClip, fit_frames, frames_for_inversion
from ..reenact_core.wan import latent_frames_for
from . import private_model, wan_apply, wan_inversion
from .comfy_denoiser import (
    AUTOMATIC_BLOCK_SWAP,
    ComfySVDDenoiser,
    MemoryNeed,
    activation_profile,
    compute_dtype,
    model_family,
    require_svd,
    trainable_model,
)

CATEGORY = "Reenact Anything"
PREVIEWS_PER_RUN = 40


class MotionInversionOptions:
    DESCRIPTION = "Advanced settings for Motion Textual Inversion: noise levels, schedule and anti-leakage augmentations."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MOTION_INVERSION_OPTIONS",)
    RETURN_NAMES = ("options",)
    FUNCTION = "options"

    @classmethod
    def INPUT_TYPES(cls):
        d = InversionConfig()
        a = Augmentations()
        return {
            "required": {
                "sigma_log_mean": ("FLOAT", {"default": d.sigma_log_mean, "min": -3.0, "max": 6.0, "step": 0.1, "tooltip": "Mean of log(sigma) for the training noise levels. Higher = noisier steps, where SVD decides motion."}),
                "sigma_log_std": ("FLOAT", {"default": d.sigma_log_std, "min": 0.0, "max": 4.0, "step": 0.1, "tooltip": "Spread of log(sigma)."}),
                "warmup_steps": ("INT", {"default": d.warmup_steps, "min": -1, "max": 100000, "tooltip": "Linear learning-rate warm-up steps; -1 = 10% of the steps."}),
                "schedule": (["constant", "cosine"], {"default": d.schedule, "tooltip": "Learning rate after warm-up: constant, or cosine decay to zero."}),
                "weight_decay": ("FLOAT", {"default": d.weight_decay, "min": 0.0, "max": 1.0, "step": 0.001, "tooltip": "AdamW weight decay (pulls tokens towards the empty context)."}),
                "grad_clip": ("FLOAT", {"default": d.grad_clip, "min": 0.0, "max": 100.0, "step": 0.1, "tooltip": "Clip the embedding's gradient norm to this; 0 = off."}),
                "per_frame_tokens": ("BOOLEAN", {"default": d.per_frame_tokens, "tooltip": "On: every frame has its own tokens (the method). Off: one token set shared by all frames (the paper's F'=1 ablation)."}),
                "init_noise": ("FLOAT", {"default": d.init_noise, "min": 0.0, "max": 2.0, "step": 0.01, "tooltip": "Noise on the initial tokens (relative); keeps the N tokens of a frame from staying identical."}),
                "hflip": ("BOOLEAN", {"default": a.hflip, "tooltip": "Also train on the mirrored clip. Mirrors the motion too: only for left/right-symmetric motions."}),
                "crop_scale": ("FLOAT", {"default": a.crop_scale, "min": 0.1, "max": 1.0, "step": 0.05, "tooltip": "Random crops keeping at least this fraction of each side (1 = off). Fights layout leakage."}),
                "color_jitter": ("FLOAT", {"default": a.color_jitter, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip": "Random brightness/contrast/saturation change (0 = off). Fights colour leakage."}),
                "random_cond_frame": ("BOOLEAN", {"default": a.random_cond_frame, "tooltip": "Use a random frame of the reference as the conditioning image instead of the first."}),
                "cond_noise": ("FLOAT", {"default": a.cond_noise, "min": 0.0, "max": 2.0, "step": 0.01, "tooltip": "Noise on the conditioning image's latent, relative to its std (0 = off)."}),
                "augment_variants": ("INT", {"default": a.variants, "min": 1, "max": 64, "tooltip": "How many augmented copies of the clip are encoded up front (only with flip/crop/jitter/hue)."}),
                "eval_draws": ("INT", {"default": d.eval_draws, "min": 0, "max": 64, "tooltip": "Fixed noise draws used to report the loss before and after (0 = skip)."}),
            },
            "optional": {  # inputs added after the first release stay optional, so older API-format workflows still validate
                "hue_shift": ("FLOAT", {"default": a.hue_shift, "min": 0.0, "max": 0.5, "step": 0.05, "tooltip": "Random hue rotation of the whole clip, as a fraction of the colour circle (0.5 = any hue; 0 = off). Fights colour leakage."}),
                "learning_rate_unit": (list(LEARNING_RATE_UNITS), {"default": InversionConfig.learning_rate_unit, "tooltip": "absolute (as before): learning_rate moves each token element by about that much per step, whatever the tokens' scale. token spread: in units of the initial tokens' spread (std), so a rate means the same on SVD's CLIP-sized tokens as on another model's; the report shows the spread and how far the tokens moved. On Motion World, token spread 0.1-0.3 with schedule constant transferred best (docs/recipe.md)."}),
                "conditioning_augmentation": (list(CONDITIONING_AUGMENTATIONS), {"default": CONDITIONING_AUGMENTATIONS[0], "tooltip": "How Motion Textual Inversion's augmentation_level is used. 'micro-conditioning only' (as before): SVD is told the level, the conditioning image stays clean. 'noisy pixels, as SVD': the conditioning frame also gets Gaussian pixel noise of that level before the VAE, as SVD was trained and as SVD_img2vid_Conditioning does when you apply the motion (use the same level there)."}),
                # new widgets go last: a saved workflow's widget values are read in order
                "blocks_to_swap": ("INT", {"default": AUTOMATIC_BLOCK_SWAP, "min": AUTOMATIC_BLOCK_SWAP, "max": 1000, "tooltip": "Block swap, for models whose weights and activations do not both fit in VRAM (a 14B Wan on a 24 GB card): this many of the model's last blocks stay in RAM and are copied to the GPU while they run (only host to device: the weights are frozen), ahead of time on a side stream. Slower by the copies, and it needs RAM for those blocks. -1 = automatic: none when everything fits, else as many as this card needs (the report says how many). 0 = never (a model too large then stops with what to change)."}),
            },
        }

    def options(self, augment_variants, hflip, crop_scale, color_jitter, random_cond_frame, cond_noise, hue_shift=Augmentations.hue_shift,
                conditioning_augmentation=CONDITIONING_AUGMENTATIONS[0], **config):
        augment = Augmentations(
            hflip=hflip, crop_scale=crop_scale, color_jitter=color_jitter, hue_shift=hue_shift, random_cond_frame=random_cond_frame,
            cond_noise=cond_noise, variants=augment_variants,
        )
        conditioning_pixel_noise(conditioning_augmentation, 0.0)  # refuses an unknown choice here, where it was set
        return (dict(config, augment=augment, conditioning_augmentation=conditioning_augmentation),)


class MotionTextualInversion:
    DESCRIPTION = (
        "Learns the motion of a reference video as an embedding (motion-textual inversion) for Stable Video Diffusion "
        "or Wan 2.1/2.2: the model stays frozen, only the per-frame cross-attention tokens are optimised (on Wan: umT5 "
        "tokens per latent frame, in place of the prompt). Apply the result to any image with Apply Motion Embedding."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MOTION_EMBEDDING", "IMAGE", "STRING")
    RETURN_NAMES = ("motion_embedding", "loss_curve", "report")
    OUTPUT_TOOLTIPS = (
        "The learned motion: save it, or apply it with Apply Motion Embedding.",
        "The loss per step (and on fixed evaluation draws before and after).",
        "What was learned from what: frames, frame rate and orientation of the reference, the fps conditioning used, the loss.",
    )
    FUNCTION = "invert"

    @classmethod
    def INPUT_TYPES(cls):
        d = InversionConfig()
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "SVD or SVD-XT from Image Only Checkpoint Loader, or a Wan 2.1/2.2 model from Load Diffusion Model (Wan2.1-I2V, Wan2.2 TI2V-5B; for I2V-A14B the high-noise model, where motion is decided). It is not modified."}),
                "vae": ("VAE", {"tooltip": "The VAE the model is used with, to encode the reference frames: SVD's checkpoint VAE; Wan 2.1 and A14B: wan_2.1_vae; TI2V-5B: wan2.2_vae."}),
                "motion_reference": ("MOTION_REFERENCE", {"tooltip": "The clip whose motion is learned (Load Motion Reference)."}),
                "steps": ("INT", {"default": d.steps, "min": 1, "max": 100000, "tooltip": "Optimisation steps; the default cosine schedule decays the learning rate to zero over them. More steps fit the reference more closely (docs/development.md measures how the fit grows with steps)."}),
                "learning_rate": ("FLOAT", {"default": d.learning_rate, "min": 1e-5, "max": 1.0, "step": 1e-4, "round": 1e-5, "tooltip": "AdamW learning rate for the tokens after warm-up (peak of the schedule). Lower it if the loss curve jumps about."}),
                "tokens_per_frame": ("INT", {"default": d.tokens_per_frame, "min": 1, "max": 64, "tooltip": "N tokens per frame (and in the shared temporal set). More tokens capture more detailed motion."}),
                "video_frames": ("INT", {"default": 14, "min": 2, "max": 128, "tooltip": "Frames the motion is learned for: 14 for SVD, 25 for SVD-XT, 81 for Wan (4k+1 frames; 121 for TI2V-5B at 24 fps). By default they are spread evenly over the whole reference (see frame_sampling)."}),
                "width": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 8, "tooltip": "Optimisation width. The embedding's shape does not depend on it, but its fidelity does: lower than the generation size is faster and needs less VRAM, at a cost (on Motion World, inverting at half size transferred 4.1 px off against 0.94 px at full size). Use the generation size (1024x576 for SVD) when it fits."}),
                "height": ("INT", {"default": 288, "min": 64, "max": 2048, "step": 8, "tooltip": "Optimisation height (the reference is resized and centre-cropped to width x height)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "tooltip": "Seed for noise, noise levels and augmentations. Same inputs and seed give the same embedding."}),
                "fps": ("INT", {"default": 0, "min": 0, "max": 1024, "tooltip": "SVD's fps conditioning during inversion (Wan has none: ignored there). 0 = auto: the frame rate the learned frames really have (the reference's rate, lower when frame_sampling spreads a long clip over video_frames), so SVD is told the truth about the motion's speed. The report output says which value was used."}),
                "motion_bucket_id": ("INT", {"default": 127, "min": 1, "max": 1023, "tooltip": "SVD's motion bucket conditioning during inversion (ignored on Wan)."}),
                "augmentation_level": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 10.0, "step": 0.01, "tooltip": "SVD's augmentation-level conditioning during inversion (ignored on Wan)."}),
                "precision": (["auto", "bf16", "fp16", "fp32"], {"default": "auto", "tooltip": "Compute precision of the frozen model: auto = bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPU."}),
                "gradient_checkpointing": ("BOOLEAN", {"default": True, "tooltip": "Recompute activations in the backward pass: much less VRAM for about 30% more time."}),
            },
            "optional": {
                "clip_vision": ("CLIP_VISION", {"tooltip": "SVD, optional: start from the reference frames' CLIP image embeddings (the checkpoint's CLIP vision); without it the tokens start from SVD's empty context. Wan2.1-I2V: required (Load CLIP Vision, clip_vision_h), the model reads the start image through it. Other Wan models: not used."}),
                "options": ("MOTION_INVERSION_OPTIONS", {"tooltip": "Optional advanced settings (Motion Inversion Options)."}),
                "frame_sampling": (list(SAMPLINGS), {"default": SAMPLINGS[0], "tooltip": "Which reference frames are learned: spread evenly over the whole clip (the whole motion, at a lower frame rate when the clip is long), or the first video_frames frames at the clip's own rate (a short motion at its real speed; trim the start with skip_first_frames)."}),
            },
        }

    def invert(
        self,
        model,
        vae,
        motion_reference: ReferenceClip,
        steps,
        learning_rate,
        tokens_per_frame,
        video_frames,
        width,
        height,
        seed,
        fps,
        motion_bucket_id,
        augmentation_level,
        precision,
        gradient_checkpointing,
        clip_vision=None,
        options=None,
        frame_sampling=SAMPLINGS[0],
    ):
        if wan_apply.is_wan(model):  # fps, motion_bucket_id and augmentation_level are SVD's conditioning
            return self._invert_wan(dict(
                model=model, vae=vae, motion_reference=motion_reference, steps=steps, learning_rate=learning_rate,
                tokens_per_frame=tokens_per_frame, video_frames=video_frames, width=width, height=height, seed=seed, precision=precision,
                gradient_checkpointing=gradient_checkpointing, clip_vision=clip_vision, options=options, frame_sampling=frame_sampling,
            ))
        require_svd(model)
        options = dict(options or {})
        blocks_to_swap = options.pop("blocks_to_swap", AUTOMATIC_BLOCK_SWAP)
        pixel_noise = conditioning_pixel_noise(options.pop("conditioning_augmentation", CONDITIONING_AUGMENTATIONS[0]), augmentation_level)
        config = InversionConfig(steps=steps, learning_rate=learning_rate, tokens_per_frame=tokens_per_frame, seed=seed,
                                 conditioning_pixel_noise=pixel_noise, **options)
        frames, motion_fps = frames_for_inversion(motion_reference, video_frames, frame_sampling)
        frames = fit_frames(frames, width, height)
        fps = fps or fps_conditioning(motion_fps)  # 0 = auto: SVD is told the rate the learned frames have

        # The VAE samples its latent distribution: seed that noise too, so the embedding is reproducible.
        with seeded_rng(seed, model.load_device):
            training_latents = encode_training_clips(frames, lambda clip: model.model.process_latent_in(vae.encode(clip)), config)
        _check_latents(training_latents, model, width, height)  # (with pixel noise, the last latent is the conditioning frame's)
        frame_embeds = clip_vision.encode_image(frames).image_embeds if clip_vision is not None else None
        context_dim = model.model.model_config.unet_config.get("context_dim", 1024)  # SVD: 1024; small test models differ
        init = initial_tokens(video_frames, config, torch.Generator().manual_seed(seed), frame_embeds, dim=context_dim)
        private_model.offload(getattr(vae, "patcher", None), getattr(clip_vision, "patcher", None))  # their VRAM goes to activations

        on_step = _progress_callback(steps)
        device = model.load_device
        dtype = compute_dtype(precision, device)
        latent_shape = [video_frames, 4, height // 8, width // 8]

        def preflight(base, device):
            if not _preflight_applies(device):
                return None
            probe = ComfySVDDenoiser(base, device, fps, motion_bucket_id, augmentation_level)
            return MemoryNeed(activation_profile(base, probe, init.tokens, init.dim, device), video_frames, height, width)

        memory_required = _memory_required(model, latent_shape, gradient_checkpointing)
        memory_notes: list[str] = []
        with trainable_model(model, dtype, gradient_checkpointing, memory_required, preflight, blocks_to_swap, memory_notes) as (base, device):
            denoiser = ComfySVDDenoiser(base, device, fps, motion_bucket_id, augmentation_level)
            try:
                result = invert(
                    denoiser, training_latents.clone().to(device), init, config, on_step, loss_scaling=dtype == torch.float16
                )
            except NoTokenGradient as error:
                raise TokensCannotLearn(
                    f"Motion inversion stopped before its first step: {error}. The inversion trained through "
                    f"{private_model.attention_name()} (ComfyUI's own choice is restored afterwards), so something else "
                    "cuts the path from the tokens to the loss, most likely another custom node pack that patches SVD's "
                    "attention or UNet. Disable such packs (or start ComfyUI without their attention options) and queue again."
                ) from error
        # An interrupt that came during the last step or the final evaluation: still emit nothing.
        private_model.raise_if_interrupted()

        embedding = labelled_embedding(
            result, config, motion_reference.source, motion_reference.sha256,
            fps=fps, motion_bucket_id=motion_bucket_id, augmentation_level=augmentation_level, width=width, height=height,
            base_model=model_family(model), motion_fps=round(motion_fps, 3), reference_fps=round(motion_reference.fps, 3), frame_sampling=frame_sampling,
            orientation=motion_reference.orientation or "as stored",
        )
        verdict = convergence_verdict(result)
        curve = render_loss_curve(result.loss_history, steps, before=result.initial_eval_loss, after=result.final_eval_loss,
                                  drift=result.drift_history, evals=result.eval_history, verdict=verdict)
        report = _report(motion_reference, video_frames, frame_sampling, motion_fps, fps, result, verdict, memory_notes)
        return {"ui": {"text": [report]}, "result": (embedding, pil_to_image_batch(curve), report)}

    def _invert_wan(self, inputs: dict):
        """The same node on a Wan 2.1/2.2 MODEL (nodes/wan_inversion.py)."""
        steps = inputs["steps"]
        latent_frames = latent_frames_for(inputs["video_frames"])
        latent = model_latent_shape(inputs["model"], latent_frames, inputs["height"], inputs["width"])
        embedding, result, lines, verdict = wan_inversion.invert_wan(
            inputs, _progress_callback(steps), _memory_required(inputs["model"], latent, inputs["gradient_checkpointing"]),
        )
        curve = render_loss_curve(result.loss_history, steps, before=result.initial_eval_loss, after=result.final_eval_loss,
                                  drift=result.drift_history, evals=result.eval_history, verdict=verdict)
        if result.eval_history:
            lines.append("Held-out loss: " + ", ".join(f"{loss:.4g} (step {step})" for step, loss in result.eval_history) + ".")
        lines.append(f"Verdict: {verdict}.")
        report = "\n".join(lines)
        return {"ui": {"text": [report]}, "result": (embedding, pil_to_image_batch(curve), report)}


def model_latent_shape(model, latent_frames: int, height: int, width: int) -> list[int]:
    """[1, C, T, h, w] of a Wan latent at this size, for ComfyUI's memory estimate."""
    latent_format = model.model.latent_format
    scale = 16 if latent_format.latent_channels == 48 else 8  # Wan2.2's VAE compresses 16x, Wan2.1's 8x
    return [1, latent_format.latent_channels, latent_frames, height // scale, width // scale]


def _progress_callback(steps: int):
    """Per step: stop on ComfyUI's interrupt, move the progress bar, and now and then preview the loss curve."""
    progress = comfy.utils.ProgressBar(steps)
    preview_every = max(1, steps // PREVIEWS_PER_RUN)
    history: list[float] = []
    drift: list[float] = []

    def on_step(info):
        private_model.raise_if_interrupted()
        history.append(info.loss)
        drift.append(info.drift)
        preview = None
        if info.step % preview_every == 0 or info.step == info.steps:
            preview = ("JPEG", render_loss_curve(history, info.steps, drift=drift), 640)
        progress.update_absolute(info.step, info.steps, preview)

    return on_step


def _report(reference: ReferenceClip, frames: int, sampling: str, motion_fps: float, fps: int, result, verdict: str,
            memory_notes: list[str] = ()) -> str:
    """The node's text: what was learned from what, in the user's terms."""
    lines = [
        f"Reference: {reference.describe()}.",
        f"Learned: {frames} frames ({sampling}) at {motion_fps:.3g} fps, {(frames - 1) / motion_fps:.2f} s of motion; "
        f"SVD's fps conditioning: {fps}" + (" (auto)." if fps == fps_conditioning(motion_fps) else f" (set by hand; the frames have {motion_fps:.3g})."),
    ]
    if sampling == SAMPLINGS[0] and reference.frames.shape[0] > frames:
        stride = (reference.frames.shape[0] - 1) / (frames - 1)
        lines.append(f"The {reference.frames.shape[0]}-frame reference was spread over {frames} frames: each learned frame steps over "
                     f"{stride:.3g} filmed ones. For a short motion at the filmed rate, use frame_sampling '{SAMPLINGS[1]}'.")
    if result.eval_history:
        lines.append("Held-out loss: " + ", ".join(f"{loss:.4g} (step {step})" for step, loss in result.eval_history) + ".")
    if result.drift_history:
        lines.append(f"The tokens moved {result.drift_history[-1]:.3g}x their initial spread ({result.token_scale:.3g}) from where they started.")
    lines.extend(memory_notes)
    lines.append(f"Verdict: {verdict}.")
    return "\n".join(lines)


class VAEMismatch(ValueError):
    pass


class TokensCannotLearn(RuntimeError):
    pass


def _check_latents(latents: torch.Tensor, model, width: int, height: int) -> None:
    """The VAE must give SVD's latents: 4 channels at 1/8 of the frame size, finite values."""
    channels = model.model.diffusion_model.out_channels
    got = tuple(latents.shape[-3:])
    if got != (channels, height // 8, width // 8):
        raise VAEMismatch(
            f"The VAE turns {width}x{height} frames into latents of shape {got[0]}x{got[1]}x{got[2]} (channels x height x width), "
            f"but SVD works on {channels}x{height // 8}x{width // 8}: connect the VAE from the same checkpoint as the model "
            "(the VAE output of Image Only Checkpoint Loader)."
        )
    if not bool(torch.isfinite(latents).all()):
        raise VAEMismatch(
            "The VAE produced NaN or infinite latents for the reference frames: connect the VAE from the same checkpoint "
            "as the model; if it is that one, start ComfyUI with --fp32-vae (fp16 VAEs can overflow)."
        )


def _preflight_applies(device: torch.device) -> bool:
    """The VRAM preflight runs on GPUs; on CPU (system RAM) the reference-frame budget already guards memory."""
    return device.type != "cpu"


def _memory_required(model, latent_shape, checkpointing: bool) -> int:
    """Rough activation memory for one inversion step (a forward keeps more alive when it must backprop)."""
    try:
        forward = model.model.memory_required(input_shape=latent_shape)
    except TypeError:
        forward = model.model.memory_required(latent_shape)
    return int(forward * (2 if checkpointing else 4))
