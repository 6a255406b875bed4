"""Load Motion Reference: the clip whose motion is learned, from the input folder or an IMAGE batch."""

from __future__ import annotations

import hashlib
import os

import folder_paths

from ..reenact_core.video import (
    IMAGE_EXTENSIONS,
    ReferenceVideoError,
    clip_from_images,
    load_reference_video,
    select_and_resize,
)

CATEGORY = "Reenact Anything"
VIDEO_EXTENSIONS = {".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v", ".gif", ".webp"}
SKIP_FOLDERS = {"clipspace"}  # ComfyUI's mask editor scratch folder
NO_FILE = "none"  # listed last: choose it when the frames come from the images input
MEMORY_BUDGET_BYTES = 4 * 2**30


def list_reference_files() -> list[str]:
    """Videos and animated images in ComfyUI's input folder (and its subfolders), plus folders of
    images (image sequences)."""
    root = folder_paths.get_input_directory()
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIP_FOLDERS)
        rel = os.path.relpath(dirpath, root)
        if rel != "." and any(os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS for f in filenames):
            found.append(rel.replace(os.sep, "/") + "/")
        for name in filenames:
            if os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS and not name.startswith("."):
                found.append(name if rel == "." else f"{rel}/{name}".replace(os.sep, "/"))
    return sorted(found) + [NO_FILE]


class LoadMotionReference:
    DESCRIPTION = (
        "Loads the reference clip whose motion you want to transfer: a video from ComfyUI's input folder "
        "(use the upload button) or any IMAGE batch (e.g. from Load Video / VideoHelperSuite)."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MOTION_REFERENCE", "IMAGE", "INT", "STRING")
    RETURN_NAMES = ("motion_reference", "frames", "frame_count", "info")
    OUTPUT_TOOLTIPS = (
        "The clip, for Motion Textual Inversion.",
        "The loaded frames, shown upright (phone clips' rotation applied).",
        "How many frames were loaded.",
        "Frames, size, frame rate (of the loaded frames, after select_every_nth) and any rotation applied.",
    )
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "video": (
                    list_reference_files(),
                    {"tooltip": "Video, GIF or folder of frames in ComfyUI's input folder. Ignored when images are connected ('none' = use the images input)."},
                ),
                "frame_load_cap": ("INT", {"default": 0, "min": 0, "max": 10000, "tooltip": "Keep at most this many frames (0 = all)."}),
                "skip_first_frames": ("INT", {"default": 0, "min": 0, "max": 100000, "tooltip": "Skip this many frames at the start."}),
                "select_every_nth": ("INT", {"default": 1, "min": 1, "max": 1000, "tooltip": "Keep every nth frame (2 = every other frame): covers a longer motion with fewer frames."}),
                "custom_width": ("INT", {"default": 0, "min": 0, "max": 8192, "step": 8, "tooltip": "Resize to this width (0 = keep; with height 0 the aspect ratio is kept). The inversion resizes again to its own resolution."}),
                "custom_height": ("INT", {"default": 0, "min": 0, "max": 8192, "step": 8, "tooltip": "Resize to this height (0 = keep). Both set: resize and centre-crop to exactly this size."}),
            },
            "optional": {
                "images": ("IMAGE", {"tooltip": "Use these frames instead of the video file (any IMAGE batch, one frame per image)."}),
            },
        }

    @classmethod
    def IS_CHANGED(cls, video, **kwargs):
        path = _resolve(video)
        if path is None or not os.path.exists(path):
            return video
        if os.path.isdir(path):  # an image sequence: any added, removed or rewritten frame counts
            return str(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(path)))
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def load(self, video, frame_load_cap, skip_first_frames, select_every_nth, custom_width, custom_height, images=None):
        selection = dict(
            frame_load_cap=frame_load_cap,
            skip_first_frames=skip_first_frames,
            select_every_nth=select_every_nth,
            custom_width=custom_width,
            custom_height=custom_height,
        )
        if images is not None:
            clip = select_and_resize(clip_from_images(images), **selection)  # no timing: DEFAULT_FPS is assumed, and said
        else:
            path = _resolve(video)
            if path is None:
                raise ReferenceVideoError(
                    "No reference: choose a video in the 'video' list (upload one with the button) or connect an IMAGE batch to 'images'."
                )
            if not os.path.exists(path):
                raise ReferenceVideoError(
                    f"{video}: not found in ComfyUI's input folder (moved or deleted since it was listed); upload it again or choose another file."
                )
            clip = load_reference_video(path, memory_budget_bytes=MEMORY_BUDGET_BYTES, **selection)
        info = clip.describe()
        return {"ui": {"text": [info]}, "result": (clip, clip.frames, clip.frames.shape[0], info)}


def _resolve(video: str) -> str | None:
    if not video or video == NO_FILE:
        return None
    root = os.path.abspath(folder_paths.get_input_directory())
    path = os.path.abspath(os.path.join(root, video))
    if os.path.commonpath([root, path]) != root:
        raise ReferenceVideoError(f"{video!r} is outside ComfyUI's input folder; pick a file from the list")
    return path
