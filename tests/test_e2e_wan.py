"""The shipped Wan workflows (reenact_6: Wan2.1-I2V 480p, reenact_7: Wan2.2 TI2V-5B) end to end in a real ComfyUI
server with the network blocked, driven over HTTP like the frontend drives it: converted from the UI format
against the live /object_info, scaled down for CPU (testkit.cpu_scale.WAN_CPU_OVERRIDES), queued, waited for.

The models are ComfyUI-detectable random-weight test models under the names the workflows use (as ComfyUI's own
Wan templates name them): the tiny Wan2.1-I2V and TI2V-5B-shaped diffusion models and the tiny Wan2.1 VAE
(testkit/wan_checkpoint.py), and a real-size ViT-H as clip_vision_h (the SVD test checkpoint's image encoder).
Two models cannot load in any small form (testkit/wan_checkpoint.py says why), and only they are stubbed, by the
test-only nodes of tests/comfy_test_nodes: CLIPLoader (umT5-XXL) + CLIPTextEncode become ReenactTestUMT5Encode
(umT5-shaped states [1, 512, 4096] per text), and TI2V's VAELoader of wan2.2_vae becomes ReenactTestWan22VAE (a
fixed linear stand-in). Every other node, the pack's and ComfyUI's (UNETLoader, VAELoader, CLIPVisionLoader,
CLIPVisionEncode, WanImageToVideo, Wan22ImageToVideoLatent, ModelSamplingSD3, KSampler, VAEDecode,
SaveAnimatedWEBP), runs as shipped.

Needs a ComfyUI with Wan 2.2 (>= 0.3.46); CI runs it on the 2025-12 one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TEST_NODES, comfyui_root, has_wan22, wan_model_folders
from test_e2e_server import assert_success, check_loss_curve, decode_frames, nodes_of, saved_embeddings, scaled_prompt

from reenact_core.fileformat import load_embedding
from testkit.comfy_server import ComfyServer
from testkit.cpu_scale import SIZE, WAN_FRAMES, wan_overrides_for
from tools import make_workflows

REPO = Path(__file__).resolve().parent.parent
WAN_WORKFLOWS = [REPO / "workflows" / name for name in sorted(make_workflows.WAN_WORKFLOWS)]
STUBBED_FILES = {make_workflows.UMT5, "wan2.2_vae.safetensors"}  # replaced by test nodes (see the module docstring)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = comfyui_root()
    if not has_wan22(root):
        pytest.skip("this ComfyUI has no Wan 2.2 nodes (ComfyUI >= 0.3.46); CI runs the Wan workflows on the 2025-12 one")
    from testkit.wan_checkpoint import (
        ensure_clip_vision_h_test_model,
        ensure_wan21_i2v_test_model,
        ensure_wan21_vae_test_model,
        ensure_wan22_ti2v_test_model,
    )

    base = tmp_path_factory.mktemp("comfy-wan")
    built = {
        "wan2.1_i2v_480p_14B_fp16.safetensors": ensure_wan21_i2v_test_model(),
        "wan2.2_ti2v_5B_fp16.safetensors": ensure_wan22_ti2v_test_model(),
        make_workflows.WAN21_VAE: ensure_wan21_vae_test_model(),
        "clip_vision_h.safetensors": ensure_clip_vision_h_test_model(),
    }
    assert set(built) | STUBBED_FILES == set(make_workflows.WAN_MODEL_FILES), "a model of the workflows is neither built nor stubbed"
    folders = wan_model_folders(base / "models", built)
    srv = ComfyServer(root, base, folders, python=sys.executable, block_network=True, custom_nodes=[TEST_NODES])
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def object_info(server):
    return server.get("/object_info")


def with_stubs(prompt: dict) -> dict:
    """The prompt with the two models that cannot load replaced by the test nodes (and nothing else)."""
    out = {k: {"class_type": v["class_type"], "inputs": dict(v["inputs"])} for k, v in prompt.items()}
    for node_id, entry in prompt.items():
        if entry["class_type"] == "CLIPLoader":
            assert entry["inputs"]["clip_name"] == make_workflows.UMT5 and entry["inputs"]["type"] == "wan"
            del out[node_id]
        elif entry["class_type"] == "CLIPTextEncode":
            out[node_id] = {"class_type": "ReenactTestUMT5Encode", "inputs": {"text": entry["inputs"]["text"]}}
        elif entry["class_type"] == "VAELoader" and entry["inputs"]["vae_name"] == "wan2.2_vae.safetensors":
            out[node_id] = {"class_type": "ReenactTestWan22VAE", "inputs": {}}
    dangling = [(k, name) for k, v in out.items() for name, value in v["inputs"].items() if isinstance(value, list) and value[0] not in out]
    assert not dangling, f"inputs linked to a removed node: {dangling}"
    return out


def wan_prompt(object_info: dict, path: Path, **widgets) -> dict:
    """test_e2e_server's scaled prompt with the Wan scaling, ``widgets`` (per node type) set, and the stubs in place."""
    prompt = scaled_prompt(object_info, path, overrides=wan_overrides_for)
    for entry in prompt.values():
        entry["inputs"].update(widgets.get(entry["class_type"], {}))
    return with_stubs(prompt)


