"""The `reenact` command end to end (invert, apply, info, invert-batch with skip and resume after a kill) and
the standalone packaging (`pip install .[diffusers]` gives the `reenact` command and only reenact_core)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from tiny_svd_pipeline import DIM, FRAMES, SIZE, save_pipeline  # noqa: E402

from reenact_core import api, cli  # noqa: E402
from reenact_core.fileformat import load_embedding  # noqa: E402
from reenact_core.video import load_reference_video  # noqa: E402
from testkit.media import moving_square_frames, target_image, write_video  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SMALL = ["--video-frames", str(FRAMES), "--width", str(SIZE), "--height", str(SIZE), "--tokens-per-frame", "2", "--lr", "0.2", "-q"]
SAMPLE = ["--frames", str(FRAMES), "--width", str(SIZE), "--height", str(SIZE), "--steps", "2", "-q"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # see test_diffusers_backend.py: threads only slow tiny models down on a busy machine
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = save_pipeline(root / "model")
    reference = write_video(moving_square_frames(8, SIZE), root / "reference.mp4")
    target = root / "target.png"
    Image.fromarray((target_image(SIZE)[0].numpy() * 255).astype(np.uint8)).save(target)
    return root, model, reference, target


def run_cli(args, capsys):
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_invert_apply_and_info(work, capsys):
    root, model, reference, target = work
    motion = root / "motion.safetensors"
    code, out = run_cli(["invert", reference, "--model", model, "-o", motion, "--steps", "3", "--loss-curve", root / "loss.png", "--seed", "7", *SMALL], capsys)
    assert code == 0, out
    assert f"wrote {motion}" in out and "eval loss" in out
    embedding = load_embedding(motion)
    assert embedding.spatial.shape == (FRAMES, 2, DIM) and embedding.metadata["seed"] == "7" and embedding.metadata["backend"] == "diffusers"
    assert Image.open(root / "loss.png").size == (640, 320)

    for name in ("out.mp4", "out.webp", "out.gif"):
        video = root / name
        code, out = run_cli(["apply", motion, target, "--model", model, "-o", video, *SAMPLE], capsys)
        assert code == 0, out
        clip = load_reference_video(video)
        assert clip.frames.shape == (FRAMES, SIZE, SIZE, 3), name
        assert not [p for p in root.iterdir() if p.name.startswith(".")], "temporary files left behind"
    assert abs(load_reference_video(root / "out.mp4").fps - 6) < 0.01

    code, out = run_cli(["info", motion], capsys)
    assert code == 0 and f"{FRAMES} frames x 2 tokens x {DIM}" in out and "backend: diffusers" in out


def test_defaults_when_no_output_is_named(work, capsys, monkeypatch):
    root, model, reference, target = work
    monkeypatch.chdir(root)
    code, out = run_cli(["invert", reference, "--model", model, "--steps", "1", "--eval-draws", "0", *SMALL], capsys)
    assert code == 0 and (root / "reference.safetensors").is_file(), out
    code, out = run_cli(["apply", "reference.safetensors", target, "--model", model, *SAMPLE], capsys)
    assert code == 0 and (root / "target_reference.mp4").is_file(), out


def test_errors_say_what_to_do(work, capsys, tmp_path):
    root, model, reference, target = work
    code, out = run_cli(["invert", reference, "--model", tmp_path / "nowhere", *SMALL], capsys)
    assert code == 1 and "no such folder" in out and "Nothing is downloaded" in out
    code, out = run_cli(["invert", root / "missing.mp4", "--model", model, *SMALL], capsys)
    assert code == 1 and "not found" in out
    code, out = run_cli(["invert", reference, "--model", model, "--video-frames", "4", "--width", "60", "-q"], capsys)
    assert code == 1 and "multiple of 8" in out
    code, out = run_cli(["apply", root / "nothing.safetensors", target, "--model", model, *SAMPLE], capsys)
    assert code == 1 and "file not found" in out
    code, out = run_cli(["apply", REPO / "assets/motion_embeddings/reenact_example_motion.safetensors", target, "--model", model, "-o", tmp_path / "x.avi", *SAMPLE], capsys)
    assert code == 1 and ".avi" in out and not (tmp_path / "x.avi").exists()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["apply"])
    assert exit_info.value.code == 2


def test_options_and_defaults_are_the_nodes(comfy, pack):
    """Every setting of Motion Textual Inversion, Motion Inversion Options, SVD_img2vid_Conditioning and Apply Motion
    Embedding (and the shipped apply workflow's sampler settings) has a CLI option with the node's default."""
    nodes = pack.nodes.NODE_CLASS_MAPPINGS
    parser = cli.build_parser()
    invert = vars(parser.parse_args(["invert", "ref.mp4", "-m", "dir"]))
    apply = vars(parser.parse_args(["apply", "m.safetensors", "t.png", "-m", "dir"]))

    def defaults(node):
        inputs = node.INPUT_TYPES()
        return {name: spec[1]["default"] for group in ("required", "optional") for name, spec in inputs.get(group, {}).items() if len(spec) > 1 and "default" in spec[1]}

    inversion = defaults(nodes["MotionTextualInversion"])
    inversion.pop("precision")  # the CLI's --dtype (auto/fp32/bf16/fp16): the same choices
    options = defaults(nodes["MotionInversionOptions"])
    options.pop("blocks_to_swap")  # the nodes' block swap, for ComfyUI's Wan 14B; the CLI runs SVD whole (docs/python-and-cli.md)
    for name, value in {**inversion, **options}.items():
        assert invert[name] == value, name
    assert parser.parse_args(["invert", "r", "-m", "d", "--dtype", "bf16"]).dtype == "bf16"
    conditioning = defaults(comfy.nodes.NODE_CLASS_MAPPINGS["SVD_img2vid_Conditioning"])
    conditioning.pop("video_frames")  # the CLI defaults to the model's own frame count
    for name, value in {**conditioning, **defaults(nodes["ApplyMotionEmbedding"])}.items():
        assert apply[name] == value, name
    workflow = json.loads((REPO / "workflows" / "reenact_2_apply_motion.json").read_text())
    widgets = {n["type"]: n["widgets_values"] for n in workflow["nodes"]}
    seed, _, steps, cfg, sampler, scheduler, _ = widgets["KSampler"]
    assert (apply["seed"], apply["steps"], apply["max_guidance"], apply["min_guidance"]) == (seed, steps, cfg, widgets["VideoLinearCFGGuidance"][0])


def make_clips(folder: Path) -> list[str]:
    folder.mkdir()
    write_video(moving_square_frames(8, SIZE), folder / "clip1.mp4")
    frames = moving_square_frames(8, SIZE, step=4, color=(255, 0, 0))
    images = [Image.fromarray(f) for f in frames]
    images[0].save(folder / "clip2.gif", save_all=True, append_images=images[1:], duration=125, loop=0)
    (folder / "clip3").mkdir()
    for i, f in enumerate(moving_square_frames(8, SIZE, step=-3)[::-1]):
        Image.fromarray(f).save(folder / "clip3" / f"frame_{i}.png")
    images[0].save(folder / "short.gif", save_all=True, append_images=images[1:2], duration=125, loop=0)  # 2 frames: too short
    (folder / "notes.txt").write_text("not a clip")
    return ["clip1", "clip2", "clip3"]


def finished(out: Path) -> dict[str, float]:
    done = {}
    for path in out.iterdir():
        if not path.name.startswith("."):
            assert path.suffix == ".safetensors", path
            load_embedding(path)  # every visible file is a complete, valid embedding
            done[path.stem] = path.stat().st_mtime_ns
    return done


def test_invert_batch_skips_finished_clips_and_resumes_after_a_kill(work, tmp_path, capsys, monkeypatch):
    _, model, _, _ = work
    clips, out = tmp_path / "clips", tmp_path / "motions"
    names = make_clips(clips)
    args = ["invert-batch", clips, "--model", model, "-o", out, "--steps", "20", "--eval-draws", "0", *SMALL]

    # A real interruption: SIGKILL as soon as the first embedding appears (the second clip is being inverted).
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    process = subprocess.Popen([sys.executable, "-m", "reenact_core.cli", *map(str, args)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while process.poll() is None and time.monotonic() < deadline:
            if out.is_dir() and any(p.suffix == ".safetensors" and not p.name.startswith(".") for p in out.iterdir()):
                break
            time.sleep(0.02)
        assert process.poll() is None, f"the batch ended before it could be interrupted: {process.stdout.read().decode()}"
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=60)
    before = finished(out)
    assert 1 <= len(before) < len(names), before

    # An interrupted save may leave a hidden temporary file; the next run removes it.
    (out / ".clip3.safetensors.0123456789abcdef.tmp").write_bytes(b"half")
    code, log = run_cli(args, capsys)
    assert code == 1, log  # short.gif cannot be inverted (2 frames); everything else is done
    after = finished(out)
    assert sorted(after) == names
    for name, mtime in before.items():
        assert after[name] == mtime, f"{name} was inverted again"
        assert f"skipped  {name}" in log
    for name in set(names) - set(before):
        assert f"done     {name}" in log
    assert "failed: short.gif" in log and "only 2 frames" in log
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"

    # Nothing left to do: the model is not even loaded.
    monkeypatch.setattr(api, "load_pipeline", lambda *a, **k: pytest.fail("loaded the model with nothing to do"))
    code, log = run_cli(args, capsys)
    assert code == 1 and "0 inverted, 3 already done, 1 failed" in log
    assert finished(out) == after


# ---- packaging -----------------------------------------------------------------------------------------


def test_pyproject_declares_the_extra_and_the_command():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    extra = project["project"]["optional-dependencies"]["diffusers"]
    assert {"diffusers", "transformers", "accelerate", "torch"} <= {r.split(">")[0].split("=")[0].split("<")[0] for r in extra}
    assert project["project"]["scripts"]["reenact"] == "reenact_core.cli:main"
    assert project["tool"]["setuptools"]["packages"] == ["reenact_core"]
    dev = (REPO / "requirements-dev.txt").read_text().split()
    assert {"diffusers", "transformers", "accelerate"} <= set(dev)


def test_pip_builds_a_wheel_with_reenact_core_and_the_reenact_command(tmp_path):
    """What `pip install .` installs, built offline from the files git would ship (tracked + new, not ignored)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, check=True).stdout
    source = tmp_path / "src"
    for name in filter(None, listed.decode().split("\0")):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    pytest.importorskip("setuptools")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "dist").glob("reenact_anything-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = next(zf.read(n).decode() for n in names if n.endswith("entry_points.txt"))
        metadata = next(zf.read(n).decode() for n in names if n.endswith("/METADATA"))
    packages = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert packages == {"reenact_core"}, packages
    assert {"reenact_core/api.py", "reenact_core/cli.py", "reenact_core/diffusers_backend.py", "reenact_core/inversion.py"} <= set(names)
    assert "reenact = reenact_core.cli:main" in entry_points
    assert "Provides-Extra: diffusers" in metadata and 'extra == "diffusers"' in metadata
