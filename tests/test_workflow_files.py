"""The shipped workflow files are exactly what tools/make_workflows.py builds from the live node
definitions, so a setting changed in the generator (and measured by the bench, which imports the same
constants) cannot drift from the files users load."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tools import make_workflows


def comfyui_version(root) -> str | None:
    """The version a ComfyUI says it is (comfyui_version.py, since 2025), None for older ones."""
    path = Path(root) / "comfyui_version.py"
    if not path.exists():
        return None
    match = re.search(r"__version__\s*=\s*[\"']([^\"']+)", path.read_text())
    return match.group(1) if match else None


@pytest.fixture(scope="module")
def definitions(comfy, pack):
    return make_workflows.node_definitions()


@pytest.mark.parametrize("file_name", sorted(make_workflows.WORKFLOWS_TO_BUILD))
def test_shipped_workflow_is_what_the_generator_builds(comfy, file_name, request):
    # Stock nodes' sockets and widgets change between ComfyUIs (e.g. SaveAnimatedWEBP's): each file is generated from one
    # ComfyUI's node definitions, which later frontends migrate; test_e2e_server, test_e2e_wan and test_browser run the
    # files on the others.
    version = comfyui_version(comfy.root)
    if make_workflows.is_wan_workflow(file_name):
        if version != make_workflows.WAN_COMFYUI_VERSION:
            pytest.skip(f"the Wan workflows are generated from the 2025-12 ComfyUI's node definitions (v{make_workflows.WAN_COMFYUI_VERSION}, COMFYUI=2025-12)")
        command = "COMFYUI=2025-12 python -m tools.make_workflows --wan"
    else:
        if version is not None:
            pytest.skip("the SVD workflows are generated from the 2024-03 ComfyUI's node definitions (the default COMFYUI_ROOT)")
        command = "python -m tools.make_workflows"
    definitions = request.getfixturevalue("definitions")
    shipped = json.loads((make_workflows.WORKFLOWS / file_name).read_text())
    assert shipped == make_workflows.build_workflow(definitions, file_name), f"workflows/{file_name} is stale: run `{command}`"


def test_motion_world_workflow_inverts_with_the_setting_the_bench_measures():
    workflow = json.loads((make_workflows.WORKFLOWS / "reenact_5_motion_world_demo.json").read_text())
    (invert,) = [n for n in workflow["nodes"] if n["type"] == "MotionTextualInversion"]
    (options,) = [n for n in workflow["nodes"] if n["type"] == "MotionInversionOptions"]
    options_link = next(i["link"] for i in invert["inputs"] if i["name"] == "options")
    assert [link for link in workflow["links"] if link[0] == options_link][0][1] == options["id"]
    assert invert["widgets_values"][:2] == [make_workflows.MOTION_WORLD_STEPS, make_workflows.MOTION_WORLD_LR] == [300, 0.01]
    assert "constant" in options["widgets_values"] and make_workflows.MOTION_WORLD_OPTIONS == {"schedule": "constant"}


def _rect(node: dict) -> list[float]:
    title = make_workflows.TITLE
    return [node["pos"][0], node["pos"][1] - title, node["size"][0], node["size"][1] + title]


def _intersect(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


@pytest.mark.parametrize("file_name", sorted(make_workflows.WORKFLOWS_TO_BUILD))
def test_saved_layout(file_name):
    """As saved (tests/test_browser.py checks the same in the frontends, before and after a run, with the
    sizes they give the nodes): no node overlaps another, every node is inside the group it touches, groups
    have titles and do not overlap, and the saved view shows all of it above the new frontends' text threshold
    (LiteGraph.Canvas.MinFontSizeForLOD 8 / NODE_TEXT_SIZE 14) in a 1600x1000 window."""
    workflow = json.loads((make_workflows.WORKFLOWS / file_name).read_text())
    nodes, groups = workflow["nodes"], workflow["groups"]
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            assert not _intersect(_rect(a), _rect(b)), f"node {a['id']} ({a['type']}) overlaps node {b['id']} ({b['type']})"
        for group in groups:
            box, r = group["bounding"], _rect(a)
            inside = box[0] <= r[0] and box[1] <= r[1] and r[0] + r[2] <= box[0] + box[2] and r[1] + r[3] <= box[1] + box[3]
            assert inside or not _intersect(r, box), f"node {a['id']} ({a['type']}) reaches out of group {group['title']!r}"
    assert groups and all(g["title"] for g in groups)
    for i, a in enumerate(groups):
        for b in groups[i + 1:]:
            assert not _intersect(a["bounding"], b["bounding"]), f"groups {a['title']!r} and {b['title']!r} overlap"
    ds = workflow["extra"]["ds"]
    assert ds["scale"] >= 8 / 14
    for r in [_rect(n) for n in nodes] + [g["bounding"] for g in groups]:
        left, top = (r[0] + ds["offset"][0]) * ds["scale"], (r[1] + ds["offset"][1]) * ds["scale"]
        right, bottom = left + r[2] * ds["scale"], top + r[3] * ds["scale"]
        assert left >= make_workflows.VIEW_CLEAR[0] - 0.5 and top >= make_workflows.VIEW_CLEAR[1] - 0.5
        assert right <= 1600 - make_workflows.VIEW_CLEAR[2] + 0.5 and bottom <= 1000 - make_workflows.VIEW_CLEAR[3] + 0.5


@pytest.mark.parametrize("file_name", ["reenact_2_apply_motion.json", "reenact_4_svd_xt_from_14_frame_motion.json"])
def test_example_embedding_comes_with_a_warning(file_name):
    """The bundled example embedding was learned on a random-weight test model: the workflows that load it say
    so in a warning Note next to Load Motion Embedding, in the same group."""
    workflow = json.loads((make_workflows.WORKFLOWS / file_name).read_text())
    (loader,) = [n for n in workflow["nodes"] if n["type"] == "LoadMotionEmbedding"]
    assert loader["widgets_values"][0] == make_workflows.EXAMPLE_EMBEDDING
    warnings = [n for n in workflow["nodes"] if n["type"] == "Note" and "random-weight TEST model" in n["widgets_values"][0]]
    assert warnings and "nothing meaningful" in warnings[0]["widgets_values"][0] and "workflow 1" in warnings[0]["widgets_values"][0]
    (group,) = [g for g in workflow["groups"] if _intersect(g["bounding"], _rect(loader))]
    assert _intersect(group["bounding"], _rect(warnings[0]))
