"""The shipped workflows in ComfyUI's own frontend, in a real (headless) browser.

A real ComfyUI server with the pack installed serves its frontend (the legacy one bundled in ComfyUI
2024-03, or the comfyui-frontend-package of current ComfyUI); Playwright drives Debian's Chromium
(`/usr/bin/chromium`, installed by ./dev.sh; Playwright never downloads a browser). For each
workflows/*.json the page loads the workflow with `app.loadGraphData`, every node type must be
registered and no error or missing-nodes dialog may show; the pack's upload button must upload a
video when clicked; the graph is scaled down for CPU by setting widget values in the page (the values
of testkit/cpu_scale.py), queued with `app.queuePrompt`, and must run to the end with its outputs on
disk. Uncaught page errors fail the test, and so do console errors not known to be harmless.

The layout on the canvas, in a 1600x1000 window (test_workflow_layout_on_the_canvas, and again after each
run): no node overlaps another or is smaller than its slots and widgets need, every node in a group is
inside it, and in the new frontends the view saved in the file and the frontend's own Fit View show every
node uncovered by the page's panels at a zoom where node text is drawn (the frontend hides it below
LiteGraph.Canvas.MinFontSizeForLOD / (NODE_TEXT_SIZE * sqrt(devicePixelRatio)) = 8 / 14 by default). After
a run, Save Motion Embedding shows the saved file's name on the node.

Screenshots of each loaded workflow (before queueing) go to $REENACT_BROWSER_ARTIFACTS (default
$REENACT_CACHE/browser)/<frontend>/: `<workflow>.png` is the graph alone (what
tools/make_thumbnails.py turns into workflows/<workflow>.jpg), `<workflow>.page.png` the whole page,
`<workflow>.console.json` everything the browser console said; the layout test adds `<workflow>.fit.png`
(the page at Fit View), `<workflow>.layout.json` (node and group rectangles) and `<workflow>.views.json`
(the zooms measured); the run test `<workflow>.after.page.png`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import comfyui_root, has_wan22, make_checkpoints_folder, wan_model_folders
from playwright import sync_api  # requirements-dev.txt; ./dev.sh installs it

from testkit.comfy_server import PACK_FOLDER_NAME, ComfyServer, execution_error
from testkit.cpu_scale import overrides_for
from tools import make_workflows
from tools.workflow_convert import ui_to_api

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
SVD_WORKFLOWS = [p for p in WORKFLOWS if not make_workflows.is_wan_workflow(p)]
WAN_WORKFLOWS = [p for p in WORKFLOWS if make_workflows.is_wan_workflow(p)]
CHROMIUM = os.environ.get("REENACT_CHROMIUM", "/usr/bin/chromium")
# Playwright adds --headless itself (headless=True); the rest keeps Chromium off the network and
# quiet. Every launch gets a fresh temporary profile.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
VIEWPORT = {"width": 1600, "height": 1000}  # the layout rules hold at this window size
SHOT_SCALE, SHOT_MARGIN = 0.75, 24  # graph screenshots (thumbnail material)
RUN_TIMEOUT = 420.0
UPLOAD_NAME = "reenact_browser_upload.mp4"

# User settings for the new frontend (it keeps them in the server's user folder; the legacy frontend
# has no first-run dialog). A fresh user otherwise gets the template browser as a first-run
# tutorial over the canvas, a release check against api.comfy.org and a minimap over the graph.
USER_SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Notification.ShowVersionUpdates": False,
    "Comfy.Minimap.Visible": False,
}

# Console errors that say nothing about the pack, each with why. Anything else logged as an error
# fails the test.
OPTIONAL_FILES = {
    # Both frontends probe for optional per-user files; a fresh user folder has none (404).
    "/user.css": "optional user file the frontend probes for",
    "/api/userdata/user.css": "optional user file the frontend probes for",
    "/userdata/comfy.templates.json": "optional user file the frontend probes for",
    "/api/userdata/comfy.templates.json": "optional user file the frontend probes for",
    # The browser asks for a favicon the legacy frontend does not have.
    "/favicon.ico": "the legacy frontend has no favicon",
}
FRONTEND_INTERNAL_ERRORS = (
    # Logged by the new frontend itself during start-up (a Vue computed value in its own bundle reads
    # app.rootGraph before the graph exists), also with no workflow loaded and the pack's extension
    # disabled.
    "ComfyApp graph accessed before initialization",
    # Frontend 1.32.9 (ComfyUI v0.3.75): its render-mode setting sync (useRenderModeSetting, run when the
    # graph view mounts) sets a setting it has not registered, and its onChange reads the missing
    # definition's id. Its own start-up code, before any workflow is loaded.
    "TypeError: Cannot read properties of undefined (reading 'id')\n    at onChange (",
)

@pytest.fixture(autouse=True, scope="module")
def _chromium_present():
    # A missing browser is a broken setup, not a reason to pass: fail and say how to fix it.
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no Chromium at {CHROMIUM}: run ./dev.sh setup (installs Debian's chromium) or set REENACT_CHROMIUM")


# -- JavaScript run in the page ------------------------------------------------------------------------

JS_READY = "() => !!(window.app && window.LiteGraph && app.graph && app.canvas && (app.graph._nodes ?? app.graph.nodes ?? []).length > 0)"

# Dialogs over the page; with errors=true also the new frontend's error panel and error toasts (at
# start-up they show that its default graph's models are missing, which is not ours to judge).
JS_VISIBLE_DIALOGS = """(errors) => {
  const selectors = [
    ".comfy-modal",                       // legacy frontend: error and missing-nodes dialogs
    ".p-dialog", "[role=dialog]", "[role=alertdialog]",  // new frontend: dialogs (template browser, errors)
  ];
  if (errors) {
    selectors.push("[data-testid=error-overlay]");  // new frontend: missing nodes / models, validation errors
    selectors.push(".p-toast-message-error");       // new frontend: error toasts
  }
  const visible = (e) => e.getClientRects().length > 0 && getComputedStyle(e).visibility !== "hidden";
  return [...new Set(document.querySelectorAll(selectors.join(",")))].filter(visible)
    .map((e) => (e.innerText || e.className || e.tagName).trim().slice(0, 800));
}"""

JS_GRAPH_STATE = """() => {
  const nodes = app.graph._nodes ?? app.graph.nodes;
  return nodes.map((n) => ({
    id: n.id,
    type: n.type,
    registered: !!LiteGraph.registered_node_types[n.type],
    has_errors: !!n.has_errors,
    widgets: (n.widgets || []).map((w) => ({ name: w.name, type: w.type, serialize: w.serialize !== false && w.options?.serialize !== false })),
    widgets_values: n.serialize().widgets_values ?? [],
  }));
}"""

JS_SET_WIDGETS = """(values) => {
  const nodes = app.graph._nodes ?? app.graph.nodes;
  const missing = [];
  for (const [id, widgets] of Object.entries(values)) {
    const node = nodes.find((n) => String(n.id) === id);
    for (const [name, value] of Object.entries(widgets)) {
      const widget = node?.widgets?.find((w) => w.name === name);
      if (!widget) { missing.push(`${id}.${name}`); continue; }
      widget.value = value;
    }
  }
  app.graph.setDirtyCanvas(true, true);
  return missing;
}"""

# The graph's bounds in graph units (title bars and groups included).
JS_GRAPH_BOUNDS = """() => {
  const title = LiteGraph.NODE_TITLE_HEIGHT;
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const n of app.graph._nodes ?? app.graph.nodes) {
    x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - title);
    x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
  }
  for (const g of app.graph._groups ?? app.graph.groups ?? []) {
    const [x, y, w, h] = g._bounding ?? g.bounding;
    x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x + w); y1 = Math.max(y1, y + h);
  }
  return [x0, y0, x1, y1];
}"""

# Shows the graph at `scale` in the canvas's top-left corner, makes everything drawn over the canvas
# transparent except the nodes' own DOM widgets (note text), and returns the graph's rectangle in
# page pixels.
JS_FRAME_GRAPH = """async ([[x0, y0, x1, y1], scale, margin]) => {
  const canvas = app.canvas, el = canvas.canvas, nodes = app.graph._nodes ?? app.graph.nodes;
  const rect = el.getBoundingClientRect();
  canvas.ds.scale = scale;
  canvas.ds.offset[0] = margin / scale - x0;
  canvas.ds.offset[1] = margin / scale - y0;
  canvas.show_info = false;
  const roots = [el];
  for (const n of nodes) for (const w of n.widgets || []) {
    const dom = w.element ?? w.inputEl;
    if (dom instanceof HTMLElement) roots.push(dom);
  }
  const keep = new Set();
  for (const root of roots) for (let e = root; e; e = e.parentElement) keep.add(e);
  window.__reenactHidden = [];
  for (const e of keep) {
    if (roots.includes(e)) continue;
    for (const child of e.children) {
      if (!keep.has(child)) { window.__reenactHidden.push([child, child.style.opacity]); child.style.opacity = "0"; }
    }
  }
  canvas.setDirty(true, true);
  canvas.draw(true, true);
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  return { x: rect.left, y: rect.top, width: (x1 - x0) * scale + 2 * margin, height: (y1 - y0) * scale + 2 * margin };
}"""

JS_UNFRAME = """async () => {
  for (const [e, v] of window.__reenactHidden || []) e.style.opacity = v;
  window.__reenactHidden = [];
  app.canvas.show_info = true;
  app.canvas.setDirty(true, true);
}"""

# Zooms to 100 % around Load Motion Reference's upload button; returns its centre in page pixels.
JS_UPLOAD_BUTTON = """async () => {
  const canvas = app.canvas, el = canvas.canvas, rect = el.getBoundingClientRect();
  const node = (app.graph._nodes ?? app.graph.nodes).find((n) => n.type === "LoadMotionReference");
  const button = node.widgets.find((w) => w.type === "button");
  const y = button.last_y ?? button.y;
  const cx = node.pos[0] + node.size[0] / 2, cy = node.pos[1] + y + LiteGraph.NODE_WIDGET_HEIGHT / 2;
  canvas.ds.scale = 1;
  canvas.ds.offset[0] = rect.width / 2 - cx;
  canvas.ds.offset[1] = rect.height / 2 - cy;
  canvas.setDirty(true, true);
  canvas.draw(true, true);
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  return [rect.left + rect.width / 2, rect.top + rect.height / 2];
}"""

# -- layout: what the canvas shows ----------------------------------------------------------------------

# Every node's rectangle as drawn (title bar included) and its minimum size for its slots and widgets, every
# group's, in graph units; the view; the frontend's text threshold (the new frontends hide node text below
# LiteGraph.Canvas.MinFontSizeForLOD / (NODE_TEXT_SIZE * sqrt(devicePixelRatio)), 8 / 14 by default; the
# legacy litegraph below a fixed 0.6); and where the page covers the canvas.
JS_LAYOUT = """() => {
  const canvas = app.canvas, el = canvas.canvas, title = LiteGraph.NODE_TITLE_HEIGHT;
  const nodes = (app.graph._nodes ?? app.graph.nodes).map((n) => {
    const min = n.computeSize ? n.computeSize() : n.size;
    return {
      id: n.id, type: n.type, title: n.title,
      rect: [n.pos[0], n.pos[1] - title, n.size[0], n.size[1] + title],
      min: [min[0], min[1]],
      text: n.widgets?.find((w) => w.name === "reenact_output_text")?.text ?? null,
    };
  });
  const groups = (app.graph._groups ?? app.graph.groups ?? []).map((g) => ({ title: g.title, rect: [...(g._bounding ?? g.bounding)].slice(0, 4) }));
  const rect = el.getBoundingClientRect();
  canvas.updateLowQualityThreshold?.();
  return {
    nodes, groups,
    view: { scale: canvas.ds.scale, offset: [...canvas.ds.offset] },
    canvas: [rect.left, rect.top, rect.width, rect.height],
    threshold: canvas._lowQualityZoomThreshold ?? 0.6,
    lowQuality: canvas.low_quality ?? canvas.ds.scale < 0.6,
    newFrontend: !!window.__COMFYUI_FRONTEND_VERSION__,
  };
}"""

# The frontend's own Fit View (the new frontends' "Zoom to fit", Comfy.Canvas.FitView), waited for until
# its animation has settled.
JS_FIT_VIEW = """async () => {
  await app.extensionManager.command.execute("Comfy.Canvas.FitView");
  const frame = () => new Promise((r) => requestAnimationFrame(() => r()));
  let last = null, still = 0;
  for (let i = 0; i < 600 && still < 5; i++) {
    await frame();
    const now = JSON.stringify([app.canvas.ds.scale, ...app.canvas.ds.offset]);
    still = now === last ? still + 1 : 0;
    last = now;
  }
  app.canvas.setDirty(true, true);
  await frame(); await frame();
}"""

# Which nodes the page covers at the current view: for points over each node's rectangle, the topmost element
# must be the canvas or a node's own DOM widget (a Note's text); anything else (the sidebar, the tab bar, a
# menu) covers the node. Points outside the window count as covered too.
JS_COVERED = """() => {
  const canvas = app.canvas, el = canvas.canvas, title = LiteGraph.NODE_TITLE_HEIGHT;
  const rect = el.getBoundingClientRect(), s = canvas.ds.scale, [ox, oy] = canvas.ds.offset;
  const nodes = app.graph._nodes ?? app.graph.nodes;
  const own = [];
  for (const n of nodes) for (const w of n.widgets || []) {
    const dom = w.element ?? w.inputEl;
    if (dom instanceof HTMLElement) own.push(dom);
  }
  const covered = [];
  for (const n of nodes) {
    const x0 = n.pos[0], y0 = n.pos[1] - title, w = n.size[0], h = n.size[1] + title;
    const problems = new Set();
    for (let i = 0; i <= 4; i++) for (let j = 0; j <= 4; j++) {
      const x = rect.left + (x0 + (w * (0.02 + 0.96 * i / 4)) + ox) * s;
      const y = rect.top + (y0 + (h * (0.02 + 0.96 * j / 4)) + oy) * s;
      if (x < 0 || y < 0 || x >= window.innerWidth || y >= window.innerHeight) { problems.add("off screen"); continue; }
      const hit = document.elementFromPoint(x, y);
      if (hit === el || own.some((d) => d.contains(hit)) || hit?.closest?.(".dom-widget")) continue;
      problems.add(hit ? `${hit.tagName.toLowerCase()}.${[...hit.classList].slice(0, 3).join(".")}` : "nothing");
    }
    if (problems.size) covered.push(`${n.id} ${n.type}: ${[...problems].join(", ")}`);
  }
  return covered;
}"""


def _overlaps(layout: dict) -> list[str]:
    """Pairs of nodes whose rectangles (title bars included) intersect, and nodes smaller than their own
    slots and widgets need (the frontend draws those past the node's edge, over whatever is there)."""
    problems = []
    nodes = layout["nodes"]
    for i, a in enumerate(nodes):
        ax, ay, aw, ah = a["rect"]
        if a["min"][1] + LITEGRAPH_TITLE > ah + 0.5 or a["min"][0] > aw + 0.5:
            problems.append(f"node {a['id']} ({a['type']}) is {aw:.0f}x{ah - LITEGRAPH_TITLE:.0f}, smaller than its content ({a['min'][0]:.0f}x{a['min'][1]:.0f})")
        for b in nodes[i + 1:]:
            bx, by, bw, bh = b["rect"]
            if ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah:
                problems.append(f"node {a['id']} ({a['type']}) {_fmt(a['rect'])} overlaps node {b['id']} ({b['type']}) {_fmt(b['rect'])}")
    return problems


def _outside_groups(layout: dict) -> list[str]:
    """Nodes that reach out of a group they are partly in (a node is in a group when it overlaps it), and
    groups that overlap each other."""
    problems = []
    for node in layout["nodes"]:
        x, y, w, h = node["rect"]
        for group in layout["groups"]:
            gx, gy, gw, gh = group["rect"]
            overlaps = x < gx + gw and gx < x + w and y < gy + gh and gy < y + h
            inside = gx <= x and gy <= y and x + w <= gx + gw and y + h <= gy + gh
            if overlaps and not inside:
                problems.append(f"node {node['id']} ({node['type']}) {_fmt(node['rect'])} reaches out of group '{group['title']}' {_fmt(group['rect'])}")
    groups = layout["groups"]
    for i, a in enumerate(groups):
        for b in groups[i + 1:]:
            (ax, ay, aw, ah), (bx, by, bw, bh) = a["rect"], b["rect"]
            if ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah:
                problems.append(f"group '{a['title']}' overlaps group '{b['title']}'")
    return problems


def _fmt(rect) -> str:
    return "[" + ", ".join(f"{v:.0f}" for v in rect) + "]"


LITEGRAPH_TITLE = 30  # LiteGraph.NODE_TITLE_HEIGHT in every frontend tested


def _check_view(page, what: str) -> dict:
    """At the current view: zoom at or above the frontend's text threshold, every node on screen and
    uncovered. Returns the view for the record."""
    layout = page.evaluate(JS_LAYOUT)
    scale, threshold = layout["view"]["scale"], layout["threshold"]
    assert not layout["lowQuality"] and scale >= threshold, (
        f"{what}: zoom {scale:.3f} is below the frontend's text threshold {threshold:.3f}: node titles and widgets are not drawn"
    )
    covered = page.evaluate(JS_COVERED)
    assert not covered, f"{what} (zoom {scale:.3f}): nodes off screen or under the page's panels:\n" + "\n".join(covered)
    return {"scale": round(scale, 4), "threshold": round(threshold, 4)}


def _check_layout(page, when: str) -> dict:
    layout = page.evaluate(JS_LAYOUT)
    problems = _overlaps(layout) + _outside_groups(layout)
    assert not problems, f"{when}:\n" + "\n".join(problems)
    return layout


JS_WIDGET_VALUE = """([type, name]) => (app.graph._nodes ?? app.graph.nodes).find((n) => n.type === type).widgets.find((w) => w.name === name).value"""


# -- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = comfyui_root()
    base = tmp_path_factory.mktemp("browser")
    checkpoints = make_checkpoints_folder(base)
    user = base / "server" / "user" / "default"
    # The new frontend lists these folders at start-up; a fresh user folder lacks them (404 noise).
    for sub in ("workflows", "subgraphs"):
        (user / sub).mkdir(parents=True, exist_ok=True)
    (user / "comfy.settings.json").write_text(json.dumps(USER_SETTINGS, indent=2))
    folders = {"checkpoints": checkpoints}
    if has_wan22(root):  # the Wan workflows' files, as a user who downloaded them has them (they are only loaded here)
        folders.update(wan_model_folders(base / "models", {}))
    srv = ComfyServer(root, base / "server", folders, python=sys.executable)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def artifacts_root():
    default = Path(os.environ.get("REENACT_CACHE") or Path.home() / ".cache" / "reenact-anything") / "browser"
    return Path(os.environ.get("REENACT_BROWSER_ARTIFACTS") or default)


@pytest.fixture(scope="module")
def upload_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("upload") / UPLOAD_NAME
    shutil.copyfile(REPO / "assets" / "inputs" / "reenact_example_reference.mp4", path)
    return path


class Console:
    """Everything the page says: console messages (with the URL they concern) and uncaught errors."""

    def __init__(self, page, origin: str):
        self.origin = origin
        self.messages: list[dict] = []
        self.page_errors: list[str] = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self.page_errors.append(f"{error}\n{getattr(error, 'stack', '') or ''}".strip()))

    def _on_console(self, message) -> None:
        self.messages.append({"type": message.type, "text": message.text, "url": (message.location or {}).get("url", "")})

    def harmless(self, message: dict) -> str | None:
        """Why a console error is harmless, or None."""
        text, url = message["text"], message["url"]
        parsed = urllib.parse.urlsplit(url)
        if text.startswith("Failed to load resource"):
            if url.startswith(self.origin) and "404" in text and parsed.path in OPTIONAL_FILES:
                return OPTIONAL_FILES[parsed.path]
            if "net::" in text and not url.startswith(self.origin):
                # The new frontend calls api.comfy.org (node registry, releases) and model hosts
                # (metadata of missing models in its default graph); test machines are offline.
                return "internet request from an offline test machine"
        if text.startswith(FRONTEND_INTERNAL_ERRORS):
            return "logged by the frontend's own start-up"
        return None

    def errors(self) -> list[dict]:
        return [m for m in self.messages if m["type"] == "error" and self.harmless(m) is None]

    def assert_quiet(self) -> None:
        """No uncaught error in the page, and no console error that is not known to be harmless."""
        assert not self.page_errors, "uncaught errors in the page:\n" + "\n\n".join(self.page_errors)
        assert not self.errors(), "console errors:\n" + json.dumps(self.errors(), indent=2)

    def report(self) -> list[dict]:
        return [dict(m, harmless=self.harmless(m)) if m["type"] == "error" else m for m in self.messages]


