"""Apply Motion Embedding on Wan: the model patch (nodes/wan_apply.py, reenact_core.wan.WanMotionPatch) on the tiny
Wan test models in a real ComfyUI (COMFYUI_ROOT), and the file format's Wan keys.

There is no tiny umT5 (testkit/wan_checkpoint.py says why): the prompts are random [1, L, 4096] tensors, fed as
the conditioning CLIPTextEncode would give. The Wan tests are skipped on a ComfyUI without Wan; the file-format and
SVD-side tests run everywhere.
"""

from __future__ import annotations

import types

import pytest
import safetensors.torch
import torch
from conftest import REPO

from reenact_core.embedding import MotionEmbedding, token_space_of
from reenact_core.fileformat import EmbeddingFileError, load_embedding, save_embedding
from testkit.comfy_env import run_node

pytestmark = pytest.mark.usefixtures("release_comfy_models")  # conftest

FRAMES, SIZE = 9, 32  # 9 video frames -> 3 latent frames of 4x4 (Wan2.1 VAE: 8x spatial), 2x2 patches: 4 tokens each
LATENT_FRAMES = 3
TOKENS_PER_FRAME = 4
TEXT_TOKENS = 8


def wan_embedding(frames=LATENT_FRAMES, tokens=2, seed=0, base_model="wan21_i2v") -> MotionEmbedding:
    g = torch.Generator().manual_seed(seed)
    return MotionEmbedding(torch.randn(frames, tokens, 4096, generator=g), torch.randn(tokens, 4096, generator=g),
                           {"base_model": base_model, "token_space": "umt5"})


def svd_embedding(frames=14, tokens=3, seed=0) -> MotionEmbedding:
    g = torch.Generator().manual_seed(seed)
    return MotionEmbedding(torch.randn(frames, tokens, 1024, generator=g), torch.randn(tokens, 1024, generator=g))


# -- fixtures ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wan_apply(pack):
    from testkit.comfy_env import pack_submodule

    return pack_submodule(pack.module, "nodes.wan_apply")


def i2v_inputs(batch=1, seed=0, frames=LATENT_FRAMES):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, frames, 4, 4, generator=g)
    concat = torch.randn(batch, 20, frames, 4, 4, generator=g)  # 4 mask + 16 image-latent channels
    context = torch.randn(batch, TEXT_TOKENS, 4096, generator=g)
    clip_fea = torch.randn(batch, 257, 1280, generator=g)
    return x, concat, context, clip_fea


def forward(patcher, x, concat, context, clip_fea, sigma=0.6, **transformer_options):
    """The denoised estimate of ``patcher`` loaded as the sampler loads it (its object patches in place)."""
    import comfy.model_management

    with torch.inference_mode():
        comfy.model_management.load_models_gpu([patcher])
        return patcher.model.apply_model(x, torch.full((x.shape[0],), sigma), c_concat=concat, c_crossattn=context, clip_fea=clip_fea,
                                         transformer_options=dict(transformer_options))


def apply(comfy, model, embedding, latent, strength=1.0, positive=None, negative=None, **kw):
    positive = positive if positive is not None else [[torch.zeros(1, TEXT_TOKENS, 4096), {}]]
    negative = negative if negative is not None else [[torch.zeros(1, TEXT_TOKENS, 4096), {}]]
    return run_node(comfy, "ApplyMotionEmbedding", positive=positive, negative=negative, motion_embedding=embedding, latent=latent,
                    strength=strength, model=model, **kw)


def patched(comfy, model, embedding, frames=LATENT_FRAMES, strength=1.0, channels=16):
    return apply(comfy, model, embedding, {"samples": torch.zeros(1, channels, frames, 4, 4)}, strength)[3]


# -- (1) strength 0 is stock, bit for bit --------------------------------------------------------------------------------------


def test_strength_0_is_the_stock_model_bit_for_bit(wan, i2v):
    inputs = i2v_inputs()
    stock = forward(i2v, *inputs)
    model = patched(wan, i2v, wan_embedding(), strength=0.0)
    assert model is not i2v and len(model.object_patches) == len(i2v.model.diffusion_model.blocks)
    assert torch.equal(forward(model, *inputs), stock)


# -- (2) strength 1 moves the model, and frame f's tokens reach only latent frame f ------------------------------------------


def block0_output(patcher, inputs):
    out = {}
    handle = patcher.model.diffusion_model.blocks[0].register_forward_hook(lambda m, a, o: out.setdefault("x", o.clone()))
    try:
        forward(patcher, *inputs)
    finally:
        handle.remove()
    return out["x"]


