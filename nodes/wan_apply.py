"""Apply Motion Embedding's MODEL side: which family a connected model is, and the Wan model patch.

On SVD the motion lives in the conditioning (frames are the batch, so a [F, N, 1024] context gives each frame its
own tokens). On Wan one cross-attention per block sees the whole prompt, so the tokens live in a MODEL patch
instead: a clone of the model whose blocks' ``cross_attn.forward`` is replaced, through ComfyUI's
``add_object_patch``, by :class:`reenact_core.wan.WanMotionPatch`. Only ``forward`` is replaced, so every state-dict
key stays (LoRAs and weight patches still apply), the original model is untouched and unpatching restores stock.
The comfy imports are looked up with getattr: a ComfyUI without Wan (2024-03) imports this module and only
ever sees SVD.
"""

from __future__ import annotations

import comfy.model_base

from ..reenact_core.embedding import TOKEN_SPACE_UMT5, UMT5_DIM, MotionEmbedding, token_space_of
from ..reenact_core.wan import EmbeddedMotionTokens, WanMotionPatch

SUPPORTED = "Apply Motion Embedding supports SVD and Wan 2.1/2.2 (text-to-video, image-to-video, TI2V-5B) models"


def _model_base_class(name: str):
    return getattr(comfy.model_base, name, None)


def model_kind(model) -> str:
    """'none' (nothing connected), 'svd' or 'wan'; raises for any other model family."""
    if model is None:
        return "none"
    base = getattr(model, "model", None)
    svd = _model_base_class("SVD_img2vid")
    if svd is not None and isinstance(base, svd):
        return "svd"
    wan_classes = tuple(c for c in (_model_base_class("WAN21"), _model_base_class("WAN22")) if c is not None)
    if wan_classes and type(base) in wan_classes:  # subclasses (VACE, camera, HuMo, S2V, Animate) change the blocks
        _check_wan_blocks(base)
        return "wan"
    raise ValueError(
        f"{SUPPORTED}; got {type(base).__name__}. Connect the model from Image Only Checkpoint Loader (SVD) or Load Diffusion "
        "Model (Wan), or leave Apply Motion Embedding's model input unconnected for SVD."
    )


def is_wan(model) -> bool:
    """A Wan 2.1/2.2 MODEL whose blocks the pack can patch (False for SVD and anything else)."""
    try:
        return model_kind(model) == "wan"
    except ValueError:
        return False


def _check_wan_blocks(base) -> None:
    import comfy.ldm.wan.model as wan_model

    stock = tuple(getattr(wan_model, n) for n in ("WanT2VCrossAttention", "WanI2VCrossAttention") if hasattr(wan_model, n))
    dit = base.diffusion_model
    odd = sorted({type(b.cross_attn).__name__ for b in getattr(dit, "blocks", ()) if type(b.cross_attn) not in stock})
    if type(dit) is not getattr(wan_model, "WanModel", None) or odd or not len(getattr(dit, "blocks", ())):
        raise ValueError(f"{SUPPORTED}; got {type(base).__name__} with {type(dit).__name__}{' and ' + ', '.join(odd) if odd else ''} "
                         "(a Wan variant whose blocks this pack does not patch).")


def wan_family(model) -> str:
    """The ``base_model`` name of a Wan MODEL, told apart as ComfyUI's detection does: TI2V-5B has 48 latent
    channels; Wan2.1-I2V has a CLIP branch (img_emb; FLF2V also a position embedding for two images); Wan2.2
    I2V-A14B takes 36 input channels without one; Wan2.1 T2V and Wan2.2 T2V-A14B share one architecture."""
    dit = model.model.diffusion_model
    in_dim, out_dim, model_type = dit.in_dim, dit.out_dim, getattr(dit, "model_type", "t2v")
    if out_dim == 48:
        return "wan22_ti2v"
    if getattr(dit, "img_emb", None) is not None:
        return "wan21_flf2v" if getattr(dit.img_emb, "emb_pos", None) is not None else "wan21_i2v"
    if in_dim == 36:
        return "wan22_i2v_a14b"
    if in_dim == 16:
        return "wan_t2v"
    return f"wan_{model_type}_{in_dim}ch"


