"""End to end: the real ComfyUI (COMFYUI_ROOT, this Python) started as a server with the pack installed,
driven over HTTP like the frontend drives it.

Every shipped SVD workflow (workflows/*.json; the Wan ones run in test_e2e_wan) is converted from its UI format (tools.workflow_convert,
checked against the live /object_info), scaled down for CPU (testkit.cpu_scale), queued with POST
/prompt and waited for on /history, with every outbound connection of the server refused and recorded
(testkit/netguard: the workflows must run offline); its files are checked. Invalid prompts must come back as 400
with node_errors, failing nodes as readable execution errors, an interrupt must end an inversion
cleanly, and the server must keep serving after each of these.

The checkpoints are the random-weight, stock-detectable SVD test checkpoints (testkit/svd_checkpoint.py),
linked as svd.safetensors and svd_xt.safetensors. Timings are printed at the end of the module.
"""

from __future__ import annotations

import ast
import asyncio
import copy
import json
import math
import os
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import TEST_NODES, comfyui_root, make_checkpoints_folder, paused_at, wait_until_paused
from PIL import Image, ImageSequence

from reenact_core.fileformat import load_embedding, save_embedding
from testkit.comfy_server import ComfyServer, PromptRejected, execution_error
from testkit.cpu_scale import SIZE, XT_FRAMES, overrides_for
from tools import make_workflows
from tools.workflow_convert import WorkflowError, apply_overrides, ui_to_api

REPO = Path(__file__).resolve().parent.parent
# The SVD workflows; the Wan ones run in test_e2e_wan (other models, two of them stubbed)
WORKFLOWS = sorted(p for p in (REPO / "workflows").glob("*.json") if not make_workflows.is_wan_workflow(p))
EXAMPLE_INPUTS = sorted(p for p in (REPO / "assets" / "inputs").iterdir() if p.is_file())
EXAMPLE_EMBEDDING = REPO / "assets" / "motion_embeddings" / "reenact_example_motion.safetensors"
FRAMES = overrides_for("SVD_img2vid_Conditioning")["video_frames"]
INVERSION_FRAMES = overrides_for("MotionTextualInversion")["video_frames"]
PACK_CATEGORY = "Reenact Anything"

TIMINGS: dict[str, float] = {}


# -- the server -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory, request):
    root = comfyui_root()
    base = tmp_path_factory.mktemp("comfy-server")
    checkpoints = make_checkpoints_folder(base)
    # Outbound connections refused and recorded (testkit/netguard): the shipped workflows must run without the network.
    srv = ComfyServer(root, base, {"checkpoints": checkpoints}, python=sys.executable, custom_nodes=[TEST_NODES], block_network=True)
    start = time.monotonic()
    srv.start()
    TIMINGS["server start-up"] = time.monotonic() - start
    try:
        yield srv
    finally:
        pid = srv.process.pid
        srv.stop()
        _report_timings(request.config, root)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # the whole process group is gone


def _report_timings(config, root: str) -> None:
    text = f"\nE2E timings (ComfyUI {root}, {os.cpu_count()} CPUs)\n"
    text += "".join(f"  {name:<56} {seconds:7.1f} s\n" for name, seconds in TIMINGS.items())
    capture = config.pluginmanager.get_plugin("capturemanager")
    if capture is not None:
        with capture.global_and_fixture_disabled():
            print(text, flush=True)
    else:
        print(text, flush=True)


@pytest.fixture(scope="module")
def object_info(server):
    return server.get("/object_info")


def run_timed(server: ComfyServer, prompt: dict, label: str, timeout: float = 900) -> dict:
    start = time.monotonic()
    entry = server.run(prompt, timeout=timeout)
    TIMINGS[label] = time.monotonic() - start
    return entry


def assert_success(server: ComfyServer, entry: dict) -> None:
    error = execution_error(entry)
    assert error is None, f"{error.get('node_type')}: {error.get('exception_message')}\n{''.join(error.get('traceback', []))}"
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"], entry["status"]
    assert server.alive()


def load_workflow(name_or_path) -> dict:
    path = name_or_path if isinstance(name_or_path, Path) else REPO / "workflows" / name_or_path
    return json.loads(path.read_text())


