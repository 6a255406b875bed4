"""Motion-textual inversion: optimise the motion embedding on one reference video, model frozen.

The loss (``edm_loss``) is SVD's own training loss, the EDM denoising loss for sigma_data = 1:

    x = x0 + sigma * eps,   loss = (sigma^2 + 1) / sigma^2 * mean((D(x; sigma, tokens, image) - x0)^2)

with x0 the reference clip's latents, sigma drawn log-normally (motion is decided at high noise, so
the default mean is well above SVD's training distribution), ``image`` the conditioning image's
latent. Only the embedding is a leaf that requires grad: the backward pass computes activation
gradients down to the tokens and never a weight gradient.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable

import torch

from .augment import Augmentations, conditioning_latent, make_variants
from .denoiser import Denoiser
from .embedding import CONTEXT_DIM, DEFAULT_TOKENS, MotionEmbedding, resample_rows
from .fileformat import build_metadata

SIGMA_MIN, SIGMA_MAX = 0.002, 700.0  # SVD's EDM range
LEARNING_RATE_UNITS = ("absolute", "token spread")
# How the inversion uses the augmentation level: only in SVD's micro-conditioning (as before), or also as Gaussian
# noise on the conditioning frame's pixels, as SVD was trained (InversionConfig.conditioning_pixel_noise).
CONDITIONING_AUGMENTATIONS = ("micro-conditioning only", "noisy pixels, as SVD")


def conditioning_pixel_noise(conditioning_augmentation: str, augmentation_level: float) -> float:
    """InversionConfig.conditioning_pixel_noise for a CONDITIONING_AUGMENTATIONS choice: the augmentation level
    with noisy pixels, 0 (micro-conditioning only) otherwise."""
    if conditioning_augmentation not in CONDITIONING_AUGMENTATIONS:
        raise ValueError(f"conditioning_augmentation must be one of {CONDITIONING_AUGMENTATIONS}, got {conditioning_augmentation!r}")
    return augmentation_level if conditioning_augmentation == CONDITIONING_AUGMENTATIONS[1] else 0.0


class InversionDiverged(RuntimeError):
    """The loss or the embedding became NaN/inf; the message says which setting to change."""


class NoTokenGradient(RuntimeError):
    """The first step's backward did not give the tokens a usable gradient: the model's path from the
    tokens to the loss is cut (most often an attention implementation without a backward)."""


@dataclasses.dataclass(frozen=True)
class InversionConfig:
    # Defaults from bench/convergence.py (docs/development.md, "How many steps"): a high learning rate decayed to zero
    # reaches the loss of the published recipe (lr 1e-2 constant, 5000 steps) in a fifth of the steps.
    steps: int = 1000
    learning_rate: float = 0.3
    warmup_steps: int = -1  # -1: 10% of the steps
    schedule: str = "cosine"  # learning rate after warm-up: "constant" or "cosine" (decays to 0)
    weight_decay: float = 0.0  # AdamW decay pulls tokens towards zero, the unconditional context
    grad_clip: float = 1.0  # max gradient norm of the embedding; 0 = off
    tokens_per_frame: int = DEFAULT_TOKENS
    per_frame_tokens: bool = True  # False: one token set shared by all frames (the paper's F'=1 ablation)
    sigma_log_mean: float = 2.8  # log-normal noise levels; unofficial implementation's setting
    sigma_log_std: float = 1.6
    # Draws below this sigma are left out (the log-normal truncated there; 0 = none): for a model trained on part of
    # the noise range only, as Wan2.2 I2V-A14B's high-noise expert (t >= 0.9, sigma >= 9).
    sigma_floor: float = 0.0
    init_noise: float = 0.1  # noise on the initial tokens (relative to their std); breaks their symmetry
    seed: int = 0
    eval_draws: int = 8  # fixed (sigma, noise) draws for the before/after loss; 0 = skip
    augment: Augmentations = Augmentations()
    # SVD's conditioning augmentation: Gaussian noise of this std on the conditioning frame's pixels (in [0, 1],
    # as SVD_img2vid_Conditioning adds it) before the VAE; the same level goes into the micro-conditioning.
    conditioning_pixel_noise: float = 0.0
    # "absolute": learning_rate moves each token element by about that much per step (Adam), whatever the
    # tokens' scale. "token spread": the tokens are optimised in units of the initial tokens' std, so the same
    # rate means the same relative step on models whose context has another scale (SVD's CLIP embeddings,
    # Motion World's motion tokens).
    learning_rate_unit: str = "absolute"

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning_rate must be a positive number, got {self.learning_rate}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if self.tokens_per_frame < 1:
            raise ValueError(f"tokens_per_frame must be >= 1, got {self.tokens_per_frame}")
        if self.sigma_log_std < 0:
            raise ValueError(f"sigma_log_std must be >= 0, got {self.sigma_log_std}")
        if not (0 <= self.sigma_floor < SIGMA_MAX):
            raise ValueError(f"sigma_floor must be in [0, {SIGMA_MAX}), got {self.sigma_floor}")
        if self.learning_rate_unit not in LEARNING_RATE_UNITS:
            raise ValueError(f"learning_rate_unit must be one of {LEARNING_RATE_UNITS}, got {self.learning_rate_unit!r}")
        if not self.conditioning_pixel_noise >= 0:
            raise ValueError(f"conditioning_pixel_noise must be >= 0, got {self.conditioning_pixel_noise}")

    @property
    def effective_warmup(self) -> int:
        return self.steps // 10 if self.warmup_steps < 0 else min(self.warmup_steps, self.steps)


@dataclasses.dataclass
class StepInfo:
    step: int  # 1-based
    steps: int
    loss: float
    learning_rate: float
    denoised: torch.Tensor  # this step's x0 estimate [F, C, h, w], detached (for previews)
    spatial: torch.Tensor | None = None  # the tokens after this step, detached views (copy to keep them)
    temporal: torch.Tensor | None = None
    drift: float | None = None  # token_drift after this step


@dataclasses.dataclass
class InversionResult:
    embedding: MotionEmbedding
    loss_history: list[float]
    initial_eval_loss: float | None  # loss of the initial embedding on the fixed evaluation draws
    final_eval_loss: float | None  # the same for the learned embedding
    seconds: float
    eval_history: list[tuple[int, float]] = dataclasses.field(default_factory=list)  # (step, held-out loss), 0 .. steps
    drift_history: list[float] = dataclasses.field(default_factory=list)  # per step: how far the tokens moved (see token_drift)
    token_scale: float = 0.0  # spread (std) of the initial tokens, the unit of the drift


EVAL_POINTS = 4  # held-out evaluations during the run (at 1/4, 1/2, 3/4 and the end), besides the one before


def token_drift(spatial: torch.Tensor, temporal: torch.Tensor, init: MotionEmbedding, scale: float) -> float:
    """RMS distance of the tokens from where they started, in units of the initial tokens' spread: 0 = unmoved,
    1 = moved as far as the tokens differ from each other at the start."""
    moved = torch.cat([(spatial.detach().cpu() - init.spatial).flatten(), (temporal.detach().cpu() - init.temporal).flatten()])
    return float(moved.pow(2).mean().sqrt()) / scale


def convergence_verdict(result: InversionResult) -> str:
    """A short judgement of the run from the held-out losses (or, without them, the training loss by quarter)."""
    points = [loss for _, loss in result.eval_history]
    if len(points) < 5:
        history = [v for v in result.loss_history if math.isfinite(v)]
        if len(history) < 8:
            return "too few steps to judge"
        quarter = len(history) // 4
        points = [sum(history[i * quarter : (i + 1) * quarter]) / quarter for i in range(4)]
        points = [points[0]] + points
    half, last = points[-3], points[-2]
    recent = (last - points[-1]) / last if last > 0 else 0.0
    over_half = (half - points[-1]) / half if half > 0 else 0.0
    if recent > 0.03:
        return f"still improving ({100 * recent:.0f}% lower over the last quarter): more steps would help"
    if over_half < 0.02:
        return "flat over the last half: about half the steps would do"
    return "levelling off: the steps fit"


def derived_seed(seed: int, stream: int) -> int:
    """Independent generator streams from one user seed (which may be up to 2**64 - 1)."""
    return (seed + stream * 0x9E3779B97F4A7C15) % 2**64


@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device | None = None):
    """Seed torch's global RNGs for a block (e.g. a VAE that samples its latent distribution) and restore them
    afterwards, so the caller's other streams are unchanged."""
    with torch.random.fork_rng(devices=[device] if device is not None and device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def edm_weight(sigma: torch.Tensor) -> torch.Tensor:
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2 with sigma_data = 1."""
    return (sigma**2 + 1.0) / sigma**2


def edm_loss(denoised: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return edm_weight(sigma) * torch.mean((denoised.float() - x0.float()) ** 2)


def sample_sigma(config: InversionConfig, generator: torch.Generator) -> torch.Tensor:
    normal = torch.randn((), generator=generator)
    if config.sigma_floor > 0:
        normal = _truncated(config, torch.special.ndtr(normal.double())).float()
    log_sigma = config.sigma_log_mean + config.sigma_log_std * normal
    return log_sigma.exp().clamp(max(SIGMA_MIN, config.sigma_floor), SIGMA_MAX)


def evaluation_sigmas(config: InversionConfig, count: int) -> torch.Tensor:
    """Deterministic noise levels at evenly spaced quantiles of the sampling distribution."""
    quantiles = (torch.arange(count, dtype=torch.float64) + 0.5) / count
    normal = _truncated(config, quantiles) if config.sigma_floor > 0 else torch.special.ndtri(quantiles)
    return (config.sigma_log_mean + config.sigma_log_std * normal).exp().clamp(max(SIGMA_MIN, config.sigma_floor), SIGMA_MAX).float()


def _truncated(config: InversionConfig, quantiles: torch.Tensor) -> torch.Tensor:
    """Standard-normal values at ``quantiles`` of the log-normal truncated below ``sigma_floor``: the quantiles are
    moved into [P(sigma < floor), 1), so the same random stream draws the truncated distribution."""
    std = max(config.sigma_log_std, 1e-12)
    below = torch.special.ndtr(torch.tensor((math.log(config.sigma_floor) - config.sigma_log_mean) / std, dtype=torch.float64))
    return torch.special.ndtri(below + (1 - below) * quantiles).clamp(-40, 40)


def initial_tokens(
    frames: int,
    config: InversionConfig,
    generator: torch.Generator,
    frame_image_embeds: torch.Tensor | None = None,
    dim: int = CONTEXT_DIM,
) -> MotionEmbedding:
    """Starting point of the optimisation.

    With CLIP image embeddings of the reference frames ([F, D]): row f starts at frame f's embedding,
    the shared set at frame 0's (what stock SVD's temporal layers see), each repeated N times.
    Without them (documented fallback): the all-zero context, SVD's unconditional input.
    Either way small noise is added: N identical tokens would get identical gradients forever and act
    as a single token. With ``per_frame_tokens`` off there is one spatial row (the mean embedding).
    """
    n = config.tokens_per_frame
    rows = frames if config.per_frame_tokens else 1
    if frame_image_embeds is not None:
        embeds = frame_image_embeds.detach().float().cpu()
        if embeds.shape != (frames, dim):
            raise ValueError(f"frame image embeddings must be [{frames}, {dim}], got {tuple(embeds.shape)}")
        scale = float(embeds.std()) if embeds.numel() > 1 else 1.0
        if not scale > 1e-6:  # a constant (e.g. all-zero) image embedding would leave the N tokens identical
            scale = 1.0
        row_embeds = embeds if config.per_frame_tokens else embeds.mean(0, keepdim=True)
        spatial = row_embeds[:, None, :].expand(rows, n, dim)
        temporal = embeds[0][None, :].expand(n, dim)
    else:
        scale = 1.0
        spatial = torch.zeros(rows, n, dim)
        temporal = torch.zeros(n, dim)
    noise = config.init_noise * scale
    spatial = spatial + noise * torch.randn(spatial.shape, generator=generator)
    temporal = temporal + noise * torch.randn(temporal.shape, generator=generator)
    return MotionEmbedding(spatial=spatial.contiguous(), temporal=temporal.contiguous())


def encode_training_clips(
    frames: torch.Tensor,
    encode: Callable[[torch.Tensor], torch.Tensor],
    config: InversionConfig,
) -> torch.Tensor:
    """[F, H, W, 3] reference -> [V, F, C, h, w] latents of the clip and its augmented copies, in float32.

    ``encode`` maps pixels [F, H, W, 3] in [0, 1] to latents in the denoiser's latent space. Done once,
    before the loop; copy 0 is always the unaugmented clip (used for evaluation). With SVD's conditioning
    augmentation (``config.conditioning_pixel_noise``) each copy gets one more latent, [V, F+1, ...]: its first
    frame encoded again from noisy pixels, the conditioning image (see :func:`split_conditioning`).
    """
    generator = torch.Generator().manual_seed(derived_seed(config.seed, 1))
    variants = make_variants(frames.float().cpu(), config.augment, generator)
    level = config.conditioning_pixel_noise
    noise = torch.Generator().manual_seed(derived_seed(config.seed, 4))
    encoded = []
    for clip in variants:
        if level > 0:
            noisy_first = clip[:1] + level * torch.randn(clip[:1].shape, generator=noise)
            clip = torch.cat([clip, noisy_first])
        encoded.append(encode(clip).float())  # fp32 whatever the VAE computes in (--fp16-intermediates)
    return torch.stack(encoded)


def split_conditioning(training_latents: torch.Tensor, config: InversionConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(clip latents [V, F, ...], conditioning latents [V, C, h, w] or None) from encode_training_clips' output."""
    if config.conditioning_pixel_noise > 0:
        return training_latents[:, :-1], training_latents[:, -1]
    return training_latents, None


