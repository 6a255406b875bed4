"""Regenerate the example workflows in workflows/ (ComfyUI UI format, version 0.4).

    COMFYUI_ROOT=<2024-03 ComfyUI> python -m tools.make_workflows          # the SVD workflows
    COMFYUI_ROOT=<2025-12 ComfyUI> python -m tools.make_workflows --wan    # the Wan workflows

Node sockets and widget order come from the node definitions of a real ComfyUI (with this pack
loaded), and widget values follow the frontend's serialisation rules (a control_after_generate value
after seed widgets, an upload value after image-upload combos), so the files load in the UI exactly
like a workflow saved from it. The SVD workflows are built from the 2024-03 ComfyUI (the default
COMFYUI_ROOT, the oldest supported): later ComfyUIs changed some stock nodes' widgets, and later frontends
migrate the old lists. The Wan workflows need Wan's nodes, so they are built from the 2025-12 ComfyUI
(v0.3.75, COMFYUI=2025-12), whose widget lists current frontends load as they are.
tests/test_workflow_files.py checks that the files are this script's output. The thumbnails (.jpg) are
screenshots taken by the browser test.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from reenact_core.inversion import InversionConfig  # the node's defaults

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / "workflows"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
NODE_WIDTH = 280

# Layout on the canvas (graph units). Each node's size is at least what both the legacy frontend and the
# current one need for its slots and widgets (measured by tests/test_browser.py, which fails on a node
# smaller than its content), including the pack's text widget (web/reenact_anything.js: TEXT_LINES) and
# the room an image shown on the node takes after a run (the legacy frontend grows a node to 220 below its
# last widget for an image; Motion Textual Inversion's live loss curve and the animated WEBP are sized in
# from the start, so a run grows nothing over its neighbours).
TITLE = 30  # LiteGraph.NODE_TITLE_HEIGHT: drawn above a node's pos
GAP = 20  # between a node and the title bar of the one below it
COLUMN_GAP = 30
GROUP_PAD = 10
GROUP_TITLE = 40  # a group's title bar (font size 24)
GROUP_GAP = 20
IMAGE_ROOM = 226  # below the last widget, for an image the node shows
SIZES = {  # (width, height without the title bar)
    "ImageOnlyCheckpointLoader": (370, 100),
    "MotionWorldLoader": (NODE_WIDTH, 100),
    "LoadMotionReference": (NODE_WIDTH, 326),
    "MotionInversionOptions": (NODE_WIDTH, 496),  # 19 widgets
    "MotionTextualInversion": (NODE_WIDTH, 500 + IMAGE_ROOM),
    "SaveMotionEmbedding": (NODE_WIDTH, 110),
    "PreviewImage": (NODE_WIDTH, 40 + IMAGE_ROOM),
    "LoadMotionEmbedding": (NODE_WIDTH, 145),
    "LoadImage": (NODE_WIDTH, 335),
    "SVD_img2vid_Conditioning": (NODE_WIDTH, 222),
    "ApplyMotionEmbedding": (NODE_WIDTH, 262),  # 5 input rows since the optional model input (Wan)
    "VideoLinearCFGGuidance": (NODE_WIDTH, 62),
    "KSampler": (NODE_WIDTH, 266),
    "VAEDecode": (NODE_WIDTH, 50),
    "SaveAnimatedWEBP": (NODE_WIDTH, 158 + IMAGE_ROOM),
    # Wan (the 2025-12 ComfyUI's nodes)
    "UNETLoader": (370, 82),
    "CLIPLoader": (370, 106),
    "VAELoader": (370, 58),
    "CLIPVisionLoader": (370, 58),
    "CLIPTextEncode": (340, 140),
    "CLIPVisionEncode": (NODE_WIDTH, 78),
    "WanImageToVideo": (NODE_WIDTH, 210),
    "Wan22ImageToVideoLatent": (NODE_WIDTH, 150),
    "ModelSamplingSD3": (NODE_WIDTH, 58),
}
# The saved view: the graph fitted into a 1600x1000 window, clear of the new frontends' sidebar (left) and
# tab bar (top), never above 100 %.
VIEW_WINDOW = (1600, 1000)
VIEW_CLEAR = (80, 135, 30, 50)  # left, top, right, bottom: frontend 1.32.9 draws a banner, the tabs, the workflow name and the Run bar down to 127 px
# Group colours from LiteGraph's palette (LGraphCanvas.node_colors[...].groupcolor).
GROUP_COLORS = {"reference": "#3f789e", "learn": "#b58b2a", "apply": "#8A8", "output": "#a1309b", "motion": "#88A"}

# Defaults for real SVD: the paper's / ComfyUI's settings where known.
SVD = "svd.safetensors"
SVD_XT = "svd_xt.safetensors"
REFERENCE = "reenact_example_reference.mp4"
TARGETS = ("reenact_example_target_1.png", "reenact_example_target_2.png")
EXAMPLE_EMBEDDING = "reenact_example_motion.safetensors"


class Graph:
    def __init__(self, definitions: dict):
        self.definitions = definitions
        self.nodes: list[dict] = []
        self.links: list[list] = []
        self.groups: list[dict] = []

    def _inputs(self, class_type: str) -> list[tuple[str, object, dict]]:
        spec = self.definitions[class_type]["input"]
        out = []
        for section in ("required", "optional"):
            for name, definition in spec.get(section, {}).items():
                options = definition[1] if len(definition) > 1 else {}
                out.append((name, definition[0], options))
        return out

    @staticmethod
    def _is_widget(kind, options) -> bool:
        return (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput")

    def add(self, class_type: str, pos: tuple[float, float], title: str | None = None, **widgets) -> dict:
        definition = self.definitions[class_type]
        node_id = len(self.nodes) + 1
        inputs, values, remaining = [], [], dict(widgets)
        for name, kind, options in self._inputs(class_type):
            if not self._is_widget(kind, options):
                inputs.append({"name": name, "type": kind, "link": None})
                continue
            if name in remaining:
                value = remaining.pop(name)
            elif "default" in options:
                value = options["default"]
            elif isinstance(kind, list):
                value = kind[0] if kind else ""
            else:
                raise ValueError(f"{class_type}.{name} needs a value")
            values.append(value)
            if (kind == "INT" and name in ("seed", "noise_seed")) or options.get("control_after_generate"):
                values.append(remaining.pop(f"{name}_control", "fixed"))  # the frontend's control_after_generate
            if options.get("image_upload"):
                values.append("image")  # the frontend's upload widget
        if remaining:
            raise ValueError(f"{class_type} has no widget(s) {sorted(remaining)}")
        outputs = [
            {"name": name, "type": kind, "links": [], "slot_index": i}
            for i, (kind, name) in enumerate(zip(definition["output"], definition.get("output_name") or definition["output"], strict=True))
        ]
        size = SIZES.get(class_type) or (NODE_WIDTH, 46 + 24 * (len(values) + max(len(inputs), len(outputs))))
        node = {
            "id": node_id,
            "type": class_type,
            "pos": [pos[0], pos[1]],
            "size": list(size),
            "flags": {},
            "order": node_id - 1,
            "mode": 0,
            "inputs": inputs,
            "outputs": outputs,
            "properties": {"Node name for S&R": class_type},
            "widgets_values": values,
        }
        if title:
            node["title"] = title
        self.nodes.append(node)
        return node

    def note(self, text: str, size: tuple[float, float], title: str = "Note", warning: bool = False) -> dict:
        node_id = len(self.nodes) + 1
        node = {
            "id": node_id, "type": "Note", "pos": [0, 0], "size": list(size), "flags": {}, "order": node_id - 1, "mode": 0,
            "inputs": [], "outputs": [], "title": title, "properties": {"text": ""}, "widgets_values": [text],
            "color": "#322" if warning else "#432", "bgcolor": "#533" if warning else "#653",
        }
        self.nodes.append(node)
        return node

    def group(self, title: str, color: str, columns: list[list[dict]], x: float, y: float) -> list[float]:
        """Places `columns` (top to bottom each, left to right) in a titled group whose top-left corner is
        (x, y); returns the group's [x, y, width, height]."""
        left, bottom = x + GROUP_PAD, y
        for column in columns:
            top = y + GROUP_TITLE + GROUP_PAD
            for node in column:
                node["pos"] = [left, top + TITLE]
                top += TITLE + node["size"][1] + GAP
            bottom = max(bottom, top - GAP + GROUP_PAD)
            left += max(node["size"][0] for node in column) + COLUMN_GAP
        bounding = [x, y, left - COLUMN_GAP + GROUP_PAD - x, bottom - y]
        self.groups.append({"id": len(self.groups) + 1, "title": title, "bounding": bounding, "color": color, "font_size": 24, "flags": {}})
        return bounding

    def view(self) -> dict:
        """The view saved with the workflow: all of it, as large as fits the window's clear part."""
        rects = [[n["pos"][0], n["pos"][1] - TITLE, n["size"][0], n["size"][1] + TITLE] for n in self.nodes] + [g["bounding"] for g in self.groups]
        x0, y0 = min(r[0] for r in rects), min(r[1] for r in rects)
        x1, y1 = max(r[0] + r[2] for r in rects), max(r[1] + r[3] for r in rects)
        left, top, right, bottom = VIEW_CLEAR
        width, height = VIEW_WINDOW[0] - left - right, VIEW_WINDOW[1] - top - bottom
        scale = min(1.0, width / (x1 - x0), height / (y1 - y0))
        # centred in the clear part; the canvas draws graph point p at (p + offset) * scale
        offset = [(left + (width - (x1 - x0) * scale) / 2) / scale - x0, (top + (height - (y1 - y0) * scale) / 2) / scale - y0]
        return {"scale": round(scale, 4), "offset": [round(v, 1) for v in offset]}

    def connect(self, source: dict, output: str | int, target: dict, input_name: str) -> None:
        slot = output if isinstance(output, int) else next(i for i, o in enumerate(source["outputs"]) if o["name"] == output)
        target_slot = next(i for i, inp in enumerate(target["inputs"]) if inp["name"] == input_name)
        link_id = len(self.links) + 1
        kind = source["outputs"][slot]["type"]
        self.links.append([link_id, source["id"], slot, target["id"], target_slot, kind])
        source["outputs"][slot]["links"].append(link_id)
        target["inputs"][target_slot]["link"] = link_id

    def to_json(self) -> dict:
        self._order()
        return {
            "last_node_id": len(self.nodes),
            "last_link_id": len(self.links),
            "nodes": self.nodes,
            "links": self.links,
            "groups": self.groups,
            "config": {},
            "extra": {"ds": self.view()},
            "version": 0.4,
        }

    def _order(self) -> None:
        """Execution order the frontend would store: a topological order of the nodes."""
        parents = {n["id"]: {link[1] for link in self.links if link[3] == n["id"]} for n in self.nodes}
        done: list[int] = []
        while len(done) < len(self.nodes):
            for n in self.nodes:
                if n["id"] not in done and parents[n["id"]] <= set(done):
                    done.append(n["id"])
        for n in self.nodes:
            n["order"] = done.index(n["id"])


