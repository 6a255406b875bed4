"""Motion Textual Inversion on Wan (nodes/wan_inversion.py, reenact_core.wan's inversion pieces) on the tiny Wan test
models in a real ComfyUI (COMFYUI_ROOT); skipped on a ComfyUI without Wan.

What is stubbed, and why: there is no tiny umT5 (the inversion does not need one: the prompt plays no part in a learned
motion), and no tiny Wan2.2 VAE (testkit/wan_checkpoint.py says why), so the TI2V-5B-shaped model is inverted through a
stand-in VAE whose encode is a fixed linear map to 48 channels, 16x smaller, 4 frames per latent frame.
"""

from __future__ import annotations

import collections

import pytest
import torch

from reenact_core.wan import InversionCrossAttention, TrainableMotionContext, flow_input
from testkit.comfy_env import pack_submodule, run_node
from testkit.wan_checkpoint import StandInWan22VAE

pytestmark = pytest.mark.usefixtures("release_comfy_models")  # conftest

FRAMES, SIZE, LATENT_FRAMES, TOKENS = 9, 32, 3, 2


@pytest.fixture(scope="module")
def wan_vae(wan):
    from testkit.comfy_env import register_model_folder
    from testkit.wan_checkpoint import ensure_wan21_vae_test_model

    path = ensure_wan21_vae_test_model()
    register_model_folder(wan, "vae", path.parent)
    (vae,) = run_node(wan, "VAELoader", vae_name=path.name)
    return vae


@pytest.fixture(scope="module")
def clip_vision(wan):
    from testkit.wan_checkpoint import tiny_wan_clip_vision

    return tiny_wan_clip_vision()


def node_module(pack, name: str):
    return pack_submodule(pack.module, f"nodes.{name}")


def reference(comfy, seed=0, frames=FRAMES):
    g = torch.Generator().manual_seed(seed)
    clip = torch.rand(frames, SIZE, SIZE, 3, generator=g) * 0.2
    for f in range(frames):  # a bright square moving right: a motion to learn
        clip[f, 10:18, 2 + 2 * f:10 + 2 * f] = 0.9
    (ref, *_rest) = run_node(comfy, "LoadMotionReference", video="none", frame_load_cap=0, skip_first_frames=0, select_every_nth=1,
                             custom_width=0, custom_height=0, images=clip)
    return ref


def invert(comfy, model, vae, steps=12, size=SIZE, frames=FRAMES, **kw):
    inputs = dict(model=model, vae=vae, motion_reference=reference(comfy, frames=frames), steps=steps, learning_rate=0.05,
                  tokens_per_frame=TOKENS, video_frames=frames, width=size, height=size, seed=0, fps=0, motion_bucket_id=127,
                  augmentation_level=0.0, precision="fp32", gradient_checkpointing=False)
    inputs.update(kw)
    return run_node(comfy, "MotionTextualInversion", **inputs)


# -- the node learns a Wan embedding, and what it learned applies ---------------------------------------------------------


def test_wan21_i2v_learns_a_per_frame_umt5_embedding_and_its_loss_falls(wan, i2v, wan_vae, clip_vision):
    embedding, curve, report = invert(wan, i2v, wan_vae, steps=16, clip_vision=clip_vision)
    assert embedding.spatial.shape == (LATENT_FRAMES, TOKENS, 4096) and embedding.temporal.shape == (TOKENS, 4096)
    meta = embedding.metadata
    assert (meta["base_model"], meta["token_space"], meta["latent_frames"]) == ("wan21_i2v", "umt5", str(LATENT_FRAMES))
    assert float(meta["final_loss"]) < 0.8 * float(meta["initial_loss"])
    assert "Learned on Wan (wan21_i2v)" in report and curve.shape[-1] == 3
    assert i2v.model.diffusion_model.blocks[0].cross_attn.forward.__self__ is i2v.model.diffusion_model.blocks[0].cross_attn  # untouched


