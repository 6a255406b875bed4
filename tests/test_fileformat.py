"""Motion embedding files: exact round trip, and a clear error for everything that is not one."""

from __future__ import annotations

import json
import os
import pickle
import struct
import zipfile

import pytest
import safetensors.torch
import torch

from reenact_core import __version__
from reenact_core.embedding import MotionEmbedding
from reenact_core.fileformat import (
    FORMAT_NAME,
    EmbeddingFileError,
    build_metadata,
    load_embedding,
    save_embedding,
)


def embedding(frames=14, tokens=5, dim=1024, seed=0):
    g = torch.Generator().manual_seed(seed)
    return MotionEmbedding(torch.randn(frames, tokens, dim, generator=g), torch.randn(tokens, dim, generator=g))


def test_round_trip_is_bit_exact_with_full_metadata(tmp_path):
    emb = embedding()
    meta = build_metadata(emb, title="wave", steps=500, learning_rate=0.01, seed=7, final_loss=0.123, reference_sha256="ab" * 32)
    path = save_embedding(emb.with_metadata(**meta), tmp_path / "wave.safetensors")
    back = load_embedding(path)
    assert torch.equal(back.spatial, emb.spatial) and torch.equal(back.temporal, emb.temporal)
    m = back.metadata
    assert m["format"] == FORMAT_NAME and m["format_version"] == "1"
    assert (m["frames"], m["tokens"], m["dim"], m["base_model"]) == ("14", "5", "1024", "svd")
    assert (m["steps"], m["learning_rate"], m["seed"], m["final_loss"]) == ("500", "0.01", "7", "0.123")
    assert m["reference_sha256"] == "ab" * 32 and m["pack_version"] == __version__
    assert m["modelspec.title"] == "wave" and m["modelspec.architecture"].startswith("stable-video-diffusion")
    assert "modelspec.date" in m
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # an ordinary file, readable as usual
    assert load_embedding(save_embedding(embedding(frames=25), tmp_path / "xt.safetensors")).metadata["base_model"] == "svd_xt"


def write_raw(path, header: dict, body: bytes = b""):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)
    return path


def valid_file(tmp_path, name="ok.safetensors", **kw):
    return save_embedding(embedding(frames=2, tokens=2, dim=8, **kw), tmp_path / name)


def rewrite(tmp_path, mutate_tensors=None, mutate_meta=None, name="bad.safetensors"):
    src = load_embedding(valid_file(tmp_path))
    tensors = {"spatial": src.spatial, "temporal": src.temporal}
    meta = dict(src.metadata)
    if mutate_tensors:
        tensors = mutate_tensors(tensors)
    if mutate_meta:
        meta = mutate_meta(meta)
    path = tmp_path / name
    path.write_bytes(safetensors.torch.save(tensors, metadata=meta))
    return path


def put(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing.safetensors", "not found"),
        (lambda p: put(p / "empty.safetensors", b""), "empty or truncated"),
        (lambda p: put(p / "t.safetensors", valid_file(p).read_bytes()[:-7]), "unreadable|does not fit"),
        (lambda p: put(p / "h.safetensors", valid_file(p).read_bytes()[:40]), "not a valid safetensors"),
        (lambda p: put(p / "pk.safetensors", pickle.dumps({"a": 1})), "pickle"),
        (lambda p: put(p / "j.safetensors", struct.pack("<Q", 5) + b"{nope"), "not JSON"),
        (lambda p: write_raw(p / "list.safetensors", [1, 2]), "not a JSON object"),
        (lambda p: write_raw(p / "nometa.safetensors", {"spatial": {}}), "no metadata"),
        (lambda p: write_raw(p / "badmeta.safetensors", {"__metadata__": {"format": 3}}), "malformed metadata"),
        (lambda p: write_raw(p / "huge.safetensors", {"__metadata__": {"format": FORMAT_NAME, "x": "y" * 20000}}), "too large"),
        (lambda p: write_raw(p / "other.safetensors", {"__metadata__": {"format": "lora"}}), "not a motion embedding"),
        (lambda p: put(p / "ckpt.safetensors", safetensors.torch.save({"w": torch.zeros(2)})), "no metadata"),
    ],
)
def test_bad_files_give_clear_errors(tmp_path, make, message):
    with pytest.raises(EmbeddingFileError, match=message):
        load_embedding(make(tmp_path))


def test_zip_renamed_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps([1]))
    with pytest.raises(EmbeddingFileError, match="never loads pickles"):
        load_embedding(path)


@pytest.mark.parametrize(
    "mutate_tensors, mutate_meta, message",
    [
        (lambda t: {**t, "temporal": torch.zeros(3, 8)}, None, "must agree"),
        (lambda t: {**t, "temporal": torch.zeros(2, 16)}, None, "must agree"),
        (lambda t: {**t, "spatial": t["spatial"].clone().index_fill_(0, torch.tensor([0]), float("nan"))}, None, "NaN or infinite"),
        (lambda t: {**t, "temporal": torch.full_like(t["temporal"], float("inf"))}, None, "NaN or infinite"),
        (lambda t: {**t, "extra": torch.zeros(1)}, None, "exactly the tensors"),
        (lambda t: {"spatial": t["spatial"]}, None, "exactly the tensors"),
        (lambda t: {**t, "spatial": t["spatial"].to(torch.int32)}, None, "dtype"),
        (lambda t: {**t, "spatial": t["spatial"][0]}, None, "shape"),
        (None, lambda m: {**m, "format_version": "2"}, "newer version"),
        (None, lambda m: {**m, "format_version": "zero"}, "not an integer"),
        (None, lambda m: {**m, "format_version": "0"}, "invalid format_version"),
        (None, lambda m: {**m, "frames": "3"}, "inconsistent"),
        (None, lambda m: {k: v for k, v in m.items() if k != "tokens"}, "lacks tokens"),
    ],
)
def test_inconsistent_embeddings_are_refused(tmp_path, mutate_tensors, mutate_meta, message):
    with pytest.raises(EmbeddingFileError, match=message):
        load_embedding(rewrite(tmp_path, mutate_tensors, mutate_meta))


