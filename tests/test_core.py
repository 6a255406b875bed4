"""Fast unit tests of reenact_core on tiny tensors (no ComfyUI)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from reenact_core.augment import Augmentations, conditioning_latent, make_variants
from reenact_core.embedding import NOT_A_REAL_MOTION_KEY, MotionEmbedding, describe_embedding, mix
from reenact_core.inversion import (
    InversionConfig,
    InversionDiverged,
    InversionResult,
    NoTokenGradient,
    convergence_verdict,
    edm_loss,
    edm_weight,
    encode_training_clips,
    evaluation_sigmas,
    initial_tokens,
    invert,
    sample_sigma,
)
from reenact_core.plot import pil_to_image_batch, render_loss_curve
from testkit.toy_denoiser import ToyVideoDenoiser

DIM = 32


def random_embedding(frames=4, tokens=3, dim=DIM, seed=0):
    g = torch.Generator().manual_seed(seed)
    return MotionEmbedding(torch.randn(frames, tokens, dim, generator=g), torch.randn(tokens, dim, generator=g))


# ---- embedding -------------------------------------------------------------------------------


def test_embedding_rejects_inconsistent_shapes():
    with pytest.raises(ValueError, match="same tokens-per-frame"):
        MotionEmbedding(torch.zeros(4, 3, DIM), torch.zeros(2, DIM))
    with pytest.raises(ValueError, match=r"\[frames, tokens, dim\]"):
        MotionEmbedding(torch.zeros(3, DIM), torch.zeros(3, DIM))


def test_resample_keeps_endpoints_and_interpolates_linearly():
    emb = MotionEmbedding(torch.arange(4.0)[:, None, None].expand(4, 2, DIM).clone(), torch.ones(2, DIM))
    up = emb.resample_frames(7)
    assert up.spatial.shape == (7, 2, DIM)
    # rows 0..3 spread over 7 frames: values 0, .5, 1, ..., 3 (linear in time, not tiled)
    assert torch.allclose(up.spatial[:, 0, 0], torch.linspace(0, 3, 7))
    assert torch.equal(up.temporal, emb.temporal)
    down = up.resample_frames(4)
    assert torch.allclose(down.spatial, emb.spatial, atol=1e-6)
    assert emb.resample_frames(4) is emb
    single = MotionEmbedding(torch.ones(1, 2, DIM), torch.ones(2, DIM)).resample_frames(5)
    assert single.spatial.shape == (5, 2, DIM) and torch.equal(single.spatial, torch.ones(5, 2, DIM))


def test_strength_interpolates_from_neutral():
    emb = random_embedding()
    token = torch.randn(DIM)
    neutral = MotionEmbedding.neutral(token, emb.frames, emb.tokens, DIM)
    assert torch.equal(neutral.spatial[2, 1], token) and torch.equal(neutral.temporal[0], token)
    assert torch.allclose(emb.with_strength(1.0, neutral).spatial, emb.spatial)
    assert torch.allclose(emb.with_strength(0.0, neutral).spatial, neutral.spatial)
    half = emb.with_strength(0.5, neutral)
    assert torch.allclose(half.spatial, (emb.spatial + neutral.spatial) / 2, atol=1e-6)
    assert torch.allclose(half.temporal, (emb.temporal + neutral.temporal) / 2, atol=1e-6)
    # without an image token, neutral is the all-zero unconditional context
    assert torch.allclose(emb.with_strength(0.25).spatial, 0.25 * emb.spatial)


def test_mix_weights_and_resamples():
    a, b = random_embedding(frames=4, seed=1), random_embedding(frames=7, seed=2)
    m = mix(a, b, 0.25)
    assert m.frames == 4
    assert torch.allclose(m.spatial, 0.75 * a.spatial + 0.25 * b.resample_frames(4).spatial, atol=1e-6)
    assert torch.allclose(mix(a, b, 0.0).spatial, a.spatial)
    with pytest.raises(ValueError, match="same tokens_per_frame"):
        mix(a, random_embedding(tokens=2), 0.5)


# ---- inversion ---------------------------------------------------------------------------------


def toy_setup(frames=4, seed=0):
    model = ToyVideoDenoiser(dim=DIM, seed=seed)
    g = torch.Generator().manual_seed(123)
    pixels = torch.rand(frames, 8, 8, 3, generator=g)
    proj = torch.randn(3, 4, generator=g)
    encode = lambda clip: (clip @ proj).permute(0, 3, 1, 2).contiguous()  # noqa: E731  [F,4,8,8]
    return model, pixels, encode


def run_toy_inversion(steps=60, seed=0, **overrides):
    model, pixels, encode = toy_setup()
    config = InversionConfig(steps=steps, tokens_per_frame=3, seed=seed, learning_rate=5e-2, sigma_log_mean=0.0, **overrides)
    latents = encode_training_clips(pixels, encode, config)
    init = initial_tokens(4, config, torch.Generator().manual_seed(seed), dim=DIM)
    return model, invert(model, latents, init, config), init


def test_inversion_lowers_the_loss_on_held_out_draws():
    model, result, init = run_toy_inversion()
    assert result.final_eval_loss < 0.8 * result.initial_eval_loss
    assert len(result.loss_history) == 60 and all(math.isfinite(v) for v in result.loss_history)
    assert not torch.equal(result.embedding.spatial, init.spatial)
    # only the embedding learned: no weight ever required or received a gradient
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())


def test_inversion_is_deterministic_for_a_seed():
    _, a, _ = run_toy_inversion(steps=15, seed=3)
    _, b, _ = run_toy_inversion(steps=15, seed=3)
    _, c, _ = run_toy_inversion(steps=15, seed=4)
    assert torch.equal(a.embedding.spatial, b.embedding.spatial)
    assert torch.equal(a.embedding.temporal, b.embedding.temporal)
    assert not torch.equal(a.embedding.spatial, c.embedding.spatial)


def test_every_frame_row_and_the_shared_set_learn():
    _, result, init = run_toy_inversion(steps=10)
    moved = (result.embedding.spatial - init.spatial).abs().sum(dim=(1, 2))
    assert (moved > 0).all()
    assert (result.embedding.temporal - init.temporal).abs().sum() > 0


def test_callback_sees_every_step_and_can_cancel():
    seen = []

    class Stop(Exception):
        pass

    def callback(info):
        seen.append((info.step, info.steps, info.denoised.shape))
        if info.step == 3:
            raise Stop

    model, pixels, encode = toy_setup()
    config = InversionConfig(steps=10, tokens_per_frame=2, eval_draws=0)
    latents = encode_training_clips(pixels, encode, config)
    with pytest.raises(Stop):
        invert(model, latents, initial_tokens(4, config, torch.Generator(), dim=DIM), config, callback)
    assert [s[0] for s in seen] == [1, 2, 3] and seen[0][1] == 10 and seen[0][2] == (4, 4, 8, 8)


def test_divergence_is_reported_not_returned():
    class Exploding(ToyVideoDenoiser):
        def forward(self, *args):
            return super().forward(*args) * float("inf")

    _, pixels, encode = toy_setup()
    config = InversionConfig(steps=5, tokens_per_frame=2, eval_draws=0, learning_rate=1e3)
    latents = encode_training_clips(pixels, encode, config)
    with pytest.raises(InversionDiverged, match="Lower learning_rate"):
        invert(Exploding(dim=DIM), latents, initial_tokens(4, config, torch.Generator(), dim=DIM), config)


class _DetachedOutput(ToyVideoDenoiser):  # a backend whose kernels return tensors without autograd history
    def forward(self, *args):
        return super().forward(*args).detach()


class _FailingBackward(ToyVideoDenoiser):  # a backend whose op has no backward formula
    def forward(self, *args):
        return _NoBackward.apply(super().forward(*args))


class _ZeroGradient(ToyVideoDenoiser):  # the tokens enter, but nothing flows back to them
    def forward(self, noisy, sigma, frame_tokens, shared_tokens, image_latent):
        out = super().forward(noisy, sigma, frame_tokens.detach(), shared_tokens.detach(), image_latent)
        return out + 0.0 * (frame_tokens.sum() + shared_tokens.sum())


class _NaNGradient(ToyVideoDenoiser):  # a finite forward whose backward overflows
    def forward(self, *args):
        return _NaNBackward.apply(super().forward(*args))


class _NoBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("no autograd formula was registered")


class _NaNBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


@pytest.mark.parametrize(
    "denoiser, reason",
    [
        (_DetachedOutput, "does not depend on the tokens"),
        (_FailingBackward, "backward pass failed: no autograd formula"),
        (_ZeroGradient, "zero everywhere"),
        (_NaNGradient, "not finite"),
    ],
)
def test_the_first_step_stops_when_the_tokens_get_no_usable_gradient(denoiser, reason):
    """Checked in the first step itself, before the optimiser moves anything: no callback runs."""
    _, pixels, encode = toy_setup()
    config = InversionConfig(steps=5, tokens_per_frame=2, eval_draws=0)
    latents = encode_training_clips(pixels, encode, config)
    steps = []
    with pytest.raises(NoTokenGradient, match=reason):
        invert(denoiser(dim=DIM), latents, initial_tokens(4, config, torch.Generator(), dim=DIM), config, steps.append)
    assert steps == []


def test_a_model_that_ignores_one_token_set_still_trains():
    """Zero gradient for one set is legitimate (a model without temporal cross-attention); only both is not."""

    class NoTemporal(ToyVideoDenoiser):
        def forward(self, noisy, sigma, frame_tokens, shared_tokens, image_latent):
            return super().forward(noisy, sigma, frame_tokens, torch.zeros_like(shared_tokens), image_latent) + 0.0 * shared_tokens.sum()

    _, pixels, encode = toy_setup()
    config = InversionConfig(steps=3, tokens_per_frame=2, eval_draws=0)
    latents = encode_training_clips(pixels, encode, config)
    result = invert(NoTemporal(dim=DIM), latents, initial_tokens(4, config, torch.Generator(), dim=DIM), config)
    assert len(result.loss_history) == 3


def test_the_optimiser_steps_on_the_edm_weighted_loss():
    """What the loop logs and differentiates is (sigma^2+1)/sigma^2 * mean((D - x0)^2), checked from outside:
    with one fixed sigma (std 0) and no augmentation, x0 is the clip itself; the gradient reaching the
    denoiser's output must be the weighted loss's, 2 * w(sigma) * (D - x0) / numel, not the plain MSE's."""
    seen = {}

    class Recording(ToyVideoDenoiser):
        def forward(self, noisy, sigma, frame_tokens, shared_tokens, image_latent):
            out = super().forward(noisy, sigma, frame_tokens, shared_tokens, image_latent)
            if out.requires_grad and "grad" not in seen:
                seen["out"] = out.detach().clone()
                out.register_hook(lambda grad: seen.setdefault("grad", grad.detach().clone()))
            return out

    _, pixels, encode = toy_setup()
    sigma = 4.0  # w(4) = 17/16: any other weighting of the same draw gives another gradient
    config = InversionConfig(steps=1, tokens_per_frame=2, eval_draws=0, sigma_log_mean=math.log(sigma), sigma_log_std=0.0)
    latents = encode_training_clips(pixels, encode, config)
    x0 = latents[0]
    logged = []
    invert(Recording(dim=DIM), latents, initial_tokens(4, config, torch.Generator(), dim=DIM), config, lambda i: logged.append(i.loss))
    weight = float(edm_weight(torch.tensor(sigma)))
    assert weight == pytest.approx(17 / 16)
    assert logged[0] == pytest.approx(weight * float(torch.mean((seen["out"] - x0) ** 2)), rel=1e-5)
    expected = 2 * weight * (seen["out"] - x0) / x0.numel()
    torch.testing.assert_close(seen["grad"], expected, rtol=1e-4, atol=1e-9)