def test_a_learned_wan_embedding_saves_loads_and_applies_as_it_was_learned(wan, pack, i2v, wan_vae, clip_vision, tmp_path):
    """The inversion's cross-attention and Apply Motion Embedding's patch at strength 1 are the same function of the tokens."""
    embedding, _, _ = invert(wan, i2v, wan_vae, steps=2, clip_vision=clip_vision)
    from reenact_core.fileformat import load_embedding, save_embedding

    save_embedding(embedding, tmp_path / "m.safetensors")
    loaded = load_embedding(tmp_path / "m.safetensors")
    assert torch.equal(loaded.spatial, embedding.spatial) and loaded.metadata["base_model"] == "wan21_i2v"
    latent = {"samples": torch.zeros(1, 16, LATENT_FRAMES, 4, 4)}
    (_, _, _, patched) = run_node(wan, "ApplyMotionEmbedding", positive=[[torch.zeros(1, 4, 4096), {}]], negative=[[torch.zeros(1, 4, 4096), {}]],
                                  motion_embedding=loaded, latent=latent, strength=1.0, model=i2v)
    g = torch.Generator().manual_seed(1)
    x, concat = torch.randn(1, 16, LATENT_FRAMES, 4, 4, generator=g), torch.randn(1, 20, LATENT_FRAMES, 4, 4, generator=g)
    clip_fea = torch.randn(1, 257, 1280, generator=g)
    import comfy.model_management

    with torch.inference_mode():
        comfy.model_management.load_models_gpu([patched])
        applied = patched.model.apply_model(x, torch.tensor([0.7]), c_concat=concat, c_crossattn=torch.randn(1, 4, 4096, generator=g),
                                            clip_fea=clip_fea, transformer_options={})
    with torch.inference_mode(False), node_module(pack, "comfy_denoiser").trainable_model(i2v, torch.float32, False) as (base, device):
        motion = TrainableMotionContext(base.diffusion_model.text_embedding, LATENT_FRAMES)
        for block in base.diffusion_model.blocks:
            block.cross_attn.forward = InversionCrossAttention(block.cross_attn, motion)
        denoiser = node_module(pack, "wan_inversion").ComfyWanDenoiser(base, device, torch.float32, motion, concat=concat.clone(), clip_fea=clip_fea)
        s = torch.tensor(0.7 / 0.3)  # flow t = 0.7 as an EDM sigma
        noisy = (x[0] * (1 + s)).movedim(1, 0)  # what flow_input turns back into x
        learned = denoiser(noisy, s, loaded.spatial, loaded.temporal, concat[0, 4:, 0]).detach()
    assert torch.allclose(learned, applied[0].movedim(1, 0).float(), atol=1e-4)


# -- where the tokens go, and gradients -----------------------------------------------------------------------------------


def tokens_gradient(pack, model, checkpointing: bool, concat=None, clip_fea=None, keeps_first_frame=False, channels=16):
    """One loss.backward through the private copy: the gradient on each frame's tokens and on the shared set."""
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(LATENT_FRAMES, channels, 4, 4, generator=g)
    frame_tokens = torch.randn(LATENT_FRAMES, TOKENS, 4096, generator=g).requires_grad_(True)
    shared = torch.randn(TOKENS, 4096, generator=g).requires_grad_(True)
    with torch.inference_mode(False), node_module(pack, "comfy_denoiser").trainable_model(model, torch.float32, checkpointing) as (base, device):
        motion = TrainableMotionContext(base.diffusion_model.text_embedding, LATENT_FRAMES)
        for block in base.diffusion_model.blocks:
            block.cross_attn.forward = InversionCrossAttention(block.cross_attn, motion)
        denoiser = node_module(pack, "wan_inversion").ComfyWanDenoiser(base, device, torch.float32, motion, concat, clip_fea, keeps_first_frame)
        sigma = torch.tensor(3.0)
        out = denoiser(x0 + sigma * torch.randn(x0.shape, generator=g), sigma, frame_tokens, shared, x0[0])
        ((out - x0) ** 2).mean().backward()
    return out.detach(), frame_tokens.grad, shared.grad