def scaled_prompt(object_info: dict, workflow: str | Path, overrides=overrides_for) -> dict:
    """The shipped workflow as an API prompt for CPU (``overrides``: testkit.cpu_scale's, per node type); file prefixes
    get a unique tag so that every run writes new files (and no output node is answered from ComfyUI's cache)."""
    prompt = apply_overrides(ui_to_api(load_workflow(workflow), object_info), overrides, object_info)
    tag = uuid.uuid4().hex[:8]
    for entry in prompt.values():
        if "filename_prefix" in entry["inputs"]:
            entry["inputs"]["filename_prefix"] = f"{entry['inputs']['filename_prefix']}_{tag}"
    return prompt


def with_inversion_options(prompt: dict, object_info: dict, **values) -> dict:
    """Connect a Motion Inversion Options node (defaults from /object_info, then ``values``) to the inversion."""
    spec = object_info["MotionInversionOptions"]["input"]["required"]
    node_id = str(max(int(k) for k in prompt) + 1)
    prompt[node_id] = {"class_type": "MotionInversionOptions", "inputs": {name: s[1]["default"] for name, s in spec.items()} | values}
    prompt[nodes_of(prompt, "MotionTextualInversion")[0]]["inputs"]["options"] = [node_id, 0]
    return prompt


def nodes_of(prompt: dict, class_type: str) -> list[str]:
    return sorted((k for k, v in prompt.items() if v["class_type"] == class_type), key=int)


def tiny_valid_prompt(object_info: dict) -> tuple[dict, str]:
    """A valid prompt that runs in well under a second: load the example embedding, save a copy."""
    prefix = f"alive/{uuid.uuid4().hex[:8]}"
    names = object_info["LoadMotionEmbedding"]["input"]["required"]["embedding_name"][0]
    assert EXAMPLE_EMBEDDING.name in names
    return {
        "1": {"class_type": "LoadMotionEmbedding", "inputs": {"embedding_name": EXAMPLE_EMBEDDING.name}},
        "2": {"class_type": "SaveMotionEmbedding", "inputs": {"motion_embedding": ["1", 0], "filename_prefix": prefix}},
    }, prefix


def assert_still_serving(server: ComfyServer, object_info: dict, label: str) -> None:
    prompt, prefix = tiny_valid_prompt(object_info)
    entry = run_timed(server, prompt, label, timeout=120)
    assert_success(server, entry)
    saved = saved_embeddings(server, entry)
    assert len(saved) == 1 and saved[0].name.startswith(prefix.split("/")[1])
    assert load_embedding(saved[0]).frames == load_embedding(EXAMPLE_EMBEDDING).frames


# -- outputs ------------------------------------------------------------------------------------------------


def saved_embeddings(server: ComfyServer, entry: dict) -> list[Path]:
    return [server.output_path(f) for out in entry["outputs"].values() for f in out.get("motion_embeddings", [])]


def check_embedding(path: Path, frames: int, evaluated: bool = True, dim: int = 1024) -> None:
    assert path.is_file(), path
    embedding = load_embedding(path)  # validates shapes, dtype, finite values, format version
    assert embedding.frames == frames
    assert embedding.spatial.shape == (frames, embedding.tokens, dim) and embedding.temporal.shape == (embedding.tokens, dim)
    assert bool(embedding.spatial.isfinite().all()) and bool(embedding.temporal.isfinite().all())
    assert float(embedding.spatial.std()) > 0
    if evaluated:  # eval_draws > 0: the loss before and after is recorded
        for key in ("initial_loss", "final_loss"):
            value = float(embedding.metadata[key])
            assert math.isfinite(value) and value > 0, (key, value)


def decode_frames(path: Path) -> list[np.ndarray]:
    with Image.open(path) as image:
        return [np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(image)]


def check_video(path: Path, frames: int) -> None:
    assert path.is_file() and path.suffix == ".webp", path
    decoded = decode_frames(path)
    assert len(decoded) == frames, f"{path.name}: {len(decoded)} frames, expected {frames}"
    for i, frame in enumerate(decoded):
        assert frame.shape == (SIZE, SIZE, 3), f"{path.name} frame {i}: {frame.shape}"
        assert frame.std() > 1.0, f"{path.name} frame {i} is blank (one colour)"


