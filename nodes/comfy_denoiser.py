"""ComfyUI's SVD model as a reenact_core Denoiser, on a private copy that autograd can use.

ComfyUI runs every node under ``torch.inference_mode()`` and its loaders create weights as inference
tensors, which autograd refuses to save for backward. The inversion therefore works on a private copy of
the UNet (``private_model``: how it is made, and the rules for the user's shared models), in the
precision chosen for the inversion, with frozen weights, optionally gradient-checkpointed, and thrown
away afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import weakref

import comfy.model_base
import torch
import torch.utils.checkpoint

from ..reenact_core.block_swap import BlockSwap
from . import private_model

log = logging.getLogger("reenact_anything")

AUTOMATIC_BLOCK_SWAP = -1  # blocks_to_swap: as many as the card needs


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
def trainable_model(model_patcher, dtype: torch.dtype, gradient_checkpointing: bool, memory_required: int = 0, preflight=None,
                    blocks_to_swap: int = 0, notes: list[str] | None = None):
    """Yield ``(base_model, device)``: a private, frozen copy of the SVD (or Wan) model, loaded for training, with
    attention that backpropagates. Call it under inference mode (a node); the block runs outside it.

    ``preflight(base, device)`` runs on the loaded copy before the loop (before checkpointing wraps it) and returns a
    :class:`MemoryNeed` (or None where it does not apply): the activations are checked against free VRAM then.
    ``blocks_to_swap``: how many of the model's last blocks stay in RAM (reenact_core.block_swap); -1 = as many as this
    card needs, 0 = none. Lines for the node's report go to ``notes``."""
    device = model_patcher.load_device
    notes = notes if notes is not None else []
    unet = model_patcher.model.diffusion_model
    fp8 = stored_in_fp8(unet)
    sizes = [_bytes_as_run(unit, dtype, fp8) for unit in checkpoint_units(unet)]  # the blocks block swap can keep in RAM
    on_host = _blocks_for_weights(_bytes_as_run(unet, dtype, fp8), sizes, device, blocks_to_swap)
    with private_model.private_copy(model_patcher, memory_required, on_host=on_host > 0) as base:
        units = checkpoint_units(base.diffusion_model)
        swapped = range(len(units) - on_host, len(units))
        _convert_unet(base, dtype, device, host_units=[units[i] for i in swapped])
        _protect_saved_norm_inputs(base.diffusion_model)
        swap = BlockSwap(units, swapped, device).install()
        try:
            with private_model.differentiable_attention():
                need = preflight(base, device) if preflight is not None else None
                if need is not None:
                    _fit_memory(need, swap, sizes, gradient_checkpointing, blocks_to_swap < 0, device)
                if swap.swapped:
                    notes.append(_swap_note(swap, sizes, automatic=blocks_to_swap < 0, checkpointing_was_off=not gradient_checkpointing))
                if gradient_checkpointing or swap.swapped:  # block swap saves nothing without it (reenact_core.block_swap)
                    _checkpoint_blocks(base.diffusion_model)
                yield base, device
        finally:
            swap.remove()


@dataclasses.dataclass
class MemoryNeed:
    """What the preflight measured (the activation profile of this model) and the size the inversion runs at."""

    profile: dict
    frames: int
    height: int
    width: int
    latent: tuple | None = None  # see activation_bytes

    def activations(self, checkpointing: bool) -> int:
        return activation_bytes(self.profile, self.frames, self.height, self.width, checkpointing, self.latent)

    def check(self, free_bytes: int, checkpointing: bool, extra_bytes: int = 0, swap_advice: str | None = None) -> None:
        """Raise :class:`NotEnoughMemory` with what to change if the activations (+ ``extra_bytes``: block swap's blocks in
        flight) do not fit in ``free_bytes``; ``swap_advice``: how block swap would make it fit, if it would."""
        needed = self.activations(checkpointing) + extra_bytes
        if needed <= free_bytes:
            return
        frames, height, width = self.frames, self.height, self.width

        def at(frames=frames, height=height, width=width, checkpointing=checkpointing) -> str:
            return f"~{activation_bytes(self.profile, frames, height, width, checkpointing, self.latent) / GIB:.1f} GB"

        options = [swap_advice] if swap_advice else []
        if not checkpointing:
            options.append(f"turn on gradient_checkpointing ({at(checkpointing=True)})")
        options.append(f"halve width and height to {width // 2}x{height // 2} ({at(height=height // 2, width=width // 2)}; it still applies "
                       "at any size, somewhat less faithfully)")
        if frames > 8:
            options.append(f"lower video_frames ({at(frames=frames // 2)} at {frames // 2})")
        raise NotEnoughMemory(
            f"Motion inversion at {frames} frames x {width}x{height} needs about {needed / GIB:.1f} GB of free VRAM for activations, "
            f"but {free_bytes / GIB:.1f} GB are free after loading the model. To fit: " + "; or ".join(options) + "."
        )


def _bytes_as_run(module: torch.nn.Module, dtype: torch.dtype, keeps_stored_dtype: bool) -> int:
    """Weight bytes of ``module`` in the private copy: cast to the compute dtype, or as stored (fp8 models)."""
    size = dtype.itemsize if hasattr(dtype, "itemsize") else torch.finfo(dtype).bits // 8
    return sum(t.numel() * (size if t.is_floating_point() and not keeps_stored_dtype else t.element_size())
               for t in list(module.parameters()) + list(module.buffers()))


def _in_flight(sizes: list[int], swapped: int) -> int:
    """VRAM block swap needs besides activations: the running block's copy and the next one's (counted twice if the
    probe already counted the running one: a block's worth of margin)."""
    return 2 * max(sizes) if swapped and sizes else 0


