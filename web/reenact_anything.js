// Reenact Anything: the pack's own additions to ComfyUI's frontend.
//
// 1. An upload button for Load Motion Reference's video list. ComfyUI's built-in upload widget accepts
//    images only in older frontends, so the pack adds its own button.
// 2. The text a node returns as `ui.text` (Save Motion Embedding: the saved file's name; Motion Textual
//    Inversion: its report; Load Motion Reference, Load Motion Embedding, Apply Motion Embedding: their
//    info), drawn on the node after it runs. The stock frontends do not draw `ui.text`.
//
// Both are widgets added after the node's own widgets and kept out of the saved widget values and of the
// prompt (serialize: false, options.serialize: false), so saved workflows keep their widget order in
// every frontend (the legacy one stores a value for every widget; being last, it comes after the real
// ones). The text widget has a fixed height, part of the node's size from the start: a run changes what
// it shows, never the node's size. Works with the legacy frontend of 2024-03 ComfyUI and the
// comfyui-frontend-package ones (canvas-drawn widget with draw/computeSize, which both support).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const VIDEO_TYPES = "video/*,image/gif,image/webp,image/png,.mkv,.mov,.webm,.mp4";

// Lines of text each node shows (tools/make_workflows.py sizes the shipped workflows' nodes for them:
// keep TEXT_LINES there equal). Longer text is cut with an ellipsis; the whole text is the node's STRING
// output where it has one.
const TEXT_LINES = {
  SaveMotionEmbedding: 2,
  LoadMotionEmbedding: 3,
  LoadMotionReference: 3,
  ApplyMotionEmbedding: 5,
  MotionTextualInversion: 2,
};
// What a node shows of its text: Motion Textual Inversion its report's verdict on the loss curve first
// (the whole report is its `report` output).
const SHOWN = {
  MotionTextualInversion: (text) => {
    const lines = text.split("\n");
    return [...lines.filter((l) => l.startsWith("Verdict")), ...lines.filter((l) => !l.startsWith("Verdict"))].join("\n");
  },
};
const PLACEHOLDER = {
  SaveMotionEmbedding: "The saved file's name shows here after a run.",
  LoadMotionEmbedding: "What the file holds shows here after a run.",
  LoadMotionReference: "What was read from the clip shows here after a run.",
  ApplyMotionEmbedding: "The motion's timing shows here after a run.",
  MotionTextualInversion: "The loss curve's verdict shows here after a run (the report output has the whole report).",
};
const TEXT_WIDGET = "reenact_output_text";
const LINE_HEIGHT = 15;
const PADDING = 6;
const MARGIN = 15;

async function uploadFile(file) {
  const body = new FormData();
  body.append("image", file, file.name); // ComfyUI's /upload/image stores any file in input/
  const resp = await api.fetchApi("/upload/image", { method: "POST", body });
  if (resp.status !== 200) {
    throw new Error(`${resp.status} ${resp.statusText}`);
  }
  const data = await resp.json();
  return data.subfolder ? `${data.subfolder}/${data.name}` : data.name;
}

function addUploadButton(node) {
  const videoWidget = node.widgets?.find((w) => w.name === "video");
  if (!videoWidget) {
    return;
  }
  const chooser = document.createElement("input");
  chooser.type = "file";
  chooser.accept = VIDEO_TYPES;
  chooser.style.display = "none";
  chooser.onchange = async () => {
    const file = chooser.files?.[0];
    chooser.value = "";
    if (!file) {
      return;
    }
    try {
      const name = await uploadFile(file);
      const values = videoWidget.options.values;
      if (Array.isArray(values) && !values.includes(name)) {
        values.unshift(name);
      }
      videoWidget.value = name;
      videoWidget.callback?.(name);
    } catch (err) {
      alert(`Upload of ${file.name} failed: ${err.message}`);
    }
  };
  document.body.append(chooser);
  const button = node.addWidget("button", "upload video", null, () => chooser.click());
  button.serialize = false;
  button.options = { ...(button.options || {}), serialize: false };
  const onRemoved = node.onRemoved;
  node.onRemoved = function () {
    chooser.remove();
    return onRemoved?.apply(this, arguments);
  };
}