# -- the pieces every workflow shares (nodes are placed afterwards, by the workflow's layout) -----------

ORIGIN = (0.0, 0.0)


def checkpoint(g: Graph, name=SVD):
    return g.add("ImageOnlyCheckpointLoader", ORIGIN, ckpt_name=name)


def inversion(g: Graph, model: dict, vae: dict, clip_vision: dict | None, video_frames: int = 14, reference_file: str = REFERENCE,
              **settings) -> tuple[dict, dict]:
    """Load Motion Reference into Motion Textual Inversion, fed from the nodes that give MODEL, VAE and CLIP_VISION (one
    checkpoint loader for SVD; separate loaders for Wan, where only Wan2.1-I2V takes CLIP vision)."""
    reference = g.add("LoadMotionReference", ORIGIN, video=reference_file)
    widgets = dict(
        steps=InversionConfig.steps, learning_rate=InversionConfig.learning_rate, tokens_per_frame=5, video_frames=video_frames, width=512, height=288, seed=0, fps=0,
        motion_bucket_id=127, augmentation_level=0.0, precision="auto", gradient_checkpointing=True,
    )
    invert = g.add("MotionTextualInversion", ORIGIN, **dict(widgets, **settings))
    g.connect(model, "MODEL", invert, "model")
    g.connect(vae, "VAE", invert, "vae")
    if clip_vision is not None:
        g.connect(clip_vision, "CLIP_VISION", invert, "clip_vision")
    g.connect(reference, "motion_reference", invert, "motion_reference")
    return reference, invert


