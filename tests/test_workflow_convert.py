"""tools.workflow_convert on small hand-made graphs: the frontend's serialisation rules (no ComfyUI
needed). The shipped workflows and broken copies of them are checked against a live server's
/object_info in test_e2e_server.py."""

from __future__ import annotations

import copy

import pytest

from testkit.cpu_scale import overrides_for
from tools.workflow_convert import WorkflowError, apply_overrides, ui_to_api

# Both /object_info dialects: 2024-03 (combo = list) and 2026 (COMBO + options, input_order, control_after_generate).
OBJECT_INFO = {
    "Loader": {"input": {"required": {"name": [["a.safetensors", "b.safetensors"]]}}, "output": ["MODEL", "VAE"], "output_node": False},
    "LoadPicture": {
        "input": {"required": {"image": [["x.png"], {"image_upload": True}]}},
        "output": ["IMAGE", "MASK"],
        "output_node": False,
    },
    "Sampler": {
        "input": {
            "required": {
                "model": ["MODEL"],
                "seed": ["INT", {"default": 0, "min": 0, "max": 2**64 - 1}],
                "steps": ["INT", {"default": 20, "min": 1, "max": 100}],
                "cfg": ["FLOAT", {"default": 2.5, "min": 0.0, "max": 10.0}],
                "sampler": ["COMBO", {"options": ["euler", "heun"]}],
            },
            "optional": {"image": ["IMAGE"], "flag": ["BOOLEAN", {"default": False}]},
        },
        "input_order": {"required": ["model", "seed", "steps", "cfg", "sampler"], "optional": ["image", "flag"]},
        "output": ["IMAGE"],
        "output_node": False,
    },
    "Noise": {
        "input": {"required": {"amount": ["INT", {"default": 1, "min": 0, "max": 9, "control_after_generate": True}], "image": ["IMAGE"]}},
        "output": ["IMAGE"],
    },
    "Save": {"input": {"required": {"images": ["IMAGE"], "prefix": ["STRING", {"default": "x"}]}}, "output": [], "output_node": True},
    "LoadMotionReference": {"input": {"required": {"video": [["clip.mp4", "none"]]}}, "output": ["MOTION_REFERENCE"], "output_node": True},
}


class G:
    """A tiny UI-format graph builder."""

    def __init__(self):
        self.nodes, self.links = [], []

    def node(self, type_, widgets=(), inputs=(), outputs=(), mode=0):
        n = {
            "id": len(self.nodes) + 1,
            "type": type_,
            "mode": mode,
            "order": len(self.nodes),
            "widgets_values": list(widgets),
            "inputs": [{"name": name, "type": t, "link": None} for name, t in inputs],
            "outputs": [{"name": t, "type": t, "links": []} for t in outputs],
        }
        self.nodes.append(n)
        return n

    def link(self, a, a_slot, b, b_name, type_=None):
        b_slot = next(i for i, s in enumerate(b["inputs"]) if s["name"] == b_name)
        link_id = max((lk[0] for lk in self.links), default=0) + 1
        self.links.append([link_id, a["id"], a_slot, b["id"], b_slot, type_ or a["outputs"][a_slot]["type"]])
        a["outputs"][a_slot]["links"].append(link_id)
        b["inputs"][b_slot]["link"] = link_id
        return link_id

    def unlink(self, link_id):
        link = next(lk for lk in self.links if lk[0] == link_id)
        self.links.remove(link)
        origin = next(n for n in self.nodes if n["id"] == link[1])
        origin["outputs"][link[2]]["links"].remove(link_id)
        next(n for n in self.nodes if n["id"] == link[3])["inputs"][link[4]]["link"] = None

    def workflow(self):
        return {"nodes": self.nodes, "links": self.links, "version": 0.4}


def basic():
    g = G()
    loader = g.node("Loader", ["a.safetensors"], outputs=["MODEL", "VAE"])
    picture = g.node("LoadPicture", ["x.png", "image"], outputs=["IMAGE", "MASK"])
    sampler = g.node("Sampler", [7, "fixed", 3, 1.5, "heun", True], inputs=[("model", "MODEL"), ("image", "IMAGE")], outputs=["IMAGE"])
    save = g.node("Save", ["out"], inputs=[("images", "IMAGE")])
    g.link(loader, 0, sampler, "model")
    g.link(picture, 0, sampler, "image")
    g.link(sampler, 0, save, "images")
    return g, loader, picture, sampler, save


