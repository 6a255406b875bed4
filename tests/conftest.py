"""Shared fixtures: a real ComfyUI imported in-process, this pack loaded into it as ComfyUI loads custom
nodes, and the deterministic random-weight SVD test checkpoint."""

from __future__ import annotations

import contextlib
import logging
import os
import types
from pathlib import Path

import pytest
from hypothesis import settings

REPO = Path(__file__).resolve().parent.parent
TEST_NODES = Path(__file__).resolve().parent / "comfy_test_nodes"  # test-only node pack for test servers

# Property tests draw the same examples on every run (CI never fails on a draw it cannot repeat), with no
# deadline (a loaded machine is slow, not wrong) and no example database. HYPOTHESIS_PROFILE=explore draws
# new examples, for looking for bugs by hand.
settings.register_profile("suite", derandomize=True, deadline=None, database=None)
settings.register_profile("explore", derandomize=False, deadline=None, max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))


@pytest.fixture(scope="session")
def comfy():
    from testkit.comfy_env import load_comfyui

    return load_comfyui()


@pytest.fixture(scope="session")
def pack(comfy):
    """This repository loaded by ComfyUI's own custom-node loader; returns the pack's modules."""
    from testkit.comfy_env import load_pack, pack_submodule

    module = load_pack(comfy)
    return types.SimpleNamespace(
        module=module,
        name=module.__name__,
        nodes=pack_submodule(module, "nodes"),
        embedding=pack_submodule(module, "reenact_core.embedding"),
        fileformat=pack_submodule(module, "reenact_core.fileformat"),
        video=pack_submodule(module, "reenact_core.video"),
    )


@pytest.fixture
def block_swaps(pack, monkeypatch):
    """Every BlockSwap the inversion makes during the test (nodes.comfy_denoiser's), kept for inspection."""
    from testkit.comfy_env import pack_submodule

    denoiser = pack_submodule(pack.module, "nodes.comfy_denoiser")
    made = []

    class Recorded(denoiser.BlockSwap):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(denoiser, "BlockSwap", Recorded)
    return made


@pytest.fixture(scope="session")
def svd_checkpoint(comfy):
    from testkit.svd_checkpoint import ensure_svd_test_checkpoint

    return ensure_svd_test_checkpoint()


@pytest.fixture(scope="session")
def svd(comfy, svd_checkpoint):
    """(model, clip_vision, vae) of the test checkpoint, loaded once by the stock loader node."""
    from testkit.comfy_env import register_model_folder, run_node

    register_model_folder(comfy, "checkpoints", os.path.dirname(svd_checkpoint))
    return run_node(comfy, "ImageOnlyCheckpointLoader", ckpt_name=os.path.basename(svd_checkpoint))


def make_checkpoints_folder(base: Path) -> Path:
    """``base/checkpoints`` holding svd.safetensors and svd_xt.safetensors: the deterministic random-weight
    test checkpoints (built and cached on first use), linked under the names the workflows use."""
    from testkit.svd_checkpoint import ensure_svd_test_checkpoint, ensure_svd_xt_test_checkpoint

    checkpoints = base / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "svd.safetensors").symlink_to(ensure_svd_test_checkpoint())
    (checkpoints / "svd_xt.safetensors").symlink_to(ensure_svd_xt_test_checkpoint())
    return checkpoints


def has_wan22(root: str) -> bool:
    """Whether a ComfyUI has Wan 2.2's nodes (>= 0.3.46), which the Wan workflows use."""
    nodes_wan = Path(root) / "comfy_extras" / "nodes_wan.py"
    return nodes_wan.is_file() and "Wan22ImageToVideoLatent" in nodes_wan.read_text()


def wan_model_folders(base: Path, built: dict[str, Path]) -> dict[str, Path]:
    """The Wan workflows' model folders under ``base``: the files in ``built`` linked under the workflows' names, and
    a placeholder file for each other one, so every name is in its loader's list as on a user's machine. A prompt must
    never load a placeholder (test_e2e_wan replaces the loaders of the models it stubs; the browser test only loads
    the workflows); one that were loaded would fail loudly."""
    from tools import make_workflows

    folders = {}
    for name, (directory, _) in make_workflows.WAN_MODEL_FILES.items():
        folder = base / directory
        folder.mkdir(parents=True, exist_ok=True)
        if name in built:
            (folder / name).symlink_to(built[name])
        else:
            (folder / name).write_text("placeholder for a model the Wan tests stub (tests/comfy_test_nodes)\n")
        folders[directory] = folder
    return folders


