"""Reenact Anything on Wan 2.x: per-frame cross-attention tokens for a video DiT, independent of ComfyUI.

On SVD frames live in the batch, so a context of shape [F, N, D] already gives frame f its own tokens. Wan is a
DiT over one sequence of ``latent_frames x S`` video tokens (t-major: frame 0's S tokens, then frame 1's, ...)
with ONE cross-attention per block, over the whole prompt. Per-frame tokens therefore need the cross-attention
itself to change: frame f's queries may only see frame f's block of the context. That is a block-diagonal
attention mask, computed here without a mask by folding the frames into the batch
(q [B, F*S, C] -> [B*F, S, C], k/v [B, F*M, C] -> [B*F, M, C]); ComfyUI's own ``WanT2VCrossAttentionGather``
(HuMo's audio tokens) does the same. No mask is ever passed: some attention backends ignore masks or fall back
to a slow path without saying so, and the reshape is exact.

The paper's "+1" (SVD's temporal cross-attention, one token set shared by all frames) has no separate layer in
Wan; the shared set is appended to every frame's block instead, so each frame attends to
``[its own N tokens || the shared M0 tokens]`` in one softmax (:func:`frame_context`).

Nothing here imports ComfyUI: the attention function and the cross-attention module are passed in, and only
the attribute names of ComfyUI's ``WanT2VCrossAttention`` / ``WanI2VCrossAttention`` are relied on.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable

import torch

from .embedding import resample_rows

WAN_TEMPORAL_COMPRESSION = 4  # Wan 2.1 / 2.2 VAEs: the first frame alone, then 4 frames per latent frame

# ComfyUI's optimized_attention signature: attention(q, k, v, heads, mask=None, ...) -> [B, L, heads * d]
Attention = Callable[..., torch.Tensor]


def latent_frames_for(video_frames: int, temporal_compression: int = WAN_TEMPORAL_COMPRESSION) -> int:
    """Latent frames of a ``video_frames``-frame video: ``(video_frames - 1) // 4 + 1`` (81 -> 21, 121 -> 31, 1 -> 1).

    The rule ComfyUI's Wan latent nodes use. Wan's own lengths are 4k + 1; for other lengths it rounds down, as
    ComfyUI does (80 frames -> 20 latent frames, which decode to 77).
    """
    _check_count("video_frames", video_frames)
    _check_count("temporal_compression", temporal_compression)
    return (video_frames - 1) // temporal_compression + 1


def video_frames_for(latent_frames: int, temporal_compression: int = WAN_TEMPORAL_COMPRESSION) -> int:
    """The inverse of :func:`latent_frames_for`: the (4k + 1) video frames ``latent_frames`` decode to (21 -> 81)."""
    _check_count("latent_frames", latent_frames)
    _check_count("temporal_compression", temporal_compression)
    return (latent_frames - 1) * temporal_compression + 1


def _check_count(name: str, value: int) -> None:
    # bool is an int; a float such as 81.0 would silently floor-divide: both are caller mistakes
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: torch.Tensor | None = None,
                        **_ignored) -> torch.Tensor:
    """Multi-head scaled dot-product attention in plain torch, with ComfyUI's optimized_attention signature.

    q [B, Lq, heads*d], k and v [B, Lk, heads*d] -> [B, Lq, heads*d]. ``mask`` (optional, broadcast to
    [B, heads, Lq, Lk]; [Lq, Lk] and [B, Lq, Lk] are accepted as in ComfyUI) is boolean (True: may attend) or
    additive. Extra keyword arguments (transformer_options, attn_precision...) are accepted and ignored, so this
    can stand in wherever ComfyUI's attention is called. Computed in float32 at least: the reference for tests.
    """
    if q.ndim != 3 or k.ndim != 3 or v.ndim != 3:
        raise ValueError(f"attention takes [batch, tokens, channels] tensors, got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    b, lq, c = q.shape
    if c % heads:
        raise ValueError(f"{c} channels do not split into {heads} heads")
    d = c // heads

    def split(t: torch.Tensor) -> torch.Tensor:  # [B, L, heads*d] -> [B, heads, L, d]
        return t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)

    dtype = torch.promote_types(q.dtype, torch.float32)
    scores = split(q).to(dtype) @ split(k).to(dtype).transpose(-1, -2) / math.sqrt(d)
    if mask is not None:
        if mask.ndim == 2:  # [Lq, Lk]
            mask = mask[None, None]
        elif mask.ndim == 3:  # [B, Lq, Lk]
            mask = mask[:, None]
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.to(dtype)
    out = scores.softmax(dim=-1) @ split(v).to(dtype)
    return out.transpose(1, 2).reshape(b, lq, -1).to(q.dtype)


def per_frame_cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, latent_frames: int, heads: int,
                              attention: Attention = reference_attention, **attention_kwargs) -> torch.Tensor:
    """Cross-attention in which frame f's video tokens see only frame f's context block.

    q [B, F*S, C]: Wan's video tokens, t-major (F latent frames of S tokens each). k, v [B, F*M, C] (batch 1 is
    broadcast): M context tokens per frame, frame f's block contiguous. Returns [B, F*S, C], equal to attention
    over the whole sequence with a block-diagonal mask. ``attention`` is called once on [B*F, S, C] and
    [B*F, M, C], with ``attention_kwargs`` (e.g. ComfyUI's transformer_options) and never with a mask.
    """
    _check_count("latent_frames", latent_frames)
    if q.ndim != 3 or k.ndim != 3 or v.ndim != 3:
        raise ValueError(f"q, k and v must be [batch, tokens, channels], got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape[:2] != v.shape[:2]:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must have the same batch and token count")
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"q has {q.shape[-1]} channels but k has {k.shape[-1]}: project the context to the model width first")
    b, lq, c = q.shape
    if k.shape[0] not in (1, b):
        raise ValueError(f"context batch {k.shape[0]} does not match the video batch {b} (use 1 to share it)")
    if lq % latent_frames:
        raise ValueError(f"{lq} video tokens are not {latent_frames} latent frames of equal size: is latent_frames right?")
    if k.shape[1] == 0 or k.shape[1] % latent_frames:
        raise ValueError(f"{k.shape[1]} context tokens are not {latent_frames} non-empty per-frame blocks of equal size")
    s, m = lq // latent_frames, k.shape[1] // latent_frames
    # t-major sequences reshape without a copy: row b*F + f of the folded batch is frame f of video b
    k, v = k.expand(b, -1, -1), v.expand(b, -1, -1)
    out = attention(q.reshape(b * latent_frames, s, c), k.reshape(b * latent_frames, m, c), v.reshape(b * latent_frames, m, v.shape[-1]),
                    heads, **attention_kwargs)
    return out.reshape(b, lq, out.shape[-1])


def frame_context(frame_tokens: torch.Tensor, shared_tokens: torch.Tensor | None, latent_frames: int) -> torch.Tensor:
    """The per-frame context sequence: [F, N, D] own tokens and [M0, D] shared tokens -> [F*(N+M0), D].

    Frame f's block is ``[its own N tokens || the shared set]``. ``frame_tokens`` with another row count than
    ``latent_frames`` (an embedding learned on a clip of another length) is resampled linearly in time, first and
    last rows kept (:func:`reenact_core.embedding.resample_rows`). ``shared_tokens`` may be None or have 0 rows.
    Differentiable in both inputs. To keep the prompt inside every frame's softmax, append its (embedded) tokens to
    the shared set.
    """
    _check_count("latent_frames", latent_frames)
    if frame_tokens.ndim != 3 or frame_tokens.shape[0] == 0 or frame_tokens.shape[1] == 0:
        raise ValueError(f"frame tokens must be [frames, tokens, dim] with at least one of each, got shape {tuple(frame_tokens.shape)}")
    dim = frame_tokens.shape[2]
    if shared_tokens is None:
        shared_tokens = frame_tokens.new_zeros(0, dim)
    if shared_tokens.ndim != 2 or shared_tokens.shape[1] != dim:
        raise ValueError(f"shared tokens must be [tokens, {dim}] (the frame tokens' dim), got shape {tuple(shared_tokens.shape)}")
    frames = resample_rows(frame_tokens, latent_frames)
    shared = shared_tokens.to(frames).expand(latent_frames, -1, -1)
    return torch.cat([frames, shared], dim=1).reshape(-1, dim)


class FramewiseCrossAttention:
    """A Wan cross-attention computed with a per-frame context; the module's weights are used, never changed.

    ``module`` has the attribute names of ComfyUI's ``WanT2VCrossAttention``: ``q, k, v, o, norm_q, norm_k,
    num_heads``, and on I2V (Wan 2.1 I2V / FLF) ``k_img, v_img, norm_k_img``. Calling it computes what the stock
    forward computes with the text context replaced by the per-frame one::

        out = o(per_frame(norm_q(q(x)), norm_k(k(ctx)), v(ctx))                    # frame f sees its own block
                [+ attention(norm_q(q(x)), norm_k(k(prompt)), v(prompt))]          # keep_prompt=True
                [+ attention(norm_q(q(x)), norm_k_img(k_img(img)), v_img(img))])   # I2V: as stock, unchanged

    ``ctx`` is [B or 1, F*(N+M0), dim], see :func:`frame_context`, already through the model's
    ``text_embedding`` (the model width, like the stock context).

    keep_prompt, default False: the per-frame context *replaces* the prompt, as the learned tokens replace SVD's
    image token in the paper. Then the stock model is a point of the token space: every frame given the embedded
    prompt itself gives exactly the stock output (tested), so "neutral" and strength interpolation work as on
    SVD. keep_prompt=True adds a second attention over the whole prompt, summed as Wan 2.1 I2V sums its image
    branch: the prompt stays in force at inference, but the sum is a scale T2V models never saw and stock is no
    longer reachable by any tokens. (A third way needs no flag: put the embedded prompt into the shared set, so
    it shares every frame's softmax.)

    Strength: 0 must be exactly stock, so the caller does not use this wrapper at strength 0 (calls the module's
    own forward); between, strength interpolates the tokens from the neutral context (the prompt) as
    ``MotionEmbedding.with_strength`` does.
    """

    def __init__(self, module, latent_frames: int, keep_prompt: bool = False, attention: Attention = reference_attention):
        _check_count("latent_frames", latent_frames)
        for name in ("q", "k", "v", "o", "norm_q", "norm_k", "num_heads"):
            if not hasattr(module, name):
                raise TypeError(f"{type(module).__name__} is not a Wan cross-attention: it has no {name!r}")
        self.module = module
        self.latent_frames = latent_frames
        self.keep_prompt = keep_prompt
        self.attention = attention

    @property
    def has_image_branch(self) -> bool:
        return all(hasattr(self.module, name) for name in ("k_img", "v_img", "norm_k_img"))

    def __call__(self, x: torch.Tensor, frame_context: torch.Tensor, prompt: torch.Tensor | None = None,
                 context_img: torch.Tensor | None = None, **attention_kwargs) -> torch.Tensor:
        """x [B, F*S, dim] video tokens -> [B, F*S, dim].

        ``frame_context`` [B or 1, F*(N+M0), dim]; ``prompt`` [B, L, dim] the embedded text context (required
        with keep_prompt); ``context_img`` [B, 257, dim] the embedded CLIP context of an I2V model (stock's
        ``context[:, :context_img_len]``; None leaves the image branch out). ``attention_kwargs`` go to every
        attention call (ComfyUI: transformer_options).
        """
        m = self.module
        if frame_context.ndim == 2:
            frame_context = frame_context.unsqueeze(0)
        if self.keep_prompt and prompt is None:
            raise ValueError("keep_prompt=True needs the embedded prompt")
        if context_img is not None and not self.has_image_branch:
            raise ValueError(f"{type(m).__name__} has no image branch (k_img/v_img) for context_img: is this an I2V model?")
        heads = m.num_heads
        q = m.norm_q(m.q(x))
        # the order of the sums follows WanI2VCrossAttention.forward (text + image), so equal inputs round equally
        out = per_frame_cross_attention(q, m.norm_k(m.k(frame_context)), m.v(frame_context), self.latent_frames, heads,
                                        self.attention, **attention_kwargs)
        if self.keep_prompt:
            out = out + self.attention(q, m.norm_k(m.k(prompt)), m.v(prompt), heads, **attention_kwargs)
        if context_img is not None:
            img = self.attention(q, m.norm_k_img(m.k_img(context_img)), m.v_img(context_img), heads, **attention_kwargs)
            out = out + img
        return m.o(out)


# -- applying an embedding to a Wan model: a replacement for each block's cross-attention forward ------------------------


def cond_rows(batch: int, cond_or_uncond) -> torch.Tensor:
    """Which rows of a batch of ``batch`` are the positive: a boolean [batch].

    ComfyUI's sampler concatenates conds along the batch and says what each equal chunk is in
    ``transformer_options["cond_or_uncond"]`` (0 = positive, 1 = negative; e.g. [1, 0]). Without that list (a call
    outside the sampler) every row counts as positive.
    """
    if not cond_or_uncond:
        return torch.ones(batch, dtype=torch.bool)
    chunks = len(cond_or_uncond)
    if batch % chunks:
        raise ValueError(f"a batch of {batch} rows does not split into the {chunks} conds ComfyUI says it holds ({list(cond_or_uncond)})")
    return torch.tensor([c == 0 for c in cond_or_uncond], dtype=torch.bool).repeat_interleave(batch // chunks)


class WanMotionPatch:
    """A stand-in for one Wan cross-attention module's ``forward`` that applies a motion embedding to the positive.

    Installed (by the node glue) as the module's ``forward`` through a ComfyUI object patch, so the module, its
    weights and state-dict keys stay as they are (LoRAs and weight patches still apply) and unpatching restores the
    stock forward. Called as the Wan block calls its cross-attention (``x, context, context_img_len=...,
    transformer_options=...``; the T2V and I2V classes both accept that) it returns::

        stock                                               on the negative's rows, and everywhere at strength 0
        stock + strength * (per_frame - stock)              on the positive's rows (exactly per_frame at strength 1)

    where ``stock`` is ``original_forward`` (the module's own forward, or whatever patch was there before) and
    ``per_frame`` is :class:`FramewiseCrossAttention` over ``tokens.context`` (the embedding's per-frame umT5
    context, through the model's ``text_embedding``) with the I2V image branch kept as stock computes it
    (``context[:, :context_img_len]``, the already-embedded CLIP tokens). The per-frame context replaces the
    prompt in the positive: the learned tokens take the place of the text, as they take SVD's image token.
    """

    def __init__(self, module, original_forward: Callable, tokens: EmbeddedMotionTokens, strength: float,
                 attention: Attention = reference_attention):
        self.module = module
        self.original_forward = original_forward
        self.tokens = tokens
        self.strength = float(strength)
        self.framewise = FramewiseCrossAttention(module, tokens.latent_frames, attention=attention)
        # WanI2VCrossAttention sums an image branch; WanT2VCrossAttention has none (it ignores context_img_len).
        self.image_branch = self.framewise.has_image_branch

    def __call__(self, x: torch.Tensor, context: torch.Tensor, context_img_len: int | None = None,
                 transformer_options: dict | None = None, **kwargs) -> torch.Tensor:
        transformer_options = {} if transformer_options is None else transformer_options
        stock = self.original_forward(x, context, context_img_len=context_img_len, transformer_options=transformer_options, **kwargs)
        if self.strength == 0.0:
            return stock
        rows = cond_rows(x.shape[0], transformer_options.get("cond_or_uncond")).to(x.device)
        if not bool(rows.any()):
            return stock
        self.tokens.check_video_tokens(x.shape[1], transformer_options)
        frame_ctx = self.tokens.embedded(context)
        context_img = context[rows, :context_img_len] if self.image_branch else None
        per_frame = self.framewise(x[rows], frame_ctx, context_img=context_img, transformer_options=transformer_options)
        mixed = per_frame if self.strength == 1.0 else stock[rows] + self.strength * (per_frame.to(stock.dtype) - stock[rows])
        out = stock.clone()
        out[rows] = mixed.to(stock.dtype)
        return out


class EmbeddedMotionTokens:
    """The per-frame umT5 context of one applied embedding, shared by every block's :class:`WanMotionPatch`.

    ``context`` [F*(N+M), 4096] is :func:`frame_context` of the embedding resampled to ``latent_frames`` (kept on
    the CPU in float32). :meth:`embedded` puts it through the model's ``text_embedding`` (umT5 space -> model width)
    on the sampling device and dtype, once per model call: all blocks of one forward pass get the same stock
    ``context`` tensor, so the result is reused while that tensor is the one passed in.
    """

    def __init__(self, frame_tokens: torch.Tensor, shared_tokens: torch.Tensor | None, latent_frames: int, text_embedding: Callable):
        self.latent_frames = latent_frames
        self.context = frame_context(frame_tokens.detach().float().cpu(),
                                     None if shared_tokens is None else shared_tokens.detach().float().cpu(), latent_frames)
        self.text_embedding = text_embedding
        self._for = None  # weak reference to the stock context the cached value was made for
        self._embedded = None

    def embedded(self, context: torch.Tensor) -> torch.Tensor:
        """[1, F*(N+M), dim]: the per-frame context in the model's width, on ``context``'s device and dtype."""
        if self._for is not None and self._for() is context and self._embedded is not None:
            return self._embedded
        out = self.text_embedding(self.context.to(device=context.device, dtype=context.dtype)[None])
        self._for, self._embedded = weakref.ref(context), out
        return out

    def check_video_tokens(self, video_tokens: int, transformer_options: dict) -> None:
        """Refuse a latent with another frame count than the one the motion was laid out for."""
        grid = transformer_options.get("grid_sizes")  # newer ComfyUI: (frames, height, width) in patches
        frames = int(grid[0]) if grid is not None and len(grid) == 3 else None
        if video_tokens % self.latent_frames or (frames is not None and frames != self.latent_frames):
            raise ValueError(
                f"Apply Motion Embedding laid the motion out over {self.latent_frames} latent frames (the frame count of the "
                f"latent connected to it), but the model is sampling {video_tokens} video tokens"
                + (f" in {frames} latent frames" if frames is not None else f", which is not {self.latent_frames} equal frames")
                + ": connect the latent you sample (e.g. WanImageToVideo's latent) to Apply Motion Embedding's latent input."
            )


# -- learning an embedding on a Wan model ---------------------------------------------------------------------------------


def flow_input(noisy: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The inversion loop's EDM noising, as a rectified-flow model (Wan) takes it: ``(x_t, t)``.

    The loop noises as ``x0 + s * eps`` (EDM, SVD's parameterisation, :func:`reenact_core.inversion.invert`); Wan
    is trained on ``(1 - t) * x0 + t * eps``. They are the same point up to a scale: ``t = s / (1 + s)`` and
    ``x_t = (x0 + s * eps) / (1 + s)``. So the loop, its noise-level distribution and its x0 loss stay as they are:
    the default log-normal around s = e^2.8 is t of about 0.94, the high-noise end where Wan lays out motion.
    """
    return noisy / (1 + sigma), sigma / (1 + sigma)


# Wan2.2 I2V-A14B is two experts: the high-noise one denoises t >= 0.9 (Wan2.2's i2v boundary), where motion is laid
# out, and was trained there only; its inversion draws noise levels from that range: s = t / (1 - t) >= 9.
A14B_HIGH_NOISE_T = 0.9
A14B_HIGH_NOISE_SIGMA = A14B_HIGH_NOISE_T / (1 - A14B_HIGH_NOISE_T)


class TrainableMotionContext:
    """The per-frame umT5 context the inversion optimises, read by every block's :class:`InversionCrossAttention`.

    :meth:`set` is called once per model call with the current tokens (carrying gradients); it builds
    :func:`frame_context` and puts it through the model's ``text_embedding`` right away, outside the blocks, so
    that a gradient-checkpointed block recomputes exactly what it computed the first time.
    """

    def __init__(self, text_embedding: Callable, latent_frames: int):
        _check_count("latent_frames", latent_frames)
        self.text_embedding = text_embedding
        self.latent_frames = latent_frames
        self.embedded: torch.Tensor | None = None  # [1, F*(N+M), model width]

    def set(self, frame_tokens: torch.Tensor, shared_tokens: torch.Tensor | None, device, dtype) -> None:
        context = frame_context(frame_tokens, shared_tokens, self.latent_frames)
        self.embedded = self.text_embedding(context.to(device=device, dtype=dtype)[None])


class InversionCrossAttention:
    """A Wan cross-attention ``forward`` for the inversion's private model copy: every row takes the per-frame
    context of ``motion`` (no stock pass, nothing to mix: the prompt is not part of a learned motion), and an I2V
    model's CLIP image branch stays as stock computes it."""

    def __init__(self, module, motion: TrainableMotionContext, attention: Attention = reference_attention):
        self.motion = motion
        self.framewise = FramewiseCrossAttention(module, motion.latent_frames, attention=attention)

    def __call__(self, x: torch.Tensor, context: torch.Tensor, context_img_len: int | None = None,
                 transformer_options: dict | None = None, **kwargs) -> torch.Tensor:
        if self.motion.embedded is None:
            raise RuntimeError("TrainableMotionContext.set was not called before the model")
        self.motion_check(x.shape[1])
        context_img = context[:, :context_img_len] if self.framewise.has_image_branch and context_img_len else None
        return self.framewise(x, self.motion.embedded, context_img=context_img, transformer_options=transformer_options or {})

    def motion_check(self, video_tokens: int) -> None:
        if video_tokens % self.motion.latent_frames:
            raise ValueError(f"{video_tokens} video tokens are not {self.motion.latent_frames} latent frames of equal size")
