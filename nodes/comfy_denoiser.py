"""ComfyUI's SVD model as a reenact_core Denoiser, on a private copy that autograd can use.

ComfyUI runs every node under ``torch.inference_mode()`` and its loaders create weights as inference
tensors, which autograd refuses to save for backward. The inversion therefore works on a private copy of
the UNet (``private_model``: how it is made, and the rules for the user's shared models), in the
precision chosen for the inversion, with frozen weights, optionally gradient-checkpointed, and thrown
away afterwards.
"""

from __future__ import annotations

import contextlib
import inspect
import logging

import comfy.model_base
import torch
import torch.utils.checkpoint

from . import private_model

log = logging.getLogger("reenact_anything")


class NotAnSVDModel(ValueError):
    pass


def require_svd(model_patcher) -> None:
    base = getattr(model_patcher, "model", None)
    kind = type(base).__name__ if base is not None else type(model_patcher).__name__
    if not isinstance(base, comfy.model_base.SVD_img2vid):
        raise NotAnSVDModel(
            f"Motion inversion needs a Stable Video Diffusion model (svd.safetensors / svd_xt.safetensors "
            f"loaded with 'Image Only Checkpoint Loader (img2vid model)') or a Wan 2.1/2.2 model (Load Diffusion Model; "
            f"Wan2.1-I2V, Wan2.2 TI2V-5B or I2V-A14B), but this MODEL is {kind}."
        )
    # SV3D is built on SVD's classes, but its conditioning is the camera orbit: it ignores fps and motion bucket,
    # and its frames are views around an object, not time.
    if kind.startswith("SV3D"):
        raise NotAnSVDModel(
            f"This MODEL is {kind} (Stable Video 3D: an orbit around an object, conditioned on camera angles, not a video over time), "
            "which cannot learn or play a motion. Load svd.safetensors or svd_xt.safetensors with Image Only Checkpoint Loader."
        )


def model_family(model_patcher) -> str:
    """What the embedding is for, from the model itself: SVD's UNet (SVD and SVD-XT share it), or the pack's
    Motion World demo model (another context width)."""
    config = getattr(model_patcher.model, "model_config", None)
    dim = getattr(config, "unet_config", {}).get("context_dim", 1024) if config is not None else 1024
    return "svd" if dim == 1024 else "motion_world"


def compute_dtype(precision: str, device: torch.device) -> torch.dtype:
    """'auto': bf16 where the GPU has it, fp16 on older GPUs (with loss scaling), fp32 on CPU."""
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cpu":
        return torch.float32
    if private_model.bf16_supported(device):
        return torch.bfloat16
    return torch.float16


class ComfySVDDenoiser:
    """Adapts ComfyUI's ``SVD_img2vid.apply_model`` to :class:`reenact_core.denoiser.Denoiser`."""

    def __init__(self, base_model, device: torch.device, fps: int, motion_bucket_id: int, augmentation_level: float):
        self.model = base_model
        self.device = device
        # SVD's micro-conditioning (fps, motion bucket, augmentation) is fixed for the whole inversion.
        self.adm = base_model.encode_adm(fps=fps, motion_bucket_id=motion_bucket_id, augmentation_level=augmentation_level).to(device)

    def __call__(self, noisy, sigma, frame_tokens, shared_tokens, image_latent):
        frames = noisy.shape[0]
        raw_image = self.model.process_latent_out(image_latent)  # c_concat is the unscaled VAE latent
        return self.model.apply_model(
            noisy,
            sigma.reshape(1).expand(frames),
            c_concat=raw_image[None].expand(frames, -1, -1, -1),
            c_crossattn=frame_tokens,  # [F, N, D]: frames are the batch, so row f meets frame f
            time_context=shared_tokens[None].expand(frames, -1, -1),  # temporal layers read row 0 of each video
            y=self.adm.expand(frames, -1),
            num_video_frames=frames,
            transformer_options={},
        ).float()


@contextlib.contextmanager
def trainable_model(model_patcher, dtype: torch.dtype, gradient_checkpointing: bool, memory_required: int = 0, preflight=None):
    """Yield ``(base_model, device)``: a private, frozen copy of the SVD (or Wan) model, loaded for training, with
    attention that backpropagates. Call it under inference mode (a node); the block runs outside it.
    ``preflight(base, device)`` runs on the loaded copy before the loop (before checkpointing wraps it)."""
    device = model_patcher.load_device
    with private_model.private_copy(model_patcher, memory_required) as base:
        _convert_unet(base, dtype, device)
        _protect_saved_norm_inputs(base.diffusion_model)
        with private_model.differentiable_attention():
            if preflight is not None:
                preflight(base, device)
            if gradient_checkpointing:
                _checkpoint_blocks(base.diffusion_model)
            yield base, device


