"""Turn a UI-format workflow (what the frontend saves: nodes, links, widgets_values; version 0.4) into
ComfyUI's API prompt format (what POST /prompt takes), checked against a server's /object_info.

The frontend does this conversion itself (graphToPrompt); tests that drive the server over HTTP need
it without a browser. Everything that the frontend would only notice when the file is loaded, and
ComfyUI only when it runs, fails here loudly with a :class:`WorkflowError` that names the node id,
type and input: an unknown node type, a widget value that is not in its list or outside its range,
too few or too many widget values, a required input left unconnected, a link that points nowhere or
connects different types.

Rules, as in the frontend:

* widget values are stored in the order of the node's required then optional inputs that are widgets
  (INT, FLOAT, STRING, BOOLEAN, COMBO / a list of choices, not ``forceInput``);
* a seed-like INT (``seed`` / ``noise_seed``, or any input with ``control_after_generate``) is followed
  by the frontend's control value ("fixed", "randomize", ...); an ``image_upload`` combo by the upload
  widget's value ("image"); both are skipped;
* a widget input converted to a socket keeps its stored value; if the socket is linked, the link wins
  (a PrimitiveNode's value is already copied into the target's widget value);
* Note / MarkdownNote (frontend-only) are dropped, Reroutes are followed to the real source; muted
  nodes (mode 2) are dropped and what they fed is unconnected; bypassed nodes (mode 4) pass each
  output through from their input of the same type, or leave it unconnected.

Nothing here imports ComfyUI: the node definitions come from /object_info.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
FRONTEND_ONLY = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute"}
SEED_NAMES = {"seed", "noise_seed"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
MODE_ALWAYS, MODE_NEVER, MODE_BYPASS = 0, 2, 4

# Buttons a node pack's JavaScript appends after the real widgets. LiteGraph before the 2024-08 frontend
# serialises every widget, buttons included (value null), ignoring the pack's `serialize = false`;
# newer frontends honour it and store nothing. web/reenact_anything.js adds exactly one such button,
# last, to Load Motion Reference: a single trailing null there is tolerated, nothing else.
TRAILING_BUTTONS = {"LoadMotionReference": 1}


class WorkflowError(ValueError):
    """The workflow file is broken (or does not match the server's node definitions)."""


def _where(node: Mapping, input_name: str | None = None) -> str:
    text = f"node {node.get('id')} ({node.get('type')}"
    if node.get("title"):
        text += f" {node['title']!r}"
    text += ")"
    if input_name is not None:
        text += f", input {input_name!r}"
    return text


# -- node definitions (both /object_info dialects: 2024-03 and 2026) -----------------------------------


def _input_specs(definition: Mapping) -> list[tuple[str, object, dict, bool]]:
    """(name, type, options, required) for each required/optional input, in the order of the
    definition (new servers also send input_order; JSON object order is the same)."""
    spec = definition.get("input", {})
    order = definition.get("input_order") or {}
    out = []
    for section in ("required", "optional"):
        inputs = spec.get(section) or {}
        names = list(order.get(section) or inputs.keys())
        for name in names:
            entry = inputs[name]
            kind = entry[0] if isinstance(entry, (list, tuple)) else entry
            options = entry[1] if isinstance(entry, (list, tuple)) and len(entry) > 1 and isinstance(entry[1], dict) else {}
            out.append((name, kind, options, section == "required"))
    return out


def _combo_choices(kind, options: Mapping) -> list | None:
    if isinstance(kind, list):
        return kind
    if kind == "COMBO":
        return list(options.get("options") or [])
    return None


def _is_widget(kind, options: Mapping) -> bool:
    if options.get("forceInput"):
        return False
    return _combo_choices(kind, options) is not None or kind in WIDGET_TYPES


def _has_control(name: str, kind, options: Mapping) -> bool:
    return bool(options.get("control_after_generate")) or (kind == "INT" and name in SEED_NAMES)


def _type_name(kind) -> str:
    return "COMBO" if isinstance(kind, list) else str(kind)


def _types_match(output_type, input_type) -> bool:
    out_name, in_name = _type_name(output_type), _type_name(input_type)
    if "*" in (out_name, in_name):
        return True
    return bool(set(out_name.split(",")) & set(in_name.split(",")))


# -- values ---------------------------------------------------------------------------------------------


def check_widget_value(node: Mapping, name: str, kind, options: Mapping, value) -> None:
    """Raise WorkflowError unless ``value`` is valid for this widget (type, list, min/max)."""
    where = _where(node, name)
    choices = _combo_choices(kind, options)
    if choices is not None:
        if value not in choices:
            shown = choices if len(choices) <= 12 else choices[:12] + ["..."]
            raise WorkflowError(f"{where}: {value!r} is not one of the choices {shown}")
        return
    if kind == "BOOLEAN":
        if not isinstance(value, bool):
            raise WorkflowError(f"{where}: expected true/false, got {value!r}")
        return
    if kind == "STRING":
        if not isinstance(value, str):
            raise WorkflowError(f"{where}: expected a string, got {value!r}")
        return
    if kind in ("INT", "FLOAT"):
        numeric = (int,) if kind == "INT" else (int, float)
        if isinstance(value, bool) or not isinstance(value, numeric):
            raise WorkflowError(f"{where}: expected {'an integer' if kind == 'INT' else 'a number'}, got {value!r}")
        if not math.isfinite(value):
            raise WorkflowError(f"{where}: {value!r} is not a finite number")
        low, high = options.get("min"), options.get("max")
        if low is not None and value < low:
            raise WorkflowError(f"{where}: {value!r} is below the minimum {low}")
        if high is not None and value > high:
            raise WorkflowError(f"{where}: {value!r} is above the maximum {high}")


# -- the conversion ------------------------------------------------------------------------------------


def _links_by_id(workflow: Mapping) -> dict[int, tuple[int, int, int, int, object]]:
    links = {}
    for link in workflow.get("links") or []:
        if isinstance(link, Mapping):  # schema version 1 stores objects
            entry = (link["id"], link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"], link.get("type"))
        else:
            if len(link) < 6:
                raise WorkflowError(f"link {link!r}: expected [id, origin_id, origin_slot, target_id, target_slot, type]")
            entry = tuple(link[:6])
        if entry[0] in links:
            raise WorkflowError(f"link {entry[0]} is defined twice")
        links[entry[0]] = entry[1:]
    return links


def ui_to_api(workflow: Mapping, object_info: Mapping) -> dict:
    """The API prompt ({node id: {class_type, inputs, _meta}}) for a UI-format workflow.

    Raises WorkflowError for anything the server would reject or the frontend would load wrongly.
    """
    if not isinstance(workflow, Mapping) or "nodes" not in workflow:
        raise WorkflowError("not a UI-format workflow (no 'nodes'); an API prompt needs no conversion")
    if (workflow.get("definitions") or {}).get("subgraphs"):
        raise WorkflowError("workflows with subgraphs are not supported by this converter")
    nodes: dict[int, Mapping] = {}
    for node in workflow["nodes"]:
        if node.get("id") in nodes:
            raise WorkflowError(f"node id {node.get('id')} is used twice")
        nodes[node["id"]] = node
    links = _links_by_id(workflow)

    # Links must join existing nodes, slot for slot, as both ends record them.
    for link_id, (origin_id, origin_slot, target_id, target_slot, _) in links.items():
        if origin_id not in nodes or target_id not in nodes:
            missing = origin_id if origin_id not in nodes else target_id
            raise WorkflowError(f"link {link_id}: node {missing} does not exist (dangling link)")
        target_inputs = nodes[target_id].get("inputs") or []
        if not (0 <= target_slot < len(target_inputs)) or target_inputs[target_slot].get("link") != link_id:
            raise WorkflowError(f"link {link_id}: {_where(nodes[target_id])} has no input slot {target_slot} holding this link")
        origin_outputs = nodes[origin_id].get("outputs") or []
        if not (0 <= origin_slot < len(origin_outputs)) or link_id not in (origin_outputs[origin_slot].get("links") or []):
            raise WorkflowError(f"link {link_id}: {_where(nodes[origin_id])} has no output slot {origin_slot} holding this link")

    for node in nodes.values():
        if node.get("type") not in FRONTEND_ONLY and node.get("type") not in object_info:
            raise WorkflowError(f"{_where(node)}: unknown node type {node.get('type')!r} (not in the server's /object_info)")
        if node.get("mode", MODE_ALWAYS) not in (MODE_ALWAYS, MODE_NEVER, MODE_BYPASS):
            raise WorkflowError(f"{_where(node)}: unsupported mode {node.get('mode')!r}")
        for slot in node.get("inputs") or []:
            link_id = slot.get("link")
            if link_id is not None and link_id not in links:
                raise WorkflowError(f"{_where(node, slot.get('name'))}: link {link_id} does not exist (dangling link)")

    def source(link_id: int, seen: frozenset = frozenset()) -> tuple[Mapping, int] | None:
        """The real (node, output slot) behind a link: through Reroutes and bypassed nodes; None when it
        comes from a muted node, a bypassed node without a matching input, or an unlinked Reroute."""
        if link_id in seen:
            raise WorkflowError(f"link {link_id}: a cycle through Reroute/bypassed nodes")
        seen = seen | {link_id}
        origin_id, origin_slot = links[link_id][0], links[link_id][1]
        origin = nodes[origin_id]
        mode = origin.get("mode", MODE_ALWAYS)
        if mode == MODE_NEVER:
            return None
        if origin["type"] == "Reroute":
            upstream = (origin.get("inputs") or [{}])[0].get("link")
            return None if upstream is None else source(upstream, seen)
        if mode == MODE_BYPASS:
            out_type = _output_type(origin, origin_slot)
            inputs = origin.get("inputs") or []
            candidates = ([inputs[origin_slot]] if origin_slot < len(inputs) else []) + list(inputs)
            for slot in candidates:
                if slot.get("link") is not None and _types_match(slot.get("type"), out_type):
                    return source(slot["link"], seen)
            return None
        return origin, origin_slot

    def _output_type(node: Mapping, slot: int):
        if node["type"] in object_info:
            outputs = object_info[node["type"]].get("output") or []
            if not 0 <= slot < len(outputs):
                raise WorkflowError(f"{_where(node)}: has no output slot {slot} (it has {len(outputs)})")
            return outputs[slot]
        return ((node.get("outputs") or [{}])[slot] or {}).get("type", "*")

    prompt: dict[str, dict] = {}
    for node in sorted(nodes.values(), key=lambda n: n.get("order", 0)):
        if node["type"] in FRONTEND_ONLY or node.get("mode", MODE_ALWAYS) != MODE_ALWAYS:
            continue
        definition = object_info[node["type"]]
        specs = _input_specs(definition)
        slots = {slot.get("name"): slot for slot in node.get("inputs") or []}
        known = {name for name, *_ in specs}
        for name in slots:
            if name not in known:
                raise WorkflowError(f"{_where(node, name)}: the server's {node['type']} has no such input")
        values = list(node.get("widgets_values") or [])
        if isinstance(node.get("widgets_values"), Mapping):
            raise WorkflowError(f"{_where(node)}: widgets_values is an object (a node pack's own format); not supported")
        inputs: dict[str, object] = {}
        position = 0
        for name, kind, options, required in specs:
            link_id = (slots.get(name) or {}).get("link")
            if _is_widget(kind, options):
                if position >= len(values) and not required and "default" in options:
                    inputs[name] = options["default"]  # saved before this optional input existed: the frontend does the same
                    continue
                if position >= len(values):
                    raise WorkflowError(
                        f"{_where(node, name)}: too few widget values ({len(values)}); the server's {node['type']} expects more "
                        "(the file was saved with another version of the node)"
                    )
                value = values[position]
                position += 1
                if _has_control(name, kind, options):
                    if position >= len(values) or values[position] not in CONTROL_VALUES:
                        got = values[position] if position < len(values) else "nothing"
                        raise WorkflowError(f"{_where(node, name)}: expected a control_after_generate value after it, got {got!r}")
                    position += 1
                if options.get("image_upload"):
                    if position >= len(values) or not isinstance(values[position], str):
                        got = values[position] if position < len(values) else "nothing"
                        raise WorkflowError(f"{_where(node, name)}: expected the upload widget's value after it, got {got!r}")
                    position += 1
                origin = source(link_id) if link_id is not None else None
                if origin is not None and origin[0]["type"] != "PrimitiveNode":
                    _check_link_type(node, name, kind, origin, _output_type)
                    inputs[name] = [str(origin[0]["id"]), origin[1]]
                else:
                    check_widget_value(node, name, kind, options, value)
                    inputs[name] = value
                continue
            origin = source(link_id) if link_id is not None else None
            if origin is None:
                if required:
                    why = "is not connected" if link_id is None else "is fed only through a muted/bypassed node"
                    raise WorkflowError(f"{_where(node, name)}: required {_type_name(kind)} input {why}")
                continue
            _check_link_type(node, name, kind, origin, _output_type)
            inputs[name] = [str(origin[0]["id"]), origin[1]]
        extra = values[position:]
        allowed = TRAILING_BUTTONS.get(node["type"], 0)
        if extra and not (len(extra) <= allowed and all(v is None for v in extra)):
            raise WorkflowError(
                f"{_where(node)}: too many widget values ({len(values)}, expected {position}); extra {extra!r} "
                "(the file was saved with another version of the node)"
            )
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs, "_meta": {"title": node.get("title") or node["type"]}}

    if not any(object_info[p["class_type"]].get("output_node") for p in prompt.values()):
        raise WorkflowError("the workflow has no output node (nothing would run)")
    return prompt


def _check_link_type(node: Mapping, name: str, kind, origin: tuple[Mapping, int], output_type: Callable) -> None:
    out_type = output_type(*origin)
    if not _types_match(out_type, kind):
        raise WorkflowError(
            f"{_where(node, name)}: linked to output {origin[1]} of {_where(origin[0])}, which gives {_type_name(out_type)}, "
            f"but the input takes {_type_name(kind)}"
        )


# -- scaling a prompt down (testkit.cpu_scale) --------------------------------------------------------------


def checkpoint_for(prompt: Mapping, node_id: str) -> str | None:
    """ckpt_name of the ImageOnlyCheckpointLoader upstream of a node (or the only one in the prompt)."""
    seen, todo = set(), [node_id]
    while todo:
        current = todo.pop()
        if current in seen or current not in prompt:
            continue
        seen.add(current)
        entry = prompt[current]
        if entry["class_type"] == "ImageOnlyCheckpointLoader":
            return entry["inputs"].get("ckpt_name")
        todo += [v[0] for v in entry["inputs"].values() if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)]
    loaders = {e["inputs"].get("ckpt_name") for e in prompt.values() if e["class_type"] == "ImageOnlyCheckpointLoader"}
    return loaders.pop() if len(loaders) == 1 else None


def apply_overrides(prompt: Mapping, overrides_for: Callable[[str, str | None], Mapping], object_info: Mapping | None = None) -> dict:
    """A copy of ``prompt`` with widget values replaced by ``overrides_for(class_type, ckpt_name)``
    (e.g. testkit.cpu_scale.overrides_for). An override for an input the node does not have, or one that
    is linked, is an error (stale overrides fail loudly); with ``object_info`` the new values are checked."""
    out = copy.deepcopy(dict(prompt))
    for node_id, entry in out.items():
        overrides = overrides_for(entry["class_type"], checkpoint_for(out, node_id))
        if not overrides:
            continue
        node = {"id": node_id, "type": entry["class_type"]}
        specs = (
            {name: (kind, options) for name, kind, options, _ in _input_specs(object_info[entry["class_type"]])} if object_info else None
        )
        for name, value in overrides.items():
            if name not in entry["inputs"]:
                raise WorkflowError(f"{_where(node, name)}: override for an input the node does not have")
            if isinstance(entry["inputs"][name], list):
                raise WorkflowError(f"{_where(node, name)}: override for a linked input")
            if specs is not None:
                check_widget_value(node, name, *specs[name], value)
            entry["inputs"][name] = value
    return out