def check_loss_curve(path: Path) -> None:
    assert path.is_file() and path.suffix == ".png", path
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[0] >= 100 and pixels.shape[1] >= 100
    assert pixels.std() > 1.0, "the loss curve image is blank"


# -- the pack as the server sees it ---------------------------------------------------------------------------


def _pack_mappings() -> tuple[dict, dict]:
    """NODE_CLASS_MAPPINGS / NODE_DISPLAY_NAME_MAPPINGS keys of nodes/__init__.py, read without importing it
    (it imports ComfyUI)."""
    tree = ast.parse((REPO / "nodes" / "__init__.py").read_text())
    found = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Dict):
            for target in stmt.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = {ast.literal_eval(k): v for k, v in zip(stmt.value.keys, stmt.value.values, strict=True)}
    return found["NODE_CLASS_MAPPINGS"], {k: ast.literal_eval(v) for k, v in found["NODE_DISPLAY_NAME_MAPPINGS"].items()}


def test_object_info_lists_every_pack_node_with_a_tooltip_on_every_input(object_info):
    classes, display_names = _pack_mappings()
    assert len(classes) >= 7
    for name in classes:
        assert name in object_info, f"{name} missing from /object_info"
        info = object_info[name]
        assert info["display_name"] == display_names[name]
        assert info["category"] == PACK_CATEGORY
        assert info.get("description"), f"{name} has no description"
        for section in ("required", "optional"):
            for input_name, spec in info["input"].get(section, {}).items():
                options = spec[1] if len(spec) > 1 else {}
                assert isinstance(options, dict) and options.get("tooltip"), f"{name}.{input_name} has no tooltip"


def test_pack_installs_its_example_inputs_into_the_servers_input_folder(server, object_info):
    for source in EXAMPLE_INPUTS:
        copied = server.base / "input" / source.name
        assert copied.is_file(), f"{source.name} was not copied into the server's input folder"
        assert copied.read_bytes() == source.read_bytes()
    videos = object_info["LoadMotionReference"]["input"]["required"]["video"][0]
    assert "reenact_example_reference.mp4" in videos
    images = object_info["LoadImage"]["input"]["required"]["image"]
    images = images[0] if isinstance(images[0], list) else images[1]["options"]
    assert {"reenact_example_target_1.png", "reenact_example_target_2.png"} <= set(images)


# -- the converter on the shipped files, checked against the live node definitions ------------------------------


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_shipped_workflow_converts_against_live_object_info(object_info, path):
    workflow = load_workflow(path)
    prompt = ui_to_api(workflow, object_info)
    ui_nodes = [n for n in workflow["nodes"] if n["type"] not in ("Note", "MarkdownNote")]
    assert sorted(prompt, key=int) == [str(n["id"]) for n in sorted(ui_nodes, key=lambda n: n["id"])]
    for node in ui_nodes:  # every link of the file is in the prompt
        for slot in node["inputs"]:
            if slot["link"] is not None:
                link = next(lk for lk in workflow["links"] if lk[0] == slot["link"])
                assert prompt[str(node["id"])]["inputs"][slot["name"]] == [str(link[1]), link[2]]
    scaled = apply_overrides(prompt, overrides_for, object_info)
    assert all(scaled[n]["inputs"]["width"] == SIZE for n in nodes_of(scaled, "SVD_img2vid_Conditioning"))


def _broken(path_name: str, edit) -> dict:
    workflow = load_workflow(path_name)
    edit(workflow)
    return workflow


def _node(workflow: dict, type_: str) -> dict:
    return next(n for n in workflow["nodes"] if n["type"] == type_)


INVERT, APPLY = "reenact_1_invert_motion.json", "reenact_2_apply_motion.json"

