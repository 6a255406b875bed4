"""The GPU check: the pack's GPU path on a real NVIDIA GPU, in one prepared run (issue #25).

    python -m bench.gpu_check --prepare                           # here: fills .gpu/ (git-ignored, ~3 MB + sources)
    python3 -m bench.gpu_check --out $OUT/gpu_check.json          # on the GPU machine, with .gpu carried
    COMFYUI_ROOT=... python -m bench.gpu_check --cpu-dry-run      # CPU, tiny sizes (tests/test_gpu_check.py)

The GPU machine has no network and a stock PyTorch image, so ``--prepare`` packs what it lacks into
``.gpu/``: the wheels ComfyUI needs at start-up (torchsde, trampoline, comfy-aimdo, comfy-kitchen's
pure-Python wheel), sageattention 1.0.6 (Triton, the attention backend users start ComfyUI with), and
source archives of the ComfyUIs to check: the current one (``--current PATH``, a checkout made from the
search tool's ``github:yzkee/ComfyUI``) and v0.3.75 (2025-12, from PyPI). PyAV (35 MB) does not fit:
ComfyUI imports it at start-up for its own video nodes, which the check never runs, so a stub stands in
where it is missing (``AbsentModuleFinder``); the pack itself imports PyAV only to decode video.

Each ComfyUI runs in its own process (one process holds one ComfyUI) and does, with a full-size
random-weight SVD checkpoint (fp16, built once, loaded by the stock ImageOnlyCheckpointLoader):

* **chain** (hazards 2 and 3): Load Motion Reference (PNG frames) -> Motion Textual Inversion (50 steps,
  14 frames, 512x288, auto precision, checkpointing) -> SVD_img2vid_Conditioning -> Apply Motion Embedding ->
  VideoLinearCFGGuidance -> KSampler on the same MODEL, then a second, stock prompt on the same MODEL.
  With dynamic VRAM on where the ComfyUI has it (comfy-aimdo initialised as main.py does), the MODEL's
  ``is_dynamic()`` and the private-copy branch are recorded.
* **attention** (hazard 1): the inversion (10 steps) with ComfyUI's attention set to each backend present
  (PyTorch SDPA, sage, flash, xformers, comfy-kitchen int8).
* **wan** (issue #29, where the ComfyUI has Wan 2.2): Motion Textual Inversion on a full-size random-weight
  Wan2.2 TI2V-5B built in memory, 121 frames at 1280x704, bf16, checkpointing: s/step, peak VRAM, minutes per
  motion at the node's default steps; then with half its blocks kept in RAM (block swap), side by side: the time ratio,
  peak VRAM, and whether both start from the same loss.
* **wan14b**: Wan2.1-I2V 14B at full width with 8 of its 40 blocks, fp8 weights: workflow 6's inversion (33 frames,
  480x288), resident and with 6 blocks in RAM, side by side (per-block costs, x5 for the whole model).

The first ComfyUI also measures: ``bench.step_cost`` (bf16, checkpointing off and on: s/step, one UNet
forward, their ratio, peak VRAM, minutes per motion at the node's default steps) at 14 and 25 frames x
512x288 and 1024x576; ``bench.apply_overhead`` (stock SVD sampling vs the same graph with Apply Motion
Embedding, 14x1024x576, 20 steps); and the standard deviation of CLIP vision ``image_embeds`` of the
reference frames and of the learned tokens (random weights: a check of the machinery and of the scales
the optimiser sees, not of real SVD). One JSON, one printed table with the issue's targets.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
import types
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CARRY = REPO / ".gpu"
RESULTS = REPO / "bench" / "results"

# Wheels for the GPU machine's Python 3.12 that ComfyUI imports at start-up and its image lacks, plus sage.
WHEELS = ("torchsde==0.2.6", "trampoline==0.1.2", "comfy-aimdo==0.4.13", "comfy-kitchen==0.2.31", "sageattention==1.0.6")
TARGETS = {
    "minutes_14x512x288": 1.5, "minutes_14x1024x576": 5.0, "vram_gb_14x1024x576_ckpt": 12.0,
    "step_over_forward": 2.2, "step_over_forward_ckpt": 3.2, "apply_overhead": 1.02,
}
SETTINGS = {  # per run kind: the chain's inversion, the attention runs, the sampler, the benches
    "gpu": dict(frames=14, width=512, height=288, steps=50, attention_steps=10, sample_steps=10, full=True),
    "cpu": dict(frames=4, width=64, height=64, steps=2, attention_steps=1, sample_steps=1, full=False),
}
NEEDED_NODES = ("ImageOnlyCheckpointLoader", "SVD_img2vid_Conditioning", "VideoLinearCFGGuidance")


# ---- a stand-in for PyAV where it is missing ------------------------------------------------------------


class _Absent:
    """Any name of a missing package at import time; calling one says what is missing."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Absent(f"{self._name}.{attr}")

    def __call__(self, *args, **kwargs):
        raise ModuleNotFoundError(f"{self._name}: not installed on this machine (stub of bench/gpu_check.py)")

    def __mro_entries__(self, bases):
        return (object,)

    def __getitem__(self, key):
        return self

    def __or__(self, other):
        return self

    __ror__ = __or__


class AbsentModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import ``packages`` (and their submodules) as stubs whose every attribute is an ``_Absent``."""

    def __init__(self, packages):
        self.packages = set(packages)

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.packages:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__file__ = None

        def absent(attr: str):
            if attr.startswith("__"):
                raise AttributeError(attr)
            return _Absent(f"{spec.name}.{attr}")

        module.__getattr__ = absent  # type: ignore[method-assign]
        return module

    def exec_module(self, module):
        pass


def stub_missing(packages=("av",)) -> list[str]:
    missing = []
    for name in packages:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        sys.meta_path.insert(0, AbsentModuleFinder(missing))
    return missing


# ---- here: pack what the GPU machine lacks ------------------------------------------------------------


def prepare(current: Path | None) -> None:
    """Fill .gpu/: wheels for CPython 3.12 on manylinux x86_64, and ComfyUI source archives."""
    from testkit.install_comfyui import install

    wheels = CARRY / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for spec in WHEELS:
        pure = spec.startswith("comfy-kitchen")  # its pure-Python wheel: 0.2 MB instead of 58 MB
        platforms = ["any"] if pure else ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any"]
        command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                   "--implementation", "cp", "-d", str(wheels), spec]
        for platform in platforms:
            command += ["--platform", platform]
        subprocess.run(command, check=True)
    sources = {"2025-12": install("2025-12", Path(os.environ.get("REENACT_CACHE", Path.home() / ".cache/reenact-anything")) / "comfyui-2025-12")}
    if current is not None:
        sources = {"current": current, **sources}
    for name, root in sources.items():
        _archive(Path(root), CARRY / f"comfyui-{name}.tar.gz")
    (CARRY / "manifest.json").write_text(json.dumps({"comfyui": list(sources), "wheels": sorted(p.name for p in wheels.iterdir())}, indent=1))
    total = sum(p.stat().st_size for p in CARRY.rglob("*") if p.is_file())
    print(f"{CARRY}: {total / 2**20:.1f} MB; run there: python3 -m bench.gpu_check --out $OUT/gpu_check.json (carry .gpu)")


def _archive(root: Path, out: Path) -> None:
    top_level = {".git", "tests", "tests-unit", "script_examples", "input", "output", "models", "user", "temp", "custom_nodes"}
    with tarfile.open(out, "w:gz") as tar:
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root)
            if path.is_file() and rel.parts[0] not in top_level and "__pycache__" not in rel.parts:
                tar.add(path, arcname=str(rel))
    if out.stat().st_size > 30 * 2**20:
        raise SystemExit(f"{out} is {out.stat().st_size / 2**20:.0f} MB: too large to carry")


# ---- there: unpack, then one worker process per ComfyUI ------------------------------------------------


def unpack() -> tuple[dict[str, Path], str | None]:
    """ComfyUI roots and a PYTHONPATH holding the carried wheels."""
    manifest = json.loads((CARRY / "manifest.json").read_text())
    base = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    site = base / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--target", str(site),
                    *map(str, sorted((CARRY / "wheels").glob("*.whl")))], check=True)
    roots = {}
    for name in manifest["comfyui"]:
        root = base / f"comfyui-{name}"
        with tarfile.open(CARRY / f"comfyui-{name}.tar.gz") as tar:
            tar.extractall(root, filter="data")
        (root / "extra_model_paths.yaml").unlink(missing_ok=True)
        roots[name] = root
    return roots, str(site)


def main(argv=None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepare", action="store_true", help="fill .gpu/ here (needs PyPI)")
    parser.add_argument("--current", type=Path, default=None, help="with --prepare: a current ComfyUI checkout to carry")
    parser.add_argument("--cpu-dry-run", action="store_true", help="tiny sizes on CPU against COMFYUI_ROOT")
    parser.add_argument("--from-carry", action="store_true", help="dry run on the ComfyUIs and wheels packed in .gpu/ (as the GPU machine runs)")
    parser.add_argument("--without", default="", help="comma-separated packages to hide (dry run: 'av' emulates the GPU machine)")
    parser.add_argument("--out", type=Path, default=None, help="the JSON (default bench/results/gpu_check_<device>.json)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.prepare:
        prepare(args.current)
        return None
    if args.worker:
        return worker(args)

    kind = "cpu" if args.cpu_dry_run else "gpu"
    started = time.perf_counter()
    if kind == "gpu" or args.from_carry:
        roots, site = unpack()
    else:
        roots, site = {"dry-run": Path(os.environ["COMFYUI_ROOT"])}, None
    scratch = Path(tempfile.mkdtemp(prefix="gpu-check-run-"))
    checkpoint = scratch / "checkpoints" / "svd_full_random.safetensors"
    result = {"bench": "gpu_check", "kind": kind, "targets": TARGETS, "settings": SETTINGS[kind], "comfyui": {}}
    for index, (name, root) in enumerate(roots.items()):
        out = scratch / f"{name}.json"
        command = [sys.executable, "-m", "bench.gpu_check", "--worker", name, "--checkpoint", str(checkpoint), "--out", str(out)]
        command += ["--cpu-dry-run"] if kind == "cpu" else []
        command += ["--measure"] if index == 0 else []
        command += ["--without", args.without] if args.without else []
        env = dict(os.environ, COMFYUI_ROOT=str(root), PYTHONUNBUFFERED="1")
        if site:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [site, env.get("PYTHONPATH")]))
        code = subprocess.run(command, cwd=REPO, env=env).returncode
        part = json.loads(out.read_text()) if out.is_file() else {"error": f"worker exited with {code} and wrote nothing"}
        part["exit_code"] = code
        result["comfyui"][name] = part
    result["seconds"] = time.perf_counter() - started
    result["verdicts"] = verdicts(result)
    print(render(result))
    from bench import _common as C

    device = next((p.get("device") for p in result["comfyui"].values() if p.get("device")), "unknown")
    result["device"] = device
    C.save(result, args.out or RESULTS / f"gpu_check_{_slug(device)}.json")
    return result


# ---- the worker: one ComfyUI ------------------------------------------------------------------------


def worker(args) -> dict:
    settings = SETTINGS["cpu" if args.cpu_dry_run else "gpu"]
    hidden = [p for p in args.without.split(",") if p]
    if hidden:  # the dry run's emulation of a machine without them
        sys.meta_path.insert(0, AbsentModuleFinder(hidden))
    stubbed = hidden or stub_missing()
    part: dict = {"comfyui": args.worker, "stubbed_packages": stubbed, "checks": {}}
    try:
        dynamic_vram = _init_dynamic_vram() if not args.cpu_dry_run else False
        import torch

        from bench import _common as C
        from testkit.comfy_env import load_comfyui, load_pack, pack_submodule

        comfy = load_comfyui(cpu=args.cpu_dry_run, required_nodes=NEEDED_NODES)
        load_pack(comfy)
        device = "cpu" if args.cpu_dry_run else "cuda"
        part.update(device=C.device_name(device), torch=torch.__version__, comfyui_version=comfy.version, dynamic_vram_enabled=dynamic_vram)
        env = C.Env(device)
        checkpoint = _ensure_checkpoint(args.checkpoint, settings["full"])
        part["checkpoint"] = {"path": str(checkpoint), "gigabytes": checkpoint.stat().st_size / 2**30, "full_size": settings["full"]}
        private_model = pack_submodule(env.pack, "nodes.private_model")
        model, clip_vision, vae = env.load_checkpoint(checkpoint)
        part["model"] = {"patcher": type(model).__name__, "is_dynamic": bool(getattr(model, "is_dynamic", lambda: False)()),
                         "private_copy_branch": private_model.copy_branch(model)}
        reference = _reference(env, comfy, settings)
        _check(part, "chain", lambda: _chain(env, model, clip_vision, vae, reference, settings))
        _check(part, "attention", lambda: _attention_backends(env, model, vae, reference, settings, private_model))
        _check(part, "wan", lambda: _wan(env, settings))
        _check(part, "wan14b", lambda: _wan14b(env, settings))
        if args.measure:
            _check(part, "step_cost", lambda: _step_cost(args, settings))
            _check(part, "apply_overhead", lambda: _apply_overhead(args, checkpoint, settings))
    except Exception as error:  # noqa: BLE001 (reported in the JSON, the parent goes on with the next ComfyUI)
        part["error"] = f"{type(error).__name__}: {error}"
        part["traceback"] = traceback.format_exc()[-4000:]
    args.out.write_text(json.dumps(part, indent=1, default=str))
    return part


def _check(part: dict, name: str, run) -> None:
    started = time.perf_counter()
    try:
        part["checks"][name] = {"ok": True, **run()}
    except Exception as error:  # noqa: BLE001 (one failed check must not hide the others)
        part["checks"][name] = {"ok": False, "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-4000:]}
    part["checks"][name]["seconds"] = time.perf_counter() - started


def _init_dynamic_vram() -> bool:
    """Turn comfy-aimdo's dynamic VRAM on exactly as main.py does, where this ComfyUI has it (2026-02 on)."""
    sys.path.insert(0, os.environ["COMFYUI_ROOT"])
    import comfy.options

    comfy.options.args_parsing = False
    import comfy.cli_args as cli

    if not hasattr(cli, "enables_dynamic_vram") or not cli.enables_dynamic_vram():
        return False
    import comfy_aimdo.control as control

    headroom = None if cli.args.reserve_vram is None else int(cli.args.reserve_vram * 2**30)
    for kwargs in ({"simple_vram_headroom": headroom, "nvml_pressure": not getattr(cli.args, "disable_nvml_pressure", False)},
                   {"simple_vram_headroom": headroom}, {}):  # comfy-aimdo 0.4.11+, 0.4.10, 0.4.9 protocols
        try:
            control.init(**kwargs)
            break
        except TypeError:
            continue
    import comfy.memory_management
    import comfy.model_management as mm
    import comfy.model_patcher

    if not mm.is_nvidia():
        return False
    devices = mm.get_all_torch_devices()
    try:
        enabled = control.init_devices((d.index, int(cli.args.vram_headroom * 2**30)) for d in devices)
    except TypeError:
        enabled = control.init_devices(d.index for d in devices)
    if enabled:
        comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
        comfy.memory_management.aimdo_enabled = True
    return bool(enabled)