def test_converts_links_widgets_control_and_upload_values():
    g, *_ = basic()
    g.node("Note", ["just text"])
    prompt = ui_to_api(g.workflow(), OBJECT_INFO)
    assert set(prompt) == {"1", "2", "3", "4"}
    assert prompt["1"]["inputs"] == {"name": "a.safetensors"}
    assert prompt["2"]["inputs"] == {"image": "x.png"}  # "image" (upload widget) skipped
    assert prompt["3"] == {
        "class_type": "Sampler",
        "inputs": {"model": ["1", 0], "seed": 7, "steps": 3, "cfg": 1.5, "sampler": "heun", "image": ["2", 0], "flag": True},
        "_meta": {"title": "Sampler"},
    }
    assert prompt["4"]["inputs"] == {"images": ["3", 0], "prefix": "out"}


def test_an_optional_widget_saved_before_it_existed_gets_its_default_as_the_frontend_gives_it():
    g, _, _, sampler, _ = basic()
    sampler["widgets_values"].pop()  # "flag": optional, added after this workflow was saved
    assert ui_to_api(g.workflow(), OBJECT_INFO)["3"]["inputs"]["flag"] is False


@pytest.mark.parametrize(
    "break_it, message",
    [
        (lambda g, ld, p, s, v: s["widgets_values"].__delitem__(slice(-2, None)), "too few widget values"),  # a required one missing
        (lambda g, ld, p, s, v: s["widgets_values"].append(1), "too many widget values"),
        (lambda g, ld, p, s, v: s["widgets_values"].__setitem__(1, 3), "control_after_generate"),  # control value missing
        (lambda g, ld, p, s, v: p["widgets_values"].pop(), "upload widget"),
        (lambda g, ld, p, s, v: s["widgets_values"].__setitem__(4, "dpm"), "'dpm' is not one of the choices"),
        (lambda g, ld, p, s, v: s["widgets_values"].__setitem__(2, 0), "below the minimum 1"),
        (lambda g, ld, p, s, v: s["widgets_values"].__setitem__(2, 101), "above the maximum 100"),
        (lambda g, ld, p, s, v: s["widgets_values"].__setitem__(2, 2.5), "expected an integer"),
        (lambda g, ld, p, s, v: s["widgets_values"].__setitem__(3, "1"), "expected a number"),
        (lambda g, ld, p, s, v: s["widgets_values"].__setitem__(5, 1), "expected true/false"),
        (lambda g, ld, p, s, v: v["widgets_values"].__setitem__(0, 5), "expected a string"),
        (lambda g, ld, p, s, v: s.__setitem__("type", "Sampler2"), "unknown node type 'Sampler2'"),
        (lambda g, ld, p, s, v: g.links.pop(0), "link 1 does not exist"),
        (lambda g, ld, p, s, v: g.links[0].__setitem__(1, 99), "node 99 does not exist"),
        (lambda g, ld, p, s, v: s["inputs"][0].__setitem__("link", None), "input slot 0 holding this link"),  # one end only
        (lambda g, ld, p, s, v: g.unlink(1), "required MODEL input is not connected"),
        (lambda g, ld, p, s, v: g.links[0].__setitem__(2, 1), "gives VAE, but the input takes MODEL"),
        (lambda g, ld, p, s, v: v.__setitem__("mode", 2), "no output node"),
    ],
)
def test_broken_graphs_fail_loudly(break_it, message):
    g, loader, picture, sampler, save = basic()
    if "gives VAE" in message:  # a consistent link from the wrong output slot
        loader["outputs"][0]["links"].remove(1)
        loader["outputs"][1]["links"].append(1)
    break_it(g, loader, picture, sampler, save)
    with pytest.raises(WorkflowError, match=message.replace("(", r"\(").replace("[", r"\[")):
        ui_to_api(g.workflow(), OBJECT_INFO)


def test_errors_name_node_id_type_and_input():
    g, loader, picture, sampler, save = basic()
    sampler["widgets_values"][2] = 0
    with pytest.raises(WorkflowError) as err:
        ui_to_api(g.workflow(), OBJECT_INFO)
    assert "node 3 (Sampler), input 'steps'" in str(err.value)


def test_control_after_generate_option_and_converted_widget_link():
    g, loader, picture, sampler, save = basic()
    noise = g.node("Noise", [4, "randomize"], inputs=[("image", "IMAGE"), ("amount", "INT")], outputs=["IMAGE"])
    g.link(picture, 0, noise, "image")
    g.unlink(3)
    g.link(noise, 0, save, "images")
    prompt = ui_to_api(g.workflow(), OBJECT_INFO)
    assert prompt[str(noise["id"])]["inputs"] == {"amount": 4, "image": ["2", 0]}
    # A widget converted to a socket and linked: the link replaces the stored value.
    counter = g.node("Loader", ["b.safetensors"], outputs=["MODEL", "VAE"])
    g.link(counter, 0, noise, "amount")
    with pytest.raises(WorkflowError, match="gives MODEL, but the input takes INT"):
        ui_to_api(g.workflow(), OBJECT_INFO)


