"""Fuzzing the embedding loader and its metadata parser: files from strangers may hold anything.

More than 10,000 generated files (hypothesis, derandomized: the same files on every run): valid
embeddings mutated byte by byte (flips, truncation, insertions, deletions, a rewritten header length),
valid embeddings with their JSON header or metadata edited (types, dtypes, shapes, offsets, versions,
numbers with thousands of digits, huge or missing entries), headers built from scratch, and random
bytes. ``parse_embedding`` (and ``load_embedding``, which Load Motion Embedding calls, for the headers
from scratch and the random bytes: those are written to a file first) must either return a usable embedding or raise EmbeddingFileError; any other
exception, or taking longer than the deadline (a hang), fails.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import signal
import struct
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reenact_core.embedding import MotionEmbedding
from reenact_core.fileformat import EmbeddingFileError, build_metadata, load_embedding, parse_embedding, save_embedding

SETTINGS = dict(
    derandomize=True,  # CI runs the same files every time
    database=None,
    deadline=timedelta(seconds=5),  # a hang, not a slow moment of a loaded machine
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
MUTATED, EDITED, FROM_SCRATCH, RANDOM = 6000, 3000, 1000, 500
assert MUTATED + EDITED + FROM_SCRATCH + RANDOM >= 10_000


@functools.cache
def seeds() -> tuple[bytes, ...]:
    """Valid files as Save Motion Embedding writes them (small shapes; float32), and in float16/bfloat16."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (frames, tokens, dim) in enumerate([(1, 1, 4), (2, 2, 8), (3, 1, 16)]):
            g = torch.Generator().manual_seed(i)
            emb = MotionEmbedding(torch.randn(frames, tokens, dim, generator=g), torch.randn(tokens, dim, generator=g))
            meta = build_metadata(emb, title="fuzz", steps=10, learning_rate=0.01, seed=i, final_loss=0.5)
            emb = emb.with_metadata(**meta, **{"modelspec.date": "2026-01-01T00:00:00+00:00"})  # the same bytes every run
            out.append(save_embedding(emb, Path(tmp) / f"{i}.safetensors").read_bytes())
    valid = parse_embedding(out[1])
    for dtype in (torch.float16, torch.bfloat16):
        tensors = {"spatial": valid.spatial.to(dtype), "temporal": valid.temporal.to(dtype)}
        out.append(safetensors.torch.save(tensors, metadata=dict(valid.metadata)))
    for data in out:
        parse_embedding(data)  # every seed is valid
    return tuple(out)


def split(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join(header, body: bytes, length_delta: int = 0, padding: int = 0) -> bytes:
    raw = json.dumps(header).encode() + b" " * padding
    return struct.pack("<Q", max(0, len(raw) + length_delta)) + raw + body


# -- strategies -----------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
metadata_strings = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", "0", "1", "2", "-1", "14", "25", "1024", " 3 ", "3_0", "1e3", "0x10", "٣", "NaN", "inf", "None"]),
    st.integers(-(2**80), 2**80).map(str),
    st.integers(4000, 6000).map(lambda n: "9" * n),  # beyond Python's int-from-string digit limit
    st.integers(16_000, 20_000).map(lambda n: "x" * n),  # over the metadata value limit
)
metadata_keys = st.sampled_from(["format", "format_version", "frames", "tokens", "dim", "base_model", "modelspec.title", "x" * 300]) | st.text(max_size=12)
dtypes = st.sampled_from(["F32", "F16", "BF16", "F64", "I32", "U8", "BOOL", "F8_E4M3", "", "f32"]) | json_values
shapes = st.lists(st.integers(-2, 2**40) | json_values, max_size=5) | json_values
offsets = st.lists(st.integers(-(2**64), 2**64), min_size=0, max_size=3) | json_values


@st.composite
def header_edit(draw, header: dict) -> None:
    """One structural edit of a parsed header, in place."""
    meta = header.get("__metadata__")
    kind = draw(st.sampled_from(["set meta", "drop meta key", "replace meta", "dtype", "shape", "offsets", "entry", "drop tensor", "extra key", "swap"]))
    if kind == "set meta" and isinstance(meta, dict):
        meta[draw(metadata_keys)] = draw(metadata_strings | json_values) if draw(st.booleans()) else draw(metadata_strings)
    elif kind == "drop meta key" and isinstance(meta, dict) and meta:
        meta.pop(draw(st.sampled_from(sorted(meta))))
    elif kind == "replace meta":
        header["__metadata__"] = draw(json_values)
    elif kind in ("dtype", "shape", "offsets", "entry"):
        name = draw(st.sampled_from(["spatial", "temporal"]))
        entry = header.get(name)
        if kind == "entry" or not isinstance(entry, dict):
            header[name] = draw(json_values)
        else:
            field, strategy = {"dtype": ("dtype", dtypes), "shape": ("shape", shapes), "offsets": ("data_offsets", offsets)}[kind]
            entry[field] = draw(strategy)
    elif kind == "drop tensor":
        header.pop(draw(st.sampled_from(["spatial", "temporal", "__metadata__"])), None)
    elif kind == "extra key":
        header[draw(st.text(max_size=10))] = draw(json_values)
    elif kind == "swap" and "spatial" in header and "temporal" in header:
        header["spatial"], header["temporal"] = header["temporal"], header["spatial"]