def test_other_token_dims_load_but_say_so(tmp_path):
    # A 768-dim embedding is a valid file; whether it fits a model is decided where it is applied.
    emb = load_embedding(valid_file(tmp_path))
    assert emb.dim == 8


def test_half_precision_files_load_as_float32(tmp_path):
    path = rewrite(tmp_path, lambda t: {k: v.half() for k, v in t.items()})
    assert load_embedding(path).spatial.dtype == torch.float32


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "x.safetensors"

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        save_embedding(embedding(frames=2, tokens=2, dim=8), target)
    assert list(tmp_path.iterdir()) == []


def test_save_replaces_atomically(tmp_path):
    target = valid_file(tmp_path, "same.safetensors", seed=1)
    before = load_embedding(target)
    save_embedding(embedding(frames=2, tokens=2, dim=8, seed=2), target)
    assert not torch.equal(load_embedding(target).spatial, before.spatial)
    assert [p.name for p in tmp_path.iterdir()] == ["same.safetensors"]


# ---- atomic save under real faults (in a child process: the faults are the kernel's) ------------------------

_SAVE_IN_A_CHILD = r"""
import os, resource, signal, sys, torch
from reenact_core.embedding import MotionEmbedding
from reenact_core.fileformat import save_embedding
target, limit, die = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "die"
g = torch.Generator().manual_seed(7)
new = MotionEmbedding(torch.randn(14, 5, 1024, generator=g), torch.randn(5, 1024, generator=g))  # ~300 KB
# The kernel stops any write past `limit` bytes: with SIGXFSZ ignored the write fails (EFBIG) part-way,
# like a disk that fills up; with its default action the process is killed in the middle of the write.
signal.signal(signal.SIGXFSZ, signal.SIG_DFL if die else signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    save_embedding(new, target)
except OSError as e:
    print("SAVE-FAILED", e.errno)
"""


def _save_in_a_child(target, limit: int, die: bool):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    return subprocess.run([sys.executable, "-c", _SAVE_IN_A_CHILD, str(target), str(limit), "die" if die else "fail"],
                          cwd=repo, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("previous", [True, False], ids=["over a previous file", "new file"])
def test_a_write_that_fails_part_way_keeps_the_previous_file_and_leaves_nothing(tmp_path, previous):
    import errno

    target = tmp_path / "motion.safetensors"
    if previous:
        save_embedding(embedding(frames=2, tokens=2, dim=8, seed=1), target)
        before = target.read_bytes()
    result = _save_in_a_child(target, limit=100_000, die=False)
    assert f"SAVE-FAILED {errno.EFBIG}" in result.stdout, result.stdout + result.stderr
    assert [p.name for p in tmp_path.iterdir()] == (["motion.safetensors"] if previous else [])  # no temporary file either
    if previous:
        assert target.read_bytes() == before


def test_a_process_killed_mid_save_keeps_the_previous_file_whole(tmp_path):
    import signal

    target = tmp_path / "motion.safetensors"
    save_embedding(embedding(frames=2, tokens=2, dim=8, seed=1), target)
    before = target.read_bytes()
    result = _save_in_a_child(target, limit=100_000, die=True)
    assert result.returncode == -signal.SIGXFSZ, result.stdout + result.stderr  # killed inside the write
    assert target.read_bytes() == before and load_embedding(target).frames == 2
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "motion.safetensors"]
    assert all(name.startswith(".motion.safetensors.") and name.endswith(".tmp") for name in leftovers), leftovers


@pytest.mark.parametrize("first_bytes", [b"\x80", b"PK"], ids=["like a pickle", "like a zip"])
def test_a_valid_file_whose_header_length_starts_like_a_pickle_or_zip_loads(tmp_path, first_bytes, monkeypatch):
    """A safetensors file begins with its header's length: 640 bytes is 80 02 00 .. (a pickle's first bytes),
    19,280 is 50 4B .. ("PK", a zip's). Such files are ordinary embeddings and must load (found by the fuzz)."""
    target = tmp_path / "x.safetensors"
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # only the search is fast this way; the file is the same
    for padding in range(0, 40_000, 8):  # safetensors pads its header to a multiple of 8
        emb = embedding(frames=2, tokens=2, dim=8).with_metadata(note="n" * (padding % 15_000), other="o" * (padding // 15_000 * 5_000))
        save_embedding(emb, target)
        data = target.read_bytes()
        if data[: len(first_bytes)] == first_bytes:
            break
    else:
        pytest.fail("no padding gave that header length")
    assert load_embedding(target).frames == 2
