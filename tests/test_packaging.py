"""Packaging: what ComfyUI Manager and the Comfy Registry see."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def comfy_cli() -> str:
    """comfy-cli lives in its own virtualenv (./dev.sh setup installs it) so its pins stay out of ComfyUI's."""
    cache = Path(os.environ.get("REENACT_CACHE", Path.home() / ".cache" / "reenact-anything"))
    path = os.environ.get("REENACT_COMFY_CLI") or str(cache / "comfy-cli" / "bin" / "comfy")
    if not os.access(path, os.X_OK):
        pytest.fail(f"comfy-cli not found at {path}: run ./dev.sh setup (or set REENACT_COMFY_CLI)")
    return path


@pytest.fixture(scope="module")
def tracked_copy(tmp_path_factory):
    """The repository as git tracks it, in a fresh git repository (what a clone or the registry sees)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    target = tmp_path_factory.mktemp("pack") / "reenact-anything"
    for name in filter(None, files):
        if (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    for args in (["init", "-q"], ["add", "-A"]):
        subprocess.run(["git", *args], cwd=target, check=True)
    return target


def run_comfy(args, cwd):
    env = dict(os.environ, HOME=str(cwd.parent))  # comfy-cli writes its config under HOME
    result = subprocess.run([comfy_cli(), "--skip-prompt", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300)
    return result.returncode, result.stdout + result.stderr


def test_comfy_node_validate_passes_without_warnings(tracked_copy):
    code, output = run_comfy(["node", "validate"], tracked_copy)
    assert code == 0 and "All validation checks passed" in output, output
    assert "Warning" not in output and "Security warnings" not in output, output


def test_registry_archive_holds_the_pack_and_nothing_else(tracked_copy):
    code, output = run_comfy(["node", "pack"], tracked_copy)
    assert code == 0, output
    names = set(zipfile.ZipFile(tracked_copy / "node.zip").namelist())
    for needed in ("__init__.py", "nodes/inversion.py", "reenact_core/inversion.py", "web/reenact_anything.js", "requirements.txt", "LICENSE",
                   "motion_world/motion_world.safetensors"):
        assert needed in names, needed
    assert any(n.startswith("workflows/") and n.endswith(".json") for n in names)
    assert any(n.startswith("web/docs/") for n in names)
    assert not any(n.startswith(("tests/", "testkit/", "tools/", "bench/", ".ci/")) or n.startswith("motion_world/") and n.endswith(".py") or n == "dev.sh" for n in names)


def test_project_metadata_matches_requirements_and_version():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    requirements = [line.strip() for line in (REPO / "requirements.txt").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert project["project"]["dependencies"] == requirements
    assert not any(re.match(r"torch", r) for r in requirements), "never pin torch: ComfyUI brings it"
    init = (REPO / "reenact_core" / "__init__.py").read_text()
    assert f'__version__ = "{project["project"]["version"]}"' in init
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["project"]["version"])
    comfy = project["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] and comfy["requires-comfyui"]