def test_loss_scaling_gives_the_same_result_in_fp32():
    # with fp32 compute nothing overflows, so scaled and unscaled runs agree up to rounding
    model, pixels, encode = toy_setup()
    config = InversionConfig(steps=8, tokens_per_frame=2, eval_draws=0)
    latents = encode_training_clips(pixels, encode, config)
    init = initial_tokens(4, config, torch.Generator().manual_seed(0), dim=DIM)
    plain = invert(model, latents, init, config)
    scaled = invert(model, latents, init, config, loss_scaling=True)
    assert torch.allclose(plain.embedding.spatial, scaled.embedding.spatial, atol=1e-5)


def test_edm_loss_weighting():
    x0 = torch.zeros(2, 4, 2, 2)
    assert float(edm_loss(torch.ones_like(x0), x0, torch.tensor(1.0))) == pytest.approx(2.0)
    assert float(edm_loss(torch.ones_like(x0), x0, torch.tensor(10.0))) == pytest.approx(1.01)


def test_evaluation_sigmas_follow_the_distribution():
    config = InversionConfig(sigma_log_mean=1.0, sigma_log_std=0.5)
    sigmas = evaluation_sigmas(config, 8)
    assert sigmas.shape == (8,) and torch.all(sigmas[1:] > sigmas[:-1])
    assert float(sigmas.log().mean()) == pytest.approx(1.0, abs=1e-5)