def test_gradients_reach_every_frames_tokens_and_checkpointing_changes_none(wan, pack, i2v):
    g = torch.Generator().manual_seed(3)
    concat, clip_fea = torch.randn(1, 20, LATENT_FRAMES, 4, 4, generator=g), torch.randn(1, 257, 1280, generator=g)
    out, frames_grad, shared_grad = tokens_gradient(pack, i2v, False, concat, clip_fea)
    assert all(float(frames_grad[f].abs().sum()) > 0 for f in range(LATENT_FRAMES)) and float(shared_grad.abs().sum()) > 0
    out_ckpt, frames_ckpt, shared_ckpt = tokens_gradient(pack, i2v, True, concat, clip_fea)
    assert torch.allclose(out, out_ckpt, atol=1e-6)
    assert torch.allclose(frames_grad, frames_ckpt, rtol=1e-4, atol=1e-9) and torch.allclose(shared_grad, shared_ckpt, rtol=1e-4, atol=1e-9)


def test_flow_input_is_the_edm_point_rescaled():
    x0, eps, s = torch.randn(5), torch.randn(5), torch.tensor(4.0)
    x, t = flow_input(x0 + s * eps, s)
    assert torch.isclose(t, torch.tensor(0.8)) and torch.allclose(x, (1 - t) * x0 + t * eps)


@pytest.mark.parametrize("backend", ["flash (custom op, no autograd)", "sage (no autograd history)"])
def test_wan_inversion_learns_under_an_attention_backend_without_backward(wan, i2v, wan_vae, clip_vision, monkeypatch, backend):
    """A sage/flash choice binds into Wan's own module (``from ...attention import optimized_attention``): the loop
    trains on SDPA there too, and the user's choice is back afterwards."""
    import comfy.ldm.wan.model as wan_model
    from test_gpu_path import ATTENTION_WITHOUT_BACKWARD

    installed = ATTENTION_WITHOUT_BACKWARD[backend]
    monkeypatch.setattr(wan_model, "optimized_attention", installed)
    embedding, _, _ = invert(wan, i2v, wan_vae, steps=6, clip_vision=clip_vision)
    assert float(embedding.metadata["final_loss"]) < float(embedding.metadata["initial_loss"])
    assert wan_model.optimized_attention is installed


# -- TI2V-5B: the first latent frame is given -------------------------------------------------------------------------------


def test_ti2v_keeps_the_first_latent_frame_and_learns_the_rest(wan, pack, ti2v):
    out, frames_grad, _ = tokens_gradient(pack, ti2v, False, keeps_first_frame=True, channels=48)
    g = torch.Generator().manual_seed(2)
    assert torch.equal(out[0], torch.randn(LATENT_FRAMES, 48, 4, 4, generator=g)[0])  # the given frame, exactly: no loss on it
    assert all(float(frames_grad[f].abs().sum()) > 0 for f in range(1, LATENT_FRAMES))
    embedding, _, report = invert(wan, ti2v, StandInWan22VAE(), steps=8, size=64)
    assert embedding.metadata["base_model"] == "wan22_ti2v" and embedding.spatial.shape == (LATENT_FRAMES, TOKENS, 4096)
    assert float(embedding.metadata["final_loss"]) < float(embedding.metadata["initial_loss"])


def test_i2v_a14b_learns_only_at_the_high_noise_experts_noise_levels(wan, pack, i2v, wan_vae, clip_vision, monkeypatch):
    """On Wan2.2 I2V-A14B (its high-noise expert) the noise levels are drawn from t >= 0.9 only, the range that expert was
    trained on; the report says so. No tiny A14B file is built: the tiny Wan2.1-I2V is taken for one."""
    wan_apply = node_module(pack, "wan_apply")
    monkeypatch.setattr(wan_apply, "wan_family", lambda model: "wan22_i2v_a14b")
    inversion = pack_submodule(pack.module, "reenact_core.inversion")
    drawn, sample = [], inversion.sample_sigma
    monkeypatch.setattr(inversion, "sample_sigma", lambda config, generator: drawn.append(sample(config, generator)) or drawn[-1])
    embedding, _, report = invert(wan, i2v, wan_vae, steps=6, clip_vision=clip_vision)
    assert len(drawn) == 6 and min(float(s) for s in drawn) >= 9.0
    assert embedding.metadata["base_model"] == "wan22_i2v_a14b" and "sigma_floor=9.0" in embedding.metadata["inversion_config"]
    assert "high-noise expert's range only (t >= 0.9" in report


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_wan_inverts_in_half_precision_where_comfyui_keeps_a_layer_in_fp32(wan, i2v, wan_vae, clip_vision, precision):
    """On a GPU the node computes in bf16 (or fp16): Wan's patch embedding is built in fp32 and fed fp32 (ComfyUI's
    model.py), so a private copy cast whole to half precision must still run it; the loss is finite and falls."""
    embedding, _, _ = invert(wan, i2v, wan_vae, steps=8, clip_vision=clip_vision, precision=precision, gradient_checkpointing=True)
    assert bool(embedding.spatial.isfinite().all())
    assert float(embedding.metadata["final_loss"]) < float(embedding.metadata["initial_loss"])


