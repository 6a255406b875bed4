"""The inversion's private, trainable copy of the user's model, and the attention it trains through.

This is the one file of the pack that calls ComfyUI's model management. Its contract, which is what a
GPU punishes and ``--cpu`` hides (every rule has a CPU test with a stand-in, tests/test_gpu_path.py):

1. **Shared models are touched only under inference mode.** The MODEL, VAE and CLIP vision that other
   nodes use are loaded, evicted and offloaded only through ComfyUI's model management and only under
   ``torch.inference_mode()``, as ComfyUI's executor runs every node. Those calls move weights with
   ``module.to()``; outside inference mode that turns a loader's inference tensors into hybrids, and every
   later forward of that MODEL fails ("Inference tensors do not track version counter").
2. **The private copy is plain, private and patched.** It is built, loaded and trained outside inference
   mode (autograd cannot save inference tensors for backward). It is a plain (never dynamic-VRAM)
   ``ModelPatcher`` over its own module: no tensor and no native memory handle of the user's model is
   shared with it or copied into it. It carries the MODEL's weight patches (LoRA and the like), applied by
   ComfyUI's own loading code, as sampling applies them. Shared models are evicted first, under inference
   mode, as far as VRAM is short for it; the copy is unloaded and dropped however the inversion ends.
3. **Attention has a backward.** For the loop, ComfyUI's ``optimized_attention`` is PyTorch SDPA (or stays
   xformers when ComfyUI chose xformers), whatever ComfyUI (sage, flash, comfy-kitchen int8) or another
   pack installed, in the attention module and in every model file that imported it by name (Wan): the
   motion tokens reach the loss only through cross-attention. The user's functions are back in place
   afterwards, on success, error and interrupt. ComfyUI's ``in_training`` flag (2026+; it selects
   differentiable kernels) is on for the loop, and restored too.

How the private copy is made, by ComfyUI API generation (``private_copy``):

* ``clone(force_deepcopy=, disable_dynamic=)`` (2026-06-10 on): ComfyUI reloads the model from its file as a
  plain patcher, ``clone(force_deepcopy=True, disable_dynamic=True)``.
* ``clone(disable_dynamic=)`` but no ``force_deepcopy`` (2026-02-28 to 2026-06-09), for a dynamic-VRAM model:
  ``clone(disable_dynamic=True)``, which reloads it from its file as a plain patcher.
* Everything else (2024-03 to 2026-02-27, which includes CI's 2024-03 and v0.3.75; non-dynamic models
  before 2026-06-10; models that no file can be reloaded from): a copy of the model's unpatched weights
  in a new plain ``ModelPatcher`` that carries the MODEL's patches. Dynamic-VRAM attributes (comfy-aimdo's
  ``dynamic_vbars``/``dynamic_pins``, per-module ``_v`` and pin state) are left out of the copy: copying
  them would free the user's VRAM a second time when the copy is dropped.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import inspect
import logging

import comfy.model_management
import comfy.model_patcher
import torch

log = logging.getLogger("reenact_anything")

# Attributes dynamic VRAM (comfy-aimdo, 2026) hangs on a model and its modules. They own native memory
# and free it in __del__: a private copy must never hold copies of them.
DYNAMIC_MODEL_ATTRIBUTES = ("dynamic_vbars", "dynamic_pins", "dynamic_patchers")
DYNAMIC_MODULE_ATTRIBUTES = ("_v", "_v_signature", "_pin_state", "seed_key", "weight_lowvram_function", "bias_lowvram_function")
# State a ModelPatcher leaves on the model and its layers when it loads them: it describes how the user's
# model is loaded (already patched, partially offloaded, patch functions bound to the user's patcher), not
# the copy, whose own patcher sets it again when ComfyUI loads the copy.
PATCHER_MODEL_STATE = (
    "model_loaded_weight_memory", "lowvram_patch_counter", "model_lowvram", "current_weight_patches_uuid",
    "model_offload_buffer_memory",
)
PATCHER_MODULE_STATE = ("comfy_patched_weights", "weight_function", "bias_function", "comfy_cast_weights", "prev_comfy_cast_weights")


# ---- 1. shared models: only under inference mode ------------------------------------------------------


def offload(*patchers) -> None:
    """Move shared models the loop does not need (the VAE, CLIP vision) off the GPU, so their memory goes
    to activations. Runs under inference mode (rule 1)."""
    with torch.inference_mode():
        for patcher in patchers:
            if patcher is not None:
                _unload(patcher)
        comfy.model_management.soft_empty_cache()


def _evict_for(private: comfy.model_patcher.ModelPatcher, memory_required: int) -> None:
    """Make room for the private copy and the loop's activations. Asks for at least what load_models_gpu will ask
    for (1.1x (2025+) to 1.3x (2024) the model's size), so that loading the copy outside inference mode evicts nothing
    more."""
    make_room(private.load_device, 1.3 * private.model_size() + memory_required)


def free_vram(device: torch.device) -> int:
    """Bytes ComfyUI counts as free on ``device`` (after the private copy is loaded)."""
    return int(comfy.model_management.get_free_memory(device))


def make_room(device: torch.device, needed_bytes: float) -> int:
    """Evict shared models as far as ``needed_bytes`` (and ComfyUI's reserve) need and no further (ComfyUI's
    free_memory), under inference mode (rule 1); return the VRAM then free."""
    with torch.inference_mode():
        comfy.model_management.free_memory(needed_bytes + reserved_vram(), device)
    return free_vram(device)


def reserved_vram() -> int:
    """What ComfyUI keeps free besides a model's weights (its minimum inference memory and --reserve-vram)."""
    mm = comfy.model_management
    return int(sum(getattr(mm, name)() for name in ("minimum_inference_memory", "extra_reserved_memory") if hasattr(mm, name)))


def bf16_supported(device: torch.device) -> bool:
    return bool(comfy.model_management.should_use_bf16(device))


def raise_if_interrupted() -> None:
    comfy.model_management.throw_exception_if_processing_interrupted()


def default_devices() -> tuple[torch.device, torch.device]:
    """(load device, offload device) ComfyUI gives a UNet; for the pack's own model loader."""
    return comfy.model_management.get_torch_device(), comfy.model_management.unet_offload_device()


# ---- 2. the private copy -------------------------------------------------------------------------------


@contextlib.contextmanager
def private_copy(model_patcher, memory_required: int = 0, on_host: bool = False):
    """Yield the loaded private copy's ``BaseModel`` (see the module's contract). Call it under inference
    mode (a node); the copy itself is made and used outside it, so the caller's block runs with
    ``torch.inference_mode(False)``. ``on_host``: for block swap, when the weights do not all fit in VRAM:
    ComfyUI loads the copy (applies its patches) in RAM, and the caller puts what runs on the GPU there itself
    (after ``make_room``)."""
    private = None
    try:
        with torch.inference_mode(False):
            private = _make_private_patcher(model_patcher)
        if on_host:
            private.load_device = torch.device("cpu")
        else:
            _evict_for(private, memory_required)
        with torch.inference_mode(False):
            _load(private, 0 if on_host else memory_required)
            yield private.model
    finally:
        if private is not None:
            with torch.inference_mode(False):
                _unload(private)
        private = None
        gc.collect()
        comfy.model_management.soft_empty_cache()


def copy_branch(model_patcher) -> str:
    """Which way ``private_copy`` makes the copy on this ComfyUI for this MODEL (see the module docstring)."""
    params = inspect.signature(model_patcher.clone).parameters
    reloadable = getattr(model_patcher, "cached_patcher_init", None) is not None
    dynamic = _is_dynamic(model_patcher)
    if reloadable and "force_deepcopy" in params and "disable_dynamic" in params:
        return "reload"  # 2026-06-10 on
    if reloadable and dynamic and "disable_dynamic" in params:
        return "reload-dynamic"  # 2026-02-28 to 2026-06-09
    return "copy"


def _make_private_patcher(model_patcher):
    branch = copy_branch(model_patcher)
    if branch == "reload":
        private = model_patcher.clone(force_deepcopy=True, disable_dynamic=True)
    elif branch == "reload-dynamic":
        private = model_patcher.clone(disable_dynamic=True)
    else:
        private = _copied_patcher(model_patcher)
    if _is_dynamic(private) or private.model is model_patcher.model:
        raise RuntimeError(f"ComfyUI's clone gave a shared or dynamic model on the '{branch}' branch; the inversion cannot train it")
    log.debug("reenact: private copy of the MODEL made by the '%s' branch", branch)
    return private


def _copied_patcher(model_patcher):
    """A plain ModelPatcher over a copy of the model's unpatched weights, carrying the MODEL's patches.

    The weights come from the patcher's backup where ComfyUI has patched them in place (a LoRA applied
    while the model is loaded), else from the module. Copies go to the offload device: loading the copy
    moves it to the GPU through ComfyUI, after shared models have made room."""
    base = model_patcher.model
    offload_device = model_patcher.offload_device
    originals = _unpatched_tensors(model_patcher)
    memo = {}
    for name, tensor in list(base.named_parameters()) + list(base.named_buffers()):
        source = originals.get(name, tensor).detach()
        fresh = source.to(offload_device, copy=True)
        memo[id(tensor)] = torch.nn.Parameter(fresh, requires_grad=False) if isinstance(tensor, torch.nn.Parameter) else fresh
    # Dynamic-VRAM handles and the user's loading state: never copied (memoised to None, deleted below).
    # Settings are shared, not copied: newer ComfyUI's model config cannot be deep-copied.
    for holder, names in _left_out(base):
        for attr in names:
            value = vars(holder).get(attr)
            if not _is_atom(value):  # memoising an atom (None, False, ()) would replace it everywhere
                memo[id(value)] = None
    if getattr(base, "model_config", None) is not None:
        memo[id(base.model_config)] = base.model_config
    private_module = copy.deepcopy(base, memo)
    for holder, names in _left_out(private_module):
        for attr in names:
            vars(holder).pop(attr, None)  # back to the layer class's defaults

    private = comfy.model_patcher.ModelPatcher(
        private_module, load_device=model_patcher.load_device, offload_device=offload_device, size=model_patcher.model_size()
    )
    private.patches = {key: list(patches) for key, patches in model_patcher.patches.items()}
    private.patches_uuid = model_patcher.patches_uuid
    if hasattr(model_patcher, "weight_wrapper_patches"):
        private.weight_wrapper_patches = dict(model_patcher.weight_wrapper_patches)
    return private


def _left_out(module) -> list[tuple[object, tuple[str, ...]]]:
    """(holder, attribute names) a private copy leaves out, on the model and on each of its layers."""
    return [(module, DYNAMIC_MODEL_ATTRIBUTES + PATCHER_MODEL_STATE)] + [
        (layer, DYNAMIC_MODULE_ATTRIBUTES + PATCHER_MODULE_STATE) for layer in module.modules()
    ]


def _is_atom(value) -> bool:
    return value is None or isinstance(value, (bool, int, float, str, bytes)) or (isinstance(value, tuple) and not value)


def _unpatched_tensors(model_patcher) -> dict[str, torch.Tensor]:
    """Original weights of keys ComfyUI has patched in place, from the (clone-shared) backups. A backup is
    a tensor (2024) or a namedtuple with ``.weight`` (2024-08 on)."""
    originals = {}
    for backups in (getattr(model_patcher, "backup", {}), getattr(model_patcher, "backup_buffers", {})):
        for key, saved in backups.items():
            originals[key] = getattr(saved, "weight", saved)
    return originals


def _is_dynamic(patcher) -> bool:
    is_dynamic = getattr(patcher, "is_dynamic", None)
    return bool(is_dynamic()) if callable(is_dynamic) else False


def _load(patcher, memory_required: int) -> None:
    load = comfy.model_management.load_models_gpu
    kwargs = {"memory_required": memory_required}
    if "force_full_load" in inspect.signature(load).parameters:
        kwargs["force_full_load"] = True  # partially offloaded weights cannot be trained through
    load([patcher], **kwargs)


def _unload(patcher) -> None:
    mm = comfy.model_management
    for i in reversed(range(len(mm.current_loaded_models))):
        loaded = mm.current_loaded_models[i]
        if getattr(loaded, "model", None) is patcher:
            try:
                loaded.model_unload()
            finally:
                mm.current_loaded_models.pop(i)


# ---- 3. attention with a backward ----------------------------------------------------------------------


@contextlib.contextmanager
def differentiable_attention():
    """For the loop: ComfyUI's attention on a function that backpropagates, and ``in_training`` on."""
    import comfy.ldm.modules.attention as attention

    mm = comfy.model_management
    # Model files that imported the function by name (``from ...attention import optimized_attention``: Wan, Flux)
    # hold their own binding, chosen at start-up: each is switched too.
    bindings = [(attention, name) for name in ("optimized_attention", "optimized_attention_masked") if hasattr(attention, name)]
    bindings += [(module, "optimized_attention") for module in _model_modules() if module is not attention and hasattr(module, "optimized_attention")]
    saved = [(module, name, getattr(module, name)) for module, name in bindings]
    saved_in_training = getattr(mm, "in_training", None)
    chosen = training_attention()
    try:
        for module, name, _ in saved:
            setattr(module, name, chosen)
        if saved_in_training is not None:
            mm.in_training = True
        yield chosen
    finally:
        for module, name, function in saved:
            setattr(module, name, function)
        if saved_in_training is not None:
            mm.in_training = saved_in_training


def _model_modules() -> list:
    import sys

    return [module for name, module in list(sys.modules.items()) if name.startswith("comfy.ldm.") and module is not None]


def training_attention():
    """xformers when ComfyUI runs on it (it has a backward, and the user chose it), else PyTorch SDPA."""
    import comfy.ldm.modules.attention as attention

    xformers = getattr(attention, "attention_xformers", None)
    if xformers is not None and attention.optimized_attention is xformers:
        return xformers
    return attention.attention_pytorch


def attention_name(function=None) -> str:
    """``module.function`` of ComfyUI's active attention (or of ``function``), for messages."""
    import comfy.ldm.modules.attention as attention

    function = function if function is not None else attention.optimized_attention
    module = getattr(function, "__module__", None) or "?"
    return f"{module}.{getattr(function, '__qualname__', repr(function))}"