BROKEN = {
    "inversion: a widget value missing": (
        INVERT,
        lambda w: [_node(w, "MotionTextualInversion")["widgets_values"].pop() for _ in range(2)],  # frame_sampling is optional
        r"node 3 \(MotionTextualInversion\), input 'gradient_checkpointing': too few widget values",
    ),
    "inversion: an extra widget value": (
        INVERT,
        lambda w: _node(w, "MotionTextualInversion")["widgets_values"].append(1),
        r"node 3 \(MotionTextualInversion\): too many widget values",
    ),
    "reference: the upload button's null is not the only extra": (
        INVERT,
        lambda w: _node(w, "LoadMotionReference")["widgets_values"].extend([None, 4]),
        r"node 2 \(LoadMotionReference\): too many widget values",
    ),
    "inversion: precision not in the list": (
        INVERT,
        lambda w: _node(w, "MotionTextualInversion")["widgets_values"].__setitem__(11, "fp8"),
        r"node 3 \(MotionTextualInversion\), input 'precision': 'fp8' is not one of the choices",
    ),
    "inversion: steps 0": (
        INVERT,
        lambda w: _node(w, "MotionTextualInversion")["widgets_values"].__setitem__(0, 0),
        r"node 3 \(MotionTextualInversion\), input 'steps': 0 is below the minimum 1",
    ),
    "inversion: seed control value lost (values shifted)": (
        INVERT,
        lambda w: _node(w, "MotionTextualInversion")["widgets_values"].remove("fixed"),
        r"input 'seed': expected a control_after_generate value",
    ),
    "apply: embedding file not in the list": (
        APPLY,
        lambda w: _node(w, "LoadMotionEmbedding")["widgets_values"].__setitem__(0, "nope.safetensors"),
        r"node 2 \(LoadMotionEmbedding\), input 'embedding_name': 'nope.safetensors' is not one of the choices",
    ),
    "apply: strength a string": (
        APPLY,
        lambda w: _node(w, "ApplyMotionEmbedding")["widgets_values"].__setitem__(0, "1.0"),
        r"input 'strength': expected a number",
    ),
    "apply: lossless not a boolean": (
        APPLY,
        lambda w: _node(w, "SaveAnimatedWEBP")["widgets_values"].__setitem__(2, 0),
        r"input 'lossless': expected true/false",
    ),
    "apply: dangling link": (APPLY, lambda w: w["links"].pop(), r"node 9 \(SaveAnimatedWEBP\), input 'images': link 15 does not exist"),
    "apply: link from a node that is gone": (APPLY, lambda w: w["nodes"].remove(_node(w, "VAEDecode")), r"link 13: node 8 does not exist"),
    "apply: unknown node type": (
        APPLY,
        lambda w: _node(w, "ApplyMotionEmbedding").__setitem__("type", "ApplyMotionEmbeddingV9"),
        r"node 5 \(ApplyMotionEmbeddingV9\): unknown node type",
    ),
    "apply: wrong link type": (
        APPLY,
        lambda w: _swap_link_origin(w, link_id=15, origin_slot=0, node_type="ImageOnlyCheckpointLoader"),
        r"node 9 \(SaveAnimatedWEBP\), input 'images': linked to output 0 of node 1 \(ImageOnlyCheckpointLoader\), which gives MODEL",
    ),
    "apply: a required input unconnected": (
        APPLY,
        lambda w: _unlink(w, 14),
        r"node 8 \(VAEDecode\), input 'vae': required VAE input is not connected",
    ),
    "apply: the sampler muted": (
        APPLY,
        lambda w: _node(w, "KSampler").__setitem__("mode", 2),
        r"node 8 \(VAEDecode\), input 'samples': required LATENT input is fed only",
    ),
}


def _unlink(workflow: dict, link_id: int) -> None:
    link = next(lk for lk in workflow["links"] if lk[0] == link_id)
    workflow["links"].remove(link)
    for node in workflow["nodes"]:
        for slot in node["inputs"]:
            if slot["link"] == link_id:
                slot["link"] = None
        for slot in node["outputs"]:
            if link_id in (slot.get("links") or []):
                slot["links"].remove(link_id)


