"""Bad inputs, untrusted files, cancellation, no network, and load, through a real ComfyUI server's HTTP API.

One server (COMFYUI_ROOT, this Python) with the pack installed, every outbound connection attempt of the
server process refused and recorded (testkit/netguard), its temporary files in a private folder, and the
test-only node pack tests/comfy_test_nodes (a planted network connection; a learning rate that diverges).
Every bad input must end in a readable execution error that says what to do, write nothing, and leave
the server serving the next prompt. The messages are the ones docs/errors.md lists (checked by
test_readme_lists_every_case). Timings are printed at the end of the module.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import pickle
import random
import socket
import struct
import sys
import time
import uuid
import zipfile
from pathlib import Path

import av
import pytest
import safetensors.torch
import torch
from conftest import TEST_NODES, comfyui_root, make_checkpoints_folder, paused_at, wait_until_paused
from PIL import Image
from test_e2e_server import (
    APPLY,
    EXAMPLE_EMBEDDING,
    INVERT,
    WebSocketListener,
    assert_success,
    nodes_of,
    saved_embeddings,
    scaled_prompt,
    tiny_valid_prompt,
    with_inversion_options,
)

from reenact_core.embedding import MotionEmbedding
from reenact_core.fileformat import FORMAT_NAME, load_embedding, parse_embedding, save_embedding
from testkit.comfy_server import ComfyServer, execution_error
from testkit.media import moving_square_frames, write_black_png, write_video

REPO = Path(__file__).resolve().parent.parent
DIVERGING_LEARNING_RATE = 0.875  # tests/comfy_test_nodes makes AdamW write inf at exactly this rate
EXPLODING_LEARNING_RATE = 0.625  # ... and 1e30 (the next loss is NaN) at this one
TIMINGS: dict[str, float] = {}
NOTES: list[str] = []

# Messages of the cases below that are not in REFERENCE_CASES / EMBEDDING_CASES (docs/errors.md quotes them all).
ONE_FRAME = "a single image has no motion to learn"
OTHER_WIDTH = "-wide tokens: connect the outputs of SVD_img2vid_Conditioning"
DIVERGED = "the embedding became non-finite at step"
LOSS_NAN = "the model produced non-finite values"
SAVE_FAILED = "Could not save the motion embedding"
DOCUMENTED = [ONE_FRAME, OTHER_WIDTH, DIVERGED, LOSS_NAN, SAVE_FAILED]


@pytest.fixture(scope="module")
def server(tmp_path_factory, request):
    root = comfyui_root()
    base = tmp_path_factory.mktemp("comfy-robustness")
    checkpoints = make_checkpoints_folder(base)
    # The first port offered is already taken (the race a free-port pick can lose): start-up must notice,
    # move to another port, and never take the other listener for the server.
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    # The load test reads the server's RSS. glibc raises its mmap threshold after freeing a large block, so freed
    # model copies may stay in the heap and RSS then grows 10-30% without a single live tensor more (measured on
    # the cancel test, which now counts live objects instead). A fixed threshold makes RSS follow what is alive.
    srv = ComfyServer(root, base, {"checkpoints": checkpoints}, python=sys.executable, block_network=True, custom_nodes=[TEST_NODES],
                      port=taken, env={"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)})
    start = time.monotonic()
    try:
        srv.start()
    finally:
        squatter.close()
    TIMINGS["server start-up (first port taken)"] = time.monotonic() - start
    assert srv.port != taken, "the server claims a port another process held"
    try:
        yield srv
    finally:
        srv.stop()
        text = f"\nRobustness e2e timings (ComfyUI {root}, {os.cpu_count()} CPUs)\n"
        text += "".join(f"  {name:<62} {seconds:7.1f} s\n" for name, seconds in TIMINGS.items())
        text += "".join(f"  {note}\n" for note in NOTES)
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            print(text, flush=True)


@pytest.fixture(scope="module")
def object_info(server):
    return server.get("/object_info")


@contextlib.contextmanager
def timed(label: str):
    start = time.monotonic()
    yield
    TIMINGS[label] = time.monotonic() - start


def expect_error(server: ComfyServer, prompt: dict, node_id: str, exception_type: str, fragments: list[str]) -> str:
    """Run a prompt that must fail in ``node_id`` with a short, readable message holding ``fragments``;
    no embedding may be written, and the next (valid) prompt must run."""
    entry = server.run(prompt, timeout=300)
    error = execution_error(entry)
    assert error is not None and entry["status"]["status_str"] == "error", entry["status"]
    message = error["exception_message"]
    assert str(error["node_id"]) == node_id, (error["node_id"], error["node_type"], message)
    assert error["exception_type"].endswith(exception_type), (error["exception_type"], message)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert "Traceback" not in message and len(message) < 700, message
    assert_nothing_written(server, prompt)
    assert_still_serving(server)
    return message


def assert_nothing_written(server: ComfyServer, prompt: dict) -> None:
    folder = server.base / "output" / "motion_embeddings"
    for node_id in nodes_of(prompt, "SaveMotionEmbedding"):
        prefix = prompt[node_id]["inputs"]["filename_prefix"]
        assert not list(folder.glob(f"{prefix}*")), f"an embedding was written for {prefix}"
    assert not [p for p in folder.rglob(".*") if p.is_file()], "a temporary file was left behind"


def live_objects(server: ComfyServer) -> dict:
    """The server's live SVD models and tensor bytes (test pack's ReenactTestLiveObjects)."""
    report = server.base / "temp" / f"live_{uuid.uuid4().hex}.json"
    entry = server.run({"1": {"class_type": "ReenactTestLiveObjects", "inputs": {"report_file": str(report)}}}, timeout=120)
    assert entry["status"]["status_str"] == "success", entry["status"]
    live = json.loads(report.read_text())
    report.unlink()
    return live


def assert_still_serving(server: ComfyServer) -> None:
    prompt, _ = tiny_valid_prompt(server.get("/object_info/LoadMotionEmbedding"))
    assert_success(server, server.run(prompt, timeout=120))


# -- reference videos ------------------------------------------------------------------------------------


def put(name: str, data: bytes | str):
    """A maker for REFERENCE_CASES: writes ``data`` as ``name`` into the input folder."""
    def make(input_dir: Path) -> str:
        path = input_dir / name
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return name

    return make


def _webm_with_unknown_codec(input_dir: Path) -> str:
    path = input_dir / "bad_codec.webm"
    tmp = path.with_suffix(".tmp.webm")
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libvpx", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for frame in moving_square_frames(4, 32):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    data = tmp.read_bytes()
    tmp.unlink()
    assert data.count(b"V_VP8") == 1
    path.write_bytes(data.replace(b"V_VP8", b"V_QQQ"))  # a codec id no FFmpeg knows
    return path.name


def _mp4_with_garbage_packets(input_dir: Path) -> str:
    path = input_dir / "bad_zero.mp4"
    data = bytearray(write_video(moving_square_frames(6, 32), path).read_bytes())
    start = data.find(b"mdat") + 4
    end = start + int.from_bytes(data[start - 8 : start - 4], "big") - 8
    data[start:end] = bytes(end - start)  # container intact, every packet garbage
    path.write_bytes(bytes(data))
    return path.name


def _truncated_mp4(input_dir: Path) -> str:
    data = write_video(moving_square_frames(6, 32), input_dir / "bad_half.mp4").read_bytes()
    (input_dir / "bad_half.mp4").write_bytes(data[: len(data) // 2])  # the index (moov) is at the end
    return "bad_half.mp4"


def _huge_frames(input_dir: Path) -> str:
    """8 frames of 8000x6000 (4.3 GB as float32 RGB): a folder of valid PNGs of ~150 KB each."""
    folder = input_dir / "bad_huge"
    folder.mkdir()
    write_black_png(folder / "000.png", 8000, 6000)
    for i in range(1, 8):
        (folder / f"{i:03}.png").write_bytes((folder / "000.png").read_bytes())
    return "bad_huge/"


REEXPORT = "re-export it as H.264 MP4"
OPEN_FAILED = "could not be opened as a video"

# name -> (make the file in the input folder and return the video widget value, message fragments)
REFERENCE_CASES = {
    "empty file": (put("bad_empty.mp4", b""), ["the file is empty (0 bytes); re-export or re-copy it"]),
    "corrupt bytes": (put("bad_noise.mp4", random.Random(0).randbytes(50_000)), [OPEN_FAILED, REEXPORT]),
    "a text file named .mp4": (put("bad_notes.mp4", "my notes, not a video\n" * 50), [OPEN_FAILED, "or not a video at all", REEXPORT]),
    "truncated video": (_truncated_mp4, [OPEN_FAILED, "may be corrupt, truncated", REEXPORT]),
    "unknown codec": (_webm_with_unknown_codec, ["uses a codec this PyAV/FFmpeg build cannot decode", REEXPORT]),
    "zero decodable frames": (_mp4_with_garbage_packets, ["has 0 decodable frames", REEXPORT]),
    "huge resolution x length": (
        _huge_frames,
        ["more than the memory budget of 4.0 GB", "lower frame_load_cap, raise select_every_nth or set custom_width/custom_height"],
    ),
}


@pytest.mark.parametrize("case", list(REFERENCE_CASES))
def test_a_bad_reference_video_gives_a_clear_error(server, case):
    make, fragments = REFERENCE_CASES[case]
    video = make(server.base / "input")
    prompt = {
        "1": {"class_type": "LoadMotionReference", "inputs": {"video": video, "frame_load_cap": 0, "skip_first_frames": 0,
                                                             "select_every_nth": 1, "custom_width": 0, "custom_height": 0}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 1]}},
    }
    with timed(f"bad reference: {case} (+ the next prompt)"):
        expect_error(server, prompt, "1", "ReferenceVideoError", fragments)


def test_a_one_frame_reference_has_no_motion_to_learn(server, object_info):
    folder = server.base / "input" / "one_frame"
    folder.mkdir()
    Image.fromarray(moving_square_frames(1, 64)[0]).save(folder / "000.png")
    prompt = scaled_prompt(object_info, INVERT)
    prompt[nodes_of(prompt, "LoadMotionReference")[0]]["inputs"]["video"] = "one_frame/"
    with timed("one-frame reference (+ the next prompt)"):
        expect_error(server, prompt, nodes_of(prompt, "MotionTextualInversion")[0], "ReferenceVideoError",
                     ["only 1 frame, and " + ONE_FRAME, "at least 4 frames"])


# -- embedding files ------------------------------------------------------------------------------------------


def _valid(frames=2, tokens=2, dim=1024, **kw) -> MotionEmbedding:
    g = torch.Generator().manual_seed(0)
    return MotionEmbedding(torch.randn(frames, tokens, dim, generator=g), torch.randn(tokens, dim, generator=g), kw)


def _saved_bytes(embedding: MotionEmbedding, folder: Path) -> bytes:
    return save_embedding(embedding, folder / f"src-{uuid.uuid4().hex}.safetensors").read_bytes()


def _rewritten(folder: Path, tensors=None, meta=None) -> bytes:
    """A valid embedding's tensors and metadata, edited, saved again as plain safetensors."""
    src = parse_embedding(_saved_bytes(_valid(), folder))
    return safetensors.torch.save(tensors(src) if tensors else {"spatial": src.spatial, "temporal": src.temporal},
                                  metadata=meta(dict(src.metadata)) if meta else dict(src.metadata))


