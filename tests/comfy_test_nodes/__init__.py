"""A node pack for test servers only (never shipped): planted faults that prove the checks can fail.

* ``ReenactTestOpenConnection`` opens a TCP connection when it runs: the planted connection that the
  network guard (devkit/netguard) must refuse and record.
* A learning rate of exactly ``DIVERGING_LEARNING_RATE`` makes every AdamW optimiser in the process
  write inf into its parameters after its second step, and ``EXPLODING_LEARNING_RATE`` writes 1e30
  (finite, but the next forward pass gives a NaN loss): learning rates that diverge, which the
  random-weight test model cannot produce by itself. Any other learning rate is left alone.
"""

from __future__ import annotations

import socket

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

NODE_CLASS_MAPPINGS = {"ReenactTestOpenConnection": ReenactTestOpenConnection}
NODE_DISPLAY_NAME_MAPPINGS = {"ReenactTestOpenConnection": "Reenact test: open a connection"}