def run_without_network(server: ComfyServer, prompt: dict) -> dict:
    before = len(server.network_attempts())
    entry = server.run(prompt, timeout=600)
    assert_success(server, entry)
    assert server.network_attempts()[before:] == [], "a node tried the network"
    return entry


def video_of(server: ComfyServer, prompt: dict, entry: dict) -> list[np.ndarray]:
    (save,) = nodes_of(prompt, "SaveAnimatedWEBP")
    (image,) = entry["outputs"][save]["images"]
    return decode_frames(server.output_path(image))


@pytest.mark.parametrize("path", WAN_WORKFLOWS, ids=lambda p: p.stem)
def test_wan_workflow_lists_its_models_where_the_frontend_looks(server, path):
    """Every loader's file is in its ``properties.models`` with a folder this ComfyUI has (what the new frontend checks
    to offer missing models for download, as for ComfyUI's own templates), and the server lists the files this test
    installed under those names."""
    workflow = json.loads(path.read_text())
    folders = set(server.get("/models"))
    loaders = [n for n in workflow["nodes"] if n["type"] in ("UNETLoader", "CLIPLoader", "VAELoader", "CLIPVisionLoader")]
    assert len(loaders) == (4 if "wan21" in path.stem else 3)
    for node in loaders:
        (model,) = node["properties"]["models"]
        assert model["name"] == node["widgets_values"][0] and model["directory"] in folders, (node["type"], model)
        assert model["url"].startswith("https://huggingface.co/Comfy-Org/") and model["url"].endswith("/" + model["name"])
        assert model["name"] in server.get(f"/models/{model['directory']}")


@pytest.mark.parametrize("path", WAN_WORKFLOWS, ids=lambda p: p.stem)
def test_wan_workflow_runs_end_to_end(server, object_info, path):
    """The workflow learns a motion on Wan and applies it: a Wan embedding in umT5 space over the latent frames, the
    loss curve, and a video of the sampled frames."""
    prompt = wan_prompt(object_info, path)
    entry = run_without_network(server, prompt)
    outputs = entry["outputs"]
    (save,) = nodes_of(prompt, "SaveMotionEmbedding")
    (file,) = saved_embeddings(server, {"outputs": {save: outputs[save]}})
    embedding = load_embedding(file)
    latent_frames = (WAN_FRAMES - 1) // 4 + 1
    assert embedding.metadata["base_model"] == ("wan21_i2v" if "wan21" in path.stem else "wan22_ti2v")
    assert embedding.metadata["token_space"] == "umt5" and int(embedding.metadata["latent_frames"]) == latent_frames
    assert embedding.spatial.shape == (latent_frames, 5, 4096) and bool(embedding.spatial.isfinite().all())
    assert float(embedding.metadata["final_loss"]) > 0
    (preview,) = nodes_of(prompt, "PreviewImage")
    check_loss_curve(server.output_path(outputs[preview]["images"][0]))
    frames = video_of(server, prompt, entry)
    assert len(frames) == WAN_FRAMES and all(f.shape == (SIZE, SIZE, 3) for f in frames)
    (apply,) = nodes_of(prompt, "ApplyMotionEmbedding")
    assert "Wan" in outputs[apply]["text"][0]


@pytest.mark.parametrize("path", WAN_WORKFLOWS, ids=lambda p: p.stem)
def test_the_motion_reaches_the_sampler(server, object_info, path):
    """The sampler takes Apply Motion Embedding's model output: at strength 0 (stock Wan) the same graph and seed
    give another video than at strength 1. The inversion is not run again (ComfyUI caches it: same inputs)."""
    videos = {}
    for strength in (0.0, 1.0):
        prompt = wan_prompt(object_info, path, ApplyMotionEmbedding={"strength": strength})
        videos[strength] = np.stack(video_of(server, prompt, run_without_network(server, prompt))).astype(float)
    assert np.abs(videos[1.0] - videos[0.0]).mean() > 0.5, "the motion does not change the video"
