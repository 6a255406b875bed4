"""The diffusers backend and the Python API, on a tiny random-weight diffusers SVD built in the test.

Nothing is downloaded: the pipeline is built from configs (tests/tiny_svd_pipeline.py), saved to a
temporary folder and loaded back through the API's local-only loader.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from tiny_svd_pipeline import DIM, FRAMES, SIZE, save_pipeline  # noqa: E402

from reenact_core import api  # noqa: E402
from reenact_core import diffusers_backend as backend  # noqa: E402
from reenact_core.embedding import MotionEmbedding  # noqa: E402
from reenact_core.fileformat import load_embedding, save_embedding  # noqa: E402
from testkit.media import moving_square_frames, target_image, write_video  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(REPO, "assets", "motion_embeddings", "reenact_example_motion.safetensors")
TOKENS = 3
SMALL = dict(video_frames=FRAMES, width=SIZE, height=SIZE, tokens_per_frame=TOKENS, learning_rate=0.2)
OPTIONS = dict(sigma_log_mean=1.0, sigma_log_std=1.0, eval_draws=6)
SAMPLING = dict(frames=FRAMES, width=SIZE, height=SIZE, steps=3, progress=False)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine two threads that spin-wait for each
    other make every step 10-100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_pipeline(tmp_path_factory.mktemp("tiny-svd") / "model")


@pytest.fixture(scope="module")
def pipe(model_dir):
    return api.load_pipeline(model_dir, device="cpu")


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    reference = write_video(moving_square_frames(8, SIZE), folder / "moving_square.mp4")
    target = target_image(SIZE)[0]
    return reference, target


def fingerprint(module):
    return {k: float(v.double().sum()) for k, v in module.state_dict().items()}


def processors(unet):
    return {name: type(module.processor) for name, module in unet.named_modules() if name.endswith("attn2")}


@pytest.fixture(scope="module")
def inverted(pipe, media):
    before = fingerprint(pipe.unet), processors(pipe.unet), [p.requires_grad for p in pipe.unet.parameters()]
    result = api.invert_motion(media[0], pipe, steps=20, seed=0, options=OPTIONS, progress=False, **SMALL)
    return result, before


# ---- routing --------------------------------------------------------------------------------------


class Recorder:
    """Stands in front of an attn2 layer's processor and records the context it is handed."""

    def __init__(self, inner, store):
        self.inner, self.store = inner, store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        self.store.append(encoder_hidden_states.detach().clone())
        return self.inner(attn, hidden_states, encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask, **kwargs)


class AttentionProbe:
    def __init__(self, unet):
        self.spatial, self.temporal, self.layers = [], [], []
        for module in unet.modules():
            if type(module).__name__ in ("BasicTransformerBlock", "TemporalBasicTransformerBlock") and module.attn2 is not None:
                store = self.temporal if type(module).__name__.startswith("Temporal") else self.spatial
                self.layers.append((module.attn2, module.attn2.processor))
                module.attn2.set_processor(Recorder(module.attn2.processor, store))
        assert self.spatial is not self.temporal and len(self.layers) >= 2

    def close(self):
        for attn, original in self.layers:
            attn.set_processor(original)


def test_processors_route_frame_tokens_to_their_frame_and_the_shared_set_to_temporal_layers(pipe):
    g = torch.Generator().manual_seed(0)
    frame_tokens = torch.randn(FRAMES, TOKENS, DIM, generator=g)
    shared = torch.randn(TOKENS, DIM, generator=g)
    latent = SIZE // 8
    probe = AttentionProbe(pipe.unet)
    try:
        with backend.DiffusersSVDDenoiser(pipe.unet, vae_scaling_factor=pipe.vae.config.scaling_factor) as denoiser, torch.no_grad():
            out = denoiser(torch.randn(FRAMES, 4, latent, latent), torch.tensor(2.0), frame_tokens, shared, torch.randn(4, latent, latent))
    finally:
        probe.close()
    assert out.shape == (FRAMES, 4, latent, latent) and torch.isfinite(out).all()
    assert probe.spatial and probe.temporal
    for context in probe.spatial:  # frames are the batch: row f must be exactly frame f's tokens
        assert context.shape == (FRAMES, TOKENS, DIM)
        for f in range(FRAMES):
            assert torch.equal(context[f], frame_tokens[f]), f"frame {f} did not receive its own tokens"
    for context in probe.temporal:  # one context per pixel column, every one the shared set
        assert context.shape[1:] == (TOKENS, DIM) and context.shape[0] >= 1
        assert torch.equal(context, shared[None].expand_as(context))
    assert all(not isinstance(p, backend._RoutedProcessor) for p in (m.processor for m, _ in probe.layers))