@st.composite
def byte_mutation(draw, data: bytearray) -> bytearray:
    kind = draw(st.sampled_from(["flip", "flip header", "truncate", "insert", "delete", "header length"]))
    position = draw(st.integers(0, max(0, len(data) - 1)))
    if kind == "flip" and data:
        data[position] ^= draw(st.integers(1, 255))
    elif kind == "flip header" and len(data) > 8:  # JSON-significant bytes inside the header
        header_end = min(len(data), 8 + struct.unpack("<Q", bytes(data[:8]))[0])
        data[draw(st.integers(0, header_end - 1))] = draw(st.sampled_from(b'{}[]",:0123456789-. aeflnrstu\\\x00\xff'))
    elif kind == "truncate":
        del data[position:]
    elif kind == "insert":
        data[position:position] = draw(st.binary(min_size=1, max_size=16))
    elif kind == "delete":
        del data[position : position + draw(st.integers(1, 16))]
    elif kind == "header length" and len(data) >= 8:
        data[:8] = struct.pack("<Q", draw(st.integers(0, 2**64 - 1) | st.integers(0, len(data) + 16)))
    return data


@st.composite
def mutated_files(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds())))
    for _ in range(draw(st.integers(1, 6))):
        data = draw(byte_mutation(data))
    return bytes(data)


@st.composite
def edited_files(draw) -> bytes:
    header, body = split(draw(st.sampled_from(seeds())))
    for _ in range(draw(st.integers(1, 4))):
        draw(header_edit(header))
    body_cut = draw(st.integers(-8, 8))
    body = body[: len(body) + body_cut] if body_cut < 0 else body + bytes(body_cut)
    try:
        return join(header, body, length_delta=draw(st.sampled_from([0, 0, 0, -1, 1, 7])), padding=draw(st.integers(0, 3)))
    except ValueError:  # json.dumps refuses some values (e.g. circular); nothing a file can hold
        return join({}, body)


@st.composite
def files_from_scratch(draw) -> bytes:
    header = draw(st.dictionaries(st.sampled_from(["spatial", "temporal", "__metadata__", "other"]) | st.text(max_size=6), json_values, max_size=4))
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.dictionaries(metadata_keys, metadata_strings, max_size=6))
    return join(header, draw(st.binary(max_size=256)), length_delta=draw(st.sampled_from([0, 0, -3, 5])))


# -- the property -----------------------------------------------------------------------------------------------