def _lr_factor(step: int, config: InversionConfig) -> float:
    warmup = config.effective_warmup
    if warmup and step < warmup:
        return (step + 1) / warmup
    if config.schedule == "cosine":
        progress = (step - warmup) / max(1, config.steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


@torch.no_grad()
def evaluate_loss(
    denoiser: Denoiser,
    clip_latents: torch.Tensor,
    embedding: MotionEmbedding,
    sigmas: torch.Tensor,
    seed: int,
    conditioning: torch.Tensor | None = None,
) -> float:
    """Mean EDM loss over fixed (sigma, noise) draws, conditioning on ``conditioning`` (default: the clip's own
    first frame's latent)."""
    generator = torch.Generator().manual_seed(seed)
    device = clip_latents.device
    spatial = resample_rows(embedding.spatial.to(device), clip_latents.shape[0])
    temporal = embedding.temporal.to(device)
    total = 0.0
    for sigma in sigmas:
        noise = torch.randn(clip_latents.shape, generator=generator).to(clip_latents)
        sigma = sigma.to(device)
        denoised = denoiser(clip_latents + sigma * noise, sigma, spatial, temporal, clip_latents[0] if conditioning is None else conditioning)
        total += float(edm_loss(denoised, clip_latents, sigma))
    return total / len(sigmas)


def invert(
    denoiser: Denoiser,
    training_latents: torch.Tensor,
    init: MotionEmbedding,
    config: InversionConfig,
    callback: Callable[[StepInfo], None] | None = None,
    loss_scaling: bool = False,
) -> InversionResult:
    """Optimise ``init`` so that ``denoiser`` reconstructs the reference clip; the model stays frozen.

    ``init`` may have fewer spatial rows than the clip has frames: rows are resampled to the clip's F in
    every forward (one row = one token set shared by all frames, the paper's F'=1 ablation).

    Args:
        training_latents: [V, F, C, h, w] from :func:`encode_training_clips` (on the compute device).
        callback: called after every step; raise from it to cancel (nothing is returned then).
        loss_scaling: scale the loss for fp16 compute so small gradients do not flush to zero.
    """
    start = time.perf_counter()
    training_latents, conditionings = split_conditioning(training_latents, config)
    device = training_latents.device
    frames = training_latents.shape[1]
    generator = torch.Generator().manual_seed(config.seed)
    eval_sigmas = evaluation_sigmas(config, config.eval_draws) if config.eval_draws else None
    eval_seed = derived_seed(config.seed, 2)
    reference = training_latents[0]
    reference_conditioning = conditionings[0] if conditionings is not None else None

    def evaluate(embedding: MotionEmbedding) -> float:
        return evaluate_loss(denoiser, reference, embedding, eval_sigmas, eval_seed, reference_conditioning)

    initial_eval = evaluate(init) if eval_sigmas is not None else None
    eval_history = [(0, initial_eval)] if initial_eval is not None else []
    eval_steps = {round(config.steps * (i + 1) / EVAL_POINTS) for i in range(EVAL_POINTS - 1)} - {0, config.steps}
    token_scale = float(torch.cat([init.spatial.flatten(), init.temporal.flatten()]).float().std()) or 1.0
    drift_history: list[float] = []

    # The embedding is the only thing that learns: two fp32 leaves, whatever the model's precision, in units of
    # `unit` (tokens = leaf * unit): the learning rate then moves tokens by about lr * unit per step.
    unit = token_scale if config.learning_rate_unit == "token spread" else 1.0
    leaf_spatial = (init.spatial.detach().to(device, torch.float32) / unit).clone().requires_grad_(True)
    leaf_temporal = (init.temporal.detach().to(device, torch.float32) / unit).clone().requires_grad_(True)
    params = [leaf_spatial, leaf_temporal]

    def tokens() -> tuple[torch.Tensor, torch.Tensor]:
        return (leaf_spatial, leaf_temporal) if unit == 1.0 else (leaf_spatial * unit, leaf_temporal * unit)

    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    scaler = _LossScaler(enabled=loss_scaling)
    history: list[float] = []

    for step in range(config.steps):
        lr = config.learning_rate * _lr_factor(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr

        variant = int(torch.randint(training_latents.shape[0], (1,), generator=generator))
        x0 = training_latents[variant]
        # SVD's own conditioning augmentation replaces frame 0's latent with its noisy-pixel encoding.
        image_latent = conditioning_latent(x0 if conditionings is None else conditionings[variant][None], config.augment, generator)
        sigma = sample_sigma(config, generator).to(device)
        noise = torch.randn(x0.shape, generator=generator).to(x0)

        with torch.enable_grad():  # callers may run under no_grad; the tokens still need gradients
            spatial, temporal = tokens()
            denoised = denoiser(x0 + sigma * noise, sigma, resample_rows(spatial, frames), temporal, image_latent)
            loss = edm_loss(denoised, x0, sigma)
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise InversionDiverged(
                f"the loss became {loss_value} at step {step + 1} of {config.steps}: the model produced "
                f"non-finite values (learning rate {config.learning_rate:g}). Lower learning_rate, or use "
                "precision fp32/bf16 if this ran in fp16"
            )

        optimizer.zero_grad(set_to_none=True)
        if step == 0:
            _backward_checked(scaler.scale(loss), params, scaler)
        else:
            with torch.enable_grad():
                scaler.scale(loss).backward()
        if scaler.unscale_and_check(params):
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
        spatial, temporal = (t.detach() for t in tokens())
        if not (torch.isfinite(spatial).all() and torch.isfinite(temporal).all()):
            raise InversionDiverged(
                f"the embedding became non-finite at step {step + 1}; lower learning_rate (now {config.learning_rate:g})"
            )

        history.append(loss_value)
        drift_history.append(token_drift(spatial, temporal, init, token_scale))
        if eval_sigmas is not None and step + 1 in eval_steps:  # its own seeded draws: the optimisation is unchanged
            current = MotionEmbedding(spatial=spatial, temporal=temporal)
            eval_history.append((step + 1, evaluate(current)))
        if callback is not None:
            callback(StepInfo(step + 1, config.steps, loss_value, lr, denoised.detach(), spatial, temporal, drift_history[-1]))

    spatial, temporal = (t.detach().cpu() for t in tokens())
    learned = MotionEmbedding(spatial=spatial, temporal=temporal, metadata=dict(init.metadata))
    final_eval = evaluate(learned) if eval_sigmas is not None else None
    if final_eval is not None:
        eval_history.append((config.steps, final_eval))
    return InversionResult(learned, history, initial_eval, final_eval, time.perf_counter() - start, eval_history, drift_history, token_scale)


def _backward_checked(loss: torch.Tensor, params: list[torch.Tensor], scaler: _LossScaler) -> None:
    """The first step's backward, checked: every token tensor gets a gradient that exists, is finite and is
    not all zero. Costs nothing extra: it is the first step itself."""
    if not loss.requires_grad:
        raise NoTokenGradient("the loss does not depend on the tokens (the model's output carries no autograd history)")
    try:
        with torch.enable_grad():
            loss.backward()
    except RuntimeError as error:
        raise NoTokenGradient(f"the backward pass failed: {error}") from error
    names = ("frame tokens", "shared tokens")
    for name, param in zip(names, params, strict=True):
        if param.grad is None:
            raise NoTokenGradient(f"the {name} got no gradient")
        # In fp16 an overflow is the loss scaler's business (it skips the step and lowers the scale).
        if not scaler.enabled and not bool(torch.isfinite(param.grad).all()):
            raise NoTokenGradient(f"the {name}' gradient is not finite")
    # Zero for both: nothing reaches them. (A model may ignore one set, e.g. one without temporal cross-attention.)
    if not any(bool(param.grad.any()) for param in params):
        raise NoTokenGradient("the tokens' gradient is zero everywhere")


class _LossScaler:
    """Dynamic loss scaling for fp16 compute (device-agnostic, unlike torch.amp.GradScaler)."""

    def __init__(self, enabled: bool, init_scale: float = 2.0**12, growth_interval: int = 200):
        self.enabled = enabled
        self.scale_value = init_scale if enabled else 1.0
        self.growth_interval = growth_interval
        self.good_steps = 0

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale_value if self.enabled else loss

    def unscale_and_check(self, params: list[torch.Tensor]) -> bool:
        """Unscale gradients; False (skip this step, halve the scale) if any overflowed."""
        if not self.enabled:
            return True
        finite = True
        for p in params:
            if p.grad is not None:
                p.grad.div_(self.scale_value)
                finite = finite and bool(torch.isfinite(p.grad).all())
        if not finite:
            self.scale_value = max(self.scale_value / 2.0, 1.0)
            self.good_steps = 0
            return False
        self.good_steps += 1
        if self.good_steps % self.growth_interval == 0:
            self.scale_value = min(self.scale_value * 2.0, 2.0**24)
        return True


def labelled_embedding(
    result: InversionResult,
    config: InversionConfig,
    reference_source: str,
    reference_sha256: str,
    *,
    fps: int,
    motion_bucket_id: int,
    augmentation_level: float,
    width: int,
    height: int,
    **extra: object,
) -> MotionEmbedding:
    """The learned embedding with the metadata it is saved with: how it was made, from which reference
    (its file name and hash only: no local paths in shared files), and the loss before and after."""
    metadata = build_metadata(
        result.embedding,
        title=f"motion from {os.path.basename(reference_source.rstrip('/'))}",
        steps=config.steps,
        learning_rate=config.learning_rate,
        seed=config.seed,
        final_loss=result.final_eval_loss,
        reference_sha256=reference_sha256,
        extra={
            "initial_loss": result.initial_eval_loss,
            "fps": fps,
            "motion_bucket_id": motion_bucket_id,
            "augmentation_level": augmentation_level,
            "resolution": f"{width}x{height}",
            "inversion_config": ", ".join(f"{k}={v}" for k, v in sorted(dataclasses.asdict(config).items())),
            "token_scale": round(result.token_scale, 6),
            "token_drift": round(result.drift_history[-1], 6) if result.drift_history else None,
            **extra,
        },
    )
    return result.embedding.with_metadata(**{k: v for k, v in metadata.items() if v != "None"})
