"""Save, load, mix and apply motion embeddings."""

from __future__ import annotations

import hashlib
import os

import folder_paths
import torch

from ..reenact_core.embedding import MotionEmbedding, describe_embedding, mix, motion_timing, timing_text
from ..reenact_core.fileformat import EmbeddingFileError, load_embedding, save_embedding
from . import paths

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
        "Replaces SVD's image-embedding conditioning with a motion embedding: each frame gets its own tokens in the "
        "spatial cross-attention and the shared tokens drive the temporal cross-attention. The target image still "
        "gives the appearance through SVD_img2vid_Conditioning. A motion learned over N frames is stretched or "
        "squeezed in time to the latent's frame count: same path, other speed per frame (the info output says by how much)."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "STRING")
    RETURN_NAMES = ("positive", "negative", "info")
    OUTPUT_TOOLTIPS = (
        "The target's conditioning with the motion.",
        "The matching negative.",
        "At which frame rate the motion was learned, and what playing it over this latent's frames does to its speed.",
    )
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "positive": ("CONDITIONING", {"tooltip": "positive from SVD_img2vid_Conditioning (the target image)."}),
                "negative": ("CONDITIONING", {"tooltip": "negative from SVD_img2vid_Conditioning."}),
                "motion_embedding": ("MOTION_EMBEDDING", {"tooltip": "The motion to apply (Motion Textual Inversion or Load Motion Embedding)."}),
                "latent": (
                    "LATENT",
                    {"tooltip": "The latent you will sample (SVD_img2vid_Conditioning's latent): its frame count decides how the motion is resampled in time."},
                ),
                "strength": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.0,
                        "max": 2.0,
                        "step": 0.05,
                        "tooltip": "0 = plain SVD (the target's own image embedding), 1 = the learned motion, >1 exaggerates it.",
                    },
                ),
            },
            "optional": {  # inputs added after the first release stay optional: saved workflows keep their meaning
                "keep_speed": (
                    "BOOLEAN",
                    {
                        "default": False,
                        "tooltip": "Set SVD's fps conditioning so the motion keeps the speed it was learned at when it is played over "
                        "a different number of frames (e.g. a 14-frame motion over SVD-XT's 25: the fps the learned frames had, "
                        "times 24/13). Off: the fps of SVD_img2vid_Conditioning stays. Save the video at the fps the info output gives.",
                    },
                ),
            },
        }

    def apply(self, positive, negative, motion_embedding: MotionEmbedding, latent, strength: float, keep_speed: bool = False):
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
        return {"ui": {"text": [info]}, "result": (new_positive, new_negative, info)}


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