class NotEnoughMemory(RuntimeError):
    pass


GIB = 2**30


def activation_profile(base, denoiser, tokens: int, dim: int, device: torch.device, channels: int = 4) -> dict:
    """Activation bytes one inversion step keeps for backward, measured on two tiny forwards of this
    very model (2 frames at 8x8 and 16x16 latents) and fitted as fixed + per-latent-pixel costs: in
    total, at layer inputs (what gradient checkpointing keeps), and inside the largest layer (what
    checkpointing recomputes at once). Weights are not counted: they are already loaded. ``channels``: the
    latent channels the denoiser takes (SVD 4; Wan 16, TI2V-5B 48), whose probe must be built for 2 frames."""
    units = checkpoint_units(base.diffusion_model)
    weights = {t.untyped_storage().data_ptr() for t in list(base.parameters()) + list(base.buffers())}
    small, large = (_saved_activations(units, weights, denoiser, tokens, dim, device, side, channels) for side in (8, 16))
    pixels = 2 * (16 * 16 - 8 * 8)
    profile = {}
    for key in ("total", "boundary", "largest_layer"):
        per_pixel = max(0.0, (large[key] - small[key]) / pixels)
        profile[key] = {"per_pixel": per_pixel, "fixed": max(0.0, small[key] - per_pixel * 2 * 8 * 8)}
    return profile


def _saved_activations(units, weights, denoiser, tokens, dim, device, side: int, channels: int = 4) -> dict:
    current = {"unit": None}
    inside: dict = {}
    boundary = [0]
    seen = set(weights)

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen and t.device == device:
            seen.add(storage.data_ptr())
            inside[current["unit"]] = inside.get(current["unit"], 0) + storage.nbytes()
        return t

    def enter(index):
        def hook(module, args):
            current["unit"] = index
            boundary[0] += args[0].numel() * args[0].element_size()

        return hook

    handles = [unit.register_forward_pre_hook(enter(i)) for i, unit in enumerate(units)]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            frame_tokens = torch.zeros(2, tokens, dim, device=device, requires_grad=True)
            shared = torch.zeros(tokens, dim, device=device, requires_grad=True)
            noisy = torch.randn(2, channels, side, side, device=device)
            out = denoiser(noisy, torch.tensor(1.0, device=device), frame_tokens, shared, noisy[0])
            del out
    finally:
        for handle in handles:
            handle.remove()
    largest = max((v for k, v in inside.items() if k is not None), default=0)
    return {"total": sum(inside.values()), "boundary": boundary[0], "largest_layer": largest}


