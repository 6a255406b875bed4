"""Motion Textual Inversion on a Wan 2.1/2.2 MODEL: ComfyUI's Wan as a reenact_core Denoiser, and the node's Wan path.

The method is the one SVD uses (reenact_core.inversion.invert: same loop, loss, noise levels and options); what
changes is where the tokens enter and how the model is conditioned:

* tokens: umT5 text states (4096 wide), N per latent frame plus a shared set; every block's cross-attention of the
  private copy is replaced by reenact_core.wan.InversionCrossAttention, so frame f's video tokens attend to
  ``[frame f's tokens || shared]`` through the model's own text_embedding. The prompt plays no part.
* noise: the loop's EDM noising becomes the flow-matching input Wan was trained on (reenact_core.wan.flow_input).
* the first frame: Wan2.1-I2V and Wan2.2-I2V get the concatenated mask + image latents WanImageToVideo makes (and,
  on Wan2.1-I2V, the CLIP vision features of the reference's first frame); TI2V-5B keeps the first latent frame
  clean with a per-frame timestep (a denoise mask), as Wan22ImageToVideoLatent and the sampler do.
"""

from __future__ import annotations

import dataclasses

import torch

from ..reenact_core.embedding import TOKEN_SPACE_UMT5, UMT5_DIM
from ..reenact_core.inversion import (
    InversionConfig,
    NoTokenGradient,
    convergence_verdict,
    encode_training_clips,
    initial_tokens,
    invert,
    labelled_embedding,
    seeded_rng,
)
from ..reenact_core.video import fit_frames, frames_for_inversion
from ..reenact_core.wan import (
    A14B_HIGH_NOISE_SIGMA,
    A14B_HIGH_NOISE_T,
    InversionCrossAttention,
    TrainableMotionContext,
    flow_input,
    latent_frames_for,
    video_frames_for,
)
from . import private_model, wan_apply
from .comfy_denoiser import AUTOMATIC_BLOCK_SWAP, MemoryNeed, activation_profile, compute_dtype, trainable_model


class WanInputError(ValueError):
    pass


class ComfyWanDenoiser:
    """Adapts a (private) Wan ``BaseModel.apply_model`` to :class:`reenact_core.denoiser.Denoiser`.

    Latents are [T, C, h, w] (latent frames first, as the loop keeps frames); ``frame_tokens`` [T, N, 4096],
    ``shared_tokens`` [N, 4096]; ``image_latent`` the first latent frame (model space) to condition on.
    """

    def __init__(self, base, device, dtype, motion: TrainableMotionContext, concat: torch.Tensor | None = None,
                 clip_fea: torch.Tensor | None = None, keeps_first_frame: bool = False):
        self.model, self.device, self.dtype, self.motion = base, device, dtype, motion
        self.concat = concat  # [1, 4 + C, T, h, w]: mask, then the image latents (model space), as concat_cond builds it
        self.clip_fea = clip_fea
        self.keeps_first_frame = keeps_first_frame
        self.null_text = torch.zeros(1, 1, UMT5_DIM, device=device)  # the stock text path still runs; nothing reads it

    def __call__(self, noisy, sigma, frame_tokens, shared_tokens, image_latent):
        self.motion.set(frame_tokens, shared_tokens, self.device, self.dtype)
        x, t = flow_input(noisy, sigma)
        x = x.movedim(0, 1)[None]  # [1, C, T, h, w]
        kwargs = {}
        first = image_latent.to(x)[None, :, None]  # [1, C, 1, h, w]
        if self.keeps_first_frame:  # TI2V: the first latent frame is given (timestep 0), the rest is noised
            x = torch.cat([first, x[:, :, 1:]], dim=2)
            mask = torch.ones(1, 1, *x.shape[2:], device=x.device)
            mask[:, :, 0] = 0.0
            kwargs["denoise_mask"] = mask
        if self.concat is not None:
            concat = self.concat.clone()
            concat[:, -first.shape[1]:, :1] = first  # this step's conditioning frame (augmented by the loop, or not)
            kwargs["c_concat"] = concat
        if self.clip_fea is not None:
            kwargs["clip_fea"] = self.clip_fea
        out = self.model.apply_model(x, t.reshape(1).to(x), c_crossattn=self.null_text, transformer_options={}, **kwargs)
        out = out.float()[0].movedim(1, 0)  # [T, C, h, w]
        if self.keeps_first_frame:  # no loss on the frame that was given
            out = torch.cat([image_latent.float()[None].to(out), out[1:]])
        return out


