"""What bench/step_cost.py and bench/apply_overhead.py share: a real ComfyUI with the pack, the models
(test checkpoint, Motion World, full-size random-weight SVD / SVD-XT), timing, memory and tables."""

from __future__ import annotations

import atexit
import datetime
import gc
import json
import math
import os
import platform
import statistics
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
MODELS = ("test", "motion-world", "svd-full", "svd-xt-full")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Dense (no sparsity) bf16 tensor-core rates in TFLOPS, vendor figures; first match in the device name wins.
PEAK_BF16_TFLOPS = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM (e.g. "NVIDIA H100 80GB HBM3")
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("RTX 6000 Ada", 364.0),
    ("RTX 4090", 165.0),
    ("RTX 4080", 97.0),
    ("RTX 3090", 71.0),
    ("A10G", 70.0),
    ("L4", 121.0),
)

# The real SVD / SVD-XT UNet (both the same architecture, ~1.52 B parameters): ComfyUI's SVD_img2vid
# model config (comfy.supported_models.SVD_img2vid.unet_config, the keys detection matches on) plus
# what comfy.model_detection.detect_unet_config derives from the shapes of svd.safetensors. Verified
# at build time: ComfyUI's own detection must map the built state dict back to SVD_img2vid with
# this same layout.
FULL_SVD_LAYOUT = {
    "use_checkpoint": False,
    "image_size": 32,
    "use_spatial_transformer": True,
    "legacy": False,
    "num_classes": "sequential",
    "out_channels": 4,
    "num_res_blocks": [2, 2, 2, 2],
    "channel_mult": [1, 2, 4, 4],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "transformer_depth_middle": 1,
    "extra_ff_mix_layer": True,
    "use_spatial_context": True,
    "merge_strategy": "learned_with_images",
    "merge_factor": 0.0,
    "video_kernel_size": [3, 1, 1],
}


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    return name


class Env:
    """A real ComfyUI (COMFYUI_ROOT) with the pack loaded by ComfyUI's own custom-node loader."""

    def __init__(self, device: str):
        from testkit.comfy_env import load_comfyui, load_pack, pack_submodule, run_node

        self.device = device
        # PyTorch SDPA attention for sampling too (what ComfyUI picks on CUDA with torch 2; the
        # inversion swaps it in itself). One process holds one ComfyUI: a second call reuses it.
        self.comfy = load_comfyui(cpu=device == "cpu", use_pytorch_cross_attention=True)
        self.pack = load_pack(self.comfy)
        self.sub = lambda name: pack_submodule(self.pack, name)
        self.run = lambda name, **kw: run_node(self.comfy, name, **kw)
        self.mm = self.comfy.model_management

    def node_default(self, node: str, name: str):
        spec = self.pack.NODE_CLASS_MAPPINGS[node].INPUT_TYPES()
        for group in ("required", "optional"):
            if name in spec.get(group, {}):
                return spec[group][name][1]["default"]
        raise KeyError(f"{node} has no input {name}")

    def load(self, model: str):
        """(MODEL, CLIP_VISION, VAE) of the test checkpoint or Motion World, by the stock / pack loader."""
        key = ("loaded", model)
        cache = _CACHE.setdefault(id(self.comfy), {})
        if key in cache:
            return cache[key]
        if model == "test":
            from testkit.svd_checkpoint import ensure_svd_test_checkpoint

            out = self.load_checkpoint(ensure_svd_test_checkpoint())
        elif model == "motion-world":
            name = "motion_world.safetensors"
            if not (REPO / "motion_world" / name).is_file():
                raise SystemExit(f"--model motion-world: motion_world/{name} is not in the pack (train or fetch it first)")
            out = self.run("MotionWorldLoader", model_name=name)
        else:
            raise ValueError(model)
        cache[key] = out
        return out

    def load_checkpoint(self, path):
        """(MODEL, CLIP_VISION, VAE) of an SVD checkpoint file, by the stock ImageOnlyCheckpointLoader."""
        from testkit.comfy_env import register_model_folder

        register_model_folder(self.comfy, "checkpoints", os.path.dirname(os.fspath(path)))
        return self.run("ImageOnlyCheckpointLoader", ckpt_name=os.path.basename(os.fspath(path)))

    def full_svd(self, dtype: torch.dtype):
        """A ModelPatcher of the full-size SVD UNet with deterministic random weights, built in
        ``dtype`` from ComfyUI's model config (nothing downloaded). SVD-XT has the same UNet."""
        import comfy.model_patcher

        base = build_full_svd(dtype)
        fill_random(base.diffusion_model, seed=20240301)
        return comfy.model_patcher.ModelPatcher(base, load_device=self.mm.get_torch_device(), offload_device=self.mm.unet_offload_device())


def build_full_svd(dtype: torch.dtype, device=None):
    """ComfyUI's ``SVD_img2vid`` model with the full-size UNet, weights left uninitialised (ComfyUI's
    layers skip init); checked against ComfyUI's own checkpoint detection. ``device="meta"`` builds
    only the shapes."""
    import comfy.model_detection
    import comfy.supported_models
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    config = dict(comfy.supported_models.SVD_img2vid.unet_config, **FULL_SVD_LAYOUT)
    if "disable_temporal_crossattention" in _init_params(UNetModel):
        config["disable_temporal_crossattention"] = False
    model_config = comfy.supported_models.SVD_img2vid(config)
    model_config.set_inference_dtype(dtype, None)
    base = model_config.get_model({}, device=device)
    _check_detected(comfy.model_detection, comfy.supported_models.SVD_img2vid, base.diffusion_model, config)
    return base


