"""What a GPU does to the inversion and ``--cpu`` hides, emulated on CPU in the real ComfyUI (issue #25):

1. attention backends without a backward (flash through a ``torch.library`` custom op, sage returning
   tensors with no autograd history) installed as ComfyUI's ``optimized_attention``;
2. weight moves of shared models (``module.to(cuda)`` in ComfyUI's load/unload), emulated by replacing
   every tensor of the module as a device move does, and VRAM so short that shared models are evicted;
3. dynamic VRAM (comfy-aimdo): a stand-in dynamic patcher whose native-handle objects record their frees,
   with the ``clone`` of each ComfyUI generation;
and the MODEL's LoRA-style weight patches, which must reach the private copy and nothing else.

The rules these check are the contract in ``nodes/private_model.py``.
"""

from __future__ import annotations

import gc
import os

import pytest
import torch

from testkit.comfy_env import pack_submodule, register_model_folder, run_node
from testkit.media import moving_square_frames, write_video

FRAMES = 4
SIZE = 32


# ---- fixtures and helpers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(comfy, pack):
    write_video(moving_square_frames(6, SIZE), os.path.join(comfy.folder_paths.get_input_directory(), "gpu_path_square.mp4"))
    clip, _, _, _ = run_node(
        comfy, "LoadMotionReference", video="gpu_path_square.mp4", frame_load_cap=0, skip_first_frames=0, select_every_nth=1,
        custom_width=0, custom_height=0,
    )
    return clip


@pytest.fixture(scope="module")
def own_svd(comfy, svd_checkpoint):
    """(MODEL, CLIP_VISION, VAE) of the test checkpoint, loaded for this module only: these tests move,
    evict and decorate its weights, so they never touch the session's shared fixture."""
    register_model_folder(comfy, "checkpoints", os.path.dirname(svd_checkpoint))
    return run_node(comfy, "ImageOnlyCheckpointLoader", ckpt_name=os.path.basename(svd_checkpoint))


@pytest.fixture(scope="module")
def private_model(pack):
    return pack_submodule(pack.module, "nodes.private_model")


def invert(comfy, model, vae, reference, steps=2, seed=0):
    (embedding, _, _) = run_node(
        comfy, "MotionTextualInversion", model=model, vae=vae, motion_reference=reference, steps=steps, learning_rate=0.05,
        tokens_per_frame=2, video_frames=FRAMES, width=SIZE, height=SIZE, seed=seed, fps=6, motion_bucket_id=127,
        augmentation_level=0.0, precision="fp32", gradient_checkpointing=False,
        options=dict(sigma_log_mean=1.0, sigma_log_std=1.0, eval_draws=0),
    )
    return embedding


def sample(comfy, model, clip_vision, vae):
    """The stock SVD graph after the inversion (workflow 3's second half) on the same MODEL."""
    image = torch.linspace(0, 1, SIZE * SIZE * 3).reshape(1, SIZE, SIZE, 3)
    torch.manual_seed(0)  # the VAE samples its latent distribution with torch's global generator
    positive, negative, latent = run_node(
        comfy, "SVD_img2vid_Conditioning", clip_vision=clip_vision, init_image=image, vae=vae, width=SIZE, height=SIZE,
        video_frames=FRAMES, motion_bucket_id=127, fps=6, augmentation_level=0.0,
    )
    (guided,) = run_node(comfy, "VideoLinearCFGGuidance", model=model, min_cfg=1.0)
    (samples,) = run_node(
        comfy, "KSampler", model=guided, seed=1, steps=1, cfg=2.5, sampler_name="euler", scheduler="karras",
        positive=positive, negative=negative, latent_image=latent, denoise=1.0,
    )
    return samples["samples"]


