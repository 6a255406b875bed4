"""The motion embedding: what motion-textual inversion learns and what is applied to new images.

Shape (F+1) x N x D, stored as two tensors:

* ``spatial``  [F, N, D]: frame f's spatial cross-attention attends to its own N tokens, row f.
* ``temporal`` [N, D]:    one shared set of N tokens for the temporal cross-attention (the "+1").

F is the number of frames the embedding was learned for (14 for SVD, 25 for SVD-XT), N the tokens per
frame, D the cross-attention width (1024, CLIP ViT-H's image-embedding size).

"Neutral" is defined once, here: the embedding that makes the model behave exactly as stock SVD does
for a given image. Stock SVD feeds every cross-attention one token, the target image's CLIP embedding
c. N copies of c in every row give identical attention (softmax over identical keys returns the same
value), so ``MotionEmbedding.neutral(c, F, N)`` is stock SVD. Strength interpolates from that neutral
point (0) to the learned motion (1); values above 1 extrapolate. Without an image token, neutral is the
all-zero context, which is SVD's unconditional (negative) context.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch

SVD_FRAMES = 14
SVD_XT_FRAMES = 25
DEFAULT_TOKENS = 5
CONTEXT_DIM = 1024


# The space the tokens live in (metadata key ``token_space``): SVD's cross-attention takes CLIP ViT-H image embeddings
# (1024 wide); Wan's takes umT5-XXL text-encoder outputs (4096 wide, before the model's own ``text_embedding``), the
# same space on every Wan 2.1 / 2.2 variant. Files made before Wan support have no ``token_space``: they are SVD's.
TOKEN_SPACE_CLIP_IMAGE = "clip_image"
TOKEN_SPACE_UMT5 = "umt5"
TOKEN_SPACES = (TOKEN_SPACE_CLIP_IMAGE, TOKEN_SPACE_UMT5)
UMT5_DIM = 4096


def base_model_for_frames(frames: int) -> str:
    """Model family a frame count belongs to: 'svd_xt' for 25 frames, else 'svd'."""
    return "svd_xt" if frames == SVD_XT_FRAMES else "svd"


def is_wan_base_model(base_model: str | None) -> bool:
    """True for the Wan families this pack records ('wan21_i2v', 'wan22_ti2v', 'wan22_i2v_a14b', 'wan_t2v', ...)."""
    return bool(base_model) and str(base_model).startswith("wan")


def token_space_for(base_model: str | None) -> str:
    """The token space of embeddings learned on ``base_model``: 'umt5' for Wan, 'clip_image' otherwise."""
    return TOKEN_SPACE_UMT5 if is_wan_base_model(base_model) else TOKEN_SPACE_CLIP_IMAGE


def token_space_of(embedding: MotionEmbedding) -> str:
    """Where an embedding's tokens live: its ``token_space`` metadata, else what its ``base_model`` implies (files
    from before Wan support have neither Wan key and are SVD's 'clip_image')."""
    meta = embedding.metadata
    return meta.get("token_space") or token_space_for(meta.get("base_model"))


def resample_rows(spatial: torch.Tensor, frames: int) -> torch.Tensor:
    """[F, N, D] -> [frames, N, D], linear in time with the first and last rows kept (differentiable)."""
    if frames < 1:
        raise ValueError(f"cannot resample to {frames} frames")
    if frames == spatial.shape[0]:
        return spatial
    if spatial.shape[0] == 1:
        return spatial.expand(frames, -1, -1)
    rows = spatial.float().permute(1, 2, 0)  # [N, D, F]: interpolate along the last axis
    resampled = torch.nn.functional.interpolate(rows, size=frames, mode="linear", align_corners=True)
    return resampled.permute(2, 0, 1).to(spatial.dtype).contiguous()