_CACHE: dict = {}
atexit.register(_CACHE.clear)  # drop the models while ComfyUI's modules still exist (their __del__ needs them)


def remember_loaded(comfy, model: str, outputs) -> None:
    """Hand over (MODEL, CLIP_VISION, VAE) already loaded in this process (tests), so Env.load reuses it."""
    _CACHE.setdefault(id(comfy), {})[("loaded", model)] = outputs


def context_dim(patcher) -> int:
    """Width of the model's cross-attention tokens (1024 for SVD, smaller for Motion World)."""
    config = getattr(patcher.model, "model_config", None)
    dim = getattr(config, "unet_config", {}).get("context_dim") if config is not None else None
    return int(dim) if dim else 1024


def forget_loaded() -> None:
    _CACHE.clear()


def _init_params(cls) -> set:
    import inspect

    return set(inspect.signature(cls.__init__).parameters)


def _check_detected(model_detection, svd_config_cls, unet, config: dict) -> None:
    prefix = "model.diffusion_model."
    sd = {prefix + k: v for k, v in unet.state_dict().items()}
    detected = model_detection.model_config_from_unet(sd, prefix)
    if type(detected) is not svd_config_cls:
        raise RuntimeError(f"the full-size UNet is detected as {type(detected).__name__}, not SVD_img2vid")
    for key in ("channel_mult", "num_res_blocks", "transformer_depth", "transformer_depth_output", "model_channels"):
        got, want = detected.unet_config.get(key), config.get(key)
        if got is not None and list(got if isinstance(got, list) else [got]) != list(want if isinstance(want, list) else [want]):
            raise RuntimeError(f"ComfyUI detects {key}={got} for the full-size UNet, built with {want}")
    params = sum(p.numel() for p in unet.parameters())
    if not 1.4e9 < params < 1.6e9:
        raise RuntimeError(f"the full-size SVD UNet has {params / 1e9:.2f} B parameters, expected ~1.52 B")


@torch.no_grad()
def fill_random(module: torch.nn.Module, seed: int) -> None:
    """Random weights in place, in the module's own dtype and device (fast for 1.5 B parameters):
    norms 1/0, biases 0, mix factors 0, other weights N(0, 1/fan_in) (activations stay O(1))."""
    gen = torch.Generator(device=next(module.parameters()).device).manual_seed(seed)
    for name, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "mix_factor" or leaf == "bias":
            p.zero_()
        elif p.dim() == 1:  # norm weights
            p.fill_(1.0)
        else:
            fan_in = math.prod(p.shape[1:])
            p.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=gen)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def median(values) -> float:
    return float(statistics.median(values)) if values else float("nan")


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU {model} ({torch.get_num_threads()} threads)"


def peak_bf16_tflops(name: str, override: float | None) -> float | None:
    if override:
        return override
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return tflops
    return None


class CudaPeak:
    """Peak CUDA memory allocated above what was allocated when the block started."""

    def __enter__(self):
        torch.cuda.synchronize()
        self.before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc):
        torch.cuda.synchronize()
        self.peak_total = torch.cuda.max_memory_allocated()
        self.peak = self.peak_total - self.before
        return False


class RssPeak:
    """Peak resident memory of this process above its level when the block started, sampled every
    2 ms by a thread with psutil (``method`` says so); without psutil, getrusage's ru_maxrss, which
    only shows growth beyond the process's earlier all-time peak. Freed heap memory is first handed
    back to the OS (glibc malloc_trim), or memory a previous run left cached would hide this one's."""

    def __enter__(self):
        _malloc_trim()
        try:
            import psutil
        except ImportError:
            psutil = None
        if psutil is None:
            import resource

            self.method = "ru_maxrss delta (growth beyond the earlier all-time peak only)"
            self._read = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self._thread = None
        else:
            proc = psutil.Process()
            self.method = "peak RSS delta (psutil, 2 ms sampling)"
            self._read = lambda: proc.memory_info().rss
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
        self.before = self._read()
        self._max = self.before
        if self._thread is not None:
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self._max = max(self._max, self._read())
            self._stop.wait(0.002)

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        self._max = max(self._max, self._read())
        self.peak = self._max - self.before
        return False


def _malloc_trim() -> None:
    import ctypes
    import ctypes.util

    gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc


def memory_meter(device: str):
    return CudaPeak() if device == "cuda" else RssPeak()


def fmt(value, spec: str = ".2f", suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:{spec}}{suffix}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def header(bench: str, env: Env, model: str) -> dict:
    return {
        "bench": bench,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(env.device),
        "device_type": env.device,
        "torch": torch.__version__,
        "comfyui_root": env.comfy.root,
        "comfyui_version": env.comfy.version,
        "model": model,
    }


def save(result: dict, out: Path | None) -> None:
    if out is None:
        return
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(_finite(result), indent=1, allow_nan=False, default=_jsonable) + "\n")
    os.replace(tmp, out)
    print(f"raw numbers: {out}")


def _finite(value):
    """NaN / inf (a run that was skipped or ran out of memory) become null: the file stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _jsonable(value):
    if isinstance(value, torch.dtype):
        return str(value).replace("torch.", "")
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