def _raw(header: dict, body: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"weights": [1, 2, 3]}))
    return buffer.getvalue()


def _sparse(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


SHARED_FROM_STRANGERS = "use a file saved by Save Motion Embedding"

# name -> (bytes of the file, given the folder to build it in; message fragments)
EMBEDDING_CASES = {
    "spatial and temporal token counts disagree": (
        lambda d: _rewritten(d, tensors=lambda e: {"spatial": e.spatial, "temporal": torch.zeros(3, 1024)}),
        ["they must agree in tokens-per-frame and dim"],
    ),
    "NaN values": (
        lambda d: _rewritten(d, tensors=lambda e: {"spatial": e.spatial.index_fill(0, torch.tensor([1]), float("nan")), "temporal": e.temporal}),
        ["contain NaN or infinite values", "lower learning rate"],
    ),
    "inf values": (
        lambda d: _rewritten(d, tensors=lambda e: {"spatial": e.spatial, "temporal": torch.full_like(e.temporal, float("inf"))}),
        ["contain NaN or infinite values"],
    ),
    "truncated file": (lambda d: _saved_bytes(_valid(), d)[:-100], ["does not fit the file (truncated or corrupt)", "download or save it again"]),
    "a pickle renamed to .safetensors": (
        lambda d: pickle.dumps({"spatial": [0.0] * 8}),
        ["this is a pickle/zip file", "never loads pickles because they can run code"],
    ),
    "a zip renamed to .safetensors": (lambda d: _zip(), ["this is a pickle/zip file", "never loads pickles because they can run code"]),
    "no metadata (another safetensors file)": (
        lambda d: safetensors.torch.save({"lora_up.weight": torch.zeros(4, 4)}),
        ["no metadata; this is a safetensors file but not a motion embedding from this pack"],
    ),
    "malformed metadata": (lambda d: _raw({"__metadata__": {"format": FORMAT_NAME, "frames": 14}}), ["malformed metadata (must map strings to strings)"]),
    "an enormous metadata value": (
        lambda d: _rewritten(d, meta=lambda m: m | {"description": "x" * 100_000}),
        ["is too large (", "metadata entry 'description' is too large (100000 characters)"],
    ),
    "an enormous header": (
        lambda d: _raw({"__metadata__": {f"k{i}": "v" * 1000 for i in range(400)}}),
        ["its header (tensor list and metadata) is", "more than a motion embedding ever needs", SHARED_FROM_STRANGERS],
    ),
    "a future format version": (
        lambda d: _rewritten(d, meta=lambda m: m | {"format_version": "2"}),
        ["made by a newer version of Reenact Anything", "update the node pack"],
    ),
    "a checkpoint put in the embeddings folder (huge file)": (None, ["far too large for a motion embedding", "models/checkpoints"]),
}


@pytest.mark.parametrize("case", list(EMBEDDING_CASES))
def test_a_bad_embedding_file_gives_a_clear_error(server, tmp_path, case):
    make, fragments = EMBEDDING_CASES[case]
    folder = server.base / "output" / "motion_embeddings" / "bad"
    folder.mkdir(parents=True, exist_ok=True)
    name = case.replace(" ", "_").replace("(", "").replace(")", "").replace("/", "_") + ".safetensors"
    if make is None:
        _sparse(folder / name, 65 * 2**20)
    else:
        (folder / name).write_bytes(make(tmp_path))
    prefix = f"never/{uuid.uuid4().hex[:8]}"
    prompt = {
        "1": {"class_type": "LoadMotionEmbedding", "inputs": {"embedding_name": f"bad/{name}"}},
        "2": {"class_type": "SaveMotionEmbedding", "inputs": {"motion_embedding": ["1", 0], "filename_prefix": prefix}},
    }
    with timed(f"bad embedding: {case} (+ the next prompt)"):
        expect_error(server, prompt, "1", "EmbeddingFileError", fragments)


@pytest.mark.parametrize("dim", [768, 1280, 64])
def test_an_embedding_for_another_token_width_is_refused_when_applied(server, object_info, dim):
    """A valid file (64-wide: a small model's such as Motion World) applied to SVD's 1024-wide conditioning."""
    folder = server.base / "output" / "motion_embeddings" / "width"
    folder.mkdir(parents=True, exist_ok=True)
    save_embedding(_valid(frames=14, tokens=3, dim=dim), folder / f"dim{dim}.safetensors")  # a valid file
    prompt = scaled_prompt(object_info, APPLY)
    prompt[nodes_of(prompt, "LoadMotionEmbedding")[0]]["inputs"]["embedding_name"] = f"width/dim{dim}.safetensors"
    with timed(f"{dim}-wide embedding applied (+ the next prompt)"):
        expect_error(server, prompt, nodes_of(prompt, "ApplyMotionEmbedding")[0], "ValueError",
                     [f"The positive conditioning has 1024-wide tokens but this motion embedding has {dim}{OTHER_WIDTH}",
                      "use an embedding learned with the same model"])


# -- inversion: divergence and cancellation ----------------------------------------------------------------------


def inversion_prompt(object_info: dict, steps: int, seed: int = 5, eval_draws: int = 2, **inputs) -> tuple[dict, str]:
    prompt = with_inversion_options(scaled_prompt(object_info, INVERT), object_info, eval_draws=eval_draws)
    inversion = nodes_of(prompt, "MotionTextualInversion")[0]
    prompt[inversion]["inputs"].update(steps=steps, seed=seed, **inputs)
    return prompt, inversion


@pytest.mark.parametrize(
    "learning_rate, fragments",
    [
        (DIVERGING_LEARNING_RATE, [DIVERGED + " 2", f"lower learning_rate (now {DIVERGING_LEARNING_RATE:g})"]),
        (EXPLODING_LEARNING_RATE, [" at step 3 of 4: " + LOSS_NAN, f"(learning rate {EXPLODING_LEARNING_RATE:g}). Lower learning_rate"]),
    ],
    ids=["tokens become inf", "loss becomes NaN"],
)
def test_a_diverging_learning_rate_stops_with_a_clear_message_and_writes_nothing(server, object_info, learning_rate, fragments):
    prompt, inversion = inversion_prompt(object_info, steps=4, learning_rate=learning_rate)
    with timed(f"diverging learning rate {learning_rate:g} (+ the next prompt)"):
        message = expect_error(server, prompt, inversion, "InversionDiverged", fragments)
    if learning_rate == EXPLODING_LEARNING_RATE:
        assert "the loss became nan" in message or "the loss became inf" in message, message


def _embedding_tensors(server: ComfyServer, entry: dict) -> tuple[torch.Tensor, torch.Tensor]:
    (path,) = saved_embeddings(server, entry)
    embedding = load_embedding(path)
    return embedding.spatial, embedding.temporal


def _ran(entry: dict, node_id: str) -> bool:
    cached = [data.get("nodes", []) for kind, data in entry["status"]["messages"] if kind == "execution_cached"]
    return all(node_id not in nodes for nodes in cached)


def test_cancelling_an_inversion_at_the_first_step_mid_way_and_at_the_last_step(server, object_info):
    """POST /interrupt while the inversion runs (before step 1 reports, at step 3 of 6, at step 5 of 6):
    each prompt ends as interrupted, not failed, and writes nothing; afterwards the same inversion as
    before gives exactly the same embedding (no grad/inference/autocast mode, no weight change leaked)
    and the server's memory has not grown."""
    reference, inversion = inversion_prompt(object_info, steps=3, seed=11, precision="fp32")
    with timed("cancel: reference inversion (3 steps) before"):
        entry = server.run(reference, timeout=300)
    assert_success(server, entry)
    before = _embedding_tensors(server, entry)
    rss_before = server.rss_bytes()
    live_before = live_objects(server)

    steps = 6
    for label, interrupt_after in (("at the first step", 0), ("mid-way", steps // 2), ("at the last step", steps - 1)):
        prompt, inversion = inversion_prompt(object_info, steps=steps)
        # The inversion waits at that step until interrupted (test pack): the interrupt lands there however
        # fast or loaded the machine is.
        ready = server.base / "temp" / f"cancel_ready_{interrupt_after}"
        prompt = paused_at(prompt, inversion, interrupt_after, ready)
        with WebSocketListener(server) as ws, timed(f"cancel {label}: queue -> history entry"):
            prompt_id = server.queue(prompt)
            paused_at_step = wait_until_paused(server, ready)
            assert server.post("/interrupt")[0] == 200  # before any check: a failed check must not leave the server paused
            assert paused_at_step == interrupt_after, label
            entry = server.wait(prompt_id, timeout=120)
            progress = [m["data"]["value"] for m in ws.messages if m["type"] == "progress" and m["data"].get("node") == inversion]
        kinds = [kind for kind, _ in entry["status"]["messages"]]
        assert entry["status"]["status_str"] == "error" and "execution_interrupted" in kinds, (label, entry["status"])
        assert execution_error(entry) is None, label
        assert max(progress, default=0) <= interrupt_after, (label, progress)  # nothing ran past the step it was stopped at
        assert_nothing_written(server, prompt)
        queue = server.get("/queue")
        assert not queue["queue_running"] and not queue["queue_pending"], queue

    again = copy.deepcopy(reference)
    save = nodes_of(again, "SaveMotionEmbedding")[0]
    again[save]["inputs"]["filename_prefix"] += "_again"
    # The server runs on CPU, where precision auto is fp32: the same computation, but another input value,
    # so that ComfyUI v0.33's cache (it keeps earlier results while RAM allows) must run the node again.
    again[inversion]["inputs"]["precision"] = "auto"
    with timed("cancel: the same inversion after the interrupts"):
        entry = server.run(again, timeout=300)
    assert_success(server, entry)
    assert _ran(entry, inversion), "the inversion was answered from ComfyUI's cache"
    after = _embedding_tensors(server, entry)
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[1])
    # What is alive, not RSS: glibc may keep freed model copies in its heap (RSS then varied from -10% to
    # +14% over these same steps, machine idle), and a newer ComfyUI caches outputs while RAM allows.
    # (Each report runs as a prompt of its own, so what only ComfyUI's cache held for the last prompt may be gone.)
    live_after = live_objects(server)
    growth = live_after["tensor_bytes"] - live_before["tensor_bytes"]
    NOTES.append(f"cancel: live tensors {live_before['tensor_bytes'] / 2**20:.0f} MiB before, {live_after['tensor_bytes'] / 2**20:.0f} MiB "
                 f"after three interrupted inversions; server RSS {100 * (server.rss_bytes() / rss_before - 1):+.1f}%")
    assert live_after["svd_models"] == live_before["svd_models"], (live_before, live_after)  # no private copy survived
    # Far less than one private copy of the test model's UNet (~450 MiB): no activations, optimiser state or tokens kept.
    assert growth < 32 * 2**20, f"live tensors grew by {growth / 2**20:.0f} MiB over three interrupted inversions"


# -- saving ----------------------------------------------------------------------------------------------------


def test_a_save_that_fails_writes_nothing_and_says_why(server):
    folder = server.base / "output" / "motion_embeddings"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "occupied").write_text("a file where the filename prefix wants a folder")
    prompt, _ = tiny_valid_prompt(server.get("/object_info/LoadMotionEmbedding"))
    prompt["2"]["inputs"]["filename_prefix"] = "occupied/motion"
    with timed("failed save (+ the next prompt)"):
        expect_error(server, prompt, "2", "EmbeddingFileError",
                     [SAVE_FAILED, "occupied: Not a directory. Nothing was written", "change filename_prefix"])


ESCAPING_PREFIXES = ["../../escape", "..\\..\\windows", "a/../../b", "C:\\Users\\x",
                     "weird:*?<>|\"name", "nul\x00byte", "\u00fcn\u00efc\u00f6d\u00e9 \U0001f642", "   ", ".."]


def test_save_prefixes_stay_inside_the_output_folder(server, tmp_path):
    """Whatever filename_prefix says ('..', absolute paths, drive letters, odd or control characters,
    nothing at all), the file lands in output/motion_embeddings/ and nowhere else."""
    root = (server.base / "output" / "motion_embeddings").resolve()
    outside_before = {p for p in server.base.rglob("*") if p.suffix == ".safetensors" and not p.resolve().is_relative_to(root)}
    outside_folder = tmp_path / "elsewhere"  # this test's own folder: an absolute prefix must not land there
    outside_folder.mkdir()
    with timed(f"{len(ESCAPING_PREFIXES) + 1} saves with escaping prefixes"):
        for prefix in ESCAPING_PREFIXES + [str(outside_folder / "reenact_absolute")]:
            prompt = {
                "1": {"class_type": "LoadMotionEmbedding", "inputs": {"embedding_name": EXAMPLE_EMBEDDING.name}},
                "2": {"class_type": "SaveMotionEmbedding", "inputs": {"motion_embedding": ["1", 0], "filename_prefix": prefix}},
            }
            entry = server.run(prompt, timeout=60)
            assert_success(server, entry)
            (path,) = saved_embeddings(server, entry)
            assert path.resolve().is_relative_to(root) and path.is_file(), (prefix, path)
            assert parse_embedding(path.read_bytes()).frames == 14
            relative = entry["outputs"]["2"]["text"][0]
            assert ".." not in relative.split("/") and not relative.startswith("/") and "\x00" not in relative, (prefix, relative)
    assert list(outside_folder.iterdir()) == []
    outside = {p for p in server.base.rglob("*") if p.suffix == ".safetensors" and not p.resolve().is_relative_to(root)}
    assert outside == outside_before, sorted(map(str, outside - outside_before))
    listed = server.get("/object_info/LoadMotionEmbedding")["LoadMotionEmbedding"]["input"]["required"]["embedding_name"][0]
    assert "escape_00001_.safetensors" in listed


# -- no network ------------------------------------------------------------------------------------------------------


def node_network_attempts(server: ComfyServer) -> list[dict]:
    """Connection attempts the server process made (all refused by the guard), with their stacks."""
    return server.network_attempts()


def test_a_planted_connection_is_refused_and_recorded(server):
    """Proves the network check used by the other tests can fail: a (test-only) node that opens a TCP
    connection to a listening socket gets refused, the socket never sees it, and it is recorded."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    before = len(node_network_attempts(server))
    try:
        entry = server.run({"1": {"class_type": "ReenactTestOpenConnection", "inputs": {"port": port}}}, timeout=60)
        with pytest.raises(socket.timeout):
            listener.accept()
    finally:
        listener.close()
    error = execution_error(entry)
    assert error is not None and error["exception_type"].endswith("ConnectionRefusedError")
    assert "network access is blocked" in error["exception_message"]
    attempts = node_network_attempts(server)[before:]
    assert len(attempts) == 1 and str(port) in attempts[0]["target"]
    assert any("comfy_test_nodes" in frame for frame in attempts[0]["stack"])
    assert_still_serving(server)


# -- load ------------------------------------------------------------------------------------------------------------


LOAD_PROMPTS, WARM_UP = 50, 5


def test_fifty_prompts_back_to_back(server, object_info):
    """The apply workflow (smallest sizes, 1 sampler step) 50 times on one server: the sampler, Apply
    Motion Embedding and the embedding loader run every time (seed, strength and file change); all
    succeed, memory stays flat after the first few, and no temporary file is left anywhere."""
    motions = server.base / "output" / "motion_embeddings" / "load"
    motions.mkdir(parents=True, exist_ok=True)
    (motions / "copy.safetensors").write_bytes(EXAMPLE_EMBEDDING.read_bytes())
    base = scaled_prompt(object_info, APPLY)
    for node_id in nodes_of(base, "SVD_img2vid_Conditioning"):
        base[node_id]["inputs"].update(width=32, height=32, video_frames=2)
    sampler = nodes_of(base, "KSampler")[0]
    base[sampler]["inputs"]["steps"] = 1
    loader, apply, save = nodes_of(base, "LoadMotionEmbedding")[0], nodes_of(base, "ApplyMotionEmbedding")[0], nodes_of(base, "SaveAnimatedWEBP")[0]

    def prompt(i: int) -> dict:
        p = copy.deepcopy(base)
        p[sampler]["inputs"]["seed"] = 1000 + i
        p[apply]["inputs"]["strength"] = (0.5, 1.0, 1.5)[i % 3]
        p[loader]["inputs"]["embedding_name"] = EXAMPLE_EMBEDDING.name if i % 2 else "load/copy.safetensors"
        p[save]["inputs"]["filename_prefix"] = f"load/video_{i:02}"
        return p

    def listing():
        return {p for folder in (server.base / "temp", server.base / "tmp") for p in folder.rglob("*")}

    def run_all(indices) -> list[dict]:
        ids = [server.queue(prompt(i)) for i in indices]
        return [server.wait(prompt_id, timeout=600) for prompt_id in ids]

    files_before = listing()
    start = time.monotonic()
    entries = run_all(range(WARM_UP))
    rss_warm = server.rss_bytes()
    entries += run_all(range(WARM_UP, LOAD_PROMPTS))
    TIMINGS[f"{LOAD_PROMPTS} apply prompts back to back"] = elapsed = time.monotonic() - start
    rss_end = server.rss_bytes()
    for entry in entries:
        assert_success(server, entry)
    videos = sorted((server.base / "output" / "load").glob("video_*.webp"))
    assert len(videos) == LOAD_PROMPTS, videos
    growth = rss_end / rss_warm - 1
    NOTES.append(f"load: {elapsed / LOAD_PROMPTS:.2f} s per prompt; server RSS after prompt {WARM_UP}: {rss_warm / 2**30:.2f} GiB, "
                 f"after {LOAD_PROMPTS}: {rss_end / 2**30:.2f} GiB ({100 * growth:+.1f}%)")
    assert growth < 0.05, f"server memory grew by {100 * growth:.1f}% from prompt {WARM_UP} to {LOAD_PROMPTS}"
    assert listing() == files_before, sorted(map(str, listing() - files_before))[:10]
    assert not [p for p in (server.base / "output").rglob(".*") if p.is_file()], "a temporary file was left in output/"


@pytest.fixture(autouse=True)
def no_network_during_the_test(request):
    """Every test that uses the server: no node but the planted one tried the network while it ran (each
    test's own check, whatever ran before it)."""
    if "server" not in request.fixturenames:
        yield
        return
    server = request.getfixturevalue("server")
    before = len(node_network_attempts(server))
    yield
    attempts = [a for a in node_network_attempts(server)[before:] if not any("comfy_test_nodes" in f for f in a["stack"])]
    assert attempts == [], "\n".join(a["call"] + " " + a["target"] + "\n" + "".join(a["stack"][-8:]) for a in attempts)


# -- docs/errors.md lists every case (the README links it) -------------------------------------------------------------


def test_readme_lists_every_case():
    fragments = [f[0] for _, f in REFERENCE_CASES.values()] + [f[0] for _, f in EMBEDDING_CASES.values()] + DOCUMENTED
    assert_in_troubleshooting(fragments)


def assert_in_troubleshooting(fragments: list[str]) -> None:
    """Every fragment is quoted in docs/errors.md (the whole page), which the README's Troubleshooting links."""
    errors = (REPO / "docs" / "errors.md").read_text()
    assert "docs/errors.md" in (REPO / "README.md").read_text(), "the README no longer links docs/errors.md"
    for fragment in fragments:
        assert fragment in errors, f"docs/errors.md does not quote {fragment!r}"
