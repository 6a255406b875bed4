"""Regenerate the example workflows in workflows/ (ComfyUI UI format, version 0.4).

    COMFYUI_ROOT=... python -m tools.make_workflows

Node sockets and widget order come from the node definitions of a real ComfyUI (with this pack
loaded), and widget values follow the frontend's serialisation rules (a control_after_generate value
after seed widgets, an upload value after image-upload combos), so the files load in the UI exactly
like a workflow saved from it. Run it against the 2024-03 ComfyUI (the default COMFYUI_ROOT, the oldest
supported): later ComfyUIs changed some stock nodes' widgets, and later frontends migrate the old lists.
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
NODE_WIDTH = 330

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
        height = 46 + 24 * (len(values) + max(len(inputs), len(outputs)))
        node = {
            "id": node_id,
            "type": class_type,
            "pos": [pos[0], pos[1]],
            "size": [NODE_WIDTH, height],
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

    def note(self, text: str, pos: tuple[float, float], size: tuple[float, float] = (420, 220), title: str = "Note") -> dict:
        node_id = len(self.nodes) + 1
        node = {
            "id": node_id, "type": "Note", "pos": list(pos), "size": list(size), "flags": {}, "order": node_id - 1, "mode": 0,
            "inputs": [], "outputs": [], "title": title, "properties": {"text": ""}, "widgets_values": [text],
            "color": "#432", "bgcolor": "#653",
        }
        self.nodes.append(node)
        return node

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
            "groups": [],
            "config": {},
            "extra": {"ds": {"scale": 0.75, "offset": [40, 40]}},
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


# -- the pieces every workflow shares --------------------------------------------------------------


def checkpoint(g: Graph, pos, name=SVD):
    return g.add("ImageOnlyCheckpointLoader", pos, ckpt_name=name)


def inversion(g: Graph, ckpt: dict, x: float, y: float, video_frames: int = 14, reference_file: str = REFERENCE, **settings) -> tuple[dict, dict]:
    reference = g.add("LoadMotionReference", (x, y), video=reference_file)
    widgets = dict(
        steps=InversionConfig.steps, learning_rate=InversionConfig.learning_rate, tokens_per_frame=5, video_frames=video_frames, width=512, height=288, seed=0, fps=0,
        motion_bucket_id=127, augmentation_level=0.0, precision="auto", gradient_checkpointing=True,
    )
    invert = g.add("MotionTextualInversion", (x + 370, y), **dict(widgets, **settings))
    g.connect(ckpt, "MODEL", invert, "model")
    g.connect(ckpt, "VAE", invert, "vae")
    g.connect(ckpt, "CLIP_VISION", invert, "clip_vision")
    g.connect(reference, "motion_reference", invert, "motion_reference")
    return reference, invert


def generation(
    g: Graph, ckpt: dict, motion: tuple[dict, str], target: str, x: float, y: float, frames=14, prefix="reenact/result", seed=0, size=(1024, 576),
    cfg=2.5,
) -> dict:
    image = g.add("LoadImage", (x, y), image=target)
    cond = g.add(
        "SVD_img2vid_Conditioning", (x + 370, y), width=size[0], height=size[1], video_frames=frames, motion_bucket_id=127, fps=6, augmentation_level=0.0
    )
    apply = g.add("ApplyMotionEmbedding", (x + 740, y), strength=1.0)
    guidance = g.add("VideoLinearCFGGuidance", (x + 740, y + 260), min_cfg=1.0)
    sampler = g.add("KSampler", (x + 1110, y), seed=seed, steps=20, cfg=cfg, sampler_name="euler", scheduler="karras", denoise=1.0)
    decode = g.add("VAEDecode", (x + 1480, y))
    save = g.add("SaveAnimatedWEBP", (x + 1480, y + 120), filename_prefix=prefix, fps=6.0, lossless=False, quality=85, method="default")
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
    return save


INVERT_NOTE = """Learn a motion (motion-textual inversion)

SVD stays frozen; only the motion tokens are optimised on your reference clip.