def test_strength_1_changes_the_output_and_each_frames_tokens_reach_only_that_latent_frame(wan, i2v):
    inputs = i2v_inputs()
    stock = forward(i2v, *inputs)
    emb = wan_embedding()
    moved = forward(patched(wan, i2v, emb), *inputs)
    assert moved.shape == stock.shape and torch.isfinite(moved).all()
    assert ((moved - stock).norm() / stock.norm()).item() > 1e-2
    # half strength lies between (it mixes the cross-attention outputs, not the final outputs: only roughly halfway)
    half = forward(patched(wan, i2v, emb, strength=0.5), *inputs)
    assert 0 < (half - stock).norm() < (moved - stock).norm()

    before = block0_output(patched(wan, i2v, emb), inputs)
    for f in range(LATENT_FRAMES):
        spatial = emb.spatial.clone()
        spatial[f] += torch.randn(spatial[f].shape, generator=torch.Generator().manual_seed(f))
        after = block0_output(patched(wan, i2v, MotionEmbedding(spatial, emb.temporal, emb.metadata)), inputs)
        change = (after - before).abs().reshape(1, LATENT_FRAMES, TOKENS_PER_FRAME, -1).amax(dim=(0, 2, 3))
        assert change[f] > 1e-3, (f, change)
        assert torch.all(change[torch.arange(LATENT_FRAMES) != f] == 0), (f, change)


def test_a_motion_of_another_length_is_resampled_and_a_wrong_latent_is_refused(wan, i2v):
    inputs = i2v_inputs()
    stock = forward(i2v, *inputs)
    out = forward(patched(wan, i2v, wan_embedding(frames=5)), *inputs)  # 5 learned latent frames over 3
    assert torch.isfinite(out).all() and not torch.equal(out, stock)
    # laid out for a 5-frame latent, sampled over 3 frames (12 video tokens do not split into 5 frames): refused, saying
    # what to connect
    wrong = patched(wan, i2v, wan_embedding(), frames=5)
    with pytest.raises(ValueError, match="over 5 latent frames.*connect the latent you sample"):
        forward(wrong, *inputs)


# -- (3) the negative's rows stay stock --------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", [[1, 0], [0, 1]], ids=["uncond_first", "cond_first"])
def test_negative_rows_are_stock_when_batched_with_the_positive(wan, i2v, order):
    x, concat, context, clip_fea = i2v_inputs(batch=2)  # two conds of equal prompt length: one batch, as the sampler runs them
    model = patched(wan, i2v, wan_embedding())
    stock = forward(i2v, x, concat, context, clip_fea, cond_or_uncond=order)
    out = forward(model, x, concat, context, clip_fea, cond_or_uncond=order)
    cond, uncond = order.index(0), order.index(1)
    assert torch.equal(out[uncond], stock[uncond])
    assert not torch.allclose(out[cond], stock[cond], atol=1e-3)


def test_negative_rows_are_stock_when_run_separately(wan, i2v):
    inputs = i2v_inputs()
    model = patched(wan, i2v, wan_embedding())
    stock = forward(i2v, *inputs)
    assert torch.equal(forward(model, *inputs, cond_or_uncond=[1]), stock)
    assert not torch.allclose(forward(model, *inputs, cond_or_uncond=[0]), stock, atol=1e-3)


def test_cond_rows_follow_comfyuis_chunks():
    from reenact_core.wan import cond_rows

    assert cond_rows(4, [1, 0]).tolist() == [False, False, True, True]
    assert cond_rows(3, [0]).tolist() == [True] * 3
    assert cond_rows(2, None).tolist() == [True, True]
    with pytest.raises(ValueError, match="does not split"):
        cond_rows(3, [0, 1])


# -- (4) the patch lives on a clone and comes off ------------------------------------------------------------------------------


def test_the_stock_model_is_stock_again_after_the_patched_clone_ran(wan, i2v):
    inputs = i2v_inputs()
    stock = forward(i2v, *inputs)
    model = patched(wan, i2v, wan_embedding())
    assert not i2v.object_patches  # the connected model itself is never patched
    moved = forward(model, *inputs)
    cross = i2v.model.diffusion_model.blocks[0].cross_attn
    assert getattr(cross.forward, "__self__", None) is not cross  # while the clone is loaded, its forward is in place
    assert torch.equal(forward(i2v, *inputs), stock)
    for block in i2v.model.diffusion_model.blocks:
        forward_now = block.cross_attn.forward  # ComfyUI puts the saved bound method back
        assert forward_now.__self__ is block.cross_attn and forward_now.__func__ is type(block.cross_attn).forward
    assert torch.equal(forward(model, *inputs), moved)  # and the clone can be loaded again
    # state-dict keys are untouched: weight patches (LoRAs) address the same names
    assert set(model.model_state_dict()) == set(i2v.model_state_dict())