def outputs_of_inversion(g: Graph, invert: dict, prefix: str = "motion") -> tuple[dict, dict]:
    save = g.add("SaveMotionEmbedding", ORIGIN, filename_prefix=prefix)
    preview = g.add("PreviewImage", ORIGIN, title="Loss curve")
    g.connect(invert, "motion_embedding", save, "motion_embedding")
    g.connect(invert, "loss_curve", preview, "images")
    return save, preview


def generation(
    g: Graph, ckpt: dict, motion: tuple[dict, str], target: str, frames=14, prefix="reenact/result", seed=0, size=(1024, 576), cfg=2.5,
) -> dict[str, dict]:
    image = g.add("LoadImage", ORIGIN, image=target)
    cond = g.add("SVD_img2vid_Conditioning", ORIGIN, width=size[0], height=size[1], video_frames=frames, motion_bucket_id=127, fps=6, augmentation_level=0.0)
    apply = g.add("ApplyMotionEmbedding", ORIGIN, strength=1.0)
    guidance = g.add("VideoLinearCFGGuidance", ORIGIN, min_cfg=1.0)
    sampler = g.add("KSampler", ORIGIN, seed=seed, steps=20, cfg=cfg, sampler_name="euler", scheduler="karras", denoise=1.0)
    decode = g.add("VAEDecode", ORIGIN)
    save = g.add("SaveAnimatedWEBP", ORIGIN, filename_prefix=prefix, fps=6.0, lossless=False, quality=85, method="default")
    g.connect(ckpt, "CLIP_VISION", cond, "clip_vision")
    g.connect(ckpt, "VAE", cond, "vae")
    g.connect(image, "IMAGE", cond, "init_image")
    g.connect(cond, "positive", apply, "positive")
    g.connect(cond, "negative", apply, "negative")
    g.connect(cond, "latent", apply, "latent")
    g.connect(motion[0], motion[1], apply, "motion_embedding")
    g.connect(ckpt, "MODEL", guidance, "model")
    g.connect(guidance, "MODEL", sampler, "model")
    g.connect(apply, "positive", sampler, "positive")
    g.connect(apply, "negative", sampler, "negative")
    g.connect(cond, "latent", sampler, "latent_image")
    g.connect(sampler, "LATENT", decode, "samples")
    g.connect(ckpt, "VAE", decode, "vae")
    g.connect(decode, "IMAGE", save, "images")
    return {"image": image, "cond": cond, "apply": apply, "guidance": guidance, "sampler": sampler, "decode": decode, "save": save}