def test_sampling_routes_the_motion_and_a_zero_negative(pipe, media):
    """Through the pipeline (CFG batch of 2): the negative is all zeros, the positive the resampled motion."""
    g = torch.Generator().manual_seed(1)
    motion = MotionEmbedding(torch.randn(7, TOKENS, DIM, generator=g), torch.randn(TOKENS, DIM, generator=g))
    probe = AttentionProbe(pipe.unet)
    try:
        api.apply_motion(motion, media[1], pipe, **SAMPLING)
    finally:
        probe.close()
    expected = motion.resample_frames(FRAMES).spatial
    for context in probe.spatial:
        assert context.shape == (2 * FRAMES, TOKENS, DIM)
        assert not context[:FRAMES].any(), "the negative half is the zero context"
        assert torch.allclose(context[FRAMES:], expected, atol=1e-6)
    for context in probe.temporal:
        rows = context.reshape(context.shape[0], -1)
        is_shared = torch.isclose(rows, motion.temporal.reshape(1, -1), atol=1e-6).all(dim=1)
        is_zero = (rows == 0).all(dim=1)
        assert bool((is_shared | is_zero).all()) and is_shared.any() and is_zero.any()


def test_context_compaction_saves_memory_and_changes_nothing(pipe):
    """Each TransformerSpatioTemporalModel receives per frame row only [frame f's tokens, shared] (2N tokens, not
    (F+1)N: diffusers copies that context once per pixel for the temporal layers); the result is the same as routing
    the full packed context."""
    g = torch.Generator().manual_seed(3)
    frame_tokens, shared = torch.randn(FRAMES, TOKENS, DIM, generator=g), torch.randn(TOKENS, DIM, generator=g)
    latent = SIZE // 8
    noisy, image = torch.randn(FRAMES, 4, latent, latent, generator=g), torch.randn(4, latent, latent, generator=g)
    outputs, widths = {}, {}
    for compact in (False, True):
        seen = []
        with backend.DiffusersSVDDenoiser(pipe.unet, vae_scaling_factor=0.18215, compact=compact) as denoiser, torch.no_grad():
            def record(module, args, kwargs, seen=seen):
                seen.append(kwargs["encoder_hidden_states"].shape)

            hooks = [m.register_forward_pre_hook(record, with_kwargs=True) for m in denoiser.routing.transformers]
            try:
                outputs[compact] = denoiser(noisy, torch.tensor(1.5), frame_tokens, shared, image)
            finally:
                for h in hooks:
                    h.remove()
        widths[compact] = set(seen)
    assert widths == {False: {(FRAMES, (FRAMES + 1) * TOKENS, DIM)}, True: {(FRAMES, 2 * TOKENS, DIM)}}
    assert torch.allclose(outputs[True], outputs[False], atol=1e-6)
    assert all(not m._forward_pre_hooks for m in backend.MotionTokenRouting(pipe.unet).transformers), "hooks removed"


@pytest.mark.parametrize("tokens", [1, 3])
def test_stock_context_gives_the_pipeline_unet_path_exactly(pipe, tokens):
    """Frame tokens all equal to the image's CLIP embedding (stock SVD's context) = the pipeline's own path
    (scheduler preconditioning, unscaled image latent, added_time_ids, plain UNet): the processors and the
    EDM wrapper do not change the model."""
    scheduler = pipe.scheduler
    scheduler.set_timesteps(5)
    t, sigma = scheduler.timesteps[1], scheduler.sigmas[1]
    g = torch.Generator().manual_seed(2)
    latent = SIZE // 8
    noisy = sigma * torch.randn(FRAMES, 4, latent, latent, generator=g)
    image_latent = torch.randn(4, latent, latent, generator=g)  # in the scaled latent space, like the clip's
    clip_token = backend.image_embeddings(pipe, [backend.to_pil(target_image(SIZE)[0])])[0]
    fps, bucket, aug = 6, 127, 0.02

    with torch.no_grad():
        model_input = scheduler.scale_model_input(noisy[None], t)
        raw_image = (image_latent / pipe.vae.config.scaling_factor)[None, None].expand(1, FRAMES, -1, -1, -1)
        output = pipe.unet(
            torch.cat([model_input, raw_image], dim=2),
            t,
            encoder_hidden_states=clip_token[None, None],
            added_time_ids=pipe._get_add_time_ids(fps - 1, bucket, aug, torch.float32, 1, 1, False),
            return_dict=False,
        )[0]
        reference = scheduler.step(output, t, noisy[None]).pred_original_sample[0]

        with backend.DiffusersSVDDenoiser(pipe.unet, vae_scaling_factor=pipe.vae.config.scaling_factor, fps=fps, motion_bucket_id=bucket, augmentation_level=aug) as d:
            ours = d(noisy, sigma, clip_token.expand(FRAMES, tokens, DIM), clip_token.expand(tokens, DIM), image_latent)
    assert torch.allclose(ours, reference.float(), atol=1e-5, rtol=1e-5), float((ours - reference).abs().max())