def invert_wan(node_inputs: dict, progress_callback, memory_required: int):
    """The Motion Textual Inversion node on a Wan MODEL: (embedding, InversionResult, report lines, verdict)."""
    model, vae, reference = node_inputs["model"], node_inputs["vae"], node_inputs["motion_reference"]
    family = wan_apply.wan_family(model)
    dit = model.model.diffusion_model
    latent_frames = latent_frames_for(node_inputs["video_frames"])
    video_frames = video_frames_for(latent_frames)  # Wan's lengths are 4k + 1; others round down as ComfyUI's nodes do
    options = dict(node_inputs["options"] or {})
    options.pop("conditioning_augmentation", None)  # SVD's; Wan has no augmentation-level conditioning
    blocks_to_swap = options.pop("blocks_to_swap", AUTOMATIC_BLOCK_SWAP)
    config = InversionConfig(steps=node_inputs["steps"], learning_rate=node_inputs["learning_rate"],
                             tokens_per_frame=node_inputs["tokens_per_frame"], seed=node_inputs["seed"], **options)
    if family == "wan22_i2v_a14b":  # the high-noise expert: only the noise levels it was trained on
        config = dataclasses.replace(config, sigma_floor=max(config.sigma_floor, A14B_HIGH_NOISE_SIGMA))
    if config.augment.random_cond_frame:
        raise WanInputError("random_cond_frame is not available on Wan: a Wan latent frame after the first holds 4 video frames, "
                            "not an image to start from. Turn it off in Motion Inversion Options.")
    width, height = node_inputs["width"], node_inputs["height"]
    frames, motion_fps = frames_for_inversion(reference, video_frames, node_inputs["frame_sampling"])
    frames = fit_frames(frames, width, height)

    def encode(clip: torch.Tensor) -> torch.Tensor:  # [F, H, W, 3] -> [T, C, h, w] in the model's latent space
        raw = vae.encode(clip)
        _check_wan_latents(raw, model, family, latent_frames)
        return model.model.process_latent_in(raw).float()[0].movedim(1, 0)

    with seeded_rng(config.seed, model.load_device):
        training_latents = encode_training_clips(frames, encode, config)
    needs_concat = dit.patch_embedding.weight.shape[1] > dit.out_dim
    concat_image = None
    if needs_concat:  # WanImageToVideo: the start image, then grey frames, encoded as one video
        start = torch.full((video_frames, height, width, 3), 0.5)
        start[:1] = frames[:1]
        with seeded_rng(config.seed, model.load_device):
            concat_image = vae.encode(start)
    clip_fea = None
    if getattr(dit, "img_emb", None) is not None:
        clip_vision = node_inputs.get("clip_vision")
        if clip_vision is None:
            raise WanInputError(f"This Wan model ({family}) also reads the start image through CLIP vision: connect Load CLIP Vision "
                                "with clip_vision_h.safetensors to Motion Textual Inversion's clip_vision input.")
        clip_fea = clip_vision.encode_image(frames[:1], crop=False).penultimate_hidden_states  # as Wan's templates encode it (crop none)
    init = initial_tokens(latent_frames, config, torch.Generator().manual_seed(config.seed), None, dim=UMT5_DIM)
    private_model.offload(getattr(vae, "patcher", None), getattr(node_inputs.get("clip_vision"), "patcher", None))

    device = model.load_device
    dtype = compute_dtype(node_inputs["precision"], device)
    latent = (latent_frames_for, 16 if model.model.latent_format.latent_channels == 48 else 8)
    checkpointing = node_inputs["gradient_checkpointing"]

    def preflight(base, device):
        if not preflight_applies(device):
            return None
        probe = probe_denoiser(base, device, dtype, init.tokens)
        profile = activation_profile(base, probe, init.tokens, UMT5_DIM, device, channels=model.model.latent_format.latent_channels)
        return MemoryNeed(profile, video_frames, height, width, latent)

    memory_notes: list[str] = []
    with trainable_model(model, dtype, checkpointing, memory_required, preflight, blocks_to_swap, memory_notes) as (base, device):
        motion = TrainableMotionContext(base.diffusion_model.text_embedding, latent_frames)
        for block in base.diffusion_model.blocks:
            block.cross_attn.forward = InversionCrossAttention(block.cross_attn, motion, attention=wan_apply._attention)
        concat = None
        if concat_image is not None:
            template = training_latents[0].movedim(0, 1)[None].to(device)  # [1, C, T, h, w]
            mask = torch.ones(1, 1, latent_frames, *template.shape[-2:])
            mask[:, :, 0] = 0.0
            concat = base.concat_cond(noise=template, device=device, concat_latent_image=concat_image, concat_mask=mask)
            concat = concat.to(device=device, dtype=dtype)
        denoiser = ComfyWanDenoiser(base, device, dtype, motion, concat, None if clip_fea is None else clip_fea.to(device, dtype),
                                    keeps_first_frame=family == "wan22_ti2v")
        try:
            result = invert(denoiser, training_latents.clone().to(device), init, config, progress_callback,
                            loss_scaling=dtype == torch.float16)
        except NoTokenGradient as error:
            raise RuntimeError(f"Motion inversion on Wan stopped before its first step: {error}. Another custom node pack that "
                               "patches Wan's attention or blocks most likely cuts the path from the tokens to the loss: disable it "
                               "and queue again.") from error
    private_model.raise_if_interrupted()
    embedding = labelled_embedding(
        result, config, reference.source, reference.sha256, fps=round(motion_fps), motion_bucket_id=0, augmentation_level=0.0,
        width=width, height=height, base_model=family, token_space=TOKEN_SPACE_UMT5, latent_frames=latent_frames,
        video_frames=video_frames, motion_fps=round(motion_fps, 3), reference_fps=round(reference.fps, 3),
        frame_sampling=node_inputs["frame_sampling"], orientation=reference.orientation or "as stored",
    )
    lines = [
        f"Reference: {reference.describe()}.",
        f"Learned on Wan ({family}): {video_frames} frames ({node_inputs['frame_sampling']}) at {motion_fps:.3g} fps = "
        f"{latent_frames} latent frames, {init.tokens} umT5 tokens each plus {init.tokens} shared.",
    ]
    if family == "wan22_i2v_a14b":
        lines.append(f"I2V-A14B: noise levels drawn from the high-noise expert's range only (t >= {A14B_HIGH_NOISE_T:g}, the "
                     "expert that lays out motion; connect that model, not the low-noise one).")
    lines.extend(memory_notes)
    if video_frames != node_inputs["video_frames"]:
        lines.append(f"video_frames {node_inputs['video_frames']} is not 4k+1: Wan's VAE takes {video_frames}.")
    return embedding, result, lines, convergence_verdict(result)


