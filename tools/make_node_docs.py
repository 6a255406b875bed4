"""Regenerate the node help pages (web/docs/<NodeId>.md, shown in ComfyUI's node help panel) and the
node table in README.md (one row per node, linking its help page) from the nodes' own definitions
(DESCRIPTION, tooltips, defaults).

    COMFYUI_ROOT=... python -m tools.make_node_docs

tests/test_docs.py fails when these files are out of date.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "web" / "docs"
README = REPO / "README.md"
START, END = "<!-- node-table:start -->", "<!-- node-table:end -->"

# What the tooltips cannot say: how the node fits in a graph.
USAGE = {
    "LoadMotionReference": "Connect `motion_reference` to **Motion Textual Inversion**. The `frames` output lets you preview what was loaded.",
    "MotionTextualInversion": "Wire MODEL, VAE and CLIP_VISION from **Image Only Checkpoint Loader (img2vid model)** with `svd.safetensors` "
    "(or `svd_xt.safetensors` with `video_frames` = 25). Preview `loss_curve`; it should fall and flatten. Save the result with "
    "**Save Motion Embedding** or feed it straight into **Apply Motion Embedding**. Cancelling (the queue's X) stops it at the next step.",
    "MotionInversionOptions": "Optional: connect to `options` of **Motion Textual Inversion**. Without it the defaults shown here apply.",
    "SaveMotionEmbedding": "Files land in `output/motion_embeddings/` and appear in **Load Motion Embedding** right away.",
    "LoadMotionEmbedding": "Lists `models/motion_embeddings/`, `output/motion_embeddings/` and the pack's bundled example.",
    "ApplyMotionEmbedding": "SVD: between **SVD_img2vid_Conditioning** and **KSampler** (through **VideoLinearCFGGuidance** for the model): "
    "positive, negative and latent come from SVD_img2vid_Conditioning; its positive/negative outputs go to the sampler; the model "
    "input can stay unconnected. Wan 2.1/2.2: connect the Wan model (**Load Diffusion Model**) to `model` and its `model` output to "
    "the sampler (after any LoRA loaders); positive, negative and latent come from **WanImageToVideo** (TI2V-5B: your text encoder "
    "and **Wan22ImageToVideoLatent**) and pass through to the sampler. The embedding must have been learned on the same family.",
    "MixMotionEmbeddings": "Blend two learned motions before **Apply Motion Embedding**; both must use the same tokens per frame.",
    "MotionWorldLoader": "Use it in place of **Image Only Checkpoint Loader** to try the whole pipeline on CPU in seconds: "
    "8 frames at 64x64 in SVD_img2vid_Conditioning and Motion Textual Inversion.",
}


# Combos whose values are the files on the user's disk (they differ from machine to machine).
FILE_LISTS = {("LoadMotionReference", "video"), ("LoadMotionEmbedding", "embedding_name"), ("MotionWorldLoader", "model_name")}


def _type_name(kind) -> str:
    return "choice" if isinstance(kind, list) else str(kind)


def _default(kind, options, file_list: bool) -> str:
    if file_list:
        return "a file"
    if isinstance(kind, list):
        return f"{options.get('default', kind[0])} (or {', '.join(str(v) for v in kind if v != options.get('default', kind[0]))})"
    if "default" in options:
        return repr(options["default"]) if isinstance(options["default"], str) else str(options["default"])
    return ""


def _inputs(node_id: str, cls) -> list[tuple[str, str, str, str, bool]]:
    rows = []
    spec = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, definition in spec.get(section, {}).items():
            options = definition[1] if len(definition) > 1 else {}
            default = _default(definition[0], options, (node_id, name) in FILE_LISTS)
            rows.append((name, _type_name(definition[0]), default, options.get("tooltip", ""), section == "optional"))
    return rows


def node_page(node_id: str, cls, display_name: str) -> str:
    lines = [f"# {display_name}", "", cls.DESCRIPTION, "", "## Inputs", "", "| Input | Type | Default | What it does |", "| --- | --- | --- | --- |"]
    for name, kind, default, tooltip, optional in _inputs(node_id, cls):
        lines.append(f"| `{name}`{' (optional)' if optional else ''} | {kind} | {default} | {tooltip} |")
    outputs = list(zip(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES), cls.RETURN_TYPES, strict=True))
    lines += ["", "## Outputs", ""]
    lines += [f"- `{name}` ({kind})" for name, kind in outputs] or ["- none (an output node)"]
    if node_id in USAGE:
        lines += ["", "## In a graph", "", USAGE[node_id]]
    return "\n".join(lines) + "\n"


def first_sentence(text: str) -> str:
    """The description's first sentence (up to a full stop followed by a capital letter)."""
    match = re.search(r"(?<=[.!?])\s+(?=[A-Z])", text)
    return text[: match.start()] if match else text


def readme_table(mappings: dict, display: dict) -> str:
    """One row per node; the inputs are on each node's help page (web/docs/<NodeId>.md), which the table links."""
    lines = [START, "", "| Node | ID (help page) | What it does |", "| --- | --- | --- |"]
    for node_id, cls in mappings.items():
        lines.append(f"| **{display[node_id]}** | [`{node_id}`](web/docs/{node_id}.md) | {first_sentence(cls.DESCRIPTION)} |")
    return "\n".join(lines + ["", END])


def expected_files(mappings: dict, display: dict, readme_text: str) -> dict[Path, str]:
    files = {DOCS / f"{node_id}.md": node_page(node_id, cls, display[node_id]) for node_id, cls in mappings.items()}
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if not pattern.search(readme_text):
        raise RuntimeError(f"README.md has no {START} ... {END} section")
    files[README] = pattern.sub(lambda _: readme_table(mappings, display), readme_text)
    return files


def main() -> None:
    import tempfile

    from testkit.comfy_env import load_comfyui, load_pack

    pack = load_pack(load_comfyui(dirs=tempfile.mkdtemp(prefix="reenact-docs-")))
    DOCS.mkdir(parents=True, exist_ok=True)
    for path, text in expected_files(pack.NODE_CLASS_MAPPINGS, pack.NODE_DISPLAY_NAME_MAPPINGS, README.read_text()).items():
        path.write_text(text)
        print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