def test_routing_refuses_a_context_that_is_not_packed(pipe):
    latent = SIZE // 8
    with backend.motion_routing(pipe.unet, tokens=3), pytest.raises(RuntimeError, match="routing"):
        pipe.unet(torch.randn(1, FRAMES, 8, latent, latent), 1.0, encoder_hidden_states=torch.randn(1, 1, DIM), added_time_ids=torch.zeros(1, 3))
    assert all(not issubclass(p, backend._RoutedProcessor) for p in processors(pipe.unet).values())


# ---- inversion -----------------------------------------------------------------------------------------


def test_inversion_lowers_the_reference_loss_on_held_out_draws(inverted):
    result, _ = inverted
    assert result.initial_eval_loss is not None and result.final_eval_loss is not None
    assert result.final_eval_loss < 0.9 * result.initial_eval_loss, (result.initial_eval_loss, result.final_eval_loss)
    embedding = result.embedding
    assert embedding.spatial.shape == (FRAMES, TOKENS, DIM) and embedding.temporal.shape == (TOKENS, DIM)
    meta = embedding.metadata
    assert meta["backend"] == "diffusers" and meta["modelspec.title"] == "motion from moving_square.mp4"
    # fps 0 (auto): SVD is told the rate the learned frames have, recorded next to it
    assert meta["fps"] == str(max(1, round(float(meta["motion_fps"])))) and float(meta["reference_fps"]) > 0
    assert meta["motion_bucket_id"] == "127" and meta["resolution"] == f"{SIZE}x{SIZE}" and meta["steps"] == "20"
    assert meta["base_model"] == "svd"


def test_inversion_leaves_the_model_untouched(pipe, inverted):
    _, (weights, procs, grads) = inverted
    assert fingerprint(pipe.unet) == weights
    assert processors(pipe.unet) == procs  # the routing processors are gone again
    assert not pipe.unet.is_gradient_checkpointing and [p.requires_grad for p in pipe.unet.parameters()] == grads
    assert all(p.grad is None for p in pipe.unet.parameters()), "no weight gradient was ever computed"


def test_gradient_checkpointing_really_saves_memory_and_covers_the_temporal_blocks(pipe):
    """diffusers checkpoints only in training mode before 0.31 and never its temporal transformer blocks: the
    backend turns training mode on (SVD has no dropout) and wraps those blocks itself, and undoes both."""
    latent = SIZE // 8
    noisy = torch.randn(FRAMES, 4, latent, latent, generator=torch.Generator().manual_seed(0))
    weights = {p.untyped_storage().data_ptr() for p in pipe.unet.parameters()}
    temporal = [m for m in pipe.unet.modules() if type(m).__name__ == "TemporalBasicTransformerBlock"]
    assert temporal

    def saved_bytes(checkpointing: bool) -> int:
        seen = {}

        def pack(t):
            if t.untyped_storage().data_ptr() not in weights:
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with backend.frozen_unet(pipe.unet, checkpointing), backend.DiffusersSVDDenoiser(
            pipe.unet, vae_scaling_factor=pipe.vae.config.scaling_factor, fps=6, motion_bucket_id=127, augmentation_level=0.0
        ) as denoiser:
            assert pipe.unet.training == checkpointing
            assert all(("forward" in vars(m)) == checkpointing for m in temporal)
            tokens, shared = torch.zeros(FRAMES, 3, DIM, requires_grad=True), torch.zeros(3, DIM, requires_grad=True)
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                denoiser(noisy, torch.tensor(1.0), tokens, shared, noisy[0]).sum()
        return sum(seen.values())

    full, checkpointed = saved_bytes(False), saved_bytes(True)
    assert checkpointed < 0.5 * full, (checkpointed, full)
    assert not pipe.unet.training and all("forward" not in vars(m) for m in temporal)  # as it was


def test_same_seed_same_embedding(pipe, media):
    runs = [api.invert_motion(media[0], pipe, steps=2, seed=5, options=dict(eval_draws=0), progress=False, **SMALL).embedding for _ in range(2)]
    assert torch.equal(runs[0].spatial, runs[1].spatial) and torch.equal(runs[0].temporal, runs[1].temporal)
    other = api.invert_motion(media[0], pipe, steps=2, seed=6, options=dict(eval_draws=0), progress=False, **SMALL).embedding
    assert not torch.equal(other.spatial, runs[0].spatial)