def preflight_applies(device: torch.device) -> bool:
    """The VRAM preflight runs on GPUs (on CPU, system RAM is not what runs out first)."""
    return device.type != "cpu"


def probe_denoiser(base, device, dtype, tokens: int) -> ComfyWanDenoiser:
    """A denoiser for the memory probe's 2-frame latents: its own motion context, a zero concat and CLIP input where
    the model takes them (the probe measures activations, not values)."""
    dit = base.diffusion_model
    motion = TrainableMotionContext(dit.text_embedding, 2)
    for block in dit.blocks:  # the probe runs before the node installs its own (the probe's is replaced then)
        block.cross_attn.forward = InversionCrossAttention(block.cross_attn, motion, attention=wan_apply._attention)
    extra = dit.patch_embedding.weight.shape[1] - dit.out_dim
    return _ProbeDenoiser(ComfyWanDenoiser(base, device, dtype, motion, None, None, keeps_first_frame=False), extra,
                          getattr(dit, "img_emb", None) is not None)


class _ProbeDenoiser:
    """Builds the zero concat / CLIP inputs for whatever latent size the probe passes."""

    def __init__(self, denoiser: ComfyWanDenoiser, concat_channels: int, clip: bool):
        self.denoiser, self.concat_channels, self.clip = denoiser, concat_channels, clip

    def __call__(self, noisy, sigma, frame_tokens, shared_tokens, image_latent):
        d = self.denoiser
        d.concat = noisy.new_zeros(1, self.concat_channels, *noisy.movedim(0, 1).shape[1:]) if self.concat_channels else None
        d.clip_fea = noisy.new_zeros(1, 257, 1280) if self.clip else None
        return d(noisy, sigma, frame_tokens, shared_tokens, image_latent)


def _check_wan_latents(latents: torch.Tensor, model, family: str, latent_frames: int) -> None:
    """The VAE's output for the reference [1, C, T, h, w] must be this Wan model's latent video."""
    channels = model.model.latent_format.latent_channels
    got = tuple(latents.shape)
    if latents.ndim != 5 or got[1:3] != (channels, latent_frames):
        raise WanInputError(
            f"The VAE turned the reference into latents of shape {got}, but this Wan model ({family}) works on a latent video of "
            f"{channels} channels and {latent_frames} frames, [1, {channels}, {latent_frames}, h, w]: connect the VAE this model is "
            "used with (Wan 2.1 and the A14B models: wan_2.1_vae.safetensors; TI2V-5B: wan2.2_vae.safetensors)."
        )
    if not bool(torch.isfinite(latents).all()):
        raise WanInputError("The VAE produced NaN or infinite latents for the reference frames: connect the Wan VAE, in fp32 or bf16.")