def test_a_sigma_floor_truncates_the_noise_levels_and_no_floor_changes_nothing():
    """sigma_floor (Wan2.2 I2V-A14B's high-noise expert: sigma >= 9) draws from the log-normal truncated there, from the
    same random stream; without a floor the draws are the plain log-normal's, as before the option existed."""
    plain, floored = InversionConfig(), InversionConfig(sigma_floor=9.0)
    g, reference = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(50):
        expected = (plain.sigma_log_mean + plain.sigma_log_std * torch.randn((), generator=reference)).exp().clamp(0.002, 700.0)
        assert torch.equal(sample_sigma(plain, g), expected)
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_sigma(floored, g) for _ in range(4000)]).double()
    assert float(draws.min()) >= 9.0
    # the truncated log-normal's median: the quantile halfway between P(sigma < 9) and 1
    below = torch.special.ndtr(torch.tensor((math.log(9.0) - 2.8) / 1.6, dtype=torch.float64))
    median = math.exp(2.8 + 1.6 * float(torch.special.ndtri(below + (1 - below) * 0.5)))
    assert float(draws.median()) == pytest.approx(median, rel=0.05)
    assert float(evaluation_sigmas(floored, 8).min()) >= 9.0 and torch.equal(evaluation_sigmas(plain, 8), evaluation_sigmas(InversionConfig(), 8))
    with pytest.raises(ValueError, match="sigma_floor"):
        InversionConfig(sigma_floor=-1.0)