def comfyui_root() -> str:
    root = os.environ.get("COMFYUI_ROOT")
    if not root:
        pytest.fail("set COMFYUI_ROOT to a ComfyUI checkout (./dev.sh test sets it up and exports it)")
    return root


def paused_at(prompt: dict, inversion: str, after_step: int, ready_file: Path) -> dict:
    """The API prompt with the test pack's ReenactTestPauseInversion between the inversion and its
    reference: that inversion waits after ``after_step`` (0: before its first step) until interrupted, and
    writes ``ready_file`` (holding the step) when it starts waiting (see :func:`wait_until_paused`)."""
    prompt = {k: {"class_type": v["class_type"], "inputs": dict(v["inputs"])} for k, v in prompt.items()}
    steps = prompt[inversion]["inputs"]["steps"]
    ready_file.unlink(missing_ok=True)
    prompt["pause"] = {"class_type": "ReenactTestPauseInversion",
                       "inputs": {"motion_reference": prompt[inversion]["inputs"]["motion_reference"], "after_step": after_step,
                                  "of_steps": steps, "ready_file": str(ready_file)}}
    prompt[inversion]["inputs"]["motion_reference"] = ["pause", 0]
    return prompt


def wait_until_paused(server, ready_file: Path, timeout: float = 300.0) -> int:
    """Block until the paused inversion is waiting (its ready file exists); the step it waits at."""
    import time

    deadline = time.monotonic() + timeout
    while not ready_file.exists():
        assert server.alive(), f"ComfyUI died:\n{server.log_tail()}"
        assert time.monotonic() < deadline, f"the inversion did not reach its pause within {timeout:.0f} s:\n{server.log_tail(3000)}"
        time.sleep(0.05)
    return int(ready_file.read_text())


@contextlib.contextmanager
def captured_log():
    """Every log message emitted inside the block, as a list filled while it runs. The root logger goes to
    DEBUG meanwhile: ComfyUI 2024-03 reports a checkpoint's unused keys at debug/info level only."""
    messages: list[str] = []

    class _Records(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler, root = _Records(logging.DEBUG), logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield messages
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


# -- Wan (test_wan_apply.py, test_wan_inversion.py) ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wan(comfy, pack):
    """The ComfyUI in COMFYUI_ROOT with the pack loaded; skipped without Wan."""
    root = comfyui_root()
    if not os.path.isfile(os.path.join(root, "comfy", "ldm", "wan", "model.py")):
        pytest.skip(f"the ComfyUI at {root} has no Wan (comfy/ldm/wan): Wan 2.1 needs ComfyUI >= 0.3.16 (2025-02-26)")
    return comfy


@pytest.fixture
def release_comfy_models():
    """Unload every model ComfyUI holds after the test (the file-format tests never import ComfyUI)."""
    import gc
    import sys

    yield
    model_management = sys.modules.get("comfy.model_management")
    if model_management is not None:
        model_management.unload_all_models()
        gc.collect()


def load_dit(path):
    import comfy.sd
    import torch

    with torch.inference_mode():
        return comfy.sd.load_diffusion_model(str(path))


@pytest.fixture(scope="module")
def i2v(wan):
    """The tiny Wan2.1-I2V test model (testkit/wan_checkpoint.py) through the stock loader."""
    from testkit.wan_checkpoint import ensure_wan21_i2v_test_model

    return load_dit(ensure_wan21_i2v_test_model())


@pytest.fixture(scope="module")
def ti2v(wan):
    """The tiny TI2V-5B-shaped test model; skipped before Wan 2.2."""
    import comfy.supported_models

    if not hasattr(comfy.supported_models, "WAN22_T2V"):
        pytest.skip("Wan 2.2 needs ComfyUI >= 0.3.46 (2025-07-28)")
    from testkit.wan_checkpoint import ensure_wan22_ti2v_test_model

    return load_dit(ensure_wan22_ti2v_test_model())