def right_of(rect: list[float]) -> float:
    return rect[0] + rect[2] + GROUP_GAP


def below(rect: list[float]) -> float:
    return rect[1] + rect[3] + GROUP_GAP


INVERT_NOTE = """Learn a motion from your clip

SVD stays frozen; only the motion tokens are learned.

- steps / learning_rate: 1000 at 0.3 is the recipe. A loss curve that jumps about: learning rate 0.1.
- width x height: 512x288 is ~4x faster than 1024x576; the motion applies at any size.
- fps 0 (auto): SVD is told the rate the learned frames really have. frame_sampling: the whole clip, or its first frames at the filmed rate.
- tokens_per_frame: 5 (the paper's).

The loss curve should fall and flatten; the node shows its verdict. The file goes to output/motion_embeddings/ and appears in Load Motion Embedding."""

APPLY_NOTE = """Apply the motion to an image

The image gives the look; the motion embedding replaces SVD's image embedding, frame by frame.

- strength: 0 = plain SVD, 1 = the learned motion, above 1 exaggerates it.
- fps / keep_speed: the node shows the rate the motion was learned at and how fast it plays over these frames. motion_bucket_id: keep 127.
- video_frames: any count; the motion is resampled in time."""

EXAMPLE_WARNING = """PICK YOUR OWN MOTION HERE

The bundled reenact_example_motion.safetensors was learned on a random-weight TEST model. On real SVD it moves nothing meaningful: it only shows that the graph runs.

Learn a motion from your clip with workflow 1 (reenact_1_invert_motion): Save Motion Embedding writes it to output/motion_embeddings/ and it appears in this list."""


def workflow_invert(g: Graph) -> None:
    ckpt = checkpoint(g)
    reference, invert = inversion(g, ckpt, ckpt, ckpt)
    save, preview = outputs_of_inversion(g, invert)
    note = g.note(INVERT_NOTE, (400, SIZES["MotionTextualInversion"][1]))
    ref = g.group("Reference", GROUP_COLORS["reference"], [[ckpt, reference]], 0, 0)
    g.group("Learn the motion", GROUP_COLORS["learn"], [[invert], [save, preview], [note]], right_of(ref), 0)


def _apply_groups(g: Graph, parts: dict, x: float, y: float, note: dict | None = None, title: str = "Apply to a target") -> list[float]:
    """The generation's nodes in an 'Apply' group (three columns, the note under the sampler) and an
    'Output' group right of it; returns the bounding box of both."""
    third = [parts["sampler"]] + ([note] if note else [])
    apply = g.group(title, GROUP_COLORS["apply"], [[parts["image"], parts["guidance"]], [parts["cond"], parts["apply"]], third], x, y)
    out = g.group("Output", GROUP_COLORS["output"], [[parts["decode"], parts["save"]]], right_of(apply), y)
    return [x, y, out[0] + out[2] - x, max(apply[3], out[3])]


def workflow_apply(g: Graph) -> None:
    ckpt = checkpoint(g)
    motion = g.add("LoadMotionEmbedding", ORIGIN, embedding_name=EXAMPLE_EMBEDDING)
    parts = generation(g, ckpt, (motion, "motion_embedding"), TARGETS[0])
    note = g.note(APPLY_NOTE, (NODE_WIDTH, 300))
    warning = g.note(EXAMPLE_WARNING, (370, 290), title="The example motion moves nothing on real SVD", warning=True)
    left = g.group("Model and motion", GROUP_COLORS["motion"], [[ckpt, motion, warning]], 0, 0)
    _apply_groups(g, parts, right_of(left), 0, note)