def _ensure_checkpoint(path: Path, full: bool) -> Path:
    """Full-size random SVD (UNet 1.52 B + the real VAE and ViT-H CLIP vision, fp16, ~4.5 GB), built once
    for all workers; the dry run uses the tests' small checkpoint."""
    from testkit.svd_checkpoint import ensure_svd_test_checkpoint, write_checkpoint

    if not full:
        return ensure_svd_test_checkpoint()
    if path.is_file():
        return path
    import torch

    from bench import _common as C

    path.parent.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else None
    base = C.build_full_svd(torch.float16, device=device)
    C.fill_random(base.diffusion_model, seed=20240301)
    tmp = path.with_name(path.name + ".partial")
    write_checkpoint(tmp, base.diffusion_model.state_dict(), 20240301, {"layout": "full-size SVD (gpu_check)"})
    del base
    os.replace(tmp, path)
    return path


def _reference(env, comfy, settings: dict):
    """A moving square as PNG frames (PyAV-free), loaded by Load Motion Reference."""
    import numpy as np
    from PIL import Image

    folder = Path(comfy.folder_paths.get_input_directory()) / "gpu_check_square"
    folder.mkdir(parents=True, exist_ok=True)
    frames, width, height = settings["frames"] + 2, settings["width"], settings["height"]
    side = max(4, height // 4)
    for i in range(frames):
        image = np.zeros((height, width, 3), np.uint8)
        x = int((width - side) * i / (frames - 1))
        image[height // 3 : height // 3 + side, x : x + side] = (230, 180, 40)
        Image.fromarray(image).save(folder / f"frame_{i:03d}.png")
    clip, _, _, _ = env.run("LoadMotionReference", video="gpu_check_square", frame_load_cap=0, skip_first_frames=0, select_every_nth=1,
                         custom_width=0, custom_height=0)
    return clip


def _invert(env, model, vae, reference, settings: dict, steps: int, clip_vision=None):
    inputs = dict(model=model, vae=vae, motion_reference=reference, steps=steps, learning_rate=0.3, tokens_per_frame=3,
                  video_frames=settings["frames"], width=settings["width"], height=settings["height"], seed=0, fps=6,
                  motion_bucket_id=127, augmentation_level=0.0, precision="auto", gradient_checkpointing=True)
    if clip_vision is not None:
        inputs["clip_vision"] = clip_vision
    return env.run("MotionTextualInversion", **inputs)[0]


def _sample(env, model, clip_vision, vae, settings: dict, embedding=None):
    import torch

    image = torch.linspace(0, 1, settings["height"] * settings["width"] * 3).reshape(1, settings["height"], settings["width"], 3)
    positive, negative, latent = env.run("SVD_img2vid_Conditioning", clip_vision=clip_vision, init_image=image, vae=vae,
                                         width=settings["width"], height=settings["height"], video_frames=settings["frames"],
                                         motion_bucket_id=127, fps=6, augmentation_level=0.0)
    if embedding is not None:
        positive, negative, _, _ = env.run("ApplyMotionEmbedding", positive=positive, negative=negative, motion_embedding=embedding,
                                     latent=latent, strength=1.0)
    (guided,) = env.run("VideoLinearCFGGuidance", model=model, min_cfg=1.0)
    (samples,) = env.run("KSampler", model=guided, seed=0, steps=settings["sample_steps"], cfg=2.5, sampler_name="euler",
                         scheduler="karras", positive=positive, negative=negative, latent_image=latent, denoise=1.0)
    latents = samples["samples"]
    if not bool(torch.isfinite(latents).all()):
        raise RuntimeError("the sampler produced non-finite latents")
    return latents


def _chain(env, model, clip_vision, vae, reference, settings: dict) -> dict:
    """Invert -> apply -> sample on the same MODEL, then a stock prompt on it (workflow 3 on a GPU)."""
    import torch

    sync = lambda: torch.cuda.synchronize() if torch.cuda.is_available() else None  # noqa: E731
    sync()
    started = time.perf_counter()
    embedding = _invert(env, model, vae, reference, settings, settings["steps"], clip_vision=clip_vision)
    sync()
    invert_seconds = time.perf_counter() - started
    _sample(env, model, clip_vision, vae, settings, embedding)
    _sample(env, model, clip_vision, vae, settings)  # the second prompt, stock, same MODEL
    frames = reference.frames[: settings["frames"]]
    with torch.inference_mode():
        embeds = clip_vision.encode_image(frames).image_embeds
    return {
        "inversion_seconds": invert_seconds, "inversion_steps": settings["steps"],
        "embedding_finite": bool(torch.isfinite(embedding.spatial).all() and torch.isfinite(embedding.temporal).all()),
        "clip_image_embeds_std": float(embeds.float().std()), "learned_tokens_std": float(embedding.spatial.float().std()),
        "learned_shared_tokens_std": float(embedding.temporal.float().std()),
        "peak_vram_gb": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
    }


def _attention_backends(env, model, vae, reference, settings: dict, private_model) -> dict:
    """The inversion with ComfyUI's attention set to each backend this machine has (restored after)."""
    import torch
    from comfy.ldm.modules import attention

    names = {"pytorch": "attention_pytorch", "sage": "attention_sage", "flash": "attention_flash", "xformers": "attention_xformers",
             "comfy_kitchen_int8": "attention_comfy_kitchen_int8"}
    available = {"pytorch": True, "sage": getattr(attention, "SAGE_ATTENTION_IS_AVAILABLE", False),
                 "flash": getattr(attention, "FLASH_ATTENTION_IS_AVAILABLE", False),
                 "xformers": bool(getattr(getattr(attention, "model_management", None), "xformers_enabled", lambda: False)()),
                 "comfy_kitchen_int8": getattr(attention, "COMFY_KITCHEN_INT8_ATTENTION_IS_AVAILABLE", False)}
    saved = attention.optimized_attention, attention.optimized_attention_masked
    runs = {}
    for name, function_name in names.items():
        function = getattr(attention, function_name, None)
        if function is None or not available[name]:
            runs[name] = "absent"
            continue
        try:
            attention.optimized_attention = attention.optimized_attention_masked = function
            embedding = _invert(env, model, vae, reference, settings, settings["attention_steps"])
            finite = bool(torch.isfinite(embedding.spatial).all())
            restored = attention.optimized_attention is function
            runs[name] = "ok" if finite and restored else f"finite={finite}, restored={restored}"
        except Exception as error:  # noqa: BLE001
            runs[name] = f"{type(error).__name__}: {error}"
        finally:
            attention.optimized_attention, attention.optimized_attention_masked = saved
    if any(v not in ("ok", "absent") for v in runs.values()):
        raise RuntimeError(f"the inversion failed under some attention backends: {runs}")
    return {"backends": runs, "trained_through": private_model.attention_name(private_model.training_attention())}


# Wan2.2 TI2V-5B as ComfyUI detects it (model_detection's Wan branch); the dry run uses the tests' tiny TI2V-shaped model.
WAN22_TI2V_5B = {"image_model": "wan2.1", "dim": 3072, "num_heads": 24, "ffn_dim": 14336, "num_layers": 30, "patch_size": (1, 2, 2),
                 "freq_dim": 256, "window_size": (-1, -1), "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6, "model_type": "t2v",
                 "in_dim": 48, "out_dim": 48}
WAN_SETTINGS = {"gpu": dict(frames=121, width=1280, height=704, steps=6), "cpu": dict(frames=9, width=64, height=64, steps=2)}


def _wan(env, settings: dict) -> dict:
    """Motion Textual Inversion on Wan2.2 TI2V-5B with random weights (full size on the GPU, in memory: no file),
    121 frames at 1280x704 (its 720p), bf16, gradient checkpointing, through the node; the encoder is
    testkit's stand-in Wan2.2 VAE (the real one is 1.4 GB of weights nobody can download here, and only encodes).
    Reports s/step (steps after the first), peak VRAM and minutes per motion at the node's default steps; then the same
    with half the blocks kept in RAM (block swap: side-stream copies, pinned memory), side by side, and whether both
    start from the same loss (the swapped blocks compute what the resident ones do)."""
    import comfy.sd
    import comfy.supported_models
    import torch

    from reenact_core.inversion import InversionConfig
    from testkit.wan_checkpoint import WAN22_TI2V_CONFIG, WAN22_TI2V_SEED, _dit_state_dict

    if not hasattr(comfy.supported_models, "WAN22_T2V"):
        return {"skipped": "this ComfyUI has no Wan 2.2 (needs >= 0.3.46)"}
    wan = WAN_SETTINGS["gpu" if settings["full"] else "cpu"]
    config = WAN22_TI2V_5B if settings["full"] else WAN22_TI2V_CONFIG
    with torch.inference_mode():
        state_dict = _dit_state_dict("WAN22_T2V", config, WAN22_TI2V_SEED)
        model = comfy.sd.load_diffusion_model_state_dict(state_dict)
    del state_dict
    reference = _ramp_reference(env, wan)
    resident = _wan_inversion(env, model, reference, wan, blocks_to_swap=0)
    swapped = _wan_inversion(env, model, reference, wan, blocks_to_swap=config["num_layers"] // 2)
    return {
        "model": "Wan2.2 TI2V-5B, random weights" if settings["full"] else "tiny TI2V-shaped test model",
        "frames": wan["frames"], "size": f"{wan['width']}x{wan['height']}", "latent_frames": resident["latent_frames"],
        "base_model": resident["base_model"], "seconds_per_step": resident["seconds_per_step"],
        "minutes_per_motion": resident["seconds_per_step"] * InversionConfig.steps / 60, "default_steps": InversionConfig.steps,
        "peak_vram_gb": resident["peak_vram_gb"], "embedding_finite": resident["embedding_finite"] and swapped["embedding_finite"],
        "block_swap": _side_by_side(resident, swapped, config["num_layers"]),
    }


def _wan_inversion(env, model, reference, wan: dict, blocks_to_swap: int, vae=None, clip_vision=None) -> dict:
    import comfy.utils
    import torch

    from testkit.wan_checkpoint import StandInWan22VAE

    # Per-step time from the node's own progress updates (after its first step): loading, the private copy and the
    # preflight stay out of it, and it cannot come out negative as a difference of two runs' times can on a busy CPU.
    stamps: list[float] = []
    previous_hook = comfy.utils.PROGRESS_BAR_HOOK

    def hook(value, total, preview, *args, **kwargs):
        stamps.append(time.perf_counter())
        if previous_hook is not None:
            previous_hook(value, total, preview, *args, **kwargs)

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    options = env.run("MotionInversionOptions", **_option_defaults(env), blocks_to_swap=blocks_to_swap)[0]
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        embedding, _, report = env.run(
            "MotionTextualInversion", model=model, vae=vae or StandInWan22VAE(), motion_reference=reference, steps=1 + wan["steps"],
            learning_rate=0.3, tokens_per_frame=5, video_frames=wan["frames"], width=wan["width"], height=wan["height"], seed=0, fps=0,
            motion_bucket_id=127, augmentation_level=0.0, precision="auto", gradient_checkpointing=True, options=options,
            clip_vision=clip_vision)
    finally:
        comfy.utils.set_progress_bar_global_hook(previous_hook)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    step_ends = stamps[-(1 + wan["steps"]):]  # one update per step, the last ones (nothing else reports progress here)
    return {
        "blocks_to_swap": blocks_to_swap, "seconds_per_step": (step_ends[-1] - step_ends[0]) / wan["steps"],
        "latent_frames": int(embedding.metadata["latent_frames"]), "base_model": embedding.metadata["base_model"],
        "initial_loss": float(embedding.metadata["initial_loss"]),
        "peak_vram_gb": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        "embedding_finite": bool(torch.isfinite(embedding.spatial).all()), "report_says": "Block swap" in report,
    }


# Wan2.1-I2V 14B at full width (model_detection's Wan branch) with 8 of its 40 blocks: what fits the GPU check's time.
WAN21_I2V_14B = {**WAN22_TI2V_5B, "dim": 5120, "num_heads": 40, "ffn_dim": 13824, "model_type": "i2v", "in_dim": 36, "out_dim": 16}
WAN14B_BLOCKS = 8
WAN14B_SETTINGS = {"gpu": dict(frames=33, width=480, height=288, steps=4), "cpu": dict(frames=9, width=32, height=32, steps=2)}


def _wan14b(env, settings: dict) -> dict:
    """Wan2.1-I2V 14B at full width with 8 of its 40 blocks, random weights, loaded as Load Diffusion Model's weight_dtype
    fp8_e4m3fn loads it: workflow 6's inversion (33 frames at 480x288, bf16 compute, checkpointing) with every block on the
    GPU, then with 6 of the 8 in RAM (block swap), side by side. Per-block costs extend to the 40 blocks (x5). The VAE is
    the tests' tiny Wan2.1 VAE and CLIP vision a 2-layer ViT-H stand-in (only their output shapes matter to the DiT)."""
    import comfy.sd
    import comfy.supported_models
    import comfy.utils
    import torch

    from testkit.wan_checkpoint import WAN21_I2V_CONFIG, WAN21_I2V_SEED, _dit_state_dict, ensure_wan21_vae_test_model, tiny_wan_clip_vision

    if not hasattr(comfy.supported_models, "WAN21_I2V"):
        return {"skipped": "this ComfyUI has no Wan 2.1 (needs >= 0.3.16)"}
    wan = WAN14B_SETTINGS["gpu" if settings["full"] else "cpu"]
    config = dict(WAN21_I2V_14B, num_layers=WAN14B_BLOCKS) if settings["full"] else WAN21_I2V_CONFIG
    with torch.inference_mode():
        state_dict = _dit_state_dict("WAN21_I2V", config, WAN21_I2V_SEED)
        model = comfy.sd.load_diffusion_model_state_dict(state_dict, model_options={"dtype": torch.float8_e4m3fn})
        vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(ensure_wan21_vae_test_model())))
    del state_dict
    reference = _ramp_reference(env, wan)
    clip_vision = tiny_wan_clip_vision()
    blocks = config["num_layers"]
    resident = _wan_inversion(env, model, reference, wan, 0, vae, clip_vision)
    swapped = _wan_inversion(env, model, reference, wan, blocks - 2 if blocks > 2 else 1, vae, clip_vision)
    return {
        "model": f"Wan2.1-I2V 14B width, {blocks} of 40 blocks, fp8 weights" if settings["full"] else "tiny Wan2.1-I2V test model, fp8",
        "frames": wan["frames"], "size": f"{wan['width']}x{wan['height']}", "blocks": blocks, "resident": resident,
        "block_swap": _side_by_side(resident, swapped, blocks),
        "seconds_per_step_40_blocks": resident["seconds_per_step"] * 40 / blocks if settings["full"] else None,
    }


def _ramp_reference(env, wan: dict):
    """A Load Motion Reference of wan["frames"] frames at its size: a brightness ramp (random weights learn nothing
    from any clip; only the shapes matter)."""
    import torch

    frames = torch.linspace(0, 1, wan["frames"] * wan["height"] * wan["width"] * 3).reshape(wan["frames"], wan["height"], wan["width"], 3)
    return env.run("LoadMotionReference", video="none", frame_load_cap=0, skip_first_frames=0, select_every_nth=1, custom_width=0,
                   custom_height=0, images=frames)[0]


def _side_by_side(resident: dict, swapped: dict, blocks: int) -> dict:
    """The block-swap run against the resident one: its time ratio, and whether both start from the same loss (the
    swapped blocks compute what the resident ones do)."""
    same = abs(swapped["initial_loss"] - resident["initial_loss"]) <= 0.01 * abs(resident["initial_loss"])
    return dict(swapped, blocks=blocks, time_ratio=swapped["seconds_per_step"] / resident["seconds_per_step"], same_initial_loss=same)


def _option_defaults(env) -> dict:
    spec = env.comfy.nodes.NODE_CLASS_MAPPINGS["MotionInversionOptions"].INPUT_TYPES()
    return {name: s[1]["default"] for group in ("required", "optional") for name, s in spec.get(group, {}).items() if name != "blocks_to_swap"}


def _step_cost(args, settings: dict) -> dict:
    from bench import step_cost

    if not settings["full"]:
        return step_cost.main(["--model", "test", "--quick", "--device", "cpu", "--no-flops", "--dtypes", "fp32"])
    rows = []
    for model in ("svd-full", "svd-xt-full"):  # 14 and 25 frames, each at 1024x576 and the node's 512x288
        rows += step_cost.main(["--model", model, "--device", "cuda", "--repeats", "3", "--no-flops"])["rows"]
    return {"rows": rows}


def _apply_overhead(args, checkpoint: Path, settings: dict) -> dict:
    from bench import apply_overhead

    if not settings["full"]:
        return apply_overhead.main(["--checkpoint", str(checkpoint), "--quick", "--device", "cpu"])
    return apply_overhead.main(["--checkpoint", str(checkpoint), "--frames", "14", "--width", "1024", "--height", "576", "--steps", "20",
                                "--repeats", "2", "--device", "cuda"])


# ---- verdicts and the table ---------------------------------------------------------------------------


def verdicts(result: dict) -> list[dict]:
    """One row per check or target: what was asked, what was measured, and whether it holds."""
    rows = []
    for name, part in result["comfyui"].items():
        label = f"{name} ({part.get('comfyui_version', '?')})"
        if part.get("error"):
            rows.append(dict(check=f"{label}: worker", value=part["error"], ok=False))
            continue
        model = part.get("model", {})
        rows.append(dict(check=f"{label}: MODEL", value=f"{model.get('patcher')} dynamic={model.get('is_dynamic')} "
                         f"copy={model.get('private_copy_branch')} aimdo={part.get('dynamic_vram_enabled')}", ok=True))
        for check, outcome in part["checks"].items():
            if check in ("step_cost", "apply_overhead"):
                continue
            if outcome.get("error"):
                value = outcome["error"]
            elif check == "attention":
                value = "; ".join(f"{k} {v}" for k, v in outcome["backends"].items()) + f" (trained through {outcome['trained_through']})"
            elif check == "wan14b":
                swap = outcome.get("block_swap") or {}
                value = outcome.get("skipped") or (
                    f"{outcome['model']}, {outcome['frames']}x{outcome['size']}: {outcome['resident']['seconds_per_step']:.2f} s/step "
                    f"(x40/{outcome['blocks']}: {_fmt(outcome['seconds_per_step_40_blocks'], ' s')}), peak VRAM "
                    f"{_fmt(outcome['resident']['peak_vram_gb'], ' GB')}; {_swap_summary(swap)}")
            elif check == "wan":
                swap = outcome.get("block_swap") or {}
                value = outcome.get("skipped") or (
                    f"{outcome['model']}, {outcome['frames']}x{outcome['size']}: {outcome['seconds_per_step']:.2f} s/step, "
                    f"{outcome['minutes_per_motion']:.1f} min per motion at {outcome['default_steps']} steps, peak VRAM {_fmt(outcome['peak_vram_gb'], ' GB')}; "
                    f"{_swap_summary(swap)}")
            else:
                value = f"invert {outcome['inversion_seconds']:.1f} s ({outcome['inversion_steps']} steps), apply + sample, stock prompt: ok"
            same_start = (outcome.get("block_swap") or {}).get("same_initial_loss", True)  # block swap computes what resident blocks do
            rows.append(dict(check=f"{label}: {check}", value=str(value), ok=outcome["ok"] and same_start))
    first = next(iter(result["comfyui"].values()), {})
    checks = first.get("checks", {})
    gpu = result["kind"] == "gpu"
    step_rows = checks.get("step_cost", {}).get("rows", [])
    for row in step_rows:
        if row["run"] == "forward":
            continue
        ckpt = row["run"] == "step_ckpt"
        target = TARGETS["step_over_forward_ckpt" if ckpt else "step_over_forward"]
        size = f"{row.get('frames', '')}x{row['size']}" if row.get("frames") else row["size"]
        rows.append(dict(check=f"step / forward, {size} {row['dtype']}, {'ckpt' if ckpt else 'no ckpt'} (<= {target}x)",
                         value=_fmt(row.get("time_ratio"), "x"), ok=_within(row.get("time_ratio"), target) if gpu else None))
        if ckpt:
            minutes = row.get("minutes_per_motion")
            key = {"512x288": "minutes_14x512x288", "1024x576": "minutes_14x1024x576"}.get(row["size"])
            if row.get("frames") == 14 and key:
                rows.append(dict(check=f"minutes per motion, 14x{row['size']} (<= {TARGETS[key]})", value=_fmt(minutes, " min"),
                                 ok=_within(minutes, TARGETS[key]) if gpu else None))
            if row.get("frames") == 14 and row["size"] == "1024x576":
                vram = (row.get("vram_bytes") or 0) / 2**30
                rows.append(dict(check=f"peak VRAM, 14x1024x576, ckpt (<= {TARGETS['vram_gb_14x1024x576_ckpt']} GB)",
                                 value=_fmt(vram, " GB"), ok=_within(vram, TARGETS["vram_gb_14x1024x576_ckpt"]) if gpu else None))
    for row in checks.get("apply_overhead", {}).get("rows", []):
        if row["graph"] == "motion":
            rows.append(dict(check=f"apply overhead, whole graph (<= {TARGETS['apply_overhead']}x)", value=_fmt(row["time_ratio"], "x"),
                             ok=_within(row["time_ratio"], TARGETS["apply_overhead"]) if gpu else None))
    for name in ("step_cost", "apply_overhead"):
        if name in checks and not checks[name]["ok"]:
            rows.append(dict(check=name, value=checks[name]["error"], ok=False))
    chain = checks.get("chain", {})
    if chain.get("ok"):
        rows.append(dict(check="std of CLIP image_embeds / learned tokens (random weights)",
                         value=f"{chain['clip_image_embeds_std']:.3g} / {chain['learned_tokens_std']:.3g}", ok=None))
    return rows


def _within(value, target) -> bool | None:
    return None if value is None else bool(value <= target)


def _swap_summary(swap: dict) -> str:
    return (f"{swap.get('blocks_to_swap')} of {swap.get('blocks')} blocks in RAM: {swap.get('time_ratio', float('nan')):.2f}x the time, "
            f"peak VRAM {_fmt(swap.get('peak_vram_gb'), ' GB')}, same first loss: {swap.get('same_initial_loss')}")


def _fmt(value, suffix: str) -> str:
    return "-" if value is None else f"{value:.2f}{suffix}"


def render(result: dict) -> str:
    marks = {True: "yes", False: "NO", None: "-"}
    rows = [["check", "ok", "measured"]] + [[r["check"], marks[r["ok"]], r["value"]] for r in result["verdicts"]]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    lines = [f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]}" for row in rows]
    lines.insert(1, "-" * (widths[0] + widths[1] + 12))
    return "\n".join([f"GPU check ({result['kind']}), {result['seconds']:.0f} s"] + lines)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")[:60]


if __name__ == "__main__":
    sys.exit(0 if main() is not False else 1)
