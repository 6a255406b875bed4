"""A node pack for test servers only (never shipped): planted faults that prove the checks can fail.

* ``ReenactTestOpenConnection`` opens a TCP connection when it runs: the planted connection that the
  network guard (testkit/netguard) must refuse and record.
* A learning rate of exactly ``DIVERGING_LEARNING_RATE`` makes every AdamW optimiser in the process
  write inf into its parameters after its second step, and ``EXPLODING_LEARNING_RATE`` writes 1e30
  (finite, but the next forward pass gives a NaN loss): learning rates that diverge, which the
  random-weight test model cannot produce by itself. Any other learning rate is left alone.
* ``ReenactTestPauseInversion`` passes a motion reference through and makes the next progress bar of
  ``of_steps`` steps (the Motion Textual Inversion it feeds) wait after reporting step ``after_step`` (0:
  before its first step) until the prompt is interrupted, writing ``ready_file`` when it starts waiting. A
  test waits for that file, then its POST /interrupt lands exactly there, whatever the machine's speed (and
  whatever progress messages a ComfyUI version throttles): cancelling is driven by the server's state.
* ``ReenactTestUMT5Encode`` and ``ReenactTestWan22VAE`` stand in for the two Wan models no test can load
  (testkit/wan_checkpoint.py says why: the smallest umT5 that ComfyUI loads is the 11 GB real one, and the
  Wan2.2 VAE is built at full size): the first gives what CLIPTextEncode gives on Wan, umT5-shaped states
  [1, 512, 4096] (deterministic per text, zero past its words as umT5's padding is), the second testkit's
  StandInWan22VAE. test_e2e_wan puts them in place of CLIPLoader + CLIPTextEncode and of the VAELoader of
  wan2.2_vae; every other node of the Wan workflows runs as shipped.
* ``ReenactTestLiveObjects`` writes, as JSON to ``report_file``, how many SVD models are alive in the server
  (the shared one, and any private training copy that survived its inversion) and the bytes of all live
  tensors: what memory checks need, free of the allocator's habits that make RSS a loose measure.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import socket
import sys
import time
from pathlib import Path

import comfy.model_management
import comfy.utils
import torch

DIVERGING_LEARNING_RATE = 0.875
EXPLODING_LEARNING_RATE = 0.625
_FILL = {DIVERGING_LEARNING_RATE: float("inf"), EXPLODING_LEARNING_RATE: 1e30}


class ReenactTestOpenConnection:
    CATEGORY = "_reenact_test"
    DESCRIPTION = "Test only: opens a TCP connection to 127.0.0.1:port."
    RETURN_TYPES = ()
    FUNCTION = "connect"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"port": ("INT", {"default": 9, "min": 1, "max": 65535, "tooltip": "Port to connect to."})}}

    def connect(self, port):
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        return {"ui": {"text": ["connected"]}}


class ReenactTestPauseInversion:
    CATEGORY = "_reenact_test"
    DESCRIPTION = "Test only: the next inversion of of_steps steps waits after step after_step until the prompt is interrupted."
    RETURN_TYPES = ("MOTION_REFERENCE",)
    FUNCTION = "pause"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "motion_reference": ("MOTION_REFERENCE", {"tooltip": "Passed through."}),
                "after_step": ("INT", {"default": 0, "min": 0, "max": 100000, "tooltip": "Wait after this step (0: before the first)."}),
                "of_steps": ("INT", {"default": 1, "min": 1, "max": 100000, "tooltip": "The inversion's steps (which progress bar)."}),
                "ready_file": ("STRING", {"default": "", "tooltip": "Written (with the step) when the inversion starts waiting."}),
            }
        }

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")  # always runs: it arms the pause

    def pause(self, motion_reference, after_step, of_steps, ready_file):
        _PAUSE.update(after=after_step, total=of_steps, ready=ready_file)
        return (motion_reference,)


class ReenactTestLiveObjects:
    CATEGORY = "_reenact_test"
    DESCRIPTION = "Test only: writes the number of live SVD models and the bytes of live tensors to report_file."
    RETURN_TYPES = ()
    FUNCTION = "report"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"report_file": ("STRING", {"default": "", "tooltip": "Where the JSON report goes."})}}

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")  # always runs

    def report(self, report_file):
        import comfy.model_base

        gc.collect()
        objects = gc.get_objects()
        models = sum(1 for o in objects if isinstance(o, comfy.model_base.SVD_img2vid))
        storages = {}
        for o in objects:
            if isinstance(o, torch.Tensor):
                try:
                    storage = o.untyped_storage()
                    storages[(storage.device.type, storage.data_ptr())] = storage.nbytes()
                except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. sparse, meta)
                    pass
        with open(report_file, "w") as f:
            json.dump({"svd_models": models, "tensor_bytes": sum(storages.values())}, f)
        return {"ui": {"text": [f"{models} SVD models"]}}


_PAUSE: dict = {"after": None, "total": None, "ready": ""}
_real_init = comfy.utils.ProgressBar.__init__
_real_update = comfy.utils.ProgressBar.update_absolute


def _wait_for_interrupt(step: int, timeout: float = 300.0) -> None:
    ready = _PAUSE["ready"]
    _PAUSE.update(after=None, total=None, ready="")
    if ready:  # written whole, then renamed: a test polling for it never reads it empty
        with open(ready + ".tmp", "w") as f:
            f.write(str(step))
        os.replace(ready + ".tmp", ready)
    deadline = time.monotonic() + timeout
    while not comfy.model_management.processing_interrupted() and time.monotonic() < deadline:
        time.sleep(0.01)


def _init(self, total, *args, **kwargs):
    _real_init(self, total, *args, **kwargs)
    if _PAUSE["after"] == 0 and _PAUSE["total"] == total:
        _wait_for_interrupt(0)


def _update(self, value, total=None, *args, **kwargs):
    _real_update(self, value, total, *args, **kwargs)
    if _PAUSE["after"] and _PAUSE["total"] == (total or self.total) and value >= _PAUSE["after"]:
        _wait_for_interrupt(value)


comfy.utils.ProgressBar.__init__ = _init
comfy.utils.ProgressBar.update_absolute = _update

_real_step = torch.optim.AdamW.step


def _step(self, *args, **kwargs):
    result = _real_step(self, *args, **kwargs)
    fill = _FILL.get(self.defaults.get("lr"))
    if fill is not None:
        self._reenact_test_steps = getattr(self, "_reenact_test_steps", 0) + 1
        if self._reenact_test_steps >= 2:
            with torch.no_grad():
                for group in self.param_groups:
                    for p in group["params"]:
                        p.fill_(fill)
    return result


torch.optim.AdamW.step = _step


class ReenactTestUMT5Encode:
    CATEGORY = "_reenact_test"
    DESCRIPTION = "Test only: umT5-shaped conditioning [1, 512, 4096] for a text, in place of CLIPLoader (wan) + CLIPTextEncode."
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"multiline": True, "tooltip": "The prompt; only its hash and word count matter."})}}

    def encode(self, text):
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        states = torch.zeros(1, 512, 4096)
        words = min(len(text.split()) + 1, 512)  # + the end token
        states[:, :words] = torch.randn(1, words, 4096, generator=torch.Generator().manual_seed(seed)) * 0.1
        return ([[states, {}]],)


class ReenactTestWan22VAE:
    CATEGORY = "_reenact_test"
    DESCRIPTION = "Test only: testkit's StandInWan22VAE (48 channels, 16x, 4 frames per latent frame), in place of wan2.2_vae."
    RETURN_TYPES = ("VAE",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def load(self):
        repository = str(Path(__file__).resolve().parents[2])
        if repository not in sys.path:
            sys.path.append(repository)  # last: its nodes/ package must never shadow ComfyUI's nodes module
        from testkit.wan_checkpoint import StandInWan22VAE

        return (StandInWan22VAE(),)


NODE_CLASS_MAPPINGS = {
    "ReenactTestUMT5Encode": ReenactTestUMT5Encode,
    "ReenactTestWan22VAE": ReenactTestWan22VAE,
    "ReenactTestOpenConnection": ReenactTestOpenConnection,
    "ReenactTestPauseInversion": ReenactTestPauseInversion,
    "ReenactTestLiveObjects": ReenactTestLiveObjects,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ReenactTestUMT5Encode": "Reenact test: umT5-shaped conditioning",
    "ReenactTestWan22VAE": "Reenact test: stand-in Wan2.2 VAE",
    "ReenactTestLiveObjects": "Reenact test: live models and tensors",
    "ReenactTestOpenConnection": "Reenact test: open a connection",
    "ReenactTestPauseInversion": "Reenact test: pause the next inversion",
}