def weights_of(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- 1. attention without a backward -------------------------------------------------------------------


def _sdpa(q, k, v, heads):
    b, _, inner = q.shape
    q, k, v = (t.reshape(b, -1, heads, inner // heads).transpose(1, 2) for t in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(b, -1, inner)


@torch.library.custom_op("reenact_test::attention_without_autograd", mutates_args=())
def _attention_without_autograd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    return _sdpa(q, k, v, heads)


@_attention_without_autograd.register_fake
def _(q, k, v, heads):
    return torch.empty_like(q)


def flash_like(q, k, v, heads, *args, **kwargs):
    """--use-flash-attention: ComfyUI calls a torch.library custom op that has no autograd formula."""
    flash_like.calls += 1
    return _attention_without_autograd(q, k, v, heads)


def sage_like(q, k, v, heads, *args, **kwargs):
    """--use-sage-attention: the kernel's output carries no autograd history."""
    sage_like.calls += 1
    with torch.no_grad():
        return _sdpa(q, k, v, heads)


ATTENTION_WITHOUT_BACKWARD = {"flash (custom op, no autograd)": flash_like, "sage (no autograd history)": sage_like}


@pytest.fixture(params=list(ATTENTION_WITHOUT_BACKWARD))
def installed_attention(request, comfy, monkeypatch):
    """A backend without a backward installed as ComfyUI's attention, as a start-up flag or a pack would."""
    from comfy.ldm.modules import attention

    function = ATTENTION_WITHOUT_BACKWARD[request.param]
    function.calls = 0
    monkeypatch.setattr(attention, "optimized_attention", function)
    monkeypatch.setattr(attention, "optimized_attention_masked", function)
    return function


def test_the_stand_ins_really_have_no_backward():
    """Each stand-in fails a backward the way its real backend does (else the tests below prove nothing)."""
    q = torch.randn(2, 5, 8, requires_grad=True)
    with pytest.raises(RuntimeError, match="autograd"):
        flash_like.calls = 0
        flash_like(q, q, q, 2).sum().backward()
    sage_like.calls = 0
    assert not sage_like(q, q, q, 2).requires_grad


def test_inversion_trains_through_sdpa_whatever_attention_is_installed(comfy, svd, reference, installed_attention):
    """The inversion runs, learns exactly what it learns on ComfyUI's default attention, and leaves the
    installed function in place."""
    from comfy.ldm.modules import attention

    model, _, vae = svd
    learned = invert(comfy, model, vae, reference)
    assert installed_attention.calls == 0  # the loop never ran the installed backend
    assert attention.optimized_attention is installed_attention
    assert attention.optimized_attention_masked is installed_attention
    with pytest.MonkeyPatch.context() as undo:
        undo.setattr(attention, "optimized_attention", attention.attention_pytorch)
        undo.setattr(attention, "optimized_attention_masked", attention.attention_pytorch)
        on_sdpa = invert(comfy, model, vae, reference)
    assert torch.equal(learned.spatial, on_sdpa.spatial) and torch.equal(learned.temporal, on_sdpa.temporal)


def test_installed_attention_is_back_after_an_interrupt_and_after_an_error(comfy, svd, reference, installed_attention, monkeypatch):
    from comfy import utils as comfy_utils
    from comfy.ldm.modules import attention

    mm = comfy.model_management
    in_training = getattr(mm, "in_training", None)
    model, _, vae = svd
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            invert(comfy, model, vae, reference)
    finally:
        mm.interrupt_current_processing(False)
    assert attention.optimized_attention is installed_attention and attention.optimized_attention_masked is installed_attention

    def failing_update(self, *args, **kwargs):
        raise RuntimeError("planted failure inside the loop")

    monkeypatch.setattr(comfy_utils.ProgressBar, "update_absolute", failing_update)
    with pytest.raises(RuntimeError, match="planted failure"):
        invert(comfy, model, vae, reference)
    assert attention.optimized_attention is installed_attention and attention.optimized_attention_masked is installed_attention
    assert getattr(mm, "in_training", None) == in_training


def test_xformers_stays_when_comfyui_chose_it(comfy, private_model, monkeypatch):
    """xformers backpropagates and is the user's choice: the loop keeps it; every other choice trains on SDPA."""
    from comfy.ldm.modules import attention

    def xformers_like(q, k, v, heads, *args, **kwargs):
        return _sdpa(q, k, v, heads)

    monkeypatch.setattr(attention, "attention_xformers", xformers_like, raising=False)
    monkeypatch.setattr(attention, "optimized_attention", xformers_like)
    with private_model.differentiable_attention() as chosen:
        assert chosen is xformers_like and attention.optimized_attention is xformers_like
    monkeypatch.setattr(attention, "optimized_attention", sage_like)
    with private_model.differentiable_attention() as chosen:
        assert chosen is attention.attention_pytorch and attention.optimized_attention is attention.attention_pytorch
        assert attention.optimized_attention_masked is attention.attention_pytorch
    assert attention.optimized_attention is sage_like


def test_a_path_cut_elsewhere_stops_before_the_first_step_and_names_the_attention(comfy, svd, reference, monkeypatch):
    """If something other than the attention function cuts the tokens off (here: a pack that detaches every
    attention layer's output), the first step's gradient check stops with a message that says what ran."""
    from comfy.ldm.modules import attention

    forward = attention.CrossAttention.forward

    def detached(self, *args, **kwargs):
        return forward(self, *args, **kwargs).detach()

    monkeypatch.setattr(attention.CrossAttention, "forward", detached)
    model, _, vae = svd
    with pytest.raises(RuntimeError) as error:
        invert(comfy, model, vae, reference)
    message = str(error.value)
    assert type(error.value).__name__ == "TokensCannotLearn"
    assert "attention_pytorch" in message and "first step" in message and "custom node pack" in message


# ---- 2. shared models move only under inference mode ---------------------------------------------------


class ModelManagementLog:
    """Every load and unload ComfyUI's model management does, with whether inference mode was on.

    With ``gpu_moves``, weight moves happen as on a GPU: each module has a pretend device ("gpu" once a
    load moved it there, "cpu" once an unload moved it back), and a ``module.to()`` inside a load or an
    unload that crosses it replaces every tensor (``param.data = new``, as ``.to(cuda)`` does), while one
    that does not cross moves nothing, as on a GPU. On CPU every ``.to()`` is otherwise a no-op."""

    def __init__(self, comfy, monkeypatch, gpu_moves: bool = False):
        self.events: list[tuple[str, object, bool]] = []
        self.loaded_patchers: list = []
        self.where: dict[int, str] = {}
        self.target: str | None = None
        mm = comfy.model_management
        for name, target in (("model_load", "gpu"), ("model_unload", "cpu")):
            monkeypatch.setattr(mm.LoadedModel, name, self._recording(getattr(mm.LoadedModel, name), name, target))
        load_models_gpu = mm.load_models_gpu

        def recording_load(models, *args, **kwargs):
            self.loaded_patchers.extend(models)
            return load_models_gpu(models, *args, **kwargs)

        monkeypatch.setattr(mm, "load_models_gpu", recording_load)
        if gpu_moves:
            to = torch.nn.Module.to

            def moving_to(module, *args, **kwargs):
                out = to(module, *args, **kwargs)
                crossing = [m for m in module.modules() if self.target and self.where.get(id(m), "cpu") != self.target]
                if crossing:
                    for m in crossing:
                        self.where[id(m)] = self.target
                    module._apply(lambda t: t.clone())
                return out

            monkeypatch.setattr(torch.nn.Module, "to", moving_to)

    def _recording(self, original, name, target):
        log = self

        def wrapper(loaded, *args, **kwargs):
            log.events.append((name, loaded.model, torch.is_inference_mode_enabled()))
            log.target = target
            try:
                return original(loaded, *args, **kwargs)
            finally:
                log.target = None

        return wrapper

    def of(self, *patchers) -> list[tuple[str, bool]]:
        """Events of these patchers or of their clones (the same module: e.g. VideoLinearCFGGuidance's)."""
        return [(name, mode) for name, patcher, mode in self.events if any(patcher.model is p.model for p in patchers)]

    def clear(self) -> None:
        self.events.clear()
        self.loaded_patchers.clear()


def test_shared_models_move_only_under_inference_mode_and_sample_after_the_inversion(comfy, own_svd, reference, monkeypatch):
    """Workflow 3 on a GPU, twice: invert with the MODEL not loaded, then with it loaded by a sampling and
    VRAM so short that the shared MODEL, VAE and CLIP vision are evicted; sample with the same MODEL after
    each. Every move of a shared model happens under inference mode, and every sampling works and gives
    the same latents."""
    model, clip_vision, vae = own_svd
    mm = comfy.model_management
    log = ModelManagementLog(comfy, monkeypatch, gpu_moves=True)
    shared = (model, vae.patcher, clip_vision.patcher)
    with torch.inference_mode():
        mm.unload_all_models()
    reference_latents = sample(comfy, model, clip_vision, vae)
    with torch.inference_mode():
        mm.unload_all_models()

    invert(comfy, model, vae, reference)  # the MODEL is not loaded
    assert torch.equal(sample(comfy, model, clip_vision, vae), reference_latents)

    with monkeypatch.context() as short:  # the MODEL is loaded (by the sampling), and VRAM is short
        free = 256 * 2**20  # less than the private copy of this UNet needs (~0.5 GB in fp32)
        short.setattr(mm, "get_free_memory", lambda *args, **kwargs: (free, free) if kwargs.get("torch_free_too") else free)
        invert(comfy, model, vae, reference)
    assert ("model_unload", True) in log.of(model), "the test must see the shared MODEL evicted during an inversion"
    assert torch.equal(sample(comfy, model, clip_vision, vae), reference_latents)
    moves = log.of(*shared)
    assert all(in_inference for _, in_inference in moves), moves


# ---- 3. dynamic VRAM: no native handle of the shared model is copied or freed ---------------------------

FREED: list[str] = []


class Handle:
    """Stands in for a comfy-aimdo object (a vbar, a module's ``_v``, a pinned host buffer): its __del__
    frees native memory, recorded here by name. A copy of it would free the same memory a second time."""

    def __init__(self, name: str):
        self.name = name

    def __del__(self):
        FREED.append(self.name)


def _reload(path):
    from comfy import sd

    return sd.load_checkpoint_guess_config(path, output_vae=False, output_clip=False, output_clipvision=False)[0]


def dynamic_stand_in(model, generation: str, checkpoint):
    """A dynamic-VRAM MODEL as each ComfyUI generation has it: ``is_dynamic()``, handles on the module,
    and ``clone`` with the generation's signature and semantics (``cached_patcher_init`` reloads from the file
    as a plain patcher, and only ``disable_dynamic=True`` makes the reloaded copy non-dynamic)."""
    base_class = type(model)

    def decorate(patcher):
        module = patcher.model
        module.dynamic_vbars = {"cuda:0": Handle(f"vbar {id(module)}")}
        module.dynamic_pins = {"cuda:0": {"weights": (Handle(f"pin {id(module)}"), [], [-1]), "failed": False}}
        for name, layer in module.diffusion_model.named_modules():
            if name.endswith(("attn2.to_k", "attn2.to_v")):
                layer._v = Handle(f"_v {name} {id(module)}")
        return patcher

    def as_dynamic(patcher):
        patcher.__class__ = Dynamic
        return patcher

    def reloaded(self, disable_dynamic):
        fresh = _reload(checkpoint)
        fresh.patches = {k: list(v) for k, v in self.patches.items()}
        return fresh if disable_dynamic else decorate(as_dynamic(fresh))

    def shallow(self):
        n = base_class.clone(self)
        n.cached_patcher_init = getattr(self, "cached_patcher_init", None)
        return as_dynamic(n)

    if generation == "2026-06 on":  # clone(force_deepcopy=, disable_dynamic=)

        def clone(self, disable_dynamic=False, model_override=None, force_deepcopy=False):
            return reloaded(self, disable_dynamic) if force_deepcopy or disable_dynamic else shallow(self)

    elif generation == "2026-02-28 to 2026-06-09":  # clone(disable_dynamic=) only

        def clone(self, disable_dynamic=False, model_override=None):
            return reloaded(self, True) if disable_dynamic else shallow(self)

    else:  # no reload: a dynamic model without clone options or without a file (the copy branch)

        def clone(self):
            return shallow(self)

    Dynamic = type("DynamicStandIn", (base_class,), {"is_dynamic": lambda self: True, "clone": clone})
    dynamic = as_dynamic(base_class.clone(model))
    if generation != "copy":
        dynamic.cached_patcher_init = (_reload, (checkpoint,))
    return decorate(dynamic)


@pytest.mark.parametrize(
    "generation, branch",
    [("2026-06 on", "reload"), ("2026-02-28 to 2026-06-09", "reload-dynamic"), ("copy", "copy")],
)
def test_dynamic_vram_model_gets_a_plain_private_copy_and_keeps_its_handles(
    comfy, own_svd, svd_checkpoint, reference, private_model, monkeypatch, generation, branch
):
    model, _, vae = own_svd
    dynamic = dynamic_stand_in(model, generation, str(svd_checkpoint))
    handles = [h.name for h in _handles(dynamic.model)]
    assert handles and private_model.copy_branch(dynamic) == branch
    log = ModelManagementLog(comfy, monkeypatch)
    FREED.clear()
    try:
        invert(comfy, dynamic, vae, reference)
        privates = [p for p in log.loaded_patchers if p.model is not dynamic.model and p.model is not vae.patcher.model]
        private_is_plain = [not private_model._is_dynamic(p) and not _handles(p.model) for p in privates]
        shared = {t.untyped_storage().data_ptr() for t in dynamic.model.state_dict().values()}
        private_storage = {t.untyped_storage().data_ptr() for p in privates for t in p.model.state_dict().values()}
        log.clear()
        del privates
        gc.collect()  # the copy is gone: had it copied a handle, that copy would have freed it now
        assert not FREED, f"handles freed by the inversion: {FREED}"
        assert [h.name for h in _handles(dynamic.model)] == handles
        assert private_is_plain == [True], "one private copy, a plain patcher without handles"
        assert not shared & private_storage
    finally:
        _strip_handles(dynamic.model)
        FREED.clear()


def _handles(module) -> list[Handle]:
    found = [module.__dict__.get("dynamic_vbars", {}).get("cuda:0")]
    found += [pins["weights"][0] for pins in module.__dict__.get("dynamic_pins", {}).values()]
    found += [m.__dict__["_v"] for m in module.modules() if "_v" in m.__dict__]
    return [h for h in found if isinstance(h, Handle)]


def _strip_handles(module) -> None:
    for holder in [module, *module.modules()]:
        for attr in ("dynamic_vbars", "dynamic_pins", "_v"):
            holder.__dict__.pop(attr, None)


# ---- LoRA-style weight patches --------------------------------------------------------------------------


def test_a_weight_patch_on_the_model_is_in_the_copy_and_nowhere_else(comfy, own_svd, reference):
    """A LoRA-style patch on the MODEL changes what the inversion learns (the copy carries it, applied by
    ComfyUI as sampling applies it) and leaves the shared model's weights exactly as they were."""
    model, _, vae = own_svd
    keys = [k for k in model.model.state_dict() if k.endswith("attn2.to_k.weight")]
    weight = model.model.state_dict()[keys[0]]
    patched = model.clone()
    delta = torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)) * float(weight.float().std())
    assert patched.add_patches({keys[0]: (delta.to(weight.dtype),)}, 1.0)
    before = weights_of(model.model)
    plain = invert(comfy, model, vae, reference)
    with_patch = invert(comfy, patched, vae, reference)
    assert not torch.equal(plain.spatial, with_patch.spatial)
    assert same_weights(before, weights_of(model.model))


class _Patcher:
    """Just what copy_branch reads: clone's signature, is_dynamic() and cached_patcher_init."""

    def __init__(self, dynamic: bool, reloadable: bool):
        self.dynamic, self.cached_patcher_init = dynamic, ((lambda: None, ()) if reloadable else None)

    def is_dynamic(self):
        return self.dynamic


class _From2026June(_Patcher):
    def clone(self, disable_dynamic=False, model_override=None, force_deepcopy=False): ...


class _From2026February(_Patcher):
    def clone(self, disable_dynamic=False, model_override=None): ...


class _Before2026(_Patcher):
    def clone(self): ...


@pytest.mark.parametrize(
    "generation, dynamic, reloadable, branch",
    [
        (_From2026June, True, True, "reload"),
        (_From2026June, False, True, "reload"),
        (_From2026June, True, False, "copy"),
        (_From2026February, True, True, "reload-dynamic"),
        (_From2026February, False, True, "copy"),
        (_From2026February, True, False, "copy"),
        (_Before2026, True, True, "copy"),
        (_Before2026, False, False, "copy"),
    ],
)
def test_each_comfyui_generation_selects_its_branch(private_model, generation, dynamic, reloadable, branch):
    assert private_model.copy_branch(generation(dynamic, reloadable)) == branch