def workflow_invert_and_apply(g: Graph) -> None:
    ckpt = checkpoint(g)
    reference, invert = inversion(g, ckpt, ckpt, ckpt)
    save, preview = outputs_of_inversion(g, invert)
    first = generation(g, ckpt, (invert, "motion_embedding"), TARGETS[0], prefix="reenact/target_1", seed=0)
    second = generation(g, ckpt, (invert, "motion_embedding"), TARGETS[1], prefix="reenact/target_2", seed=1)
    invert_note = g.note("Learns the motion of the reference clip (workflow 1's note says which settings matter), then applies it to two images.",
                         (370, 120), title="Invert")
    apply_note = g.note("strength: 0 = plain SVD, 1 = the learned motion, above 1 exaggerates it. Workflow 2's note has the rest.",
                        (NODE_WIDTH, 100), title="Apply")
    ref = g.group("Reference", GROUP_COLORS["reference"], [[ckpt, invert_note], [reference]], 0, 0)
    g.group("Learn the motion", GROUP_COLORS["learn"], [[invert], [save, preview]], 0, below(ref))
    columns = lambda parts, note=None: [  # noqa: E731
        [parts["image"], parts["guidance"]], [parts["cond"], parts["apply"]], [parts["sampler"], parts["decode"]] + ([note] if note else []), [parts["save"]],
    ]
    top = g.group("Apply to target 1", GROUP_COLORS["apply"], columns(first, apply_note), right_of(ref), 0)
    g.group("Apply to target 2", GROUP_COLORS["apply"], columns(second), right_of(ref), below(top))


def workflow_svd_xt(g: Graph) -> None:
    ckpt = checkpoint(g, SVD_XT)
    motion = g.add("LoadMotionEmbedding", ORIGIN, embedding_name=EXAMPLE_EMBEDDING)
    parts = generation(g, ckpt, (motion, "motion_embedding"), TARGETS[1], frames=25, prefix="reenact/svd_xt")
    note = g.note(
        "SVD-XT (25 frames) with a motion learned at 14 frames\n\nApply Motion Embedding resamples the per-frame tokens to the latent's 25 "
        "frames (first and last kept): the same path, more finely. To learn at 25 frames, invert with video_frames = 25 and svd_xt.safetensors.",
        (NODE_WIDTH, 300),
    )
    warning = g.note(EXAMPLE_WARNING, (370, 290), title="The example motion moves nothing on real SVD", warning=True)
    left = g.group("Model and motion", GROUP_COLORS["motion"], [[ckpt, motion, warning]], 0, 0)
    _apply_groups(g, parts, right_of(left), 0, note)


MOTION_WORLD_NOTE = """Motion World: the whole method on CPU in a minute

Load Motion World is a small SVD-interface model trained on synthetic sprite motion (8 frames, 64x64); it stands in for svd.safetensors.

The reference sprite moves along an L-path the model never saw. Motion Textual Inversion learns it; Apply Motion Embedding replays it on another sprite, colour and background.

Learning rate 0.01, constant (Motion Inversion Options) and cfg 1.0 suit this small model. For real SVD, start from the defaults (0.3 decayed; cfg 2.5).

Swap Load Motion World for Image Only Checkpoint Loader + svd.safetensors (and SVD's sizes) to do the same with real SVD."""


def workflow_motion_world(g: Graph) -> None:
    loader = g.add("MotionWorldLoader", ORIGIN, model_name="motion_world.safetensors")
    reference, invert = inversion(
        g, loader, loader, loader, video_frames=8, reference_file="reenact_motion_world_reference.mp4", steps=MOTION_WORLD_STEPS,
        learning_rate=MOTION_WORLD_LR, width=64, height=64, gradient_checkpointing=False, fps=MOTION_WORLD_FPS,
    )
    options = g.add("MotionInversionOptions", ORIGIN, **MOTION_WORLD_OPTIONS)
    g.connect(options, "options", invert, "options")
    save, preview = outputs_of_inversion(g, invert, "motion_world/l_path")
    parts = generation(g, loader, (invert, "motion_embedding"), "reenact_motion_world_target.png", frames=8, prefix="reenact/motion_world",
                       size=(64, 64), cfg=MOTION_WORLD_CFG)
    note = g.note(MOTION_WORLD_NOTE, (NODE_WIDTH, 560), title="Motion World")
    ref = g.group("Reference", GROUP_COLORS["reference"], [[loader, reference, note]], 0, 0)
    learn = g.group("Learn the motion", GROUP_COLORS["learn"], [[invert], [options, save, preview]], right_of(ref), 0)
    apply = g.group("Apply to a target", GROUP_COLORS["apply"], [[parts["image"], parts["cond"], parts["guidance"]], [parts["apply"], parts["sampler"]]],
                    right_of(learn), 0)
    g.group("Output", GROUP_COLORS["output"], [[parts["decode"], parts["save"]]], right_of(apply), 0)