def test_fp8_weights_stay_fp8_in_the_private_copy_and_the_motion_is_still_learned(wan, pack, wan_vae, clip_vision, monkeypatch):
    """Load Diffusion Model with weight_dtype fp8_e4m3fn (how a 14B Wan fits a 24 GB card): the inversion's private copy
    keeps the fp8 weights, each layer casting its own as it runs, and the node still learns (the loss falls)."""
    import comfy.sd

    from testkit.wan_checkpoint import ensure_wan21_i2v_test_model

    with torch.inference_mode():
        fp8 = comfy.sd.load_diffusion_model(str(ensure_wan21_i2v_test_model()), model_options={"dtype": torch.float8_e4m3fn})
    cd = node_module(pack, "comfy_denoiser")
    assert cd.stored_in_fp8(fp8.model.diffusion_model)
    in_copy, convert = [], cd._convert_unet

    def spy(base, dtype, device, **kwargs):
        convert(base, dtype, device, **kwargs)
        in_copy.append(collections.Counter(p.dtype for p in base.diffusion_model.parameters()))

    monkeypatch.setattr(cd, "_convert_unet", spy)
    embedding, _, _ = invert(wan, fp8, wan_vae, steps=16, clip_vision=clip_vision, gradient_checkpointing=True)
    (dtypes,) = in_copy
    assert dtypes[torch.float8_e4m3fn] > sum(dtypes.values()) / 2, dtypes  # the layer weights: most of the parameters
    assert float(embedding.metadata["final_loss"]) < 0.8 * float(embedding.metadata["initial_loss"])
    assert fp8.model.diffusion_model.blocks[0].cross_attn.q.weight.dtype == torch.float8_e4m3fn  # the shared model untouched


# -- refusals ------------------------------------------------------------------------------------------------------------------


def test_what_wan_cannot_take_is_refused_with_what_to_do(wan, i2v, wan_vae, clip_vision, svd):
    with pytest.raises(ValueError, match="clip_vision_h"):
        invert(wan, i2v, wan_vae, steps=1)
    with pytest.raises(ValueError, match="random_cond_frame"):
        (options,) = run_node(wan, "MotionInversionOptions", **{**option_defaults(wan), "random_cond_frame": True})
        invert(wan, i2v, wan_vae, steps=1, clip_vision=clip_vision, options=options)
    with pytest.raises(ValueError, match="wan_2.1_vae"):
        invert(wan, i2v, svd[2], steps=1, clip_vision=clip_vision)


def test_a_length_that_is_not_4k_plus_1_is_learned_at_the_wan_length_below_it(wan, i2v, wan_vae, clip_vision):
    embedding, _, report = invert(wan, i2v, wan_vae, steps=1, frames=11, clip_vision=clip_vision)
    assert embedding.spatial.shape[0] == 3 and "not 4k+1" in report and embedding.metadata["video_frames"] == "9"


def option_defaults(comfy):
    spec = comfy.nodes.NODE_CLASS_MAPPINGS["MotionInversionOptions"].INPUT_TYPES()
    return {name: s[1]["default"] for group in ("required", "optional") for name, s in spec.get(group, {}).items()}


# -- the VRAM preflight ----------------------------------------------------------------------------------------------------