def _blocks_for_weights(weight_bytes: int, sizes: list[int], device: torch.device, blocks_to_swap: int) -> int:
    """How many of the last blocks stay in RAM from the start: the user's number, else (auto) as many as it takes for the
    rest of the weights to fit in the VRAM free once shared models are evicted. The activations are checked after."""
    if blocks_to_swap >= 0:
        return min(blocks_to_swap, len(sizes))
    if device.type == "cpu" or not sizes:
        return 0
    free = private_model.make_room(device, 1.1 * weight_bytes) - private_model.reserved_vram()
    count = 0
    while count < len(sizes) and weight_bytes - sum(sizes[len(sizes) - count:]) + _in_flight(sizes, count) > free:
        count += 1
    return count


def _fit_memory(need: MemoryNeed, swap: BlockSwap, sizes: list[int], checkpointing: bool, automatic: bool, device) -> None:
    """Check this step's activations against the VRAM left; automatic block swap keeps more blocks in RAM until they fit.
    Otherwise stop before the first step with what to change (MemoryNeed.check)."""
    free, total, now = private_model.free_vram(device), len(sizes), len(swap.swapped)

    def short(count: int) -> int:  # bytes missing with the last `count` blocks in RAM (<= 0: it fits)
        moved_off = sum(sizes[total - count:total - now])
        return need.activations(checkpointing or count > 0) + _in_flight(sizes, count) - free - moved_off

    fitting = next((count for count in range(now, total + 1) if short(count) <= 0), None)
    if fitting == now:
        return
    if automatic and checkpointing and fitting is not None:
        swap.extend(range(total - fitting, total))
        return
    advice = None
    if fitting is not None:
        advice = (f"set blocks_to_swap to {fitting} in Motion Inversion Options (that many of the model's {total} blocks stay in "
                  f"RAM, {sum(sizes[total - fitting:]) / GIB:.1f} GB, copied to the GPU as they run: slower)")
    need.check(free, checkpointing or now > 0, extra_bytes=_in_flight(sizes, now), swap_advice=advice)


def _swap_note(swap: BlockSwap, sizes: list[int], automatic: bool, checkpointing_was_off: bool) -> str:
    host = sum(sizes[i] for i in swap.swapped) / GIB
    why = "chosen automatically: the rest did not fit in VRAM" if automatic else "blocks_to_swap"
    note = (f"Block swap: {len(swap.swapped)} of the model's {len(sizes)} blocks ({host:.1f} GB) stay in RAM and are copied to the "
            f"GPU as they run ({why}); each step copies them twice, {2 * host:.1f} GB.")
    if checkpointing_was_off:
        note += " Gradient checkpointing was turned on for it: block swap saves no VRAM without it."
    return note


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
    counted: dict[int, weakref.ref] = {}  # storage address -> that storage while it lives (a freed address is reused)

    def pack(t):
        storage = t.untyped_storage()
        address = storage.data_ptr()
        earlier = counted.get(address)
        if address not in weights and t.device == device and (earlier is None or earlier() is None):
            counted[address] = weakref.ref(storage)
            inside[current["unit"]] = inside.get(current["unit"], 0) + storage.nbytes()
        # The probe never runs backward, so it keeps nothing: what a layer saves (an fp8 layer's cast weight, a swapped
        # block's copy) would otherwise pile up over the whole model, more than the card holds, before any is counted.
        return None

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
    MemoryNeed(profile, frames, height, width, latent).check(free_bytes, checkpointing)


FP8_DTYPES = tuple(getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz") if hasattr(torch, name))


def stored_in_fp8(unet) -> bool:
    """Whether the model's layer weights are fp8 (Load Diffusion Model's weight_dtype fp8_*), with ComfyUI's cast-as-you-go
    layers that run them."""
    casting = [m for m in unet.modules() if hasattr(m, "comfy_cast_weights") and getattr(m, "weight", None) is not None]
    return bool(casting) and any(m.weight.dtype in FP8_DTYPES for m in casting)


def _convert_unet(base, dtype: torch.dtype, device: torch.device, host_units=()) -> None:
    """Freeze the copy and put it on ``device`` in the compute dtype; ``host_units`` (block swap) are cast but stay in RAM."""
    unet = base.diffusion_model
    unet.requires_grad_(False)
    on_host = {id(m) for unit in host_units for m in unit.modules()}
    if stored_in_fp8(unet):
        # fp8 weights stay fp8 (half the memory of bf16: what lets a 14B Wan train on a 24 GB card); each layer casts its
        # weight to the compute dtype as it runs, as ComfyUI does when it samples with them. Autograd keeps those casts
        # for the backward pass, so it is gradient checkpointing that keeps only one block's at a time.
        for module in unet.modules():
            _place(module, None if id(module) in on_host else device, None)
        base.manual_cast_dtype = dtype  # apply_model casts its inputs to this
    else:
        for module in unet.modules():
            _place(module, None if id(module) in on_host else device, dtype)
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


def _place(module: torch.nn.Module, device: torch.device | None, dtype: torch.dtype | None) -> None:
    """``module``'s own tensors (not its children's) to ``device`` (None: where they are), floating ones cast to
    ``dtype`` (None: as they are); as ``Module.to`` does, parameters keep their identity."""
    for table in (module._parameters, module._buffers):
        for name, tensor in table.items():
            if tensor is None:
                continue
            moved = tensor.detach().to(device=device or tensor.device, dtype=dtype if dtype is not None and tensor.is_floating_point() else None)
            if isinstance(tensor, torch.nn.Parameter):
                tensor.data = moved
            else:
                table[name] = moved


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