# Settings for the small model, measured with bench/motion_world_bench.py (which uses them): the published
# recipe's rate, lr 0.01 held constant, for 300 steps so the demo takes a minute on CPU. On this model it transfers
# better than the node's default (lr 0.3, cosine decay), which fits the reference more closely and overfits it
# (2.3 against 3.6 px on the full bench, fifth-run weights). No classifier-free guidance: on this model it
# saturates colours until the sprite is lost (inverted transfer 13.4 px at cfg 2.5 against 7.7 px at 1.0 on the
# quick bench).
MOTION_WORLD_STEPS = 300
MOTION_WORLD_LR = 0.01
MOTION_WORLD_OPTIONS = {"schedule": "constant"}  # Motion Inversion Options widgets that differ from the node's defaults
MOTION_WORLD_CFG = 1.0
MOTION_WORLD_FPS = 6  # the small model was trained with fps conditioning 6 only (motion_world/train.py)


# -- Wan 2.1 / 2.2 (models named as ComfyUI's own Wan templates name them) -------------------------------

WAN_REFERENCE = "reenact_wan_example_reference.mp4"  # the example arc at Wan's 16 fps, 33 frames (tools/make_examples.py)
UMT5 = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
WAN21_VAE = "wan_2.1_vae.safetensors"
WAN_MODEL_FILES = {  # the file, the folder ComfyUI loads it from, where ComfyUI's templates download it
    "wan2.1_i2v_480p_14B_fp16.safetensors": ("diffusion_models", "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/diffusion_models/wan2.1_i2v_480p_14B_fp16.safetensors"),
    "wan2.2_ti2v_5B_fp16.safetensors": ("diffusion_models", "https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files/diffusion_models/wan2.2_ti2v_5B_fp16.safetensors"),
    UMT5: ("text_encoders", "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors"),
    WAN21_VAE: ("vae", "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/vae/wan_2.1_vae.safetensors"),
    "wan2.2_vae.safetensors": ("vae", "https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files/vae/wan2.2_vae.safetensors"),
    "clip_vision_h.safetensors": ("clip_vision", "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/clip_vision/clip_vision_h.safetensors"),
}
# Wan's own negative prompt, as ComfyUI's Wan templates carry it.
WAN_NEGATIVE = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，"
    "画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
WAN_POSITIVE = "a blue box sliding across a warm tiled floor"
# The inversion on Wan: 33 frames (9 latent frames) at 480x288 keep the 14B model's inversion at ~34 GB (fp8 weights
# ~19 GB; bench/vram_estimate --wan); the tokens do not depend on the size, and the motion applies at 832x480. Not
# tuned on real Wan weights (no GPU with them has run here): 500 steps at 0.1, a third of SVD's rate, is a guess to
# start from, and the workflows' note says so.
WAN_INVERSION = {"steps": 500, "learning_rate": 0.1, "video_frames": 33, "width": 480, "height": 288, "fps": 0}
WAN_FPS = 16


def wan_loader(g: Graph, class_type: str, file_name: str, **widgets) -> dict:
    """A stock loader with the file the workflow expects, and where to download it: the new frontend offers the
    download of a missing model from ``properties.models``, as it does for ComfyUI's own templates."""
    widget = {"UNETLoader": "unet_name", "VAELoader": "vae_name"}.get(class_type, "clip_name")
    node = g.add(class_type, ORIGIN, **{widget: file_name}, **widgets)
    folder, url = WAN_MODEL_FILES[file_name]
    node["properties"]["models"] = [{"name": file_name, "url": url, "directory": folder}]
    return node


def wan_prompts(g: Graph, clip: dict) -> tuple[dict, dict]:
    positive = g.add("CLIPTextEncode", ORIGIN, title="Prompt (replaced by the motion)", text=WAN_POSITIVE)
    negative = g.add("CLIPTextEncode", ORIGIN, title="Negative prompt", text=WAN_NEGATIVE)
    g.connect(clip, "CLIP", positive, "clip")
    g.connect(clip, "CLIP", negative, "clip")
    return positive, negative


Socket = tuple[dict, str]  # a node and one of its outputs