Knobs that matter:
- steps / learning_rate: 1000 steps at 0.3 (decayed to zero) reach the loss of the published 5000-step recipe. Fewer steps: a rougher fit. If the loss curve jumps about, lower the learning rate to 0.1.
- width x height: the optimisation resolution. 512x288 is ~4x faster than 1024x576 and the embedding applies at any size, somewhat less faithfully: invert at the generation size when it fits.
- fps 0 (auto) tells SVD the frame rate the learned frames really have; frame_sampling picks the whole clip spread over video_frames, or its first frames at the filmed rate. The report output says what was learned.
- tokens_per_frame: more tokens capture finer motion (5 is the paper's default).

The loss curve should fall and flatten. Saved files go to output/motion_embeddings/ and appear in Load Motion Embedding."""

APPLY_NOTE = """Apply a motion to any image

The target image gives the look (SVD's image latent); the motion embedding replaces SVD's image embedding, frame by frame.

Knobs that matter:
- strength: 0 = plain SVD, 1 = the learned motion, above 1 exaggerates it.
- fps: the info output says at which frame rate the motion was learned and how fast it plays over this many frames; keep_speed sets SVD's fps for that speed. motion_bucket_id: keep what the motion was learned with (127).
- video_frames: any count; the motion is resampled in time.

The bundled example embedding was made on a random-weight test model: it only proves the graph runs. Pick one you learned with the invert workflow."""


def workflow_invert(g: Graph) -> None:
    ckpt = checkpoint(g, (0, 0))
    _, invert = inversion(g, ckpt, 0, 180)
    save = g.add("SaveMotionEmbedding", (800, 0), filename_prefix="motion")
    preview = g.add("PreviewImage", (800, 160), title="Loss curve")
    g.connect(invert, "motion_embedding", save, "motion_embedding")
    g.connect(invert, "loss_curve", preview, "images")
    g.note(INVERT_NOTE, (0, 700), (720, 330))


def workflow_apply(g: Graph) -> None:
    ckpt = checkpoint(g, (0, 0))
    motion = g.add("LoadMotionEmbedding", (0, 180), embedding_name=EXAMPLE_EMBEDDING)
    generation(g, ckpt, (motion, "motion_embedding"), TARGETS[0], 0, 320)
    g.note(APPLY_NOTE, (0, 760), (720, 330))


def workflow_invert_and_apply(g: Graph) -> None:
    ckpt = checkpoint(g, (0, 0))
    _, invert = inversion(g, ckpt, 0, 180)
    save = g.add("SaveMotionEmbedding", (800, 0), filename_prefix="motion")
    preview = g.add("PreviewImage", (800, 160), title="Loss curve")
    g.connect(invert, "motion_embedding", save, "motion_embedding")
    g.connect(invert, "loss_curve", preview, "images")
    generation(g, ckpt, (invert, "motion_embedding"), TARGETS[0], 0, 700, prefix="reenact/target_1", seed=0)
    generation(g, ckpt, (invert, "motion_embedding"), TARGETS[1], 0, 1160, prefix="reenact/target_2", seed=1)
    g.note(INVERT_NOTE, (1200, 0), (720, 330), title="Invert")
    g.note(APPLY_NOTE, (1960, 0), (720, 330), title="Apply")


def workflow_svd_xt(g: Graph) -> None:
    ckpt = checkpoint(g, (0, 0), SVD_XT)
    motion = g.add("LoadMotionEmbedding", (0, 180), embedding_name=EXAMPLE_EMBEDDING)
    generation(g, ckpt, (motion, "motion_embedding"), TARGETS[1], 0, 320, frames=25, prefix="reenact/svd_xt")
    g.note(
        "SVD-XT (25 frames) with a motion learned at 14 frames\n\nApply Motion Embedding resamples the per-frame tokens in time to the "
        "latent's 25 frames (linear interpolation, first and last frames kept), so a 14-frame motion covers the same path, more finely. "
        "Learn at 25 frames directly with Motion Textual Inversion's video_frames = 25 and svd_xt.safetensors.\n\n" + APPLY_NOTE,
        (0, 760), (720, 400),
    )


MOTION_WORLD_NOTE = """Motion World: the whole method on CPU in a minute

Load Motion World is a small SVD-interface model trained on synthetic sprite motion (8 frames, 64x64). It stands in for svd.safetensors: every other node is the same as with real SVD.

The reference shows a sprite moving along an L-path, a motion the model never saw in training. Motion Textual Inversion learns it; Apply Motion Embedding replays it on a different sprite, colour and background.

Inversion runs at learning rate 0.01, kept constant after warm-up (schedule = constant in Motion Inversion Options): on this small model that transfers the motion better than the node's default (0.3, decayed to zero), which fits the reference more closely but overfits it. For real SVD, start from the defaults.

The sampler runs at cfg 1.0: on this small model guidance saturates colours. With real SVD, use cfg 2.5.

Swap Load Motion World for Image Only Checkpoint Loader + svd.safetensors (and sizes for SVD) to do the same with real SVD."""


def workflow_motion_world(g: Graph) -> None:
    loader = g.add("MotionWorldLoader", (0, 0), model_name="motion_world.safetensors")
    _, invert = inversion(
        g, loader, 0, 180, video_frames=8, reference_file="reenact_motion_world_reference.mp4", steps=MOTION_WORLD_STEPS,
        learning_rate=MOTION_WORLD_LR, width=64, height=64, gradient_checkpointing=False, fps=MOTION_WORLD_FPS,
    )
    options = g.add("MotionInversionOptions", (0, 480), **MOTION_WORLD_OPTIONS)
    g.connect(options, "options", invert, "options")
    save = g.add("SaveMotionEmbedding", (800, 0), filename_prefix="motion_world/l_path")
    preview = g.add("PreviewImage", (800, 160), title="Loss curve")
    g.connect(invert, "motion_embedding", save, "motion_embedding")
    g.connect(invert, "loss_curve", preview, "images")
    generation(g, loader, (invert, "motion_embedding"), "reenact_motion_world_target.png", 0, 1000, frames=8, prefix="reenact/motion_world",
               size=(64, 64), cfg=MOTION_WORLD_CFG)
    g.note(MOTION_WORLD_NOTE, (1200, 0), (720, 400), title="Motion World")


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


WORKFLOWS_TO_BUILD = {
    "reenact_1_invert_motion.json": workflow_invert,
    "reenact_2_apply_motion.json": workflow_apply,
    "reenact_3_invert_and_apply_two_targets.json": workflow_invert_and_apply,
    "reenact_4_svd_xt_from_14_frame_motion.json": workflow_svd_xt,
    "reenact_5_motion_world_demo.json": workflow_motion_world,
}


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
    definitions = node_definitions()
    WORKFLOWS.mkdir(exist_ok=True)
    for file_name in WORKFLOWS_TO_BUILD:
        (WORKFLOWS / file_name).write_text(json.dumps(build_workflow(definitions, file_name), indent=2) + "\n")
        print(f"wrote {WORKFLOWS / file_name}")


if __name__ == "__main__":
    main()