def test_initial_tokens_from_clip_embeddings():
    embeds = torch.randn(4, DIM)
    config = InversionConfig(tokens_per_frame=3, init_noise=0.0)
    init = initial_tokens(4, config, torch.Generator(), embeds, dim=DIM)
    assert torch.equal(init.spatial[2, 1], embeds[2]) and torch.equal(init.temporal[0], embeds[0])
    noisy = initial_tokens(4, InversionConfig(tokens_per_frame=3), torch.Generator(), embeds, dim=DIM)
    assert not torch.equal(noisy.spatial[0, 0], noisy.spatial[0, 1])  # tokens must not start identical
    with pytest.raises(ValueError, match="must be"):
        initial_tokens(5, config, torch.Generator(), embeds, dim=DIM)


def test_initial_tokens_break_symmetry_even_from_an_all_zero_image_embedding():
    """A CLIP tower that says nothing (Motion World's) gives all-zero embeddings: noise relative to their
    std would be zero, and N identical tokens get identical gradients forever (N would act as 1)."""
    init = initial_tokens(4, InversionConfig(tokens_per_frame=3), torch.Generator(), torch.zeros(4, DIM), dim=DIM)
    for tokens in (*init.spatial, init.temporal):
        assert torch.cdist(tokens, tokens).fill_diagonal_(1.0).min() > 0.01


def test_config_rejects_bad_values():
    for bad in (dict(steps=0), dict(learning_rate=0.0), dict(learning_rate=float("nan")), dict(schedule="linear"), dict(tokens_per_frame=0)):
        with pytest.raises(ValueError):
            InversionConfig(**bad)


def test_warmup_and_cosine_schedule():
    from reenact_core.inversion import _lr_factor

    config = InversionConfig(steps=100, schedule="cosine")
    assert _lr_factor(0, config) == pytest.approx(0.1) and _lr_factor(9, config) == pytest.approx(1.0)
    assert _lr_factor(99, config) < 0.01
    assert _lr_factor(50, InversionConfig(steps=100, schedule="constant")) == 1.0