def _swap_link_origin(workflow: dict, link_id: int, origin_slot: int, node_type: str) -> None:
    """Re-attach a link's origin to another node's output, consistently on both ends (what a file saved
    from a buggy frontend or edited by hand could hold)."""
    _unlink(workflow, link_id)
    link = [link_id, _node(workflow, node_type)["id"], origin_slot, 9, 0, "IMAGE"]
    workflow["links"].append(link)
    _node(workflow, node_type)["outputs"][origin_slot]["links"].append(link_id)
    _node(workflow, "SaveAnimatedWEBP")["inputs"][0]["link"] = link_id


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_copies_of_shipped_workflows_fail_loudly(object_info, case):
    path_name, edit, message = BROKEN[case]
    ui_to_api(load_workflow(path_name), object_info)  # the original is fine
    with pytest.raises(WorkflowError, match=message):
        ui_to_api(_broken(path_name, edit), object_info)


def test_a_workflow_saved_before_the_newer_optional_inputs_keeps_its_meaning(object_info):
    """Files saved before frame_sampling (Motion Textual Inversion) and keep_speed (Apply Motion Embedding)
    existed lack their widget values: they convert with the defaults, which do what those files did."""
    old = _broken(INVERT, lambda w: _node(w, "MotionTextualInversion")["widgets_values"].pop())
    prompt = ui_to_api(old, object_info)
    assert prompt["3"]["inputs"]["frame_sampling"] == "spread over the clip"
    old = _broken(APPLY, lambda w: _node(w, "ApplyMotionEmbedding")["widgets_values"].pop())
    prompt = ui_to_api(old, object_info)
    (apply,) = nodes_of(prompt, "ApplyMotionEmbedding")
    assert prompt[apply]["inputs"]["keep_speed"] is False


def test_the_packs_upload_button_value_from_old_frontends_is_tolerated(object_info):
    workflow = load_workflow(INVERT)
    _node(workflow, "LoadMotionReference")["widgets_values"].append(None)  # LiteGraph 2024 saves the button's null
    assert ui_to_api(workflow, object_info) == ui_to_api(load_workflow(INVERT), object_info)


# -- errors ------------------------------------------------------------------------------------------------------------


def _node_errors(server: ComfyServer, prompt: dict) -> dict:
    with pytest.raises(PromptRejected) as rejected:
        server.queue(prompt)
    body = rejected.value.body
    assert body.get("node_errors"), body
    return body["node_errors"]


def _input_names(node_error: dict) -> set[str]:
    return {e.get("extra_info", {}).get("input_name") for e in node_error["errors"]}


def test_invalid_inputs_are_rejected_with_node_errors(server, object_info):
    start = time.monotonic()
    invert = scaled_prompt(object_info, INVERT)
    inversion = nodes_of(invert, "MotionTextualInversion")[0]
    reference = nodes_of(invert, "LoadMotionReference")[0]

    bad = copy.deepcopy(invert)
    bad[inversion]["inputs"]["steps"] = 0
    errors = _node_errors(server, bad)
    assert set(errors) == {inversion} and "steps" in _input_names(errors[inversion])
    assert errors[inversion]["class_type"] == "MotionTextualInversion"

    bad = copy.deepcopy(invert)
    bad[reference]["inputs"]["video"] = "not_uploaded.mp4"
    errors = _node_errors(server, bad)
    assert set(errors) == {reference} and "video" in _input_names(errors[reference])
    assert "not_uploaded.mp4" in json.dumps(errors[reference])

    apply = scaled_prompt(object_info, APPLY)
    loader = nodes_of(apply, "LoadMotionEmbedding")[0]
    bad = copy.deepcopy(apply)
    bad[loader]["inputs"]["embedding_name"] = "no_such_motion.safetensors"
    errors = _node_errors(server, bad)
    assert set(errors) == {loader} and "embedding_name" in _input_names(errors[loader])

    bad = copy.deepcopy(apply)
    del bad[nodes_of(apply, "ApplyMotionEmbedding")[0]]["inputs"]["motion_embedding"]
    errors = _node_errors(server, bad)
    assert "motion_embedding" in json.dumps(errors)
    TIMINGS["invalid prompts rejected (4x HTTP 400)"] = time.monotonic() - start
    assert_still_serving(server, object_info, "valid prompt after the 400s")


