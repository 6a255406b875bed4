"""Where motion embeddings live: a ``motion_embeddings`` model folder (models/ and output/)."""

from __future__ import annotations

import os
import re

import folder_paths

FOLDER = "motion_embeddings"
EXAMPLE_EMBEDDINGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", FOLDER)
EXTENSIONS = {".safetensors"}


def output_folder() -> str:
    return os.path.join(folder_paths.get_output_directory(), FOLDER)


_OURS: set[str] = set()  # paths this module added, so a moved output folder replaces its old entry


def register_folder() -> None:
    """models/motion_embeddings, output/motion_embeddings and the pack's bundled examples, .safetensors
    only, so saved files show up in the loader's dropdown. Paths from extra_model_paths.yaml are kept.
    Called again before listing: ComfyUI 2024-03 applies --output-directory after importing packs."""
    configured = [p for p in folder_paths.folder_names_and_paths.get(FOLDER, ([], set()))[0] if p not in _OURS]
    ours = [os.path.join(folder_paths.models_dir, FOLDER), output_folder(), EXAMPLE_EMBEDDINGS]
    _OURS.update(ours)
    folder_paths.folder_names_and_paths[FOLDER] = (configured + [p for p in ours if p not in configured], set(EXTENSIONS))
    cache = getattr(folder_paths, "filename_list_cache", None)
    if isinstance(cache, dict):
        cache.pop(FOLDER, None)


def list_embeddings() -> list[str]:
    register_folder()  # the output folder can change after import (--output-directory, tests)
    return sorted(folder_paths.get_filename_list(FOLDER))


def embedding_path(name: str) -> str | None:
    register_folder()
    return folder_paths.get_full_path(FOLDER, name)


_UNSAFE = re.compile(r"[^\w\-. ]+", re.UNICODE)


def safe_prefix(prefix: str) -> str:
    """A filename prefix that stays inside output/motion_embeddings whatever the user typed:
    no absolute paths, no '..', no drive letters or odd characters; subfolders are kept."""
    parts = []
    for part in re.split(r"[\\/]+", prefix.strip()):
        part = _UNSAFE.sub("_", part).strip(" .")
        if part and part != "..":
            parts.append(part)
    return "/".join(parts) or "motion"
