"""The GPU check's dry run (bench/gpu_check.py --cpu-dry-run): the same script, worker process and checks
that run on a GPU machine, at tiny sizes on CPU, on this ComfyUI, with PyAV hidden as on that machine.
So the script works the first time it meets a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, comfyui_root


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory, svd_checkpoint):
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    env = dict(os.environ, COMFYUI_ROOT=comfyui_root())
    result = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--cpu-dry-run", "--without", "av", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(out.read_text()), result.stdout


def test_dry_run_runs_every_check_in_a_worker_without_pyav(dry_run):
    result, printed = dry_run
    (part,) = result["comfyui"].values()
    assert part["exit_code"] == 0 and "error" not in part, part.get("traceback")
    assert part["stubbed_packages"] == ["av"]
    assert set(part["checks"]) == {"chain", "attention", "wan", "wan14b", "step_cost", "apply_overhead"}
    failed = {name: check.get("error") for name, check in part["checks"].items() if not check["ok"]}
    assert not failed, failed
    chain = part["checks"]["chain"]
    assert chain["embedding_finite"] and chain["inversion_steps"] == result["settings"]["steps"]
    assert chain["clip_image_embeds_std"] > 0 and chain["learned_tokens_std"] > 0
    assert part["checks"]["attention"]["backends"]["pytorch"] == "ok"
    assert part["model"]["private_copy_branch"] in ("reload", "reload-dynamic", "copy")
    wan = part["checks"]["wan"]
    if os.path.isfile(os.path.join(comfyui_root(), "comfy", "ldm", "wan", "model.py")) and "skipped" not in wan:
        assert wan["base_model"] == "wan22_ti2v" and wan["latent_frames"] == 3 and wan["embedding_finite"] and wan["seconds_per_step"] > 0
        swap = wan["block_swap"]  # the same inversion with half the blocks in RAM, side by side
        assert swap["blocks_to_swap"] == 1 and swap["report_says"] and swap["same_initial_loss"] and swap["time_ratio"] > 0
        assert any(row["check"].endswith(": wan") and "s/step" in row["value"] for row in result["verdicts"])
    else:  # a ComfyUI without Wan 2.2 says so
        assert "no Wan 2.2" in wan["skipped"]
    wan14b = part["checks"]["wan14b"]
    if os.path.isfile(os.path.join(comfyui_root(), "comfy", "ldm", "wan", "model.py")):
        resident, swap = wan14b["resident"], wan14b["block_swap"]  # fp8 weights, every block resident, then one in RAM
        assert resident["base_model"] == "wan21_i2v" and resident["embedding_finite"] and not resident["report_says"]
        assert swap["blocks_to_swap"] == 1 and swap["report_says"] and swap["same_initial_loss"]
        assert any(row["check"].endswith(": wan14b") and "blocks in RAM" in row["value"] for row in result["verdicts"])
    else:
        assert "no Wan 2.1" in wan14b["skipped"]


def test_dry_run_reports_the_measurements_against_the_targets(dry_run):
    result, printed = dry_run
    (part,) = result["comfyui"].values()
    runs = {row["run"] for row in part["checks"]["step_cost"]["rows"]}
    assert runs == {"forward", "step", "step_ckpt"}
    graphs = {row["graph"] for row in part["checks"]["apply_overhead"]["rows"]}
    assert graphs == {"stock", "motion"}
    checks = [row["check"] for row in result["verdicts"]]
    assert any(c.startswith("step / forward") and "ckpt" in c for c in checks)
    assert any(c.startswith("apply overhead") for c in checks)
    assert all(row["ok"] is None for row in result["verdicts"] if row["check"].startswith(("step /", "apply overhead")))  # no GPU verdicts on CPU
    assert printed.splitlines()[0].startswith("GPU check (cpu)") or "GPU check (cpu)" in printed


def test_a_failing_check_is_reported_and_the_others_still_run(tmp_path):
    """A worker whose attention check breaks still runs the chain and says what broke (the GPU run gets one try)."""
    from bench import gpu_check

    result = {"kind": "gpu", "comfyui": {"x": {"comfyui_version": "0", "model": {}, "checks": {
        "chain": {"ok": True, "inversion_seconds": 1.0, "inversion_steps": 50, "clip_image_embeds_std": 1.0, "learned_tokens_std": 1.0},
        "attention": {"ok": False, "error": "RuntimeError: boom"},
    }}}}
    rows = gpu_check.verdicts(result)
    assert any(r["check"].endswith("attention") and r["ok"] is False and "boom" in r["value"] for r in rows)
    assert any(r["check"].endswith("chain") and r["ok"] is True for r in rows)


def test_the_carried_wheels_and_sources_stay_small():
    """What --prepare packs must fit the device's 64 MiB next to the repository (the issue: ~40 MB)."""
    from bench import gpu_check

    assert not any(spec.split("==")[0] in ("av", "flash-attn", "xformers") for spec in gpu_check.WHEELS)
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    tree = sum((Path(REPO) / f.decode()).stat().st_size for f in tracked if f and (Path(REPO) / f.decode()).is_file())
    assert tree < 30 * 2**20, f"the repository is {tree / 2**20:.0f} MB: with ~14 MB of .gpu/ it must stay under 64 MiB"