# -- (5) the whole graph: WanImageToVideo -> Apply Motion Embedding -> KSampler ---------------------------------------------------


@pytest.fixture(scope="module")
def wan_graph(wan):
    from testkit.comfy_env import register_model_folder
    from testkit.wan_checkpoint import ensure_wan21_vae_test_model, tiny_wan_clip_vision

    path = ensure_wan21_vae_test_model()
    register_model_folder(wan, "vae", path.parent)
    (vae,) = run_node(wan, "VAELoader", vae_name=path.name)
    g = torch.Generator().manual_seed(3)
    image = torch.rand(1, SIZE, SIZE, 3, generator=g)
    with torch.inference_mode():
        clip_vision_output = tiny_wan_clip_vision().encode_image(image)
    prompt = [[torch.randn(1, TEXT_TOKENS, 4096, generator=g), {}]]
    negative = [[torch.randn(1, TEXT_TOKENS, 4096, generator=g), {}]]
    return run_node(wan, "WanImageToVideo", positive=prompt, negative=negative, vae=vae, width=SIZE, height=SIZE, length=FRAMES,
                    batch_size=1, start_image=image, clip_vision_output=clip_vision_output)


def sample(comfy, model, positive, negative, latent, cfg=2.0):
    (out,) = run_node(comfy, "KSampler", model=model, seed=0, steps=2, cfg=cfg, sampler_name="euler", scheduler="simple",
                      positive=positive, negative=negative, latent_image=latent, denoise=1.0)
    return out["samples"]


def test_ksampler_runs_the_patched_model_from_wan_image_to_video(wan, i2v, wan_graph):
    positive, negative, latent = wan_graph
    assert latent["samples"].shape[2] == LATENT_FRAMES
    stock = sample(wan, i2v, positive, negative, latent)
    pos, neg, info, model = apply(wan, i2v, wan_embedding(), latent, 1.0, positive, negative)
    assert pos is positive and neg is negative  # on Wan the conditioning passes through; the motion is in the model
    assert "wan21_i2v" in info and f"{LATENT_FRAMES} latent frames" in info
    moved = sample(wan, model, pos, neg, latent)
    assert moved.shape == stock.shape and torch.isfinite(moved).all()
    assert not torch.allclose(moved, stock, atol=1e-4)
    _, _, _, neutral = apply(wan, i2v, wan_embedding(), latent, 0.0, positive, negative)
    assert torch.equal(sample(wan, neutral, positive, negative, latent), stock)  # (1) through the sampler too
    assert torch.equal(sample(wan, i2v, positive, negative, latent), stock)  # (4) and stock again afterwards


# -- (6) the wrong family is refused with what to do -----------------------------------------------------------------------------


def test_an_svd_embedding_on_wan_is_refused(wan, i2v):
    latent = {"samples": torch.zeros(1, 16, LATENT_FRAMES, 4, 4)}
    with pytest.raises(ValueError, match=r"learned on SVD \(clip_image tokens, 1024 wide\).*cannot drive a Wan model.*Motion Textual Inversion on this Wan model"):
        apply(wan, i2v, svd_embedding(), latent)
    with pytest.raises(ValueError, match=r"learned on svd_xt \(clip_image tokens"):  # as a file says it
        apply(wan, i2v, svd_embedding().with_metadata(base_model="svd_xt"), latent)


def test_a_wan_latent_of_the_wrong_shape_is_refused(wan, i2v):
    with pytest.raises(ValueError, match="has 48 channels but this Wan model \\(wan21_i2v\\) samples 16"):
        apply(wan, i2v, wan_embedding(), {"samples": torch.zeros(1, 48, LATENT_FRAMES, 4, 4)})
    with pytest.raises(ValueError, match="a Wan video latent is \\[batch, channels, frames, height, width\\]"):
        apply(wan, i2v, wan_embedding(), {"samples": torch.zeros(LATENT_FRAMES, 4, 4, 4)})


def _model_of_class(cls):
    """A MODEL whose model is an instance of ``cls`` and nothing more: the family checks look only at the class, so
    this stands in for an SVD checkpoint without loading the 1.6 GB test checkpoint."""
    return types.SimpleNamespace(model=cls.__new__(cls))


