"""Save, load, mix and apply motion embeddings."""

from __future__ import annotations

import hashlib
import os

import folder_paths
import torch

from ..reenact_core.embedding import MotionEmbedding, describe_embedding, mix, motion_timing, timing_text
from ..reenact_core.fileformat import EmbeddingFileError, load_embedding, save_embedding
from . import paths, wan_apply

CATEGORY = "Reenact Anything"


class SaveMotionEmbedding:
    DESCRIPTION = "Saves a motion embedding as .safetensors under output/motion_embeddings/, where Load Motion Embedding finds it."
    CATEGORY = CATEGORY
    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "motion_embedding": ("MOTION_EMBEDDING", {"tooltip": "The motion to save, from Motion Textual Inversion."}),
                "filename_prefix": (
                    "STRING",
                    {
                        "default": "motion",
                        "tooltip": "File name prefix inside output/motion_embeddings/ (subfolders allowed, e.g. dance/wave). "
                        "A counter is appended, so nothing is overwritten.",
                    },
                ),
            }
        }

    def save(self, motion_embedding: MotionEmbedding, filename_prefix: str):
        prefix = paths.safe_prefix(filename_prefix)
        root = paths.output_folder()
        try:
            os.makedirs(root, exist_ok=True)
            folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, root)
            file_name = f"{name}_{counter:05}_.safetensors"
            emb = motion_embedding
            if "modelspec.title" not in emb.metadata:
                emb = emb.with_metadata(**{"modelspec.title": name})
            save_embedding(emb, os.path.join(folder, file_name))  # atomic: a failed write leaves no file
        except OSError as exc:
            raise EmbeddingFileError(
                f"Could not save the motion embedding: {exc.filename or root}: {exc.strerror or exc}. Nothing was written; "
                "check that the output folder is writable and has free space, or change filename_prefix."
            ) from exc
        relative = "/".join(p for p in (subfolder, file_name) if p)
        return {"ui": {"motion_embeddings": [{"filename": file_name, "subfolder": os.path.join(paths.FOLDER, subfolder).rstrip("/"), "type": "output"}], "text": [relative]}}


class LoadMotionEmbedding:
    DESCRIPTION = "Loads a saved motion embedding (.safetensors) from models/motion_embeddings/ or output/motion_embeddings/."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MOTION_EMBEDDING", "STRING")
    RETURN_NAMES = ("motion_embedding", "info")
    OUTPUT_TOOLTIPS = (
        "The loaded motion, for Apply Motion Embedding or Mix Motion Embeddings.",
        "What the file holds and how it was learned; it starts with a warning when the file was learned on a test model "
        "(the bundled example) and means nothing on real SVD.",
    )
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "embedding_name": (
                    paths.list_embeddings(),
                    {"tooltip": "A motion embedding file from models/motion_embeddings/ or output/motion_embeddings/."},
                ),
            }
        }

    @classmethod
    def IS_CHANGED(cls, embedding_name):
        path = paths.embedding_path(embedding_name)
        if path is None:
            return ""
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as f:  # in blocks: a huge file put here by mistake is refused by load(), not read whole
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        except OSError:  # gone or unreadable: load() says so
            return embedding_name
        return digest.hexdigest()

    def load(self, embedding_name: str):
        path = paths.embedding_path(embedding_name)
        if path is None:
            raise EmbeddingFileError(f"{embedding_name}: not found in models/motion_embeddings or output/motion_embeddings")
        embedding = load_embedding(path)
        info = describe_embedding(embedding)
        return {"ui": {"text": [info]}, "result": (embedding, info)}


