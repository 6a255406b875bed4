"""The shipped workflow files are exactly what tools/make_workflows.py builds from the live node
definitions, so a setting changed in the generator (and measured by the bench, which imports the same
constants) cannot drift from the files users load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools import make_workflows


@pytest.fixture(scope="module")
def definitions(comfy, pack):
    if (Path(comfy.root) / "comfyui_version.py").exists():
        # Stock nodes' sockets and widgets changed since (e.g. SaveAnimatedWEBP's): the generator reads the oldest
        # supported ComfyUI's, which later frontends migrate; test_e2e_server / test_browser run the files on both.
        pytest.skip("the workflows are generated from the 2024-03 ComfyUI's node definitions (the default COMFYUI_ROOT)")
    return make_workflows.node_definitions()


@pytest.mark.parametrize("file_name", sorted(make_workflows.WORKFLOWS_TO_BUILD))
def test_shipped_workflow_is_what_the_generator_builds(definitions, file_name):
    shipped = json.loads((make_workflows.WORKFLOWS / file_name).read_text())
    assert shipped == make_workflows.build_workflow(definitions, file_name), f"workflows/{file_name} is stale: run `python -m tools.make_workflows`"


def test_motion_world_workflow_inverts_with_the_setting_the_bench_measures():
    workflow = json.loads((make_workflows.WORKFLOWS / "reenact_5_motion_world_demo.json").read_text())
    (invert,) = [n for n in workflow["nodes"] if n["type"] == "MotionTextualInversion"]
    (options,) = [n for n in workflow["nodes"] if n["type"] == "MotionInversionOptions"]
    options_link = next(i["link"] for i in invert["inputs"] if i["name"] == "options")
    assert [link for link in workflow["links"] if link[0] == options_link][0][1] == options["id"]
    assert invert["widgets_values"][:2] == [make_workflows.MOTION_WORLD_STEPS, make_workflows.MOTION_WORLD_LR] == [300, 0.01]
    assert "constant" in options["widgets_values"] and make_workflows.MOTION_WORLD_OPTIONS == {"schedule": "constant"}