def test_a_wan_embedding_on_svd_is_refused_and_other_families_too(comfy, pack, wan_apply):
    from comfy import model_base

    svd_model = _model_of_class(model_base.SVD_img2vid)
    assert wan_apply.model_kind(svd_model) == "svd" and wan_apply.model_kind(None) == "none"
    latent = {"samples": torch.zeros(14, 4, 8, 8)}
    with pytest.raises(ValueError, match="This is a Wan motion embedding .*cannot be applied to an SVD model.*Connect the Wan MODEL"):
        apply(comfy, svd_model, wan_embedding(), latent)
    with pytest.raises(ValueError, match=r"cannot be applied to SVD \(no model connected\).*Apply Motion Embedding's model input"):
        apply(comfy, None, wan_embedding(), latent)
    sd15 = _model_of_class(model_base.BaseModel)
    with pytest.raises(ValueError, match="Apply Motion Embedding supports SVD and Wan 2.1/2.2 .*; got BaseModel"):
        apply(comfy, sd15, svd_embedding(), latent)
    # the pure check, as the node runs it first
    wan_apply.check_embedding_for("svd", svd_embedding())
    with pytest.raises(ValueError, match="cannot drive a Wan model"):
        wan_apply.check_embedding_for("wan", svd_embedding())


def test_without_a_model_the_model_output_stops_what_it_feeds(comfy, pack, svd_conditioning):
    positive, negative, latent = svd_conditioning
    out = run_node(comfy, "ApplyMotionEmbedding", positive=positive, negative=negative, motion_embedding=svd_embedding(frames=4),
                   latent=latent, strength=1.0)
    assert len(out) == 4 and out[0][0][0].shape == (4, 3, 1024)
    try:
        from comfy_execution.graph_utils import ExecutionBlocker
    except ImportError:  # ComfyUI before mid-2024: no blockers, the output is None
        assert out[3] is None
    else:
        assert isinstance(out[3], ExecutionBlocker) and "none is connected" in out[3].message
    from comfy import model_base

    svd_model = _model_of_class(model_base.SVD_img2vid)
    again = run_node(comfy, "ApplyMotionEmbedding", positive=positive, negative=negative, motion_embedding=svd_embedding(frames=4),
                     latent=latent, strength=1.0, model=svd_model)
    assert again[3] is svd_model and torch.equal(again[0][0][0], out[0][0][0])  # SVD: the model passes through unpatched


@pytest.fixture
def svd_conditioning():
    """What SVD_img2vid_Conditioning gives for 4 frames, built by hand (no checkpoint needed)."""
    g = torch.Generator().manual_seed(0)
    extras = {"fps": 6, "motion_bucket_id": 127, "augmentation_level": 0.0, "concat_latent_image": torch.zeros(1, 4, 8, 8)}
    return [[torch.randn(1, 1, 1024, generator=g), dict(extras)]], [[torch.zeros(1, 1, 1024), dict(extras)]], {"samples": torch.zeros(4, 4, 8, 8)}


def test_every_input_and_output_has_a_tooltip(pack):
    cls = pack.nodes.NODE_CLASS_MAPPINGS["ApplyMotionEmbedding"]
    spec = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, definition in spec[section].items():
            assert definition[1].get("tooltip"), name
    assert cls.RETURN_TYPES[:3] == ("CONDITIONING", "CONDITIONING", "STRING") and cls.RETURN_TYPES[3] == "MODEL"
    assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES)
    assert "model" in spec["optional"] and "model" not in spec["required"]


# -- (7) Wan2.2 TI2V-5B (48 latent channels, no CLIP branch) ------------------------------------------------------------------


def test_the_ti2v_shaped_model_works_too(wan, ti2v, wan_apply):
    assert wan_apply.wan_family(ti2v) == "wan22_ti2v"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 48, LATENT_FRAMES, 4, 4, generator=g)  # TI2V-5B's VAE: 16x spatial
    context = torch.randn(1, TEXT_TOKENS, 4096, generator=g)
    mask = torch.ones(1, 1, *x.shape[2:])
    mask[:, :, 0] = 0.0

    def run(model):
        import comfy.model_management

        with torch.inference_mode():
            comfy.model_management.load_models_gpu([model])
            return model.model.apply_model(x, torch.tensor([0.7]), c_crossattn=context, denoise_mask=mask, transformer_options={})

    stock = run(ti2v)
    emb = wan_embedding(base_model="wan22_ti2v")
    assert torch.equal(run(patched(wan, ti2v, emb, strength=0.0, channels=48)), stock)
    moved = run(patched(wan, ti2v, emb, channels=48))
    assert torch.isfinite(moved).all() and not torch.allclose(moved, stock, atol=1e-3)
    assert torch.equal(run(ti2v), stock)
    # a Wan 2.1 embedding on Wan 2.2: the same umT5 token space, so it applies
    model = patched(wan, ti2v, wan_embedding(base_model="wan21_i2v"), channels=48)
    latent = {"samples": x, "noise_mask": mask}
    out = sample(wan, model, [[context, {}]], [[context, {}]], latent, cfg=1.0)
    assert out.shape == x.shape and torch.isfinite(out).all()
    torch.testing.assert_close(out[:, :, 0], x[:, :, 0])  # the given first frame stays