def test_the_wan_preflight_estimates_what_autograd_keeps_and_stops_what_does_not_fit(wan, pack, i2v, wan_vae, clip_vision, monkeypatch):
    """The preflight runs only off CPU; here it is made to run on CPU with a given free-memory figure. Its estimate, fitted
    on 2-frame probes of this very model, is within a factor of two of what a real step at 3 latent frames keeps."""
    cd, wi = node_module(pack, "comfy_denoiser"), node_module(pack, "wan_inversion")
    with torch.inference_mode(False), cd.trainable_model(i2v, torch.float32, False) as (base, device):
        profile = cd.activation_profile(base, wi.probe_denoiser(base, device, torch.float32, TOKENS), TOKENS, 4096, device, channels=16)
        weights = {t.untyped_storage().data_ptr() for t in list(base.parameters()) + list(base.buffers())}
        saved = {}

        def keep(t):
            if t.untyped_storage().data_ptr() not in weights:
                saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        motion = TrainableMotionContext(base.diffusion_model.text_embedding, LATENT_FRAMES)
        for block in base.diffusion_model.blocks:
            block.cross_attn.forward = InversionCrossAttention(block.cross_attn, motion)
        g = torch.Generator().manual_seed(0)
        denoiser = wi.ComfyWanDenoiser(base, device, torch.float32, motion, torch.zeros(1, 20, LATENT_FRAMES, 12, 12), torch.zeros(1, 257, 1280))
        tokens, shared = torch.zeros(LATENT_FRAMES, TOKENS, 4096, requires_grad=True), torch.zeros(TOKENS, 4096, requires_grad=True)
        noisy = torch.randn(LATENT_FRAMES, 16, 12, 12, generator=g)
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            out = denoiser(noisy, torch.tensor(1.0), tokens, shared, noisy[0])
        del out
    from reenact_core.wan import latent_frames_for

    estimate = cd.activation_bytes(profile, FRAMES, 96, 96, checkpointing=False, latent=(latent_frames_for, 8))
    assert 0.5 < estimate / sum(saved.values()) < 2.0, (estimate, sum(saved.values()))

    monkeypatch.setattr(wi, "preflight_applies", lambda device: True)
    monkeypatch.setattr(node_module(pack, "private_model"), "free_vram", lambda device: 2**40)
    invert(wan, i2v, wan_vae, steps=1, clip_vision=clip_vision)  # fits: no error
    monkeypatch.setattr(node_module(pack, "private_model"), "free_vram", lambda device: 2**10)
    with pytest.raises(cd.NotEnoughMemory, match="GB of free VRAM"):
        invert(wan, i2v, wan_vae, steps=1, clip_vision=clip_vision)


def test_the_wan_vram_table_extends_shallow_probes_to_what_a_deeper_model_keeps(wan, pack):
    """bench/vram_estimate --wan cannot build a full 14B model on CPU: it probes 2 and 3 of its blocks at full width and
    extends the blocks' share in a straight line. On a tiny config, the estimate extended from 2 and 3 blocks is within 5% of the one measured on 6 blocks,
    with and without checkpointing, and the weight count is exact."""
    from bench import vram_estimate
    from bench._common import Env
    from reenact_core.wan import latent_frames_for
    from testkit.wan_checkpoint import WAN21_I2V_CONFIG

    env = Env("cpu")
    cd = env.sub("nodes.comfy_denoiser")
    scaled, weights, _ = vram_estimate.wan_profile(env, "WAN21_I2V", WAN21_I2V_CONFIG, blocks=6, probe_blocks=2)
    measured, real_weights, _ = vram_estimate.wan_profile(env, "WAN21_I2V", WAN21_I2V_CONFIG, blocks=6, probe_blocks=6)
    assert weights == real_weights
    for checkpointing in (True, False):
        estimate, actual = (cd.activation_bytes(p, 33, 288, 480, checkpointing, latent=(latent_frames_for, 8)) for p in (scaled, measured))
        assert 0.95 < estimate / actual < 1.05, (checkpointing, estimate, actual)



# -- block swap (reenact_core.block_swap; nodes.comfy_denoiser decides how many blocks) ------------------------------------

DEEP_BLOCKS = 6  # block swap pays for itself only past two blocks (two are in flight): a deeper tiny Wan


@pytest.fixture(scope="module")
def deep_i2v(wan):
    import comfy.sd

    from testkit.wan_checkpoint import WAN21_I2V_CONFIG, WAN21_I2V_SEED, _dit_state_dict

    state = _dit_state_dict("WAN21_I2V", dict(WAN21_I2V_CONFIG, num_layers=DEEP_BLOCKS), WAN21_I2V_SEED)
    with torch.inference_mode():
        return comfy.sd.load_diffusion_model_state_dict(state)