@dataclasses.dataclass(frozen=True)
class MotionEmbedding:
    spatial: torch.Tensor  # [F, N, D]: row f -> frame f's spatial cross-attention
    temporal: torch.Tensor  # [N, D]: the shared temporal cross-attention tokens
    metadata: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.spatial.ndim != 3:
            raise ValueError(f"spatial tokens must be [frames, tokens, dim], got shape {tuple(self.spatial.shape)}")
        if self.temporal.ndim != 2:
            raise ValueError(f"temporal tokens must be [tokens, dim], got shape {tuple(self.temporal.shape)}")
        if self.spatial.shape[1:] != self.temporal.shape:
            raise ValueError(
                f"spatial tokens {tuple(self.spatial.shape)} and temporal tokens {tuple(self.temporal.shape)} "
                "must have the same tokens-per-frame and dim"
            )

    @property
    def frames(self) -> int:
        return self.spatial.shape[0]

    @property
    def tokens(self) -> int:
        return self.spatial.shape[1]

    @property
    def dim(self) -> int:
        return self.spatial.shape[2]

    def to(self, *args, **kwargs) -> MotionEmbedding:
        return dataclasses.replace(self, spatial=self.spatial.to(*args, **kwargs), temporal=self.temporal.to(*args, **kwargs))

    def detached(self) -> MotionEmbedding:
        return dataclasses.replace(self, spatial=self.spatial.detach().clone(), temporal=self.temporal.detach().clone())

    def with_metadata(self, **updates: object) -> MotionEmbedding:
        merged = dict(self.metadata)
        merged.update({k: str(v) for k, v in updates.items()})
        return dataclasses.replace(self, metadata=merged)

    @classmethod
    def neutral(cls, image_token: torch.Tensor | None, frames: int, tokens: int, dim: int = CONTEXT_DIM) -> MotionEmbedding:
        """Stock SVD's context for an image with CLIP token ``image_token`` [D] (None: all zeros)."""
        if image_token is None:
            image_token = torch.zeros(dim)
        token = image_token.reshape(-1).float()
        if token.shape[0] != dim:
            raise ValueError(f"image token has {token.shape[0]} values, expected {dim}")
        return cls(spatial=token.expand(frames, tokens, dim).clone(), temporal=token.expand(tokens, dim).clone())

    def resample_frames(self, frames: int) -> MotionEmbedding:
        """The same motion spread over ``frames`` frames: spatial rows linearly interpolated in time.

        The first and last rows stay the first and last frame's tokens (align_corners), so a 14-frame
        motion played over 25 frames covers the same path, more finely. The temporal set is shared by
        all frames and does not change. ComfyUI would otherwise tile or truncate rows silently.
        """
        if frames == self.frames:
            return self
        return dataclasses.replace(self, spatial=resample_rows(self.spatial, frames))

    def with_strength(self, strength: float, neutral: MotionEmbedding | None = None) -> MotionEmbedding:
        """neutral + strength * (self - neutral); neutral defaults to the all-zero (unconditional) context."""
        if strength == 1.0:
            return self  # exactly the learned tokens, not a rounded round trip through neutral
        if neutral is None:
            neutral = MotionEmbedding.neutral(None, self.frames, self.tokens, self.dim)
        if neutral.spatial.shape != self.spatial.shape:
            neutral = neutral.resample_frames(self.frames)
        if neutral.spatial.shape != self.spatial.shape:
            raise ValueError(f"neutral embedding {tuple(neutral.spatial.shape)} does not match {tuple(self.spatial.shape)}")
        n_sp = neutral.spatial.to(self.spatial)
        n_tm = neutral.temporal.to(self.temporal)
        return dataclasses.replace(
            self,
            spatial=n_sp + strength * (self.spatial - n_sp),
            temporal=n_tm + strength * (self.temporal - n_tm),
        )


def mix(a: MotionEmbedding, b: MotionEmbedding, weight_b: float) -> MotionEmbedding:
    """(1 - weight_b) * a + weight_b * b, row by row; b is resampled to a's frame count first.

    Token counts must agree: tokens are an unordered set per frame, so there is no meaningful
    pairing between, say, 5 and 3 tokens.
    """
    space_a, space_b = token_space_of(a), token_space_of(b)
    if space_a != space_b:
        raise ValueError(
            f"cannot mix a motion in {space_a} tokens ({a.metadata.get('base_model') or 'SVD'}) with one in {space_b} tokens "
            f"({b.metadata.get('base_model') or 'SVD'}): SVD's and Wan's tokens live in different spaces; mix two motions of one family"
        )
    if a.tokens != b.tokens or a.dim != b.dim:
        raise ValueError(
            f"cannot mix embeddings with {a.tokens}x{a.dim} and {b.tokens}x{b.dim} tokens per frame: "
            "invert both with the same tokens_per_frame"
        )
    b = b.resample_frames(a.frames)
    w = float(weight_b)
    spatial = (1 - w) * a.spatial.float() + w * b.spatial.float().to(a.spatial.device)
    temporal = (1 - w) * a.temporal.float() + w * b.temporal.float().to(a.temporal.device)
    meta = dict(a.metadata)
    meta["title"] = f"mix({a.metadata.get('title', 'a')}, {b.metadata.get('title', 'b')}, {w:g})"
    return MotionEmbedding(spatial=spatial, temporal=temporal, metadata=meta)