def test_the_i2v_family_names(wan, i2v, wan_apply):
    assert wan_apply.wan_family(i2v) == "wan21_i2v" and wan_apply.model_kind(i2v) == "wan"


# -- (8) the file format -------------------------------------------------------------------------------------------------------


def test_a_wan_embedding_round_trips_with_its_family_space_and_frame_count(tmp_path):
    emb = wan_embedding(frames=21, base_model="wan22_ti2v")
    back = load_embedding(save_embedding(emb, tmp_path / "wan.safetensors"))
    assert torch.equal(back.spatial, emb.spatial) and torch.equal(back.temporal, emb.temporal)
    m = back.metadata
    assert (m["base_model"], m["token_space"], m["latent_frames"], m["frames"], m["dim"]) == ("wan22_ti2v", "umt5", "21", "21", "4096")
    assert m["format_version"] == "1" and m["modelspec.architecture"].startswith("wan")
    # a resampled embedding keeps its metadata, but the file says its own frame count
    again = load_embedding(save_embedding(back.resample_frames(31), tmp_path / "wan31.safetensors"))
    assert again.metadata["latent_frames"] == "31" and again.frames == 31
    # only token_space given: still a Wan file
    bare = MotionEmbedding(emb.spatial, emb.temporal, {"token_space": "umt5"})
    assert load_embedding(save_embedding(bare, tmp_path / "bare.safetensors")).metadata["base_model"] == "wan"


def test_old_svd_files_load_as_clip_image(tmp_path):
    bundled = REPO / "assets" / "motion_embeddings" / "reenact_example_motion.safetensors"  # written before Wan support
    with open(bundled, "rb") as f:
        assert b"token_space" not in f.read()
    old = load_embedding(bundled)
    assert old.metadata["token_space"] == "clip_image" and token_space_of(old) == "clip_image"
    assert "latent_frames" not in old.metadata
    # and a new SVD file says clip_image itself
    new = load_embedding(save_embedding(svd_embedding(), tmp_path / "svd.safetensors")).metadata
    assert (new["base_model"], new["token_space"]) == ("svd", "clip_image") and "latent_frames" not in new
    assert token_space_of(svd_embedding()) == "clip_image" and token_space_of(MotionEmbedding(*_wan_tensors(), {"base_model": "wan21_i2v"})) == "umt5"


def _wan_tensors():
    e = wan_embedding()
    return e.spatial, e.temporal


@pytest.mark.parametrize("meta, message", [
    ({"token_space": "t5_xl"}, "token space 't5_xl', which this version"),
    ({"token_space": "umt5"}, "umT5 tokens \\(Wan\\), which are 4096 wide, but the tensors are 1024"),
    ({"latent_frames": "7"}, "latent_frames='7' but the tensors have 14 frames"),
])
def test_inconsistent_wan_keys_are_refused(tmp_path, meta, message):
    path = save_embedding(svd_embedding(), tmp_path / "ok.safetensors")
    loaded = load_embedding(path)
    tensors = {"spatial": loaded.spatial, "temporal": loaded.temporal}
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(safetensors.torch.save(tensors, metadata={**loaded.metadata, **meta}))
    with pytest.raises(EmbeddingFileError, match=message):
        load_embedding(bad)


def test_mix_blends_two_wan_motions_and_refuses_wan_with_svd():
    from reenact_core.embedding import mix

    a, b = wan_embedding(seed=1), wan_embedding(frames=5, seed=2, base_model="wan22_ti2v")
    mixed = mix(a, b, 0.25)
    assert mixed.spatial.shape == a.spatial.shape and token_space_of(mixed) == "umt5"
    assert torch.allclose(mixed.temporal, 0.75 * a.temporal + 0.25 * b.temporal)
    with pytest.raises(ValueError, match="different spaces"):
        mix(a, svd_embedding(), 0.5)
    with pytest.raises(ValueError, match="different spaces"):
        mix(svd_embedding(), a, 0.5)