def check_embedding_for(kind: str, embedding: MotionEmbedding) -> None:
    """Refuse an embedding learned for the other family (pure: needs only the kind and the embedding)."""
    space = token_space_of(embedding)
    learned_on = embedding.metadata.get("base_model") or "SVD"
    if kind == "wan":
        if space != TOKEN_SPACE_UMT5 or embedding.dim != UMT5_DIM:
            raise ValueError(
                f"This motion embedding was learned on {learned_on} ({space} tokens, {embedding.dim} wide); it cannot drive a Wan model, "
                f"whose tokens are umT5 text states ({UMT5_DIM} wide). Learn the motion with Motion Textual Inversion on this Wan model, "
                "or apply this one to SVD (Image Only Checkpoint Loader + SVD_img2vid_Conditioning, model input unconnected)."
            )
    elif space == TOKEN_SPACE_UMT5 or embedding.dim == UMT5_DIM:
        where = "an SVD model" if kind == "svd" else "SVD (no model connected)"
        raise ValueError(
            f"This is a Wan motion embedding (learned on {learned_on}, umT5 tokens, {embedding.dim} wide); it cannot be applied to {where}. "
            "Connect the Wan MODEL (Load Diffusion Model) to Apply Motion Embedding's model input, use its model output in the sampler, "
            "and take positive, negative and latent from WanImageToVideo (or Wan22ImageToVideoLatent); or learn the motion on SVD."
        )


def latent_frames_of(model, latent: dict) -> int:
    """The latent frame count of a Wan latent [B, C, T, H, W], checked against the model's latent channels."""
    samples = latent["samples"]
    dit = model.model.diffusion_model
    if samples.ndim != 5:
        raise ValueError(
            f"Apply Motion Embedding's latent has shape {tuple(samples.shape)}; a Wan video latent is [batch, channels, frames, height, width]: "
            "connect the latent you sample (WanImageToVideo's or Wan22ImageToVideoLatent's)."
        )
    channels = model.model.latent_format.latent_channels if hasattr(model.model, "latent_format") else dit.out_dim
    if samples.shape[1] != channels:
        raise ValueError(
            f"Apply Motion Embedding's latent has {samples.shape[1]} channels but this Wan model ({wan_family(model)}) samples {channels}: "
            "connect the latent made for this model (Wan2.2 TI2V-5B: 48 channels from Wan22ImageToVideoLatent; Wan 2.1 and the A14B "
            "models: 16 from WanImageToVideo)."
        )
    return int(samples.shape[2])


def _attention(q, k, v, heads, **kwargs):
    """ComfyUI's attention as Wan's own cross-attention calls it (looked up per call: start-up flags and packs
    that replace it are honoured)."""
    import comfy.ldm.wan.model as wan_model

    return wan_model.optimized_attention(q, k, v, heads=heads, **kwargs)


def patch_wan_model(model, embedding: MotionEmbedding, latent_frames: int, strength: float):
    """A clone of the Wan ``model`` whose every block's cross-attention applies ``embedding`` to the positive."""
    clone = model.clone()
    dit = model.model.diffusion_model
    tokens = EmbeddedMotionTokens(embedding.spatial, embedding.temporal, latent_frames, dit.text_embedding)
    for i, block in enumerate(dit.blocks):
        key = f"diffusion_model.blocks.{i}.cross_attn.forward"
        original = clone.get_model_object(key)  # the stock forward, or a patch another node put there first
        clone.add_object_patch(key, WanMotionPatch(block.cross_attn, original, tokens, strength, attention=_attention))
    return clone


def apply_to_wan(model, embedding: MotionEmbedding, latent: dict, strength: float):
    """(patched model, latent frames) for a Wan model; the conditioning is not touched."""
    check_embedding_for("wan", embedding)
    frames = latent_frames_of(model, latent)
    return patch_wan_model(model, embedding, frames, strength), frames