def wan_sampling(g: Graph, model: dict, vae: dict, positive: Socket, negative: Socket, latent: Socket, motion: Socket, cfg: float,
                 prefix: str) -> dict[str, dict]:
    """Apply Motion Embedding on the model (the sampler takes its model output), then sampling as Wan's templates set it."""
    apply = g.add("ApplyMotionEmbedding", ORIGIN, strength=1.0)
    shift = g.add("ModelSamplingSD3", ORIGIN, shift=8.0)
    sampler = g.add("KSampler", ORIGIN, seed=0, steps=20, cfg=cfg, sampler_name="uni_pc", scheduler="simple", denoise=1.0)
    decode = g.add("VAEDecode", ORIGIN)
    save = g.add("SaveAnimatedWEBP", ORIGIN, filename_prefix=prefix, fps=float(WAN_FPS), lossless=False, quality=85, method="default")
    g.connect(*positive, apply, "positive")
    g.connect(*negative, apply, "negative")
    g.connect(*latent, apply, "latent")
    g.connect(*motion, apply, "motion_embedding")
    g.connect(model, "MODEL", shift, "model")
    g.connect(shift, "MODEL", apply, "model")
    g.connect(apply, "model", sampler, "model")
    g.connect(apply, "positive", sampler, "positive")
    g.connect(apply, "negative", sampler, "negative")
    g.connect(*latent, sampler, "latent_image")
    g.connect(sampler, "LATENT", decode, "samples")
    g.connect(vae, "VAE", decode, "vae")
    g.connect(decode, "IMAGE", save, "images")
    return {"apply": apply, "shift": shift, "sampler": sampler, "decode": decode, "save": save}


WAN_INVERT_NOTE = """Learn a motion on Wan, apply it to an image

Motion Textual Inversion learns umT5 tokens for each of the clip's latent frames (4 video frames each) while Wan stays frozen; no text encoder is needed for that.

- video_frames: 4k+1 (33 = 9 latent frames). 480x288 keeps a step short; the motion applies at any size and length.
- steps / learning_rate: 500 at 0.1 is a starting point, not a tuned recipe. A loss curve that jumps about: lower the rate.
- Apply Motion Embedding: connect the model and sample with its model output. There the motion takes the place of the positive prompt in every block; the negative prompt stays.
- The info output says at which fps to save for the learned speed."""

WAN21_MEMORY_NOTE = """Wan2.1-I2V is a 14B model (33 GB of fp16 weights): learning at this size needs about 34 GB of VRAM. Load Diffusion Model's weight_dtype fp8_e4m3fn brings it to about 19 GB (estimates: README, VRAM and time). Before its first step the node checks the free VRAM and says what to lower."""


def workflow_wan21_i2v(g: Graph) -> None:
    unet = wan_loader(g, "UNETLoader", "wan2.1_i2v_480p_14B_fp16.safetensors", weight_dtype="default")
    clip = wan_loader(g, "CLIPLoader", UMT5, type="wan")
    vae = wan_loader(g, "VAELoader", WAN21_VAE)
    clip_vision = wan_loader(g, "CLIPVisionLoader", "clip_vision_h.safetensors")
    reference, invert = inversion(g, unet, vae, clip_vision, reference_file=WAN_REFERENCE, **WAN_INVERSION)
    save_motion, preview = outputs_of_inversion(g, invert, "wan21/motion")
    image = g.add("LoadImage", ORIGIN, image=TARGETS[0])
    encode = g.add("CLIPVisionEncode", ORIGIN, crop="none")
    positive, negative = wan_prompts(g, clip)
    i2v = g.add("WanImageToVideo", ORIGIN, width=832, height=480, length=WAN_INVERSION["video_frames"], batch_size=1)
    g.connect(clip_vision, "CLIP_VISION", encode, "clip_vision")
    g.connect(image, "IMAGE", encode, "image")
    g.connect(positive, "CONDITIONING", i2v, "positive")
    g.connect(negative, "CONDITIONING", i2v, "negative")
    g.connect(vae, "VAE", i2v, "vae")
    g.connect(encode, "CLIP_VISION_OUTPUT", i2v, "clip_vision_output")
    g.connect(image, "IMAGE", i2v, "start_image")
    parts = wan_sampling(g, unet, vae, (i2v, "positive"), (i2v, "negative"), (i2v, "latent"), (invert, "motion_embedding"), 6.0,
                         "reenact/wan21_i2v")
    note = g.note(WAN_INVERT_NOTE, (320, 470), title="Wan")
    memory = g.note(WAN21_MEMORY_NOTE, (320, 150), title="Memory", warning=True)
    _wan_groups(g, [unet, clip, vae, clip_vision], reference, invert, save_motion, preview, parts, [note, memory],
                [[image], [encode], [positive, negative], [i2v, parts["shift"]], [parts["apply"]], [parts["sampler"]]])