class ApplyMotionEmbedding:
    DESCRIPTION = (
        "Applies a learned motion to a new image: on SVD through the conditioning (each frame gets its own tokens in the "
        "spatial cross-attention, the shared tokens drive the temporal cross-attention), on Wan 2.1/2.2 through a patched "
        "copy of the model (each latent frame's video tokens attend to that frame's tokens plus the shared ones). "
        "SVD: the target image still gives the appearance through SVD_img2vid_Conditioning; the model input can stay "
        "unconnected. Wan: connect the Wan model and sample with the model output; in every block the motion tokens take "
        "the place of the positive prompt in the cross-attention (the CLIP image branch of Wan2.1-I2V stays), the negative "
        "stays stock, and positive and negative pass through unchanged. A motion learned over N frames is stretched or "
        "squeezed in time to the latent's frame count: same path, other speed per frame (the info output says by how much)."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "STRING", "MODEL")
    RETURN_NAMES = ("positive", "negative", "info", "model")
    OUTPUT_TOOLTIPS = (
        "The target's conditioning with the motion (SVD); on Wan the positive unchanged (the motion is in the model output).",
        "The matching negative (SVD); on Wan the negative unchanged.",
        "At which frame rate the motion was learned, and what playing it over this latent's frames does to its speed.",
        "Wan: a copy of the connected model that applies the motion; connect it to the sampler in place of the model. "
        "SVD: the connected model unchanged. With no model connected this output is not usable (it stops what it feeds).",
    )
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "positive": (
                    "CONDITIONING",
                    {"tooltip": "positive from SVD_img2vid_Conditioning (the target image); on Wan from WanImageToVideo (or your text encoder)."},
                ),
                "negative": ("CONDITIONING", {"tooltip": "negative from SVD_img2vid_Conditioning; on Wan from WanImageToVideo (or your text encoder)."}),
                "motion_embedding": ("MOTION_EMBEDDING", {"tooltip": "The motion to apply (Motion Textual Inversion or Load Motion Embedding). "
                                                          "It must have been learned on the same family (SVD or Wan) as the model."}),
                "latent": (
                    "LATENT",
                    {"tooltip": "The latent you will sample (SVD_img2vid_Conditioning's, WanImageToVideo's or Wan22ImageToVideoLatent's): "
                     "its frame count decides how the motion is resampled in time."},
                ),
                "strength": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.0,
                        "max": 2.0,
                        "step": 0.05,
                        "tooltip": "0 = plain SVD / Wan (the target's own image embedding, or the prompt), 1 = the learned motion, >1 exaggerates it.",
                    },
                ),
            },
            "optional": {  # inputs added after the first release stay optional: saved workflows keep their meaning
                "keep_speed": (
                    "BOOLEAN",
                    {
                        "default": False,
                        "tooltip": "SVD: set the fps conditioning so the motion keeps the speed it was learned at when it is played over "
                        "a different number of frames (e.g. a 14-frame motion over SVD-XT's 25: the fps the learned frames had, "
                        "times 24/13). Off: the fps of SVD_img2vid_Conditioning stays. Save the video at the fps the info output gives. "
                        "Wan has no fps conditioning: there only the info output's frame rate applies.",
                    },
                ),
                "model": (
                    "MODEL",
                    {
                        "tooltip": "Wan 2.1/2.2: the diffusion model (Load Diffusion Model); required there, and use the model output in "
                        "the sampler. SVD: optional (passed through unchanged); leave it unconnected as in older workflows.",
                    },
                ),
            },
        }

    def apply(self, positive, negative, motion_embedding: MotionEmbedding, latent, strength: float, keep_speed: bool = False, model=None):
        kind = wan_apply.model_kind(model)
        wan_apply.check_embedding_for(kind, motion_embedding)
        if kind == "wan":
            return self._apply_wan(positive, negative, motion_embedding, latent, strength, keep_speed, model)
        frames = int(latent["samples"].shape[0])
        motion = motion_embedding.resample_frames(frames)
        timing = motion_timing(motion_embedding, frames)
        fps_override = {"fps": timing["playback_fps_rounded"]} if keep_speed and timing["learned_fps"] else {}
        new_positive = []
        for context, extras in positive:
            _check_svd_conditioning(context, extras, motion.dim, "positive")
            image_token = context.reshape(-1, context.shape[-1]).float().mean(0).cpu()
            neutral = MotionEmbedding.neutral(image_token, frames, motion.tokens, motion.dim)
            applied = motion.with_strength(strength, neutral)
            new_positive.append([applied.spatial, dict(extras, time_conditioning=applied.temporal[None], **fps_override)])
        new_negative = []
        for context, extras in negative:
            _check_svd_conditioning(context, extras, motion.dim, "negative")
            # SVD's unconditional context is all zeros; with the same token count cond and uncond batch together.
            zeros = torch.zeros(frames, motion.tokens, motion.dim)
            new_negative.append([zeros, dict(extras, time_conditioning=zeros[:1].clone(), **fps_override)])
        conditioned_fps = positive[0][1].get("fps") if positive else None
        info = timing_text(timing, keep_speed, conditioned_fps)
        model_out = model if model is not None else _no_model()
        return {"ui": {"text": [info]}, "result": (new_positive, new_negative, info, model_out)}

    def _apply_wan(self, positive, negative, motion_embedding, latent, strength, keep_speed, model):
        patched, frames = wan_apply.apply_to_wan(model, motion_embedding, latent, strength)
        family = wan_apply.wan_family(model)
        blocks = len(model.model.diffusion_model.blocks)
        timing = motion_timing(motion_embedding, frames)
        resampled = (f"resampled in time to this latent's {frames}" if frames != motion_embedding.frames else f"laid over this latent's {frames}")
        info = (f"Wan ({family}): the motion's {motion_embedding.frames} latent frames are {resampled} latent frames, in the "
                f"cross-attention of all {blocks} blocks of the model output at strength {strength:g}: there the motion tokens take "
                "the place of the positive prompt; the negative stays as it is. ")
        if timing["learned_fps"]:
            info += f"Learned at {timing['learned_fps']:.3g} fps; save the video at {timing['playback_fps']:.3g} fps for the learned speed."
        else:
            info += "Its file does not say at which frame rate it was learned."
        if keep_speed:
            info += " keep_speed does nothing on Wan (no fps conditioning)."
        return {"ui": {"text": [info]}, "result": (positive, negative, info, patched)}