# Set on embeddings learned on a model that is not SVD (the random-weight test checkpoint the bundled example was
# made on): its value says why the motion means nothing on real SVD, and Load Motion Embedding shows it as a warning.
NOT_A_REAL_MOTION_KEY = "reenact.not_a_real_motion"


def describe_embedding(embedding: MotionEmbedding) -> str:
    """One paragraph for a loaded file: its shape, how it was learned, and a warning first when its metadata says
    it was learned on a stand-in model."""
    meta = embedding.metadata
    learned = [f"{embedding.frames} frames x {embedding.tokens} tokens x {embedding.dim}"]
    if token_space_of(embedding) == TOKEN_SPACE_UMT5:  # SVD files keep their one-line description unchanged
        learned = [f"{embedding.frames} latent frames x {embedding.tokens} tokens x {embedding.dim}, "
                   f"for Wan ({meta.get('base_model') or 'wan'}, umT5 tokens)"]
    for key, label in (("resolution", "at"), ("steps", "steps:"), ("final_loss", "final loss")):
        if meta.get(key):
            value = meta[key]
            learned.append(f"{label} {float(value):.4g}" if key == "final_loss" and _positive_float(value) else f"{label} {value}")
    fps = learned_fps(meta)
    if fps:
        learned.append(f"{fps:.3g} fps")
    text = ", ".join(learned) + "."
    if meta.get("modelspec.title"):
        text = f"{meta['modelspec.title']}: {text}"
    if meta.get(NOT_A_REAL_MOTION_KEY):
        text = f"WARNING: NOT A REAL MOTION. {meta[NOT_A_REAL_MOTION_KEY]}\n{text}"
    return text


def learned_fps(meta: Mapping[str, str]) -> float | None:
    """The frame rate a motion was learned at: ``motion_fps`` in newer files (measured from the reference), else
    the fps conditioning older ones recorded; None when neither is a positive number."""
    return _positive_float(meta.get("motion_fps")) or _positive_float(meta.get("fps"))


def fps_conditioning(frame_rate: float) -> int:
    """The whole number SVD's fps conditioning takes for frames at ``frame_rate`` (at least 1)."""
    return max(1, round(frame_rate))


def motion_timing(embedding: MotionEmbedding, frames: int) -> dict:
    """How a motion learned over ``embedding.frames`` frames plays over ``frames``: the frame rate its frames had
    (``motion_fps`` in newer files; older ones only recorded the fps conditioning), and the rate that
    keeps its speed when the same path is spread over ``frames`` frames."""
    meta = embedding.metadata
    learned = learned_fps(meta)
    stretch = (frames - 1) / (embedding.frames - 1) if embedding.frames > 1 else 1.0
    playback = learned * stretch if learned else None
    return {"learned_frames": embedding.frames, "frames": frames, "learned_fps": learned, "stretch": stretch,
            "playback_fps": playback, "playback_fps_rounded": fps_conditioning(playback) if playback else None,
            "measured": "motion_fps" in meta}


def timing_text(timing: dict, keep_speed: bool, conditioned_fps) -> str:
    learned, frames, n = timing["learned_fps"], timing["frames"], timing["learned_frames"]
    if not learned:
        return f"The motion has {n} frames, applied over {frames}; its file does not say at which frame rate it was learned."
    what = "measured from the reference" if timing["measured"] else "the fps conditioning it was learned with"
    text = f"Learned over {n} frames at {learned:.3g} fps ({what}), {(n - 1) / learned:.2f} s of motion; played over {frames} frames"
    if frames == n:
        text += f": unchanged. Play the video at {learned:.3g} fps for the filmed speed."
    else:
        text += (f": {timing['stretch']:.3g}x as many frames for the same path, so it keeps its speed at {timing['playback_fps']:.3g} fps. "
                 + (f"fps conditioning set to {timing['playback_fps_rounded']} (keep_speed)." if keep_speed else
                    f"fps conditioning left at {conditioned_fps} (keep_speed off).")
                 + f" Save the video at {timing['playback_fps']:.3g} fps for the learned speed.")
    return text


def _positive_float(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 and number == number and number != float("inf") else None
