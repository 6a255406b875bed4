"""Shared fixtures: a real ComfyUI imported in-process, this pack loaded into it as ComfyUI loads custom
nodes, and the deterministic random-weight SVD test checkpoint."""

from __future__ import annotations

import inspect
import os
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def comfy():
    from devkit.comfy_env import load_comfyui

    return load_comfyui()


@pytest.fixture(scope="session")
def pack(comfy):
    """This repository loaded by ComfyUI's own custom-node loader; returns the pack's modules."""
    name = _loaded_pack_name()
    if name is None:
        result = comfy.nodes.load_custom_node(str(REPO))
        if inspect.isawaitable(result):
            from devkit.comfy_env import _run_coroutine

            result = _run_coroutine(result)
        assert result, "ComfyUI failed to load the pack (see the log above)"
        name = _loaded_pack_name()
    module = sys.modules[name]
    return types.SimpleNamespace(
        module=module,
        name=name,
        nodes=sys.modules[f"{name}.nodes"],
        embedding=sys.modules[f"{name}.reenact_core.embedding"],
        fileformat=sys.modules[f"{name}.reenact_core.fileformat"],
        video=sys.modules[f"{name}.reenact_core.video"],
    )


def _loaded_pack_name():
    """ComfyUI registers the pack under its folder name (2024) or its full path (2025+)."""
    init = REPO / "__init__.py"
    for name, module in list(sys.modules.items()):
        if getattr(module, "__file__", None) and Path(module.__file__).resolve() == init:
            return name
    return None


@pytest.fixture(scope="session")
def svd_checkpoint(comfy):
    from devkit.svd_checkpoint import ensure_svd_test_checkpoint

    return ensure_svd_test_checkpoint()


@pytest.fixture(scope="session")
def svd(comfy, svd_checkpoint):
    """(model, clip_vision, vae) of the test checkpoint, loaded once by the stock loader node."""
    from devkit.comfy_env import register_model_folder, run_node

    register_model_folder(comfy, "checkpoints", os.path.dirname(svd_checkpoint))
    return run_node(comfy, "ImageOnlyCheckpointLoader", ckpt_name=os.path.basename(svd_checkpoint))