def test_reroute_primitive_muted_and_bypassed_nodes():
    g, loader, picture, sampler, save = basic()
    # Reroute between the sampler and the save node.
    g.unlink(3)
    reroute = g.node("Reroute", inputs=[("", "*")], outputs=["IMAGE"])
    g.link(sampler, 0, reroute, "")
    g.link(reroute, 0, save, "images")
    # A PrimitiveNode drives the seed (its value is already in the sampler's widget values).
    sampler["inputs"].append({"name": "seed", "type": "INT", "link": None, "widget": {"name": "seed"}})
    primitive = g.node("PrimitiveNode", [7, "fixed"], outputs=["INT"])
    g.link(primitive, 0, sampler, "seed")
    prompt = ui_to_api(g.workflow(), OBJECT_INFO)
    assert set(prompt) == {"1", "2", "3", "4"}
    assert prompt["4"]["inputs"]["images"] == ["3", 0] and prompt["3"]["inputs"]["seed"] == 7

    bypassed = copy.deepcopy(g.workflow())
    bypassed["nodes"][2]["mode"] = 4  # the sampler passes its IMAGE input through
    prompt = ui_to_api(bypassed, OBJECT_INFO)
    assert "3" not in prompt and prompt["4"]["inputs"]["images"] == ["2", 0]

    muted = copy.deepcopy(g.workflow())
    muted["nodes"][2]["mode"] = 2
    with pytest.raises(WorkflowError, match=r"node 4 \(Save\), input 'images': required IMAGE input is fed only through a muted"):
        ui_to_api(muted, OBJECT_INFO)


def test_only_the_packs_upload_button_may_leave_a_trailing_null():
    g = G()
    ref = g.node("LoadMotionReference", ["clip.mp4", None], outputs=["MOTION_REFERENCE"])
    assert ui_to_api(g.workflow(), OBJECT_INFO)["1"]["inputs"] == {"video": "clip.mp4"}
    ref["widgets_values"] = ["clip.mp4", "something"]
    with pytest.raises(WorkflowError, match="too many widget values"):
        ui_to_api(g.workflow(), OBJECT_INFO)
    ref["widgets_values"] = ["clip.mp4", None, None]
    with pytest.raises(WorkflowError, match="too many widget values"):
        ui_to_api(g.workflow(), OBJECT_INFO)
    g2, *_ = basic()
    g2.nodes[3]["widgets_values"].append(None)  # other nodes: no tolerance
    with pytest.raises(WorkflowError, match="too many widget values"):
        ui_to_api(g2.workflow(), OBJECT_INFO)


def test_apply_overrides_uses_the_checkpoint_upstream_and_refuses_stale_names():
    info = {
        "ImageOnlyCheckpointLoader": {
            "input": {"required": {"ckpt_name": [["svd.safetensors", "svd_xt.safetensors"]]}},
            "output": ["MODEL", "CLIP_VISION", "VAE"],
        },
        "SVD_img2vid_Conditioning": {
            "input": {
                "required": {
                    "clip_vision": ["CLIP_VISION"],
                    "width": ["INT", {"min": 16, "max": 8192}],
                    "height": ["INT", {"min": 16, "max": 8192}],
                    "video_frames": ["INT", {"min": 1, "max": 4096}],
                }
            },
            "output": ["CONDITIONING"],
        },
    }
    prompt = {
        "1": {"class_type": "ImageOnlyCheckpointLoader", "inputs": {"ckpt_name": "svd_xt.safetensors"}},
        "2": {
            "class_type": "SVD_img2vid_Conditioning",
            "inputs": {"clip_vision": ["1", 1], "width": 1024, "height": 576, "video_frames": 25},
        },
    }
    scaled = apply_overrides(prompt, overrides_for, info)
    assert scaled["2"]["inputs"] == {"clip_vision": ["1", 1], "width": 64, "height": 64, "video_frames": 7}
    assert prompt["2"]["inputs"]["width"] == 1024  # the input prompt is not modified
    prompt["1"]["inputs"]["ckpt_name"] = "svd.safetensors"
    assert apply_overrides(prompt, overrides_for, info)["2"]["inputs"]["video_frames"] == 4
    with pytest.raises(WorkflowError, match="input the node does not have"):
        apply_overrides(prompt, lambda c, k: {"frames": 3} if c == "SVD_img2vid_Conditioning" else {}, info)
    with pytest.raises(WorkflowError, match="override for a linked input"):
        apply_overrides(prompt, lambda c, k: {"clip_vision": 3} if c == "SVD_img2vid_Conditioning" else {}, info)
    with pytest.raises(WorkflowError, match="below the minimum 16"):
        apply_overrides(prompt, lambda c, k: {"width": 8} if c == "SVD_img2vid_Conditioning" else {}, info)