def swap_options(comfy, blocks_to_swap):
    (options,) = run_node(comfy, "MotionInversionOptions", **{**option_defaults(comfy), "blocks_to_swap": blocks_to_swap})
    return options


def test_blocks_kept_in_ram_learn_exactly_what_resident_blocks_learn(wan, deep_i2v, wan_vae, clip_vision, block_swaps):
    resident, _, _ = invert(wan, deep_i2v, wan_vae, steps=6, clip_vision=clip_vision, gradient_checkpointing=True, options=swap_options(wan, 0))
    swapped, _, report = invert(wan, deep_i2v, wan_vae, steps=6, clip_vision=clip_vision, gradient_checkpointing=True,
                                options=swap_options(wan, 4))
    torch.testing.assert_close(swapped.spatial, resident.spatial, rtol=1e-5, atol=1e-6)
    assert f"Block swap: 4 of the model's {DEEP_BLOCKS} blocks" in report and "(blocks_to_swap)" in report
    swap = block_swaps[-1]
    assert swap.swapped == [2, 3, 4, 5]
    assert swap.copies >= 6 * 2 * 4  # every step: each swapped block for the forward pass and again for the recompute
    assert swap.peak_blocks_in_flight <= 2
    assert swap.misses <= swap.copies / 4  # nearly every copy was made ahead (the evaluation forwards are not predicted)


def test_block_swap_turns_gradient_checkpointing_on_and_says_so(wan, deep_i2v, wan_vae, clip_vision, block_swaps):
    _, _, report = invert(wan, deep_i2v, wan_vae, steps=2, clip_vision=clip_vision, gradient_checkpointing=False, options=swap_options(wan, 3))
    assert "Gradient checkpointing was turned on" in report
    assert block_swaps[-1].peak_blocks_in_flight <= 2  # without checkpointing autograd would have kept all three


def test_a_weight_patch_on_a_block_kept_in_ram_is_in_what_is_learned(wan, deep_i2v, wan_vae, clip_vision):
    """With block swap ComfyUI loads the private copy in RAM, which is where its patches (a LoRA) are applied."""
    key = "diffusion_model.blocks.5.cross_attn.k.weight"
    weight = deep_i2v.model.state_dict()[key]
    patched = deep_i2v.clone()
    delta = torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)) * float(weight.float().std())
    assert patched.add_patches({key: (delta.to(weight.dtype),)}, 1.0)
    plain, _, _ = invert(wan, deep_i2v, wan_vae, steps=3, clip_vision=clip_vision, gradient_checkpointing=True, options=swap_options(wan, 2))
    with_patch, _, _ = invert(wan, patched, wan_vae, steps=3, clip_vision=clip_vision, gradient_checkpointing=True, options=swap_options(wan, 2))
    assert not torch.equal(plain.spatial, with_patch.spatial)
    assert torch.equal(deep_i2v.model.state_dict()[key], weight)