def _no_model():
    """The model output when no model is connected: an ExecutionBlocker, so a node fed from it stops with this message
    (ComfyUI since mid-2024) rather than failing on None deep inside; None where ComfyUI has no blockers."""
    blocker = _execution_blocker()
    message = ("Apply Motion Embedding's model output carries the model connected to its model input, and none is connected: "
               "connect the model (required for Wan), or take the sampler's model from the loader.")
    return blocker(message) if blocker is not None else None


def _execution_blocker():
    import importlib

    for name in ("comfy_execution.graph_utils", "comfy_execution.graph"):  # where ComfyUI has kept it over time
        try:
            blocker = getattr(importlib.import_module(name), "ExecutionBlocker", None)
        except ImportError:  # ComfyUI before the execution-model rewrite (mid-2024)
            continue
        if blocker is not None:
            return blocker
    return None


def _check_svd_conditioning(context: torch.Tensor, extras: dict, dim: int, which: str) -> None:
    if context.shape[-1] != dim:
        raise ValueError(
            f"The {which} conditioning has {context.shape[-1]}-wide tokens but this motion embedding has {dim}-wide tokens: "
            "connect the outputs of SVD_img2vid_Conditioning (a text conditioning does not work here), and use an embedding "
            "learned with the same model (SVD's are 1024 wide; a 768-wide file is a text embedding for SD1.5)."
        )
    if "concat_latent_image" not in extras:
        raise ValueError(
            f"The {which} conditioning is not from SVD_img2vid_Conditioning (it has no image latent): "
            "connect SVD_img2vid_Conditioning's positive and negative."
        )


class MixMotionEmbeddings:
    DESCRIPTION = "Blends two motion embeddings: (1 - weight) * a + weight * b, frame by frame."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MOTION_EMBEDDING",)
    RETURN_NAMES = ("motion_embedding",)
    FUNCTION = "mix"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "embedding_a": ("MOTION_EMBEDDING", {"tooltip": "First motion (weight 0 gives exactly this one)."}),
                "embedding_b": ("MOTION_EMBEDDING", {"tooltip": "Second motion (weight 1 gives exactly this one); resampled to a's frame count."}),
                "weight": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip": "Share of embedding_b in the mix."}),
            }
        }

    def mix(self, embedding_a: MotionEmbedding, embedding_b: MotionEmbedding, weight: float):
        return (mix(embedding_a, embedding_b, weight),)