def test_inversion_options_are_the_nodes(pipe, media):
    config = api.inversion_config(steps=7, hflip=True, crop_scale=0.8, augment_variants=2, per_frame_tokens=False, schedule="cosine")
    assert config.augment.hflip and config.augment.crop_scale == 0.8 and config.augment.variants == 2 and not config.per_frame_tokens
    with pytest.raises(TypeError, match="unknown inversion option"):
        api.inversion_config(sigma=1.0)
    shared = api.invert_motion(media[0], pipe, steps=1, options=dict(per_frame_tokens=False, eval_draws=0), progress=False, gradient_checkpointing=False, clip_init=False, **SMALL)
    assert shared.embedding.frames == 1  # the F'=1 ablation: one token set for all frames


# ---- applying --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stock_video(pipe, media):
    return api.apply_motion(None, media[1], pipe, **SAMPLING)


def test_apply_makes_a_video_and_strength_zero_is_stock_svd(pipe, media, inverted, stock_video):
    embedding = inverted[0].embedding
    moved = api.apply_motion(embedding, media[1], pipe, **SAMPLING)
    neutral = api.apply_motion(embedding, media[1], pipe, strength=0.0, **SAMPLING)
    assert moved.shape == (FRAMES, SIZE, SIZE, 3) and torch.isfinite(moved).all() and 0 <= moved.min() and moved.max() <= 1
    assert torch.allclose(neutral, stock_video, atol=2e-3), float((neutral - stock_video).abs().max())
    assert float((moved - stock_video).abs().mean()) > 10 * float((neutral - stock_video).abs().mean()) + 1e-3
    assert processors(pipe.unet) == inverted[1][1]


def test_apply_resamples_to_other_frame_counts(pipe, media, inverted):
    video = api.apply_motion(inverted[0].embedding, media[1], pipe, **dict(SAMPLING, frames=6, width=48))
    assert video.shape == (6, SIZE, 48, 3)


def test_apply_refuses_an_embedding_of_another_width(pipe, media):
    narrow = MotionEmbedding(torch.zeros(FRAMES, 2, 768), torch.zeros(2, 768))
    with pytest.raises(ValueError, match="768-wide"):
        api.apply_motion(narrow, media[1], pipe, **SAMPLING)


# ---- the same files as the ComfyUI nodes -------------------------------------------------------------


def test_the_embedding_made_by_the_comfyui_nodes_applies_here(pipe, media, stock_video):
    """assets/…/reenact_example_motion.safetensors was written by the ComfyUI nodes (14 frames x 5 x 1024)."""
    node_made = load_embedding(EXAMPLE)
    assert node_made.frames == 14 and node_made.dim == DIM and "backend" not in node_made.metadata
    video = api.apply_motion(EXAMPLE, media[1], pipe, **SAMPLING)  # resampled 14 -> 4 frames
    assert video.shape == (FRAMES, SIZE, SIZE, 3)
    assert float((video - stock_video).abs().mean()) > 1e-3


def test_an_embedding_saved_by_the_save_node_applies_here(comfy, pack, pipe, media, inverted, stock_video):
    learned = inverted[0].embedding
    node_embedding = pack.embedding.MotionEmbedding(spatial=learned.spatial.clone(), temporal=learned.temporal.clone(), metadata=dict(learned.metadata))
    saved = pack.nodes.NODE_CLASS_MAPPINGS["SaveMotionEmbedding"]().save(node_embedding, "diffusers_interop/from_node")
    path = os.path.join(comfy.folder_paths.get_output_directory(), "motion_embeddings", saved["ui"]["text"][0])
    loaded = load_embedding(path)
    assert torch.equal(loaded.spatial, learned.spatial) and torch.equal(loaded.temporal, learned.temporal)
    here = api.apply_motion(path, media[1], pipe, **SAMPLING)
    direct = api.apply_motion(learned, media[1], pipe, **SAMPLING)
    assert torch.equal(here, direct)