@pytest.mark.parametrize(
    "case",
    ["reference shorter than video_frames", "no reference at all"],
)
def test_a_failing_node_gives_a_readable_execution_error_and_the_server_keeps_serving(server, object_info, case):
    prompt = scaled_prompt(object_info, INVERT)
    inversion = nodes_of(prompt, "MotionTextualInversion")[0]
    reference = nodes_of(prompt, "LoadMotionReference")[0]
    if case == "reference shorter than video_frames":
        prompt[reference]["inputs"]["frame_load_cap"] = 2
        prompt[inversion]["inputs"]["video_frames"] = 4
        failing, expected = inversion, ["only 2 frames but 4 are needed", "lower video_frames"]
    else:
        prompt[reference]["inputs"]["video"] = "none"
        failing, expected = reference, ["No reference", "connect an IMAGE batch"]
    entry = run_timed(server, prompt, f"failing prompt: {case}")
    error = execution_error(entry)
    assert error is not None and entry["status"]["status_str"] == "error", entry["status"]
    assert str(error["node_id"]) == failing and error["node_type"] == prompt[failing]["class_type"]
    assert error["exception_type"].endswith("ReferenceVideoError")
    for text in expected:
        assert text in error["exception_message"], error["exception_message"]
    assert "Traceback" not in error["exception_message"] and len(error["exception_message"]) < 500
    prefix = prompt[nodes_of(prompt, "SaveMotionEmbedding")[0]]["inputs"]["filename_prefix"]
    assert not list((server.base / "output" / "motion_embeddings").glob(f"{prefix}*"))
    assert_still_serving(server, object_info, f"valid prompt after '{case}'")


# -- interrupt --------------------------------------------------------------------------------------------------------