# ---- augmentations -------------------------------------------------------------------------------


def test_variants_and_conditioning():
    g = torch.Generator().manual_seed(0)
    clip = torch.rand(4, 16, 16, 3)
    assert make_variants(clip, Augmentations(), g).shape == (1, 4, 16, 16, 3)
    aug = Augmentations(hflip=True, crop_scale=0.7, color_jitter=0.2, variants=5)
    variants = make_variants(clip, aug, g)
    assert variants.shape == (5, 4, 16, 16, 3)
    assert torch.equal(variants[0], clip)
    assert all(not torch.equal(variants[i], clip) for i in range(1, 5))
    assert variants.min() >= 0 and variants.max() <= 1
    flipped = make_variants(clip, Augmentations(hflip=True, variants=12), torch.Generator().manual_seed(1))
    assert any(torch.equal(v, clip.flip(2)) for v in flipped[1:])

    latents = torch.randn(4, 4, 2, 2)
    assert torch.equal(conditioning_latent(latents, Augmentations(), g), latents[0])
    picks = {int(torch.nonzero((latents == conditioning_latent(latents, Augmentations(random_cond_frame=True), g)).all(-1).all(-1).all(-1))[0]) for _ in range(40)}
    assert len(picks) > 1
    noisy = conditioning_latent(latents, Augmentations(cond_noise=0.1), g)
    assert not torch.equal(noisy, latents[0]) and torch.allclose(noisy, latents[0], atol=1.0)
    with pytest.raises(ValueError):
        Augmentations(crop_scale=0.0)


def test_hue_rotation_turns_colour_and_keeps_grey(monkeypatch):
    import reenact_core.augment as augment
    from reenact_core.augment import _rotate_hue

    red = torch.zeros(2, 3, 3, 3)
    red[..., 0] = 0.9
    grey = torch.full((2, 3, 3, 3), 0.4)
    g = torch.Generator().manual_seed(0)
    turned = {tuple(_rotate_hue(red, 0.5, g)[0, 0, 0].round(decimals=2).tolist()) for _ in range(20)}
    assert len(turned) > 10  # a random angle each call
    assert torch.allclose(_rotate_hue(grey, 0.5, g), grey, atol=1e-6)  # grey has no hue
    with monkeypatch.context() as patch:
        patch.setattr(augment, "_uniform", lambda lo, hi, generator: 1 / 3)  # a third of a turn moves red to green
        third = _rotate_hue(red, 0.5, g)
    assert torch.allclose(third[..., 1], red[..., 0], atol=1e-5) and third[..., 0].abs().max() < 1e-5
    variants = make_variants(red, Augmentations(hue_shift=0.5, variants=4), g)
    assert torch.equal(variants[0], red) and all(not torch.equal(v, red) for v in variants[1:])
    assert torch.allclose(variants.sum(-1), red.sum(-1).expand_as(variants.sum(-1)), atol=0.35)  # brightness roughly kept
    with pytest.raises(ValueError):
        Augmentations(hue_shift=0.6)


# ---- loss curve ----------------------------------------------------------------------------------


def test_loss_curve_image():
    img = render_loss_curve([1.0, 0.8, 0.5, 0.4, float("nan"), 0.3], total_steps=10, before=1.0, after=0.3)
    batch = pil_to_image_batch(img)
    assert batch.shape == (1, 320, 640, 3) and batch.dtype == torch.float32
    assert 0 <= float(batch.min()) and float(batch.max()) <= 1
    assert pil_to_image_batch(render_loss_curve([])).shape == (1, 320, 640, 3)


def test_core_imports_nothing_from_comfyui():
    import ast
    from pathlib import Path

    comfy_modules = {"comfy", "comfy_extras", "comfy_api", "folder_paths", "nodes", "server", "execution", "latent_preview"}
    core = Path(__file__).resolve().parent.parent / "reenact_core"
    for path in core.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            for name in names:
                assert name.split(".")[0] not in comfy_modules, f"{path.name} imports {name}"


