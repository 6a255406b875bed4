"""Shared plumbing of the deterministic random-weight test models (``svd_checkpoint``, ``wan_checkpoint``).

* :func:`ensure_cached`: a file under ``$REENACT_CACHE/models`` built once, under a file lock (several test
  processes may start at once), written to a temporary name and renamed so readers never see half a file;
* :func:`save_fp16`: safetensors, every tensor fp16, one metadata entry (safetensors writes several in
  varying order, which would break byte-identical rebuilds);
* :func:`init_params`: deterministic initialisation of modules ComfyUI builds with ``torch.empty``.

Nothing from ComfyUI is imported here.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import pathlib
from collections.abc import Callable

import torch

# The single safetensors metadata key that describes how a test model was built.
METADATA_KEY = "reenact_test_model"


def models_dir(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """``cache_dir`` if given, else ``$REENACT_CACHE/models`` (default ``~/.cache/reenact-anything/models``)."""
    if cache_dir is not None:
        return pathlib.Path(cache_dir)
    base = os.environ.get("REENACT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "reenact-anything")
    return pathlib.Path(base) / "models"


def ensure_cached(name: str, build: Callable[[pathlib.Path], None], cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Path of ``name`` in :func:`models_dir`; if it is not there yet, ``build(tmp_path)`` writes it first.

    One process builds, others wait on the lock and reuse its file; the file appears atomically.
    """
    folder = models_dir(cache_dir)
    path = folder / name
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / (name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if path.is_file():
                return path
            tmp = folder / f".{name}.{os.getpid()}.tmp"
            try:
                build(tmp)
                os.chmod(tmp, 0o644)  # safetensors creates it private; the cache may be shared
                os.replace(tmp, path)  # readers never see a half-written file
            finally:
                tmp.unlink(missing_ok=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path


def prefixed(sd: dict, prefix: str = "") -> dict:
    """``sd`` with ``prefix`` before every key, each tensor detached, on the CPU, fp16 and contiguous."""
    return {prefix + k: v.detach().to("cpu", torch.float16).contiguous() for k, v in sd.items()}


def save_fp16(path: str | os.PathLike, sd: dict, description: dict) -> None:
    """Write ``sd`` (already fp16, see :func:`prefixed`) with ``description`` as the one metadata entry."""
    import safetensors.torch

    meta = {METADATA_KEY: json.dumps(description, sort_keys=True)}
    safetensors.torch.save_file(sd, str(path), metadata=meta)


def params_state_dict(module: torch.nn.Module) -> dict:
    """``module.state_dict()``, refusing buffers: :func:`init_params` fills parameters only, so a buffer
    would carry whatever ``torch.empty`` left behind into the file."""
    sd = module.state_dict()
    params = {name for name, _ in module.named_parameters()}
    extra = sorted(set(sd) - params)
    if extra:
        raise RuntimeError(f"state dict holds tensors that are not parameters (not initialised): {extra[:5]}")
    return sd


def init_params(
    module: torch.nn.Module,
    gen: torch.Generator,
    gain: Callable[[str], float] = lambda name: 1.0,
    special: Callable[[str, torch.nn.Parameter], torch.Tensor | None] | None = None,
) -> None:
    """Fill every parameter, in sorted-name order, from ``gen`` (values drawn in fp32).

    ``special(name, param)``, if given, is asked first and may return the value (drawing from the same
    generator keeps the order deterministic) or None for the rules below.
    Norms (LayerNorm, GroupNorm, RMSNorm, and ``gamma`` scales): weight 1, bias 0. Biases 0. Linear/conv
    weights: N(0, 1) * gain / sqrt(fan_in), which keeps activations O(1) through the depth. Learned
    temporal mix factors 0 (sigmoid -> even blend). Embeddings (CLIP class/position): N(0, 1) / sqrt(width),
    as open_clip does. Unknown parameter kinds raise, so a ComfyUI change cannot leave torch.empty garbage
    behind.
    """
    owners = {}
    for mname, mod in module.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            owners[f"{mname}.{pname}" if mname else pname] = (mod, pname, p)
    norms = (torch.nn.LayerNorm, torch.nn.GroupNorm) + ((torch.nn.RMSNorm,) if hasattr(torch.nn, "RMSNorm") else ())
    weighted = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    with torch.no_grad():
        for name in sorted(owners):
            mod, pname, p = owners[name]
            value = special(name, p) if special is not None else None
            if value is not None:
                pass
            elif pname == "mix_factor":
                value = torch.zeros(p.shape)
            elif isinstance(mod, norms):
                value = torch.ones(p.shape) if pname == "weight" else torch.zeros(p.shape)
            elif pname == "bias":
                value = torch.zeros(p.shape)
            elif isinstance(mod, weighted) and pname == "weight":
                fan_in = math.prod(p.shape[1:])
                value = torch.randn(p.shape, generator=gen) * (gain(name) / math.sqrt(fan_in))
            elif isinstance(mod, torch.nn.Embedding) or pname == "class_embedding":
                value = torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1])
            elif pname == "gamma":  # hand-written RMS norms (Wan VAE's RMS_norm)
                value = torch.ones(p.shape)
            else:
                raise RuntimeError(f"no initialisation rule for parameter {name} of {type(mod).__name__}")
            p.copy_(value)


@contextlib.contextmanager
def quiet():
    """Silence logging below ERROR: model construction logs expected noise (missing keys, model type)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)