class Hang(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    def alarm(signum, frame):
        raise Hang(f"parse_embedding ran for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check(data: bytes, folder: Path | None = None) -> str:
    """'ok' or 'refused'; anything but EmbeddingFileError propagates (and fails the test). With a
    folder, the bytes go through the file loader."""
    try:
        with time_limit(5.0):
            if folder is None:
                emb = parse_embedding(data, name="fuzzed.safetensors")
            else:
                path = folder / "fuzzed.safetensors"
                path.write_bytes(data)
                emb = load_embedding(path)
    except EmbeddingFileError as e:
        assert str(e).startswith("fuzzed.safetensors: ") and len(str(e)) < 1000
        return "refused"
    assert emb.spatial.dtype == torch.float32 and emb.spatial.ndim == 3 and emb.temporal.shape == emb.spatial.shape[1:]
    assert bool(torch.isfinite(emb.spatial).all()) and bool(torch.isfinite(emb.temporal).all())
    return "ok"


def run(strategy, examples: int, folder: Path | None = None) -> dict[str, int]:
    outcomes = {"ok": 0, "refused": 0}

    @settings(max_examples=examples, **SETTINGS)
    @given(strategy)
    def fuzz(data):
        outcomes[check(data, folder)] += 1

    fuzz()
    return outcomes


@pytest.mark.parametrize(
    "strategy, examples, via_file",
    [(mutated_files(), MUTATED, False), (edited_files(), EDITED, False), (files_from_scratch(), FROM_SCRATCH, True),
     (st.binary(max_size=512), RANDOM, True)],
    ids=["bytes of valid files mutated", "headers and metadata of valid files edited", "headers from scratch (files)", "random bytes (files)"],
)
def test_only_embedding_file_errors_come_out(strategy, examples, via_file, tmp_path):
    outcomes = run(strategy, examples, tmp_path if via_file else None)
    assert sum(outcomes.values()) >= examples  # hypothesis generated them all (nothing filtered away)
    assert outcomes["refused"] > 0, outcomes


def test_the_seeds_are_valid_and_a_foreign_error_would_fail(monkeypatch):
    assert all(check(data) == "ok" for data in seeds())
    import reenact_core.fileformat as fileformat

    def broken(meta, name):  # a parser bug: a raw exception escapes
        raise KeyError("format")

    monkeypatch.setattr(fileformat, "_check_metadata", broken)
    with pytest.raises(KeyError):
        check(seeds()[0])


# -- well-formed files with bad contents: each check must fire, and only for its own defect --------------------

DEFECTS = {  # defect -> the fragment of the one message that must refuse it
    "none": None,
    "nan": "NaN or infinite values",
    "inf": "NaN or infinite values",
    "temporal shape": "they must agree in tokens-per-frame and dim",
    "metadata count": "but the tensors have",
    "dtype": "motion embeddings are F32, F16 or BF16",
    "ndim": "positive dimensions",
    "newer format": "made by a newer version",
}
WELL_FORMED = 1600


@st.composite
def well_formed_files(draw) -> tuple[str, bytes]:
    """A structurally valid safetensors file (consistent header and offsets, real metadata) with one defect."""
    frames, tokens, dim = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.sampled_from([4, 8, 16]))
    defect = draw(st.sampled_from(sorted(DEFECTS)))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    tensors = {"spatial": torch.randn(frames, tokens, dim, generator=g), "temporal": torch.randn(tokens, dim, generator=g)}
    meta = dict(parse_embedding(seeds()[0]).metadata, frames=str(frames), tokens=str(tokens), dim=str(dim))
    if defect in ("nan", "inf"):
        key = draw(st.sampled_from(["spatial", "temporal"]))
        flat = tensors[key].view(-1)
        for index in draw(st.lists(st.integers(0, flat.numel() - 1), min_size=1, max_size=3)):
            flat[index] = float("nan") if defect == "nan" else draw(st.sampled_from([float("inf"), float("-inf")]))
    elif defect == "temporal shape":
        tensors["temporal"] = torch.randn(tokens + draw(st.integers(1, 2)), dim, generator=g)
    elif defect == "metadata count":
        key = draw(st.sampled_from(["frames", "tokens", "dim"]))
        meta[key] = str(int(meta[key]) + draw(st.sampled_from([-1, 1, 7])))
    elif defect == "dtype":
        tensors[draw(st.sampled_from(["spatial", "temporal"]))] = tensors["spatial" if draw(st.booleans()) else "temporal"].to(
            draw(st.sampled_from([torch.float64, torch.int32, torch.uint8, torch.int64])))
        tensors = {"spatial": tensors["spatial"], "temporal": tensors["temporal"]}
    elif defect == "ndim":
        if draw(st.booleans()):
            tensors["spatial"] = tensors["spatial"].reshape(frames * tokens, dim)
        else:
            tensors["temporal"] = tensors["temporal"][None]
    elif defect == "newer format":
        meta["format_version"] = str(int(meta["format_version"]) + draw(st.integers(1, 5)))
    data = safetensors.torch.save({k: v.contiguous() for k, v in tensors.items()}, metadata=meta)
    return defect, data


def test_well_formed_files_with_bad_contents_are_refused_by_the_check_for_that_defect():
    """Files that pass every structural check and carry one defect each (NaN/inf values, shapes that disagree,
    metadata that contradicts the tensors, a foreign dtype or rank, a newer format): every defect is refused,
    by the message for that defect, and defect-free files load. Each check fires many times."""
    fired = dict.fromkeys(DEFECTS, 0)

    @settings(max_examples=WELL_FORMED, **SETTINGS)
    @given(well_formed_files())
    def fuzz(case):
        defect, data = case
        if DEFECTS[defect] is None:
            assert check(data) == "ok"
        else:
            with pytest.raises(EmbeddingFileError, match=re.escape(DEFECTS[defect])):
                parse_embedding(data, name="fuzzed.safetensors")
        fired[defect] += 1

    fuzz()
    assert min(fired.values()) >= 100, fired
