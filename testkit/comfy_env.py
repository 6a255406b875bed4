"""Import a real ComfyUI in-process for tests (CPU only, no custom nodes, private folders).

ComfyUI is a set of top-level modules (``nodes``, ``folder_paths``, ``comfy``...), not an installable
package, so it can only be imported by putting its checkout first on ``sys.path``. One process can
hold one ComfyUI: ``load_comfyui`` is idempotent and refuses a second, different root.

Works with ComfyUI 2024-03 (synchronous ``init_custom_nodes``) and current ComfyUI (asynchronous
``init_extra_nodes``, V3 nodes). Nothing from ComfyUI is copied here; it is imported at runtime.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib
import inspect
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import types

import torch

# One process holds one ComfyUI.
_STATE = types.SimpleNamespace(lock=threading.Lock(), ns=None)

# Built-in nodes the tests rely on; they live in comfy_extras/ and are not part of nodes.py.
_REQUIRED_EXTRA_NODES = (
    "ImageOnlyCheckpointLoader",
    "SVD_img2vid_Conditioning",
    "VideoLinearCFGGuidance",
    "SaveAnimatedWEBP",
)


def load_comfyui(
    root: str | None = None, dirs: str | None = None, required_nodes: tuple[str, ...] = _REQUIRED_EXTRA_NODES, **cli_args
) -> types.SimpleNamespace:
    """Import the ComfyUI at ``root`` (default: env COMFYUI_ROOT) and return its main modules.

    ``dirs`` (default: env REENACT_TEST_DIRS, else a fresh temp dir) receives ComfyUI's output, temp,
    input and user folders so tests never write into the ComfyUI checkout. ``required_nodes``: built-in
    nodes whose absence is an error (a machine without some of ComfyUI's optional packages loses others).
    ``cpu`` (default True) forces ``--cpu``; ``cpu=False`` keeps ComfyUI's own device choice.
    """
    with _STATE.lock:
        root = root or os.environ.get("COMFYUI_ROOT")
        if not root:
            raise RuntimeError(
                "No ComfyUI to test against: pass root= or set COMFYUI_ROOT to a ComfyUI checkout "
                "(./dev.sh test sets it up and exports it)."
            )
        root = os.path.realpath(root)
        if _STATE.ns is not None:
            if _STATE.ns.root != root:
                raise RuntimeError(f"ComfyUI {_STATE.ns.root} is already imported; cannot also import {root}")
            return _STATE.ns
        if not os.path.isfile(os.path.join(root, "nodes.py")) or not os.path.isdir(os.path.join(root, "comfy")):
            raise RuntimeError(f"COMFYUI_ROOT={root} does not look like a ComfyUI checkout (no nodes.py / comfy/)")
        _import_comfy_package(root, cli_args)

        import folder_paths

        base = _set_directories(folder_paths, dirs)

        import comfy.model_management  # noqa: I001 (order matters: after args.cpu, before nodes)

        # 2025+: nodes.py puts comfy/ first on sys.path, where comfy/utils.py would then shadow ComfyUI's
        # top-level `utils` package; main.py imports that package before nodes, and so do we.
        if os.path.isfile(os.path.join(root, "utils", "__init__.py")):
            importlib.import_module("utils")
        import nodes

        if not os.path.realpath(nodes.__file__).startswith(root + os.sep):
            raise RuntimeError(f"`import nodes` gave {nodes.__file__}, not ComfyUI's nodes.py in {root}")
        _init_builtin_extra_nodes(nodes, required_nodes)
        missing = [n for n in required_nodes if n not in nodes.NODE_CLASS_MAPPINGS]
        if missing:
            raise RuntimeError(f"ComfyUI at {root} did not register the built-in nodes {missing}")

        import comfy.sample
        import comfy.samplers
        import comfy.sd

        _STATE.ns = types.SimpleNamespace(
            root=root,
            version=_version(root),
            dirs=base,
            comfy=sys.modules["comfy"],
            nodes=nodes,
            model_management=comfy.model_management,
            folder_paths=folder_paths,
            sd=comfy.sd,
            sample=comfy.sample,
            samplers=comfy.samplers,
            cli_args=comfy.cli_args,
        )
        return _STATE.ns


def import_comfy_package(root: str | None = None) -> str:
    """Make ComfyUI's ``comfy`` package importable (model code, ops, attention) without ``nodes``, the folders
    or the built-in nodes, CPU forced: for tests of one model class, in a second or two. Returns the root.

    A later :func:`load_comfyui` of the same root in the same process still works (it finds the same modules
    and --cpu already set); its other ``cli_args`` come too late for modules already imported.
    """
    with _STATE.lock:
        root = os.path.realpath(root or os.environ.get("COMFYUI_ROOT") or "")
        if _STATE.ns is not None:
            if _STATE.ns.root != root:
                raise RuntimeError(f"ComfyUI {_STATE.ns.root} is already imported; cannot also import {root}")
            return root
        if not os.path.isdir(os.path.join(root, "comfy")):
            raise RuntimeError(f"{root} does not look like a ComfyUI checkout (no comfy/); pass root= or set COMFYUI_ROOT")
        _import_comfy_package(root, {})
        return root


def _import_comfy_package(root: str, cli_args: dict) -> None:
    _refuse_foreign_modules(root)

    # ComfyUI's own modules must win over same-named ones (this repo has a `nodes` package too).
    if root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)

    # cli_args parses sys.argv only when args_parsing is on (main.py turns it on); keep it off so
    # pytest's arguments are never read, and force CPU before model_management picks a device.
    import comfy.options

    comfy.options.args_parsing = False
    import comfy.cli_args

    cpu = cli_args.pop("cpu", True)
    if cpu and "comfy.model_management" in sys.modules and not comfy.cli_args.args.cpu:
        raise RuntimeError("comfy.model_management was imported before --cpu could be forced")
    comfy.cli_args.args.cpu = cpu
    for name, value in cli_args.items():  # e.g. use_pytorch_cross_attention=True, before any model code loads
        setattr(comfy.cli_args.args, name, value)


def register_model_folder(ns: types.SimpleNamespace, folder_name: str, path: str | os.PathLike) -> None:
    """Add ``path`` to a model folder (e.g. "checkpoints") so loader nodes find files there by name."""
    path = os.fspath(path)
    if path not in ns.folder_paths.get_folder_paths(folder_name):
        ns.folder_paths.add_model_folder_path(folder_name, path)
    # Both versions cache directory listings (2024-03 trusts the cache for 0.5 s without checking).
    cache = getattr(ns.folder_paths, "filename_list_cache", None)
    if isinstance(cache, dict):
        cache.pop(folder_name, None)


def run_node(ns: types.SimpleNamespace, class_name: str, **inputs):
    """Run one node like the executor does (inference mode) and return its output tuple.

    Handles classic V1 nodes (``FUNCTION``) and, in new ComfyUI, V3 nodes (``execute``), without
    hidden inputs (prompt, extra_pnginfo, unique_id are None).
    """
    cls = ns.nodes.NODE_CLASS_MAPPINGS[class_name]
    with torch.inference_mode():
        if hasattr(cls, "FUNCTION") and not hasattr(cls, "PREPARE_CLASS_CLONE"):
            out = getattr(cls(), cls.FUNCTION)(**inputs)
        else:  # V3: a locked class clone carries the (empty) hidden inputs, as execution.py does
            cls.VALIDATE_CLASS()
            clone = cls.PREPARE_CLASS_CLONE(None)
            out = clone.execute(**inputs)
            if inspect.isawaitable(out):
                out = _run_coroutine(out)
    if isinstance(out, dict):  # V1 output nodes may return {"ui": ..., "result": ...}
        out = out.get("result", ())
    elif hasattr(out, "result") and not isinstance(out, tuple):  # V3 NodeOutput
        out = out.result or ()
    return tuple(out)


def _refuse_foreign_modules(root: str) -> None:
    # A `nodes` / `folder_paths` / `comfy` imported from somewhere else would be silently reused.
    for name in ("nodes", "folder_paths", "comfy"):
        mod = sys.modules.get(name)
        if mod is None:
            continue
        # `comfy` is a namespace package in 2024-03 (no __file__): judge it by its search path.
        places = [mod.__file__] if getattr(mod, "__file__", None) else list(getattr(mod, "__path__", []))
        if not places or not all(os.path.realpath(p).startswith(root + os.sep) for p in places):
            raise RuntimeError(f"module {name!r} is already imported from {places or mod!r}, not from {root}")


def _set_directories(folder_paths, dirs: str | None) -> str:
    base = dirs or os.environ.get("REENACT_TEST_DIRS")
    if not base:
        # Private and removed at exit; set REENACT_TEST_DIRS to keep outputs for inspection.
        base = tempfile.mkdtemp(prefix="comfyui-test-")
        atexit.register(shutil.rmtree, base, ignore_errors=True)
    base = os.path.abspath(base)
    for sub in ("output", "temp", "input", "user"):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    folder_paths.set_output_directory(os.path.join(base, "output"))
    folder_paths.set_temp_directory(os.path.join(base, "temp"))
    folder_paths.set_input_directory(os.path.join(base, "input"))
    if hasattr(folder_paths, "set_user_directory"):  # absent in 2024-03, a plain attribute there
        folder_paths.set_user_directory(os.path.join(base, "user"))
    else:
        folder_paths.user_directory = os.path.join(base, "user")
    return base


def _init_builtin_extra_nodes(nodes, required_nodes) -> None:
    """Register comfy_extras/ nodes without loading anything from ComfyUI's custom_nodes folder."""
    if required_nodes and all(n in nodes.NODE_CLASS_MAPPINGS for n in required_nodes):
        return  # already done (e.g. by whoever imported ComfyUI first)
    init = getattr(nodes, "init_extra_nodes", None)
    if init is not None:
        # 2024-06+: init_extra_nodes(init_custom_nodes=..., [init_api_nodes=...]); async since 2025.
        params = inspect.signature(init).parameters
        kwargs = {k: False for k in ("init_custom_nodes", "init_api_nodes") if k in params}
        result = init(**kwargs)
        if inspect.isawaitable(result):
            _run_coroutine(result)
        return
    # 2024-03: init_custom_nodes() loads comfy_extras/ and then calls the module-level
    # load_custom_nodes(); swap that for a no-op while it runs.
    real = nodes.load_custom_nodes
    nodes.load_custom_nodes = lambda *a, **k: None
    try:
        nodes.init_custom_nodes()
    finally:
        nodes.load_custom_nodes = real


def _run_coroutine(coro):
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # Called from inside a running loop (async test): run it on a private loop in another thread.
    box = {}

    def target():
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as e:  # noqa: BLE001 (re-raised in the caller's thread)
            box["error"] = e

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _version(root: str) -> str:
    if os.path.exists(os.path.join(root, ".git")):
        try:
            return subprocess.run(
                ["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        mod = importlib.import_module("comfyui_version")
    except ImportError:
        return "unknown"
    # Only trust the file if it belongs to this checkout (2024-03 has none).
    if os.path.realpath(mod.__file__).startswith(root + os.sep) and hasattr(mod, "__version__"):
        return str(mod.__version__)
    return "unknown"


PACK_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_pack(ns: types.SimpleNamespace) -> types.ModuleType:
    """Load this repository into the imported ComfyUI with ComfyUI's own custom-node loader (once) and
    return the pack's module. ComfyUI names it after its folder (2024) or its full path (2025+)."""
    module = _pack_module()
    if module is None:
        loaded = ns.nodes.load_custom_node(PACK_ROOT)
        if inspect.isawaitable(loaded):
            loaded = _run_coroutine(loaded)
        module = _pack_module()
        if not loaded or module is None:
            raise RuntimeError("ComfyUI failed to load the node pack (see the log above)")
    return module


def pack_submodule(pack: types.ModuleType, name: str) -> types.ModuleType:
    """A submodule of the loaded pack, e.g. pack_submodule(pack, "reenact_core.fileformat")."""
    return importlib.import_module(f"{pack.__name__}.{name}")


def _pack_module() -> types.ModuleType | None:
    init = os.path.join(PACK_ROOT, "__init__.py")
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and os.path.realpath(path) == os.path.realpath(init):
            return module
    return None