// Greedy word wrap of `text` (its own line breaks kept) to `width` pixels; at most `max` lines, the
// last one ending in an ellipsis when text was left out.
function wrap(ctx, text, width, max) {
  const lines = [];
  for (const paragraph of String(text).split("\n")) {
    let line = "";
    for (const word of paragraph.split(/\s+/).filter(Boolean)) {
      const candidate = line ? `${line} ${word}` : word;
      if (ctx.measureText(candidate).width <= width || !line) {
        line = candidate;
      } else {
        lines.push(line);
        line = word;
      }
    }
    lines.push(line);
  }
  if (lines.length > max) {
    lines.length = max;
    lines[max - 1] += " …";
  }
  return lines.map((line) => {
    while (line.length > 1 && ctx.measureText(line).width > width) {
      line = `${line.slice(0, -2)}…`;
    }
    return line;
  });
}

function textWidget(node, lines, placeholder) {
  const height = lines * LINE_HEIGHT + 2 * PADDING;
  const widget = {
    type: "reenact_text",
    name: TEXT_WIDGET,
    value: "",
    text: "",
    serialize: false,
    options: { serialize: false },
    computeSize(width) {
      return [width ?? node.size[0], height];
    },
    draw(ctx, _node, width, y) {
      const w = width - 2 * MARGIN;
      ctx.save();
      ctx.fillStyle = LiteGraph.WIDGET_BGCOLOR ?? "#222";
      ctx.strokeStyle = LiteGraph.WIDGET_OUTLINE_COLOR ?? "#666";
      ctx.beginPath();
      if (ctx.roundRect) {
        ctx.roundRect(MARGIN, y, w, height, 6);
      } else {
        ctx.rect(MARGIN, y, w, height);
      }
      ctx.fill();
      ctx.stroke();
      const lowQuality = app.canvas?.low_quality ?? (app.canvas?.ds?.scale ?? 1) < 0.6;
      if (!lowQuality) {
        ctx.font = "12px Arial, sans-serif";
        ctx.textAlign = "left";
        ctx.textBaseline = "top";
        ctx.fillStyle = this.text ? (LiteGraph.WIDGET_TEXT_COLOR ?? "#ddd") : (LiteGraph.WIDGET_SECONDARY_TEXT_COLOR ?? "#999");
        const shown = wrap(ctx, this.text || placeholder, w - 2 * PADDING, lines);
        shown.forEach((line, i) => ctx.fillText(line, MARGIN + PADDING, y + PADDING + i * LINE_HEIGHT + 1));
      }
      ctx.restore();
    },
  };
  node.addCustomWidget(widget);
  return widget;
}

app.registerExtension({
  name: "ReenactAnything.MotionReferenceUpload",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const name = nodeData?.name;
    if (name !== "LoadMotionReference" && !(name in TEXT_LINES)) {
      return;
    }
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      if (name === "LoadMotionReference") {
        addUploadButton(this);
      }
      if (name in TEXT_LINES) {
        textWidget(this, TEXT_LINES[name], PLACEHOLDER[name]);
        // A node made from the menu gets room for the text; a loaded one keeps its saved size.
        const min = this.computeSize?.();
        if (min && this.size && this.size[1] < min[1]) {
          this.setSize?.([Math.max(this.size[0], min[0]), min[1]]);
        }
      }
      return result;
    };
    if (!(name in TEXT_LINES)) {
      return;
    }
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const result = onExecuted?.apply(this, arguments);
      const text = message?.text;
      const widget = this.widgets?.find((w) => w.name === TEXT_WIDGET);
      if (widget && text != null) {
        const joined = Array.isArray(text) ? text.join("\n") : String(text);
        widget.text = SHOWN[name] ? SHOWN[name](joined) : joined;
        this.setDirtyCanvas?.(true, true);
      }
      return result;
    };
  },
});