class WebSocketListener:
    """Collects the JSON messages ComfyUI sends to one client id (in a thread with its own event loop)."""

    def __init__(self, server: ComfyServer):
        self.url = f"ws://127.0.0.1:{server.port}/ws?clientId={server.client_id}"
        self.messages: list[dict] = []
        self.condition = threading.Condition()
        self.connected = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._listen(),), daemon=True)
        self.stopping = False

    async def _listen(self):
        import aiohttp

        async with aiohttp.ClientSession() as session, session.ws_connect(self.url, heartbeat=20) as ws:
            self.connected.set()
            while not self.stopping:
                try:
                    message = await ws.receive(timeout=0.5)
                except asyncio.TimeoutError:
                    continue
                if message.type == aiohttp.WSMsgType.TEXT:
                    with self.condition:
                        self.messages.append(json.loads(message.data))
                        self.condition.notify_all()
                elif message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    return

    def __enter__(self):
        self.thread.start()
        assert self.connected.wait(20), "could not connect to ComfyUI's websocket"
        return self

    def __exit__(self, *exc):
        self.stopping = True
        self.thread.join(10)

    def wait_for(self, predicate, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        with self.condition:
            while True:
                for message in self.messages:
                    if predicate(message):
                        return message
                left = deadline - time.monotonic()
                assert left > 0, f"no such websocket message within {timeout} s; got {[m.get('type') for m in self.messages][-20:]}"
                self.condition.wait(left)


def test_interrupt_ends_a_running_inversion_cleanly(server, object_info):
    # No loss evaluation (eval_draws 0): the interrupt comes in the optimisation loop sooner.
    prompt = with_inversion_options(scaled_prompt(object_info, INVERT), object_info, eval_draws=0)
    inversion = nodes_of(prompt, "MotionTextualInversion")[0]
    prompt[inversion]["inputs"]["steps"] = 500
    ready = server.base / "temp" / "interrupt_ready"
    prompt = paused_at(prompt, inversion, 2, ready)  # it waits after step 2 until interrupted (test pack): no race with the loop
    prefix = prompt[nodes_of(prompt, "SaveMotionEmbedding")[0]]["inputs"]["filename_prefix"]
    embeddings = server.base / "output" / "motion_embeddings"
    with WebSocketListener(server) as ws:
        start = time.monotonic()
        prompt_id = server.queue(prompt)
        assert wait_until_paused(server, ready) == 2
        queue = server.get("/queue")
        assert any(item[1] == prompt_id for item in queue["queue_running"]), queue
        status, _ = server.post("/interrupt")
        assert status == 200
        interrupted_at = time.monotonic()
        entry = server.wait(prompt_id, timeout=120)
        TIMINGS["interrupt: queue -> inversion step 2"] = interrupted_at - start
        TIMINGS["interrupt: POST /interrupt -> history entry"] = time.monotonic() - interrupted_at
        progress = [m["data"] for m in ws.messages if m["type"] == "progress" and m["data"].get("node") == inversion]
    # Some ComfyUI versions throttle progress messages: at most step 2 was reported, and of 500.
    assert progress and max(p["value"] for p in progress) <= 2 and {p["max"] for p in progress} == {500}
    kinds = [kind for kind, _ in entry["status"]["messages"]]
    assert entry["status"]["status_str"] == "error" and "execution_interrupted" in kinds, entry["status"]
    assert execution_error(entry) is None  # interrupted, not crashed
    assert not list(embeddings.glob(f"{prefix}*")), "an interrupted inversion wrote an embedding"
    assert not [p for p in embeddings.rglob("*") if p.name.startswith(".")], "a temporary file was left behind"
    queue = server.get("/queue")
    assert not queue["queue_running"] and not queue["queue_pending"], queue

    # The next prompt runs normally: the interrupt flag is not left set, the shared model still works.
    again = with_inversion_options(scaled_prompt(object_info, INVERT), object_info, eval_draws=0)
    entry = run_timed(server, again, "inversion (3 steps, no eval) after the interrupt")
    assert_success(server, entry)
    files = saved_embeddings(server, entry)
    assert len(files) == 1
    check_embedding(files[0], INVERSION_FRAMES, evaluated=False)


# -- every shipped workflow, run ------------------------------------------------------------------------------------
# Last in the module: the SVD-XT workflow loads the second checkpoint, so every test before it reuses the
# SVD checkpoint the server already holds.


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_shipped_workflow_runs_end_to_end(server, object_info, path):
    prompt = scaled_prompt(object_info, path)
    attempts = len(server.network_attempts())
    entry = run_timed(server, prompt, f"workflow {path.stem}")
    assert_success(server, entry)
    assert server.network_attempts()[attempts:] == [], "the workflow tried the network"
    outputs = entry["outputs"]
    loaders = nodes_of(prompt, "ImageOnlyCheckpointLoader")
    ckpt = prompt[loaders[0]]["inputs"]["ckpt_name"] if loaders else prompt[nodes_of(prompt, "MotionWorldLoader")[0]]["inputs"]["model_name"]

    inversions = nodes_of(prompt, "MotionTextualInversion")
    saves = nodes_of(prompt, "SaveMotionEmbedding")
    assert len(saves) == len(inversions)
    for node_id in saves:
        files = saved_embeddings(server, {"outputs": {node_id: outputs[node_id]}})
        assert len(files) == 1
        assert files[0].is_relative_to(server.base / "output" / "motion_embeddings")
        check_embedding(files[0], INVERSION_FRAMES, dim=64 if ckpt.startswith("motion_world") else 1024)
        prefix = prompt[node_id]["inputs"]["filename_prefix"]
        assert str(files[0]).endswith(f"/{prefix}_00001_.safetensors"), (files[0], prefix)  # a prefix may name a subfolder
    if saves:  # saved embeddings show up in Load Motion Embedding's list
        names = server.get("/object_info/LoadMotionEmbedding")["LoadMotionEmbedding"]["input"]["required"]["embedding_name"][0]
        assert any(n.endswith(files[0].name) for n in names), names

    for node_id in nodes_of(prompt, "PreviewImage"):  # the loss curve
        images = outputs[node_id]["images"]
        assert len(images) == 1 and images[0]["type"] == "temp"
        check_loss_curve(server.output_path(images[0]))

    videos = nodes_of(prompt, "SaveAnimatedWEBP")
    expected_frames = XT_FRAMES if "xt" in ckpt else FRAMES
    for node_id in videos:
        assert prompt[node_id]["class_type"] == "SaveAnimatedWEBP"
        images = outputs[node_id]["images"]
        assert len(images) == 1, images
        check_video(server.output_path(images[0]), expected_frames)

    if path.stem.startswith("reenact_3"):
        assert len(videos) == 2 and len(inversions) == 1
        a, b = (decode_frames(server.output_path(outputs[n]["images"][0])) for n in videos)
        assert not np.array_equal(a[0], b[0]), "the two targets gave the same video"
    if "svd_xt" in path.stem:
        assert ckpt == "svd_xt.safetensors" and len(videos) == 1
        check_resampled_in_time(server, prompt, outputs[videos[0]]["images"][0])


def test_the_motion_world_workflow_runs_at_its_shipped_settings(server, object_info):
    """Workflow 5 as a user queues it (no CPU scaling: 300 inversion steps, the workflow's sizes): it learns the
    bundled reference's motion and the target's sprite moves (its video is not a still)."""
    path = REPO / "workflows" / "reenact_5_motion_world_demo.json"
    prompt = ui_to_api(load_workflow(path), object_info)
    (inversion,) = nodes_of(prompt, "MotionTextualInversion")
    assert prompt[inversion]["inputs"]["steps"] == 300  # the shipped setting, not a scaled one
    tag = uuid.uuid4().hex[:8]
    for entry in prompt.values():
        if "filename_prefix" in entry["inputs"]:
            entry["inputs"]["filename_prefix"] += f"_{tag}"
    entry = run_timed(server, prompt, "workflow 5 at its shipped settings")
    assert_success(server, entry)
    (video,) = [entry["outputs"][n]["images"][0] for n in nodes_of(prompt, "SaveAnimatedWEBP")]
    frames = decode_frames(server.output_path(video))
    assert len(frames) == prompt[nodes_of(prompt, "SVD_img2vid_Conditioning")[0]]["inputs"]["video_frames"]
    changes = [float(np.abs(b.astype(float) - a.astype(float)).mean()) for a, b in zip(frames, frames[1:], strict=False)]
    assert min(changes) > 0.5, changes  # every frame differs from the previous one: the sprite moves
    (saved,) = saved_embeddings(server, {"outputs": {n: entry["outputs"][n] for n in nodes_of(prompt, "SaveMotionEmbedding")}})
    assert load_embedding(saved).metadata["steps"] == "300"


def check_resampled_in_time(server: ComfyServer, prompt: dict, video: dict) -> None:
    """The SVD-XT workflow applies a 14-frame motion to a latent of another frame count (25 on a GPU; fewer in
    this CPU-scaled run). Its video must be exactly the one the same graph makes from that motion resampled in
    time beforehand (first and last rows kept, linear between), and not the one from ComfyUI's own tiling or
    truncation of the rows, which is what an unresampled motion would give."""
    embedding_node = nodes_of(prompt, "LoadMotionEmbedding")[0]
    motion = load_embedding(EXAMPLE_EMBEDDING)
    assert prompt[embedding_node]["inputs"]["embedding_name"] == EXAMPLE_EMBEDDING.name and motion.frames != XT_FRAMES
    folder = server.base / "output" / "motion_embeddings" / "resampling"
    folder.mkdir(parents=True, exist_ok=True)
    tiled_rows = [i % motion.frames for i in range(XT_FRAMES)]  # what ComfyUI's repeat_to_batch_size does with them
    variants = {
        "resampled": motion.resample_frames(XT_FRAMES),
        "tiled": type(motion)(motion.spatial[tiled_rows], motion.temporal, motion.metadata),
    }
    frames = {}
    for name, variant in variants.items():
        save_embedding(variant, folder / f"{name}.safetensors")
        again = copy.deepcopy(prompt)
        again[embedding_node]["inputs"]["embedding_name"] = f"resampling/{name}.safetensors"
        for node_id in nodes_of(again, "SaveAnimatedWEBP"):
            again[node_id]["inputs"]["filename_prefix"] = f"resampling_{name}"
        entry = run_timed(server, again, f"SVD-XT workflow, motion {name} beforehand")
        assert_success(server, entry)
        (out,) = [entry["outputs"][n]["images"][0] for n in nodes_of(again, "SaveAnimatedWEBP")]
        frames[name] = decode_frames(server.output_path(out))
    shipped = decode_frames(server.output_path(video))
    assert len(shipped) == XT_FRAMES
    assert all(np.array_equal(a, b) for a, b in zip(shipped, frames["resampled"], strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(shipped, frames["tiled"], strict=True))