def workflow_wan22_ti2v(g: Graph) -> None:
    unet = wan_loader(g, "UNETLoader", "wan2.2_ti2v_5B_fp16.safetensors", weight_dtype="default")
    clip = wan_loader(g, "CLIPLoader", UMT5, type="wan")
    vae = wan_loader(g, "VAELoader", "wan2.2_vae.safetensors")
    reference, invert = inversion(g, unet, vae, None, reference_file=WAN_REFERENCE, **WAN_INVERSION)
    save_motion, preview = outputs_of_inversion(g, invert, "wan22_ti2v/motion")
    image = g.add("LoadImage", ORIGIN, image=TARGETS[0])
    positive, negative = wan_prompts(g, clip)
    latent = g.add("Wan22ImageToVideoLatent", ORIGIN, width=1280, height=704, length=WAN_INVERSION["video_frames"], batch_size=1)
    g.connect(vae, "VAE", latent, "vae")
    g.connect(image, "IMAGE", latent, "start_image")
    parts = wan_sampling(g, unet, vae, (positive, "CONDITIONING"), (negative, "CONDITIONING"), (latent, "LATENT"),
                         (invert, "motion_embedding"), 5.0, "reenact/wan22_ti2v")
    note = g.note(WAN_INVERT_NOTE, (320, 470), title="Wan")
    _wan_groups(g, [unet, clip, vae], reference, invert, save_motion, preview, parts, [note],
                [[image], [positive, negative], [latent, parts["shift"]], [parts["apply"]], [parts["sampler"]]])


def _wan_groups(g: Graph, loaders, reference, invert, save_motion, preview, parts, notes, apply_columns) -> None:
    """Models, Learn, Output and the notes side by side, the apply chain under them: the whole graph fits the
    1600x1000 window, at the saved view and at the frontend's Fit View, at a zoom where node text is drawn."""
    models = g.group("Models", GROUP_COLORS["motion"], [loaders], 0, 0)
    learn = g.group("Learn the motion", GROUP_COLORS["learn"], [[reference, save_motion], [invert], [preview]], right_of(models), 0)
    output = g.group("Output", GROUP_COLORS["output"], [[parts["decode"], parts["save"]]], right_of(learn), 0)
    g.group("Read me", GROUP_COLORS["reference"], [notes], right_of(output), 0)
    g.group("Apply to a target", GROUP_COLORS["apply"], apply_columns, 0, below(learn))

SVD_WORKFLOWS = {  # built from the 2024-03 ComfyUI's node definitions
    "reenact_1_invert_motion.json": workflow_invert,
    "reenact_2_apply_motion.json": workflow_apply,
    "reenact_3_invert_and_apply_two_targets.json": workflow_invert_and_apply,
    "reenact_4_svd_xt_from_14_frame_motion.json": workflow_svd_xt,
    "reenact_5_motion_world_demo.json": workflow_motion_world,
}
WAN_WORKFLOWS = {  # built from the 2025-12 ComfyUI's (v0.3.75)
    "reenact_6_wan21_i2v_invert_and_apply.json": workflow_wan21_i2v,
    "reenact_7_wan22_ti2v_invert_and_apply.json": workflow_wan22_ti2v,
}
WAN_COMFYUI_VERSION = "0.3.75"
WORKFLOWS_TO_BUILD = {**SVD_WORKFLOWS, **WAN_WORKFLOWS}


def is_wan_workflow(path_or_name) -> bool:
    return Path(path_or_name).name in WAN_WORKFLOWS

def node_definitions() -> dict:
    """What /object_info would serve, from an in-process ComfyUI with the pack loaded."""
    from testkit.comfy_env import load_comfyui, load_pack

    comfy = load_comfyui(dirs=tempfile.mkdtemp(prefix="reenact-workflows-"))
    load_pack(comfy)
    out = {}
    for name, cls in comfy.nodes.NODE_CLASS_MAPPINGS.items():
        if hasattr(cls, "INPUT_TYPES") and hasattr(cls, "RETURN_TYPES"):
            out[name] = {
                "input": cls.INPUT_TYPES(),
                "output": list(cls.RETURN_TYPES),
                "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)),
            }
    return out


def build_workflow(definitions: dict, file_name: str) -> dict:
    """The UI-format workflow that workflows/<file_name> should hold."""
    graph = Graph(definitions)
    WORKFLOWS_TO_BUILD[file_name](graph)
    return graph.to_json()


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wan", action="store_true", help=f"the Wan workflows (COMFYUI_ROOT: the 2025-12 ComfyUI, v{WAN_COMFYUI_VERSION})")
    args = parser.parse_args()
    definitions = node_definitions()
    WORKFLOWS.mkdir(exist_ok=True)
    for file_name in WAN_WORKFLOWS if args.wan else SVD_WORKFLOWS:
        (WORKFLOWS / file_name).write_text(json.dumps(build_workflow(definitions, file_name), indent=2) + "\n")
        print(f"wrote {WORKFLOWS / file_name}")


if __name__ == "__main__":
    main()