# -- the test ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("workflow_path", SVD_WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_runs_in_the_browser(server, browser, artifacts_root, upload_file, workflow_path):
    workflow = json.loads(workflow_path.read_text())
    context = browser.new_context(viewport=VIEWPORT)
    context.add_init_script(JS_RECORD_WEBSOCKET)
    page = context.new_page()
    console = Console(page, server.url)
    try:
        _run_workflow(server, page, console, workflow, workflow_path.stem, artifacts_root, upload_file)
    finally:
        frontend = _frontend_label(page)
        if frontend:
            folder = artifacts_root / frontend
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{workflow_path.stem}.console.json").write_text(json.dumps(console.report(), indent=2))
        context.close()
    for message in console.report():
        if message["type"] == "error":
            print(f"console error ({message['harmless'] or 'NOT KNOWN'}): {message['text']} [{message['url']}]")
    console.assert_quiet()


def _skip_wan_without_wan(server, workflow_path) -> None:
    if make_workflows.is_wan_workflow(workflow_path) and not has_wan22(str(server.root)):
        pytest.skip("this ComfyUI has no Wan 2.2 nodes (ComfyUI >= 0.3.46): the Wan workflows are for newer ones")


@pytest.mark.parametrize("workflow_path", WAN_WORKFLOWS, ids=lambda p: p.stem)
def test_wan_workflow_loads_in_the_browser(server, browser, artifacts_root, workflow_path):
    """A Wan workflow in the frontend, with its model files present as a user who downloaded them has them: every node
    registered, no error or missing-model dialog, widget values as in the file, the layout; and the prompt the page
    builds is the one tools.workflow_convert makes of the file, which test_e2e_wan runs end to end (the umT5 text
    encoder and the Wan2.2 VAE cannot load in any small form, so no browser run here)."""
    _skip_wan_without_wan(server, workflow_path)
    workflow = json.loads(workflow_path.read_text())
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    console = Console(page, server.url)
    try:
        _load_workflow(server, page, workflow, workflow_path.stem, artifacts_root)
        prompt = page.evaluate("async () => (await app.graphToPrompt()).output")
    finally:
        context.close()
    converted = ui_to_api(workflow, server.get("/object_info"))
    assert {k: (v["class_type"], v["inputs"]) for k, v in prompt.items()} == {k: (v["class_type"], v["inputs"]) for k, v in converted.items()}
    console.assert_quiet()