def activation_bytes(profile: dict, frames: int, height: int, width: int, checkpointing: bool, latent=None) -> int:
    """Peak activation memory of one inversion step at this size, from the probe's fit (20% margin for
    gradients in flight and allocator slack). ``latent``: (frames -> latent frames, spatial downscale) of the
    model's VAE; default SVD's (one latent per frame, 8x)."""
    latent_frames_of, downscale = latent or (lambda f: f, 8)
    pixels = latent_frames_of(frames) * (height // downscale) * (width // downscale)
    parts = ("boundary", "largest_layer") if checkpointing else ("total",)
    return int(1.2 * sum(profile[p]["fixed"] + profile[p]["per_pixel"] * pixels for p in parts))


def check_memory(profile: dict, free_bytes: int, frames: int, height: int, width: int, checkpointing: bool, latent=None) -> None:
    """Stop before the first step, with what to change, instead of a CUDA out-of-memory error mid-way.
    ``frames``: video frames; ``latent`` as for :func:`activation_bytes`."""
    needed = activation_bytes(profile, frames, height, width, checkpointing, latent)
    if needed <= free_bytes:
        return
    options = []
    if not checkpointing:
        options.append(f"turn on gradient_checkpointing (~{activation_bytes(profile, frames, height, width, True, latent) / GIB:.1f} GB)")
    half = activation_bytes(profile, frames, height // 2, width // 2, checkpointing, latent)
    options.append(f"halve width and height to {width // 2}x{height // 2} (~{half / GIB:.1f} GB; it still applies at any size, somewhat less faithfully)")
    if frames > 8:
        options.append(f"lower video_frames (~{activation_bytes(profile, frames // 2, height, width, checkpointing, latent) / GIB:.1f} GB at {frames // 2})")
    raise NotEnoughMemory(
        f"Motion inversion at {frames} frames x {width}x{height} needs about {needed / GIB:.1f} GB of free VRAM for activations, "
        f"but {free_bytes / GIB:.1f} GB are free after loading the model. To fit: " + "; or ".join(options) + "."
    )


FP8_DTYPES = tuple(getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz") if hasattr(torch, name))


def stored_in_fp8(unet) -> bool:
    """Whether the model's layer weights are fp8 (Load Diffusion Model's weight_dtype fp8_*), with ComfyUI's cast-as-you-go
    layers that run them."""
    casting = [m for m in unet.modules() if hasattr(m, "comfy_cast_weights") and getattr(m, "weight", None) is not None]
    return bool(casting) and any(m.weight.dtype in FP8_DTYPES for m in casting)


def _convert_unet(base, dtype: torch.dtype, device: torch.device) -> None:
    unet = base.diffusion_model
    unet.requires_grad_(False)
    if stored_in_fp8(unet):
        # fp8 weights stay fp8 (half the memory of bf16: what lets a 14B Wan train on a 24 GB card); each layer casts its
        # weight to the compute dtype as it runs, as ComfyUI does when it samples with them. Autograd keeps those casts
        # for the backward pass, so it is gradient checkpointing that keeps only one block's at a time.
        unet.to(device=device)
        base.manual_cast_dtype = dtype  # apply_model casts its inputs to this
    else:
        unet.to(device=device, dtype=dtype)
        unet.dtype = dtype  # apply_model casts its inputs to this
        base.manual_cast_dtype = None
    # Every ComfyUI layer casts its weight to the dtype of its input (a no-op where they match): some models feed a layer
    # another dtype on purpose (Wan builds its patch embedding in fp32 and feeds it fp32), which a copy cast whole to
    # bf16 would break.
    for module in unet.modules():
        if hasattr(module, "comfy_cast_weights"):
            module.comfy_cast_weights = True
    base.eval()
    for p in base.parameters():
        p.requires_grad_(False)


def _protect_saved_norm_inputs(unet) -> None:
    """Older ComfyUI transformer blocks do ``n = norm1(x); ...; x += n``: the in-place add changes the
    tensor LayerNorm saved for backward and autograd refuses to differentiate. Feeding norm1/norm2 a
    copy of x keeps the saved tensor intact. Only done where the block's code has that pattern."""
    import comfy.ldm.modules.attention as attention

    try:
        source = inspect.getsource(attention.BasicTransformerBlock)
    except (OSError, TypeError):
        source = "x += n"
    if "x += n" not in source:
        return

    def copy_input(module, args):
        return (args[0].clone(),) + tuple(args[1:])

    for module in unet.modules():
        if isinstance(module, attention.BasicTransformerBlock):
            for norm in (module.norm1, getattr(module, "norm2", None)):
                if norm is not None:
                    norm.register_forward_pre_hook(copy_input)


def checkpoint_units(unet) -> list[torch.nn.Module]:
    """The layers of every UNet block (resblocks, transformers, down/upsamplers). ComfyUI's UNet runs a
    block by calling its layers one by one (forward_timestep_embed), never the block's own forward, so
    these are the modules whose calls can be checkpointed and measured. A DiT (Wan): its transformer blocks."""
    if not hasattr(unet, "input_blocks") and hasattr(unet, "blocks"):
        return list(unet.blocks)
    blocks = list(unet.input_blocks) + [unet.middle_block] + list(unet.output_blocks)
    return [layer for block in blocks for layer in block]


def _checkpoint_blocks(unet) -> None:
    """Recompute each UNet layer (DiT block) in the backward pass instead of storing its activations."""
    for layer in checkpoint_units(unet):
        forward = layer.forward

        def checkpointed(*args, _forward=forward, **kwargs):
            if "transformer_options" in kwargs:  # ComfyUI mutates it per block: recompute must see this block's copy
                kwargs["transformer_options"] = dict(kwargs["transformer_options"])
            return torch.utils.checkpoint.checkpoint(_forward, *args, use_reentrant=False, **kwargs)

        layer.forward = checkpointed