def test_one_shared_row_is_broadcast_to_every_frame():
    # the paper's F'=1 ablation: one token set for all frames, optimised through the broadcast
    model, pixels, encode = toy_setup()
    config = InversionConfig(steps=20, tokens_per_frame=1, learning_rate=5e-2, sigma_log_mean=0.0)
    latents = encode_training_clips(pixels, encode, config)
    init = initial_tokens(4, dataclasses.replace(config, per_frame_tokens=False), torch.Generator().manual_seed(0), dim=DIM)
    assert init.spatial.shape == (1, 1, DIM)
    with torch.no_grad():  # the loop enables gradients for itself
        result = invert(model, latents, init, config)
    assert result.embedding.spatial.shape == (1, 1, DIM)
    assert result.final_eval_loss < result.initial_eval_loss
    assert result.embedding.resample_frames(4).spatial.shape == (4, 1, DIM)


def test_held_out_losses_during_the_run_and_the_tokens_drift_are_recorded_without_changing_the_result():
    _, with_evals, init = run_toy_inversion(steps=40, eval_draws=4)
    _, without, _ = run_toy_inversion(steps=40, eval_draws=0)
    assert torch.equal(with_evals.embedding.spatial, without.embedding.spatial)  # evaluation draws its own noise
    assert [step for step, _ in with_evals.eval_history] == [0, 10, 20, 30, 40]
    assert with_evals.eval_history[0][1] == with_evals.initial_eval_loss and with_evals.eval_history[-1][1] == with_evals.final_eval_loss
    assert without.eval_history == []
    assert len(with_evals.drift_history) == 40 and with_evals.drift_history[0] > 0
    scale = float(torch.cat([init.spatial.flatten(), init.temporal.flatten()]).std())
    assert with_evals.token_scale == pytest.approx(scale)
    moved = torch.cat([(with_evals.embedding.spatial - init.spatial).flatten(), (with_evals.embedding.temporal - init.temporal).flatten()])
    assert with_evals.drift_history[-1] == pytest.approx(float(moved.pow(2).mean().sqrt()) / scale, rel=1e-5)


@pytest.mark.parametrize(
    "losses, verdict",
    [([1.0, 0.8, 0.6, 0.5, 0.4], "still improving"), ([1.0, 0.5, 0.40, 0.40, 0.399], "flat over the last half"),
     ([1.0, 0.6, 0.5, 0.46, 0.455], "levelling off")],
)
def test_the_verdict_reads_the_held_out_losses(losses, verdict):
    result = InversionResult(None, [1.0] * 40, losses[0], losses[-1], 0.0, eval_history=list(zip([0, 10, 20, 30, 40], losses, strict=True)))
    assert convergence_verdict(result).startswith(verdict)


def test_without_held_out_draws_the_verdict_reads_the_training_loss_by_quarter():
    falling = InversionResult(None, [1.0 - 0.02 * i for i in range(40)], None, None, 0.0)
    flat = InversionResult(None, [0.5] * 40, None, None, 0.0)
    assert convergence_verdict(falling).startswith("still improving") and convergence_verdict(flat).startswith("flat")


def test_learning_rates_in_units_of_the_token_spread_mean_the_same_on_a_context_of_another_scale():
    """A model that reads its context 10x smaller, started from 10x larger tokens, is the same problem in other
    units: in 'token spread' units the same learning rate takes exactly the same path (tokens 10x), in
    absolute units it does not (Adam moves every element by about the rate, whatever the scale)."""

    class Rescaled(ToyVideoDenoiser):
        def __init__(self, factor, **kwargs):
            super().__init__(**kwargs)
            self.factor = factor

        def forward(self, noisy, sigma, frame_tokens, shared_tokens, image_latent):
            return super().forward(noisy, sigma, frame_tokens / self.factor, shared_tokens / self.factor, image_latent)

    _, pixels, encode = toy_setup()
    learned = {}
    for unit in ("absolute", "token spread"):
        for factor in (1.0, 10.0):
            config = InversionConfig(steps=12, tokens_per_frame=2, eval_draws=0, learning_rate=0.05, learning_rate_unit=unit)
            latents = encode_training_clips(pixels, encode, config)
            init = initial_tokens(4, config, torch.Generator().manual_seed(0), dim=DIM)
            init = MotionEmbedding(init.spatial * factor, init.temporal * factor)
            learned[unit, factor] = invert(Rescaled(factor, dim=DIM), latents, init, config).embedding.spatial / factor
    torch.testing.assert_close(learned["token spread", 10.0], learned["token spread", 1.0], rtol=1e-4, atol=1e-6)
    assert not torch.allclose(learned["absolute", 10.0], learned["absolute", 1.0], rtol=1e-2, atol=1e-3)


