"""Shared fixtures: a real ComfyUI imported in-process, this pack loaded into it as ComfyUI loads custom
nodes, and the deterministic random-weight SVD test checkpoint."""

from __future__ import annotations

import os
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
    from devkit.comfy_env import load_pack, pack_submodule

    module = load_pack(comfy)
    return types.SimpleNamespace(
        module=module,
        name=module.__name__,
        nodes=pack_submodule(module, "nodes"),
        embedding=pack_submodule(module, "reenact_core.embedding"),
        fileformat=pack_submodule(module, "reenact_core.fileformat"),
        video=pack_submodule(module, "reenact_core.video"),
    )


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


def make_checkpoints_folder(base: Path) -> Path:
    """``base/checkpoints`` holding svd.safetensors and svd_xt.safetensors: the deterministic random-weight
    test checkpoints (built and cached on first use), linked under the names the workflows use."""
    from devkit.svd_checkpoint import ensure_svd_test_checkpoint, ensure_svd_xt_test_checkpoint

    checkpoints = base / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "svd.safetensors").symlink_to(ensure_svd_test_checkpoint())
    (checkpoints / "svd_xt.safetensors").symlink_to(ensure_svd_xt_test_checkpoint())
    return checkpoints


def comfyui_root() -> str:
    root = os.environ.get("COMFYUI_ROOT")
    if not root:
        pytest.fail("set COMFYUI_ROOT to a ComfyUI checkout (./dev.sh test sets it up and exports it)")
    return root
