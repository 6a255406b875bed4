"""Example inputs shipped with the pack, so the example workflows run as soon as the pack is installed."""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

import folder_paths

EXAMPLES = Path(__file__).resolve().parent.parent / "assets"
log = logging.getLogger("reenact_anything")


def install_example_inputs() -> None:
    """Copy assets/inputs/* into ComfyUI's input folder where missing (never overwrites)."""
    source = EXAMPLES / "inputs"
    if not source.is_dir():
        return
    target_dir = _input_directory()
    for item in sorted(source.iterdir()):
        target = target_dir / item.name
        if target.exists() or not item.is_file():
            continue
        tmp = target.with_name(f".{item.name}.{uuid.uuid4().hex}.tmp")
        try:
            target_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(item, tmp)
            os.replace(tmp, target)
        except OSError as exc:  # e.g. a read-only input folder: the pack works without examples
            log.warning("Reenact Anything: could not copy example %s to %s (%s)", item.name, target_dir, exc)
            tmp.unlink(missing_ok=True)


def _input_directory() -> Path:
    """ComfyUI's input folder. ComfyUI 2024-03 imports custom nodes before it applies --input-directory,
    so at import time folder_paths still names the default folder: the command-line value wins."""
    try:
        from comfy.cli_args import args

        configured = getattr(args, "input_directory", None)
    except Exception:  # an embedding host without ComfyUI's argument parser
        configured = None
    return Path(os.path.abspath(configured)) if configured else Path(folder_paths.get_input_directory())