def test_an_embedding_made_here_passes_the_comfyui_loader_and_apply_nodes(comfy, pack, inverted, tmp_path):
    from testkit.comfy_env import run_node

    made_here = tmp_path / "made_by_diffusers.safetensors"
    save_embedding(inverted[0].embedding, made_here)
    folder = os.path.join(comfy.folder_paths.get_output_directory(), "motion_embeddings", "diffusers_interop")
    os.makedirs(folder, exist_ok=True)
    shutil.copy(made_here, os.path.join(folder, made_here.name))
    name = f"diffusers_interop/{made_here.name}"
    assert name in pack.nodes.NODE_CLASS_MAPPINGS["LoadMotionEmbedding"].INPUT_TYPES()["required"]["embedding_name"][0]
    loaded, _ = run_node(comfy, "LoadMotionEmbedding", embedding_name=name)
    assert torch.equal(loaded.spatial, inverted[0].embedding.spatial) and torch.equal(loaded.temporal, inverted[0].embedding.temporal)
    # SVD_img2vid_Conditioning-shaped conditioning (image token [1, 1, 1024] + concat latent) and a 7-frame latent
    image_token = torch.randn(1, 1, DIM)
    positive = [[image_token, {"concat_latent_image": torch.zeros(1, 4, 8, 8)}]]
    negative = [[torch.zeros_like(image_token), {"concat_latent_image": torch.zeros(1, 4, 8, 8)}]]
    latent = {"samples": torch.zeros(7, 4, 8, 8)}
    pos, neg, _, _ = run_node(comfy, "ApplyMotionEmbedding", positive=positive, negative=negative, motion_embedding=loaded, latent=latent, strength=1.0)
    assert pos[0][0].shape == (7, TOKENS, DIM) and torch.allclose(pos[0][0], inverted[0].embedding.resample_frames(7).spatial)
    assert torch.equal(pos[0][1]["time_conditioning"][0], inverted[0].embedding.temporal)
    assert neg[0][0].shape == (7, TOKENS, DIM) and not neg[0][0].any()


# ---- loading, offline, optional dependency --------------------------------------------------------------


def test_models_load_from_local_folders_without_network(model_dir, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access while loading a local model")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    pipe = api.load_pipeline(model_dir, device="cpu", dtype="fp32")
    assert pipe.unet.dtype == torch.float32 and pipe.unet.config.cross_attention_dim == DIM


def test_wrong_model_folders_say_what_is_expected(model_dir, tmp_path):
    cases = {
        "stabilityai/stable-video-diffusion-img2vid-xt": "Hub model id",
        str(tmp_path / "missing"): "no such folder",
        str(tmp_path): "model_index.json",
    }
    file = tmp_path / "svd.safetensors"
    file.write_bytes(b"x")
    cases[str(file)] = "single-file checkpoints"
    other = tmp_path / "other"
    other.mkdir()
    (other / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    cases[str(other)] = "not StableVideoDiffusionPipeline"
    partial = tmp_path / "partial"
    shutil.copytree(model_dir, partial)
    shutil.rmtree(partial / "vae")
    cases[str(partial)] = "lacks the sub-folder"
    for path, message in cases.items():
        with pytest.raises(backend.ModelFolderError, match=message) as info:
            api.load_pipeline(path, device="cpu")
        assert "Nothing is downloaded" in str(info.value)


def test_reenact_core_and_the_node_pack_do_not_need_diffusers(tmp_path):
    """With diffusers and transformers unimportable, reenact_core (api and cli included) still imports, the CLI's
    help works, and using the backend says how to install the extra."""
    fake_model = tmp_path / "svd"
    for folder in backend.PIPELINE_FOLDERS:
        (fake_model / folder).mkdir(parents=True)
    (fake_model / "model_index.json").write_text('{"_class_name": "StableVideoDiffusionPipeline"}')
    code = r"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("diffusers", "transformers", "accelerate"):
            raise ImportError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
import reenact_core, reenact_core.api, reenact_core.cli, reenact_core.diffusers_backend, reenact_core.inversion
assert not any(m.split(".")[0] in ("diffusers", "transformers") for m in sys.modules)
try:
    reenact_core.cli.main(["--help"])
except SystemExit as e:
    assert e.code == 0
try:
    reenact_core.api.load_pipeline(sys.argv[1])
except reenact_core.diffusers_backend.MissingDependency as e:
    assert "reenact-anything[diffusers]" in str(e), e
    print("MISSING-DEPENDENCY-REPORTED")
"""
    result = subprocess.run([sys.executable, "-c", code, str(fake_model)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "MISSING-DEPENDENCY-REPORTED" in result.stdout, result.stdout + result.stderr
    for root in ("nodes", "reenact_core"):
        for name in os.listdir(os.path.join(REPO, root)):
            if name.endswith(".py") and name != "diffusers_backend.py":
                with open(os.path.join(REPO, root, name), encoding="utf-8") as f:
                    source = f.read()
                assert "import diffusers" not in source and "from diffusers" not in source, f"{root}/{name} imports diffusers"