@pytest.mark.parametrize("workflow_path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_layout_on_the_canvas(server, browser, artifacts_root, workflow_path):
    """Opened in a 1600x1000 window, a workflow shows all of it, readable: no node overlaps another or
    reaches out of its group, and in the new frontends both the view saved in the file and the frontend's
    Fit View show every node uncovered (not under the sidebar or the tab bar) at a zoom where node text is
    drawn. The legacy frontend keeps its own view on loading a workflow and has no Fit View: there only the
    overlaps are checked. After a run the same holds (test_workflow_runs_in_the_browser)."""
    _skip_wan_without_wan(server, workflow_path)
    workflow = json.loads(workflow_path.read_text())
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    try:
        page.goto(server.url, wait_until="networkidle")
        page.wait_for_function(JS_READY, timeout=60_000)
        page.evaluate("async (workflow) => { await app.loadGraphData(workflow); }", workflow)
        page.wait_for_load_state("networkidle")
        _rendered(page)
        _rendered(page)
        folder = artifacts_root / _frontend_label(page)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{workflow_path.stem}.layout.json").write_text(json.dumps(page.evaluate(JS_LAYOUT), indent=2))
        layout = _check_layout(page, "as loaded")
        record = {"frontend": folder.name, "threshold": layout["threshold"]}
        if layout["newFrontend"]:
            record["saved view"] = _check_view(page, "the view saved in the workflow")
            page.evaluate(JS_FIT_VIEW)
            record["fit view"] = _check_view(page, "Fit View")
            page.screenshot(path=str(folder / f"{workflow_path.stem}.fit.png"))
        print(f"{workflow_path.stem}: {json.dumps(record)}")
        (folder / f"{workflow_path.stem}.views.json").write_text(json.dumps(record, indent=2))
    finally:
        context.close()


# Every websocket message the page receives, recorded from before the frontend starts (both frontends
# talk to ComfyUI over one websocket), so the test waits for what the page has seen, not for a time.
JS_RECORD_WEBSOCKET = """
(() => {
  const Native = window.WebSocket;
  window.__reenactMessages = [];
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (event) => {
        if (typeof event.data === "string") {
          try { window.__reenactMessages.push(JSON.parse(event.data)); } catch (e) {}
        }
      });
    }
  };
})();
"""
JS_PROMPT_DONE = """(promptId) => (window.__reenactMessages || []).some((m) => m.data && m.data.prompt_id === promptId &&
  (m.type === "execution_success" || m.type === "execution_error" || (m.type === "executing" && m.data.node === null)))"""


# The nodes the server did not run again for this prompt (same inputs as in an earlier prompt): it sends no
# `executed` message for them, so they show no new text.
JS_CACHED_NODES = """(promptId) => (window.__reenactMessages || []).filter((m) => m.type === "execution_cached" && m.data?.prompt_id === promptId)
  .flatMap((m) => m.data.nodes || []).map(String)"""


# Queue through the page as its Queue button does, and answer the server's reply to the page's own request
# (which carries the prompt id), so the test follows that prompt and no other.
JS_QUEUE = """async () => {
  const native = window.fetch;
  let reply = null;
  window.fetch = async (...args) => {
    const response = await native(...args);
    const url = String(args[0] && args[0].url ? args[0].url : args[0]);
    if (url.endsWith("/prompt") && (args[1] || {}).method === "POST") {
      try { reply = await response.clone().json(); } catch (e) { reply = {error: String(e)}; }
    }
    return response;
  };
  try { await app.queuePrompt(0, 1); } finally { window.fetch = native; }
  return reply;
}"""


def _rendered(page) -> None:
    """Wait until the page has drawn two more frames: what it does after an event is on screen."""
    page.evaluate("() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))")


def _frontend_label(page) -> str | None:
    try:
        version = page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ ?? null")
    except Exception:
        return None
    return f"frontend-{version}" if version else "legacy-frontend"


def _run_workflow(server, page, console, workflow, stem, artifacts_root, upload_file) -> None:
    nodes = _load_workflow(server, page, workflow, stem, artifacts_root)
    folder = artifacts_root / _frontend_label(page)

    # -- the pack's upload button: a real click opens a file chooser; the file lands in input/ --------
    uploaded = None
    if any(n["type"] == "LoadMotionReference" for n in nodes.values()):
        before = page.evaluate(JS_WIDGET_VALUE, ["LoadMotionReference", "video"])
        for attempt in range(3):  # a loaded CPU can leave the canvas a frame behind the resize above
            x, y = page.evaluate(JS_UPLOAD_BUTTON)
            try:
                with page.expect_file_chooser(timeout=10_000) as chooser:
                    page.mouse.click(x, y)
                break
            except sync_api.TimeoutError:
                if attempt == 2:
                    raise
                _rendered(page)
        chooser.value.set_files(str(upload_file))
        page.wait_for_function(f"() => ({JS_WIDGET_VALUE})(['LoadMotionReference', 'video']) !== {json.dumps(before)}", timeout=30_000)
        uploaded = page.evaluate(JS_WIDGET_VALUE, ["LoadMotionReference", "video"])
        assert (server.base / "input" / uploaded).read_bytes() == upload_file.read_bytes()

    # -- scale down for CPU through the widgets, check the prompt the page builds ---------------------
    checkpoint = next((n["widgets_values"][0] for n in workflow["nodes"] if n["type"] == "ImageOnlyCheckpointLoader"), None)
    overrides = {str(n["id"]): overrides_for(n["type"], checkpoint) for n in workflow["nodes"]}
    overrides = {k: v for k, v in overrides.items() if v}
    assert overrides, "nothing to scale down: the CPU overrides no longer match the workflow"
    assert page.evaluate(JS_SET_WIDGETS, overrides) == [], "widgets named in testkit/cpu_scale.py are missing"
    prompt = page.evaluate("async () => (await app.graphToPrompt()).output")
    for node_id, values in overrides.items():
        for name, value in values.items():
            assert prompt[node_id]["inputs"][name] == value, f"{node_id}.{name}"
    if uploaded:
        reference_id = next(k for k, n in nodes.items() if n["type"] == "LoadMotionReference")
        assert prompt[reference_id]["inputs"]["video"] == uploaded
        assert "upload video" not in prompt[reference_id]["inputs"]

    # -- queue through the page, wait over HTTP -------------------------------------------------------
    queued = page.evaluate(JS_QUEUE)
    prompt_id, entry = _wait_for_run(server, page, queued)
    error = execution_error(entry)
    assert error is None, f"the run failed: {json.dumps(error)[:3000]}"
    assert entry.get("status", {}).get("completed", True), entry.get("status")
    # The page has received the server's end-of-prompt message and drawn what it does with it.
    page.wait_for_function(JS_PROMPT_DONE, arg=prompt_id, timeout=60_000)
    _rendered(page)
    assert page.evaluate(JS_VISIBLE_DIALOGS, True) == [], "the page shows an error after the run"

    # -- what the run shows on the nodes: nothing grew over anything, the saved file's name is on Save Motion
    # Embedding -------------------------------------------------------------------------------------------
    layout = _check_layout(page, "after the run")
    page.screenshot(path=str(folder / f"{stem}.after.page.png"))
    cached = set(page.evaluate(JS_CACHED_NODES, prompt_id))  # not run again: they show what they showed before, if anything
    for node in layout["nodes"]:
        if str(node["id"]) in cached:
            continue
        if node["type"] == "SaveMotionEmbedding":
            (info,) = entry["outputs"][str(node["id"])]["motion_embeddings"]
            assert node["text"] and info["filename"] in node["text"], f"Save Motion Embedding shows {node['text']!r}, not the file it saved"
        elif node["type"] in ("MotionTextualInversion", "ApplyMotionEmbedding", "LoadMotionReference", "LoadMotionEmbedding"):
            assert node["text"], f"node {node['id']} ({node['type']}) shows no text after the run"
        if node["type"] == "LoadMotionEmbedding" and nodes[str(node["id"])]["widgets_values"][0] == "reenact_example_motion.safetensors":
            # the bundled example (learned on the random-weight test model) says so on its first line
            assert node["text"].startswith("WARNING: NOT A REAL MOTION"), node["text"]

    # -- outputs on disk --------------------------------------------------------------------------------
    _check_outputs(server, workflow, overrides, entry)



def _load_workflow(server, page, workflow, stem, artifacts_root) -> dict:
    """Open the page, load the workflow as the UI does and check it: every node registered, no error or missing-model
    dialog, the widget values serialised as the file has them, the layout; screenshots. Returns the page's nodes."""
    page.goto(server.url, wait_until="networkidle")
    page.wait_for_function(JS_READY, timeout=60_000)
    assert page.evaluate(JS_VISIBLE_DIALOGS, False) == [], "a dialog covers the page after start-up (first-run tutorial?)"
    folder = artifacts_root / _frontend_label(page)
    folder.mkdir(parents=True, exist_ok=True)

    # -- load the workflow the way the UI does; nothing may be missing --------------------------------
    page.evaluate("async (workflow) => { await app.loadGraphData(workflow); }", workflow)
    page.wait_for_load_state("networkidle")  # the new frontend checks models and node packs after loading
    _rendered(page)
    page.screenshot(path=str(folder / f"{stem}.page.png"))
    _check_layout(page, "as loaded")
    nodes = {str(n["id"]): n for n in page.evaluate(JS_GRAPH_STATE)}
    assert sorted(nodes) == sorted(str(n["id"]) for n in workflow["nodes"]), "the page's graph has other nodes than the file"
    unknown = [n["type"] for n in nodes.values() if not n["registered"] or n["has_errors"]]
    assert not unknown, f"node types missing in the frontend: {unknown}"
    assert page.evaluate(JS_VISIBLE_DIALOGS, True) == [], "the workflow loads with errors"
    for saved in workflow["nodes"]:
        # The frontend serialises widget values as the file has them: nothing shifted. The legacy
        # frontend also stores a value for widgets that are not part of the prompt (the pack's upload
        # button, which is therefore the last widget: the values before it keep their places).
        node, expected = nodes[str(saved["id"])], saved.get("widgets_values", [])
        values, extra = node["widgets_values"], len(node["widgets_values"]) - len(expected)
        if extra > 0 and not any(w["serialize"] for w in node["widgets"][-extra:]):
            values = values[:-extra]
        assert values == expected, f"node {saved['id']} ({saved['type']}): the page serialises {node['widgets_values']}"
    for node in nodes.values():
        if node["type"] == "LoadMotionReference":
            buttons = [w for w in node["widgets"] if w["type"] == "button"]
            assert [w["name"] for w in buttons] == ["upload video"], "the pack's upload button is missing"
            # The pack's widgets (the button, the text shown after a run) come after the node's own and are
            # never serialised: saved widget values keep their places in every frontend.
            own = [i for i, w in enumerate(node["widgets"]) if w["serialize"]]
            added = node["widgets"][max(own) + 1:]
            assert [w["type"] for w in added] == ["button", "reenact_text"] and not any(w["serialize"] for w in added)

    # -- screenshot of the graph alone (thumbnail material) -------------------------------------------
    # The page grows to hold the whole graph at the workflows' own zoom (75 %; both frontends draw
    # nodes without text below 60 %), the canvas shows nothing but the graph.
    bounds = page.evaluate(JS_GRAPH_BOUNDS)
    size = [math.ceil((bounds[2] - bounds[0]) * SHOT_SCALE) + 2 * SHOT_MARGIN, math.ceil((bounds[3] - bounds[1]) * SHOT_SCALE) + 2 * SHOT_MARGIN]
    page.set_viewport_size({"width": max(size[0], VIEWPORT["width"]), "height": max(size[1], VIEWPORT["height"])})
    _rendered(page)
    clip = page.evaluate(JS_FRAME_GRAPH, [bounds, SHOT_SCALE, SHOT_MARGIN])
    page.screenshot(path=str(folder / f"{stem}.png"), clip=clip)
    page.evaluate(JS_UNFRAME)
    page.set_viewport_size(VIEWPORT)
    _rendered(page)

    return nodes

def _wait_for_run(server, page, queued: dict) -> tuple[str, dict]:
    """The prompt the page queued (its id from the page's own queue request), followed by what the page
    hears: the run's end message over the websocket; then its history entry over HTTP."""
    prompt_id = queued.get("prompt_id") if isinstance(queued, dict) else None
    if not prompt_id:
        pytest.fail(f"the page queued nothing ({queued!r}); it shows: {page.evaluate(JS_VISIBLE_DIALOGS, True)}\n{server.log_tail(3000)}")
    try:
        page.wait_for_function(JS_PROMPT_DONE, arg=prompt_id, timeout=RUN_TIMEOUT * 1000)
    except sync_api.TimeoutError:
        assert server.alive(), f"ComfyUI died:\n{server.log_tail()}"
        pytest.fail(f"the run did not finish within {RUN_TIMEOUT:.0f} s:\n{server.log_tail()}")
    return prompt_id, server.wait(prompt_id, timeout=60)


def _check_outputs(server, workflow, overrides, entry) -> None:
    from PIL import Image
    from safetensors import safe_open

    outputs = entry.get("outputs", {})
    frames = {n["type"]: overrides.get(str(n["id"]), {}).get("video_frames") for n in workflow["nodes"]}
    checked = 0
    for node in workflow["nodes"]:
        out = outputs.get(str(node["id"]), {})
        if node["type"] == "SaveAnimatedWEBP":
            (info,) = out["images"]
            path = server.output_path(info)
            with Image.open(path) as image:
                assert image.format == "WEBP"
                assert getattr(image, "n_frames", 1) == frames["SVD_img2vid_Conditioning"], path
            checked += 1
        elif node["type"] == "SaveMotionEmbedding":
            (info,) = out["motion_embeddings"]
            path = server.output_path(info)
            with safe_open(str(path), framework="pt") as f:
                assert f.get_slice("spatial").get_shape()[0] == frames["MotionTextualInversion"], path
                assert f.metadata()["format"] == "reenact-anything/motion-embedding"
            checked += 1
        elif node["type"] == "PreviewImage":
            assert out.get("images"), f"no loss curve from node {node['id']}"
            assert all(server.output_path(info).is_file() for info in out["images"])
            checked += 1
    assert checked, "the workflow has no output node"


def test_template_browser_opens_the_pack_workflows(server, browser):
    """New frontend only: the pack's category in the template browser shows every workflow with its
    thumbnail, and clicking one loads it. ComfyUI serves a pack's templates from the first of
    example_workflows/, example/, examples/, workflow/, workflows/ that exists, so no folder named
    like the earlier ones may exist in the pack (the example inputs live in assets/)."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    try:
        page.goto(server.url, wait_until="networkidle")
        page.wait_for_function(JS_READY, timeout=60_000)
        if not page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ ?? null"):
            pytest.skip("the legacy frontend has no template browser for custom nodes")
        listed = server.get("/workflow_templates")
        assert sorted(listed.get(PACK_FOLDER_NAME, [])) == sorted(p.stem for p in WORKFLOWS)
        page.evaluate("() => app.extensionManager.command.execute('Comfy.BrowseTemplates')")
        page.get_by_text(PACK_FOLDER_NAME[:16]).first.click()
        workflow = WORKFLOWS[0]
        # Every workflow is listed with its thumbnail drawn (newer frontends show them as blob: URLs,
        # older ones by their /workflow_templates/ address), and the server serves each .jpg.
        for path in WORKFLOWS:
            page.get_by_text(path.stem, exact=True).first.wait_for(timeout=10_000)
            with urllib.request.urlopen(f"{server.url}/api/workflow_templates/{PACK_FOLDER_NAME}/{path.stem}.jpg") as response:
                assert response.status == 200 and response.read(3) == b"\xff\xd8\xff", path.stem
        page.wait_for_function(
            "(count) => [...document.querySelectorAll('img')].filter((i) => i.complete && i.naturalWidth > 0 && (i.src.startsWith('blob:') || i.src.includes('/workflow_templates/'))).length >= count",
            arg=len(WORKFLOWS),
            timeout=10_000,
        )
        page.get_by_text(workflow.stem, exact=True).first.click()
        expected = sorted(n["type"] for n in json.loads(workflow.read_text())["nodes"])
        page.wait_for_function(
            "(expected) => JSON.stringify((app.graph._nodes ?? app.graph.nodes).map((n) => n.type).sort()) === JSON.stringify(expected)",
            arg=expected,
            timeout=10_000,
        )
    finally:
        context.close()
