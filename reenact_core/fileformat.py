"""Motion embedding files: .safetensors with tensors ``spatial`` [F,N,D] and ``temporal`` [N,D].

Metadata says which model the tokens are for: ``base_model`` (``svd``/``svd_xt``, or a Wan family such as
``wan21_i2v``, ``wan22_ti2v``, ``wan22_i2v_a14b``), ``token_space`` (``clip_image``: SVD's CLIP image space, 1024
wide; ``umt5``: Wan's umT5 text space, 4096 wide) and, for Wan, ``latent_frames`` (= the spatial rows: one per
latent frame). Files from before Wan support lack ``token_space`` and ``latent_frames`` and load as ``clip_image``;
the keys were added, none renamed, so FORMAT_VERSION stays 1 and older packs still read new SVD files.

Files are shared between strangers, so loading trusts nothing: the header is parsed and checked here
(size limits, JSON shape, dtypes, shapes, offsets) before a single tensor byte is read, and every
problem surfaces as :class:`EmbeddingFileError` with a message saying what to do. Nothing is unpickled.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import struct
import uuid
from pathlib import Path

import safetensors.torch
import torch

from . import __version__
from .embedding import (
    TOKEN_SPACE_UMT5,
    TOKEN_SPACES,
    UMT5_DIM,
    MotionEmbedding,
    base_model_for_frames,
    is_wan_base_model,
    token_space_for,
)

FORMAT_NAME = "reenact-anything/motion-embedding"
FORMAT_VERSION = 1
ARCHITECTURE = "stable-video-diffusion-img2vid/motion-embedding"
WAN_ARCHITECTURE = "wan-2.x/motion-embedding"

MAX_FILE_BYTES = 64 * 2**20  # a 25x77x1024 fp32 embedding is 8 MB; anything far larger is not ours
MAX_HEADER_BYTES = 256 * 2**10
MAX_METADATA_VALUE_CHARS = 16 * 2**10
MAX_FRAMES = 256
MAX_TOKENS = 256
MAX_DIM = 8192

_DTYPES = {"F32": (torch.float32, 4), "F16": (torch.float16, 2), "BF16": (torch.bfloat16, 2)}
REQUIRED_METADATA = ("format", "format_version", "frames", "tokens", "dim")


class EmbeddingFileError(ValueError):
    """A motion embedding file that cannot be used; the message says why and what to do."""


def build_metadata(
    embedding: MotionEmbedding,
    *,
    title: str,
    steps: int | None = None,
    learning_rate: float | None = None,
    seed: int | None = None,
    final_loss: float | None = None,
    reference_sha256: str | None = None,
    extra: dict[str, object] | None = None,
) -> dict[str, str]:
    """The metadata an embedding is saved with (all values strings, as safetensors requires)."""
    meta: dict[str, str] = dict(embedding.metadata)
    # SVD's family follows from the frame count; a Wan family (set by whoever learned it) is kept as it is.
    base_model = meta["base_model"] if is_wan_base_model(meta.get("base_model")) else base_model_for_frames(embedding.frames)
    fields: dict[str, object | None] = {
        "base_model": base_model,
        "steps": steps,
        "learning_rate": learning_rate,
        "seed": seed,
        "final_loss": final_loss,
        "reference_sha256": reference_sha256,
        "modelspec.title": title,
    }
    meta.update({k: str(v) for k, v in fields.items() if v is not None})
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    _add_model_keys(meta, embedding.frames)
    return meta


def _add_model_keys(meta: dict[str, str], frames: int) -> None:
    """base_model (SVD's from the frame count unless set), token_space (from base_model unless set) and, for Wan
    embeddings, latent_frames (always the row count: a resampled embedding keeps its old metadata)."""
    if meta.get("token_space") == TOKEN_SPACE_UMT5 and not is_wan_base_model(meta.get("base_model")):
        meta["base_model"] = "wan"
    meta.setdefault("base_model", base_model_for_frames(frames))
    meta.setdefault("token_space", token_space_for(meta["base_model"]))
    if meta["token_space"] == TOKEN_SPACE_UMT5:
        meta["latent_frames"] = str(frames)


def save_embedding(embedding: MotionEmbedding, path: str | os.PathLike) -> Path:
    """Write atomically: a temporary file in the same folder, fsync, then rename over ``path``.

    A failure at any point (disk full, read-only folder) leaves no partial file behind.
    """
    path = Path(path)
    meta = dict(embedding.metadata)
    meta.update(
        {
            "format": FORMAT_NAME,
            "format_version": str(FORMAT_VERSION),
            "frames": str(embedding.frames),
            "tokens": str(embedding.tokens),
            "dim": str(embedding.dim),
            "pack_version": __version__,
            "modelspec.sai_model_spec": "1.0.0",
            "modelspec.architecture": WAN_ARCHITECTURE if _is_wan(embedding.metadata) else ARCHITECTURE,
            "modelspec.implementation": "https://github.com/reenact-anything/ComfyUI-ReenactAnything",
        }
    )
    _add_model_keys(meta, embedding.frames)
    meta.setdefault("modelspec.title", path.stem)
    meta.setdefault("modelspec.date", datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat())
    tensors = {
        "spatial": embedding.spatial.detach().to("cpu", torch.float32).contiguous(),
        "temporal": embedding.temporal.detach().to("cpu", torch.float32).contiguous(),
    }
    data = safetensors.torch.save(tensors, metadata=dict(sorted(meta.items())))
    # A fresh name in the same folder (so the rename is atomic), created with the user's umask.
    tmp_name = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp_name, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    return path


def load_embedding(path: str | os.PathLike) -> MotionEmbedding:
    """Read and validate a motion embedding file; raises EmbeddingFileError for anything else."""
    path = Path(path)
    name = path.name
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise EmbeddingFileError(f"{name}: file not found ({path})") from None
    except OSError as exc:
        raise EmbeddingFileError(f"{name}: cannot read the file ({exc.strerror})") from None
    if size > MAX_FILE_BYTES:
        raise EmbeddingFileError(
            f"{name}: {size / 2**20:.0f} MB is far too large for a motion embedding (at most "
            f"{MAX_FILE_BYTES // 2**20} MB); is this a model checkpoint? Put checkpoints in models/checkpoints."
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EmbeddingFileError(f"{name}: cannot read the file ({exc.strerror})") from None
    return parse_embedding(data, name=name)


def parse_embedding(data: bytes, name: str = "embedding") -> MotionEmbedding:
    header, body = _split_header(data, name)
    meta = _check_metadata(header.pop("__metadata__", None), name)
    tensors = _check_tensor_entries(header, len(body), name)

    frames, tokens, dim = tensors["spatial"][1]
    if tensors["temporal"][1] != (tokens, dim):
        raise EmbeddingFileError(
            f"{name}: spatial tokens are {frames}x{tokens}x{dim} but temporal tokens are "
            f"{'x'.join(map(str, tensors['temporal'][1]))}; they must agree in tokens-per-frame and dim. "
            "The file is corrupt or was not made by this pack."
        )
    for key, value in (("frames", frames), ("tokens", tokens), ("dim", dim)):
        if _int_field(meta, key, name) != value:
            raise EmbeddingFileError(f"{name}: metadata says {key}={_show(meta[key])} but the tensors have {value}; the file is inconsistent")
    if not (1 <= frames <= MAX_FRAMES and 1 <= tokens <= MAX_TOKENS and 1 <= dim <= MAX_DIM):
        raise EmbeddingFileError(f"{name}: implausible embedding size {frames}x{tokens}x{dim}")
    _check_model_keys(meta, frames, dim, name)

    try:
        loaded = safetensors.torch.load(data)
    except Exception as exc:  # the header was checked, so this is truncation or corruption of the body
        raise EmbeddingFileError(f"{name}: tensor data is unreadable ({exc}); download or save the file again") from None
    spatial, temporal = loaded["spatial"].float(), loaded["temporal"].float()
    for key, t in (("spatial", spatial), ("temporal", temporal)):
        if not torch.isfinite(t).all():
            raise EmbeddingFileError(f"{name}: the {key} tokens contain NaN or infinite values; the embedding is unusable (re-run the inversion, maybe with a lower learning rate)")
    return MotionEmbedding(spatial=spatial, temporal=temporal, metadata=meta)


def _split_header(data: bytes, name: str) -> tuple[dict, bytes]:
    if len(data) < 8:
        raise EmbeddingFileError(f"{name}: the file is empty or truncated ({len(data)} bytes); download or save it again")
    # A pickle starts with 0x80 (protocol 2+), a PyTorch zip with "PK"; a safetensors header length may start
    # with those bytes too (a 640-byte header is 80 02 00 ...), but its JSON header always opens at byte 8.
    if (data[:2] == b"PK" or data[:1] == b"\x80") and data[8:9] != b"{":
        raise EmbeddingFileError(
            f"{name}: this is a pickle/zip file (PyTorch .pt/.bin format), not safetensors. "
            "This pack never loads pickles because they can run code; ask for a .safetensors motion embedding"
        )
    (header_len,) = struct.unpack("<Q", data[:8])
    if MAX_HEADER_BYTES < header_len <= len(data) - 8:
        raise EmbeddingFileError(
            f"{name}: its header (tensor list and metadata) is {header_len / 2**10:.0f} KB, more than a motion embedding "
            f"ever needs ({MAX_HEADER_BYTES // 2**10} KB at most): the metadata is oversized or this is not a motion embedding; "
            "use a file saved by Save Motion Embedding"
        )
    if header_len > MAX_HEADER_BYTES or header_len > len(data) - 8:
        raise EmbeddingFileError(
            f"{name}: not a valid safetensors file (header of {header_len} bytes in a {len(data)}-byte file); "
            "it is truncated, corrupt or a different format"
        )
    try:
        header = json.loads(data[8 : 8 + header_len].decode("utf-8"))
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or e.g. an integer with too many digits
        raise EmbeddingFileError(f"{name}: not a valid safetensors file (its header is not JSON); it is corrupt or a different format") from None
    if not isinstance(header, dict):
        raise EmbeddingFileError(f"{name}: not a valid safetensors file (header is not a JSON object)")
    return header, data[8 + header_len :]


def _check_metadata(meta: object, name: str) -> dict[str, str]:
    if meta is None:
        raise EmbeddingFileError(
            f"{name}: no metadata; this is a safetensors file but not a motion embedding from this pack "
            "(textual-inversion embeddings, LoRAs and checkpoints do not work here)"
        )
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise EmbeddingFileError(f"{name}: malformed metadata (must map strings to strings)")
    for key, value in meta.items():
        if len(value) > MAX_METADATA_VALUE_CHARS or len(key) > 256:
            raise EmbeddingFileError(f"{name}: metadata entry {_show(key)} is too large ({len(value)} characters)")
    if meta.get("format") != FORMAT_NAME:
        raise EmbeddingFileError(
            f"{name}: not a motion embedding (format {_show(meta.get('format', 'missing'))}, expected {FORMAT_NAME!r}); "
            "use a file saved by Save Motion Embedding"
        )
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    if missing:
        raise EmbeddingFileError(f"{name}: metadata lacks {', '.join(missing)}; the file is incomplete or corrupt")
    version = _int_field(meta, "format_version", name)
    if version > FORMAT_VERSION:
        raise EmbeddingFileError(
            f"{name}: made by a newer version of Reenact Anything (format {_show(version)}, this is {__version__} reading "
            f"format {FORMAT_VERSION}); update the node pack"
        )
    if version < 1:
        raise EmbeddingFileError(f"{name}: invalid format_version {_show(version)}")
    return dict(meta)


def _is_wan(meta) -> bool:
    return meta.get("token_space") == TOKEN_SPACE_UMT5 or is_wan_base_model(meta.get("base_model"))


def _check_model_keys(meta: dict[str, str], frames: int, dim: int, name: str) -> None:
    """token_space and latent_frames agree with the tensors; a file without token_space (made before Wan support)
    gets the one its base_model implies ('clip_image' for SVD's)."""
    space = meta.setdefault("token_space", token_space_for(meta.get("base_model")))
    if space not in TOKEN_SPACES:
        raise EmbeddingFileError(
            f"{name}: its tokens are for the token space {_show(space)}, which this version of Reenact Anything ({__version__}) "
            f"does not know (it knows {', '.join(TOKEN_SPACES)}); update the node pack"
        )
    if space == TOKEN_SPACE_UMT5 and dim != UMT5_DIM:
        raise EmbeddingFileError(f"{name}: metadata says umT5 tokens (Wan), which are {UMT5_DIM} wide, but the tensors are {dim} wide; the file is inconsistent")
    if "latent_frames" in meta and _int_field(meta, "latent_frames", name) != frames:
        raise EmbeddingFileError(f"{name}: metadata says latent_frames={_show(meta['latent_frames'])} but the tensors have {frames} frames; the file is inconsistent")


def _int_field(meta: dict[str, str], key: str, name: str) -> int:
    try:
        return int(meta[key])
    except (KeyError, ValueError):
        raise EmbeddingFileError(f"{name}: metadata {key}={_show(meta.get(key))} is not an integer; the file is corrupt") from None


def _check_tensor_entries(header: dict, body_len: int, name: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    if set(header) != {"spatial", "temporal"}:
        raise EmbeddingFileError(
            f"{name}: expected exactly the tensors 'spatial' and 'temporal', found {_show(sorted(header)[:8])}; "
            "this safetensors file is not a motion embedding"
        )
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    spans = []
    for key, ndim in (("spatial", 3), ("temporal", 2)):
        entry = header[key]
        if not isinstance(entry, dict):
            raise EmbeddingFileError(f"{name}: tensor {key!r} has a malformed header entry")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise EmbeddingFileError(f"{name}: tensor {key!r} has dtype {_show(dtype)}; motion embeddings are F32, F16 or BF16")
        if not (isinstance(shape, list) and len(shape) == ndim and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
            raise EmbeddingFileError(f"{name}: tensor {key!r} has shape {_show(shape)}; expected {ndim} positive dimensions")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            raise EmbeddingFileError(f"{name}: tensor {key!r} has malformed data offsets {_show(offsets)}")
        begin, end = offsets
        if not (0 <= begin <= end <= body_len) or end - begin != math.prod(shape) * _DTYPES[dtype][1]:
            raise EmbeddingFileError(f"{name}: tensor {key!r} data does not fit the file (truncated or corrupt); download or save it again")
        spans.append((begin, end))
        out[key] = (dtype, tuple(shape))
    (b0, e0), (b1, e1) = sorted(spans)
    if e0 > b1:
        raise EmbeddingFileError(f"{name}: tensor data regions overlap; the file is corrupt")
    return out


def _show(value: object, limit: int = 60) -> str:
    """A value from the file, for a message: repr, cut short (a stranger's file may hold anything)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