# ---- SVD's conditioning augmentation and the latents' precision --------------------------------------


def _half_encoder(seen: list):
    """An 'encoder' in fp16 (as VAE.encode under --fp16-intermediates): [F, H, W, 3] -> [F, 3, H/4, W/4]."""

    def encode(pixels):
        seen.append(pixels.clone())
        return pixels.permute(0, 3, 1, 2)[:, :, ::4, ::4].half()

    return encode


def test_training_latents_are_fp32_and_the_conditioning_frame_gets_svds_pixel_noise():
    from reenact_core.inversion import split_conditioning

    clip = torch.rand(4, 16, 16, 3)
    seen: list = []
    plain = encode_training_clips(clip, _half_encoder(seen), InversionConfig(seed=3))
    assert plain.dtype == torch.float32 and plain.shape == (1, 4, 3, 4, 4)
    assert seen[0].shape[0] == 4  # no extra frame without the augmentation
    latents, conditioning = split_conditioning(plain, InversionConfig(seed=3))
    assert conditioning is None and torch.equal(latents, plain)

    config = InversionConfig(seed=3, conditioning_pixel_noise=0.1)
    seen.clear()
    noisy = encode_training_clips(clip, _half_encoder(seen), config)
    assert noisy.dtype == torch.float32 and noisy.shape == (1, 5, 3, 4, 4)
    pixels = seen[0]
    assert torch.equal(pixels[:4], clip)  # the clip itself stays clean
    added = pixels[4] - clip[0]  # the conditioning frame: frame 0 plus Gaussian pixel noise of that std
    assert abs(float(added.std()) - 0.1) < 0.01 and abs(float(added.mean())) < 0.01
    latents, conditioning = split_conditioning(noisy, config)
    assert latents.shape == (1, 4, 3, 4, 4) and torch.equal(conditioning, noisy[:, 4])
    again = encode_training_clips(clip, _half_encoder([]), config)
    assert torch.equal(again, noisy)  # the noise is seeded


def test_the_loop_conditions_on_the_noisy_frame_when_svds_augmentation_is_on():
    clip_latents = torch.randn(1, 4, 4, 8, 8)
    noisy_first = clip_latents[:, 0] + 0.5 * torch.randn(1, 4, 8, 8)

    class Recording(ToyVideoDenoiser):
        def forward(self, noisy, sigma, frame_tokens, shared_tokens, image_latent):
            self.seen.append(image_latent.detach().clone())
            return super().forward(noisy, sigma, frame_tokens, shared_tokens, image_latent)

    for level, training, expected in ((0.0, clip_latents, clip_latents[0, 0]),
                                      (0.1, torch.cat([clip_latents, noisy_first[:, None]], 1), noisy_first[0])):
        denoiser = Recording(dim=DIM)
        denoiser.seen = []
        config = InversionConfig(steps=2, eval_draws=2, conditioning_pixel_noise=level)
        result = invert(denoiser, training, initial_tokens(4, config, torch.Generator(), dim=DIM), config)
        assert result.embedding.spatial.shape[0] == 4  # the conditioning latent is not a frame of the motion
        assert denoiser.seen and all(torch.equal(image, expected) for image in denoiser.seen), level


def test_describe_embedding_states_shape_and_learning_and_opens_with_a_stand_in_warning():
    plain = MotionEmbedding(torch.zeros(14, 5, 1024), torch.zeros(5, 1024), {"resolution": "1024x576", "steps": "1000",
                                                                             "final_loss": "0.0123456", "motion_fps": "7.5"})
    assert describe_embedding(plain) == "14 frames x 5 tokens x 1024, at 1024x576, steps: 1000, final loss 0.01235, 7.5 fps."
    flagged = plain.with_metadata(**{NOT_A_REAL_MOTION_KEY: "Learned on a test model.", "modelspec.title": "demo"})
    first, second = describe_embedding(flagged).split("\n")
    assert first == "WARNING: NOT A REAL MOTION. Learned on a test model." and second.startswith("demo: 14 frames")