def test_automatic_block_swap_keeps_as_many_blocks_in_ram_as_the_activations_need(wan, pack, deep_i2v, wan_vae, clip_vision, block_swaps, monkeypatch):
    """The preflight runs only off CPU; here it runs on CPU with given figures: the step's activations A, and free VRAM
    half a block short of them. Each block kept in RAM frees one block (b) but two are in flight, so it takes three."""
    cd, wi, pm = node_module(pack, "comfy_denoiser"), node_module(pack, "wan_inversion"), node_module(pack, "private_model")
    block = cd._bytes_as_run(deep_i2v.model.diffusion_model.blocks[0], torch.float32, False)
    activations = 64 * 2**20
    monkeypatch.setattr(wi, "preflight_applies", lambda device: True)
    monkeypatch.setattr(cd.MemoryNeed, "activations", lambda self, checkpointing: activations)
    monkeypatch.setattr(pm, "free_vram", lambda device: activations - block // 2)
    _, _, report = invert(wan, deep_i2v, wan_vae, steps=2, clip_vision=clip_vision, gradient_checkpointing=True)
    assert block_swaps[-1].swapped == [3, 4, 5]
    assert f"Block swap: 3 of the model's {DEEP_BLOCKS} blocks" in report and "chosen automatically" in report

    with pytest.raises(cd.NotEnoughMemory, match="set blocks_to_swap to 3"):  # not automatic: it says what would fit
        invert(wan, deep_i2v, wan_vae, steps=1, clip_vision=clip_vision, gradient_checkpointing=True, options=swap_options(wan, 0))
    monkeypatch.setattr(pm, "free_vram", lambda device: activations - 10 * block)  # more than all blocks free
    with pytest.raises(cd.NotEnoughMemory) as error:
        invert(wan, deep_i2v, wan_vae, steps=1, clip_vision=clip_vision, gradient_checkpointing=True)
    assert "blocks_to_swap" not in str(error.value) and "halve width and height" in str(error.value)


def test_automatic_block_swap_keeps_in_ram_what_does_not_fit_before_loading(pack, monkeypatch):
    """Before the copy is loaded: the last blocks that the VRAM free after evicting shared models cannot hold (with two
    blocks' room for the copies in flight) stay in RAM; ComfyUI then loads the copy there."""
    cd, pm = node_module(pack, "comfy_denoiser"), node_module(pack, "private_model")
    block, other = 100, 30
    weights = other + 6 * block
    monkeypatch.setattr(pm, "reserved_vram", lambda: 0)
    gpu = torch.device("cuda")
    for free, count in ((weights, 0), (weights - 1, 3), (weights - 2 * block, 4), (other + 2 * block, 6), (other, 6)):
        monkeypatch.setattr(pm, "make_room", lambda device, needed, free=free: free)
        assert cd._blocks_for_weights(weights, [block] * 6, gpu, cd.AUTOMATIC_BLOCK_SWAP) == count, free
    assert cd._blocks_for_weights(weights, [block] * 6, gpu, 2) == 2
    assert cd._blocks_for_weights(weights, [block] * 6, torch.device("cpu"), cd.AUTOMATIC_BLOCK_SWAP) == 0


def test_the_wan_time_estimate_counts_the_flops_pytorch_counts(wan, pack, i2v):
    """bench/vram_estimate --wan estimates time from FLOPs counted from the model's shape. Its count of the blocks' layers
    equals what PyTorch's FlopCounterMode counts in a real forward of the tiny Wan2.1-I2V through the node's denoiser
    (within 2%). Attention's products are counted from the formula alone: on CPU, FlopCounterMode misses the SDPA kernel."""
    from torch.utils.flop_counter import FlopCounterMode

    from bench import vram_estimate
    from testkit.wan_checkpoint import WAN21_I2V_CONFIG

    cd, wi = node_module(pack, "comfy_denoiser"), node_module(pack, "wan_inversion")
    frames, h, w = 3, 16, 24
    with torch.inference_mode(False), cd.trainable_model(i2v, torch.float32, False) as (base, device):
        dit = base.diffusion_model
        motion = TrainableMotionContext(dit.text_embedding, frames)
        for block in dit.blocks:
            block.cross_attn.forward = InversionCrossAttention(block.cross_attn, motion)
        denoiser = wi.ComfyWanDenoiser(base, device, torch.float32, motion, torch.zeros(1, 20, frames, h, w), torch.zeros(1, 257, 1280))
        noisy = torch.randn(frames, 16, h, w)
        with FlopCounterMode(display=False) as counter:
            denoiser(noisy, torch.tensor(1.0), torch.zeros(frames, 5, 4096, requires_grad=True), torch.zeros(5, 4096, requires_grad=True), noisy[0])
        layers = {name for name, module in dit.blocks.named_modules() if isinstance(module, torch.nn.Linear)}
        measured = sum(sum(ops.values()) for name, ops in counter.get_flop_counts().items()
                       if name.startswith("WanModel.blocks.") and name.removeprefix("WanModel.blocks.") in layers)
        block_params = sum(p.numel() for p in dit.blocks[0].parameters())
    counted = vram_estimate.wan_forward_flops(WAN21_I2V_CONFIG, block_params, len(i2v.model.diffusion_model.blocks), frames * (h // 2) * (w // 2))
    assert 0.98 < counted["linear"] / measured < 1.02, (counted, measured)
