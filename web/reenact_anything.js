// Reenact Anything: an upload button for Load Motion Reference's video list.
// ComfyUI's built-in upload widget accepts images only in older frontends, so the pack adds its own
// button (last widget, so saved widget values keep their order in every frontend).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const VIDEO_TYPES = "video/*,image/gif,image/webp,image/png,.mkv,.mov,.webm,.mp4";

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

app.registerExtension({
  name: "ReenactAnything.MotionReferenceUpload",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== "LoadMotionReference") {
      return;
    }
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      const videoWidget = this.widgets?.find((w) => w.name === "video");
      if (!videoWidget) {
        return result;
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
      const button = this.addWidget("button", "upload video", null, () => chooser.click());
      button.serialize = false;
      button.options = { ...(button.options || {}), serialize: false };
      const onRemoved = this.onRemoved;
      this.onRemoved = function () {
        chooser.remove();
        return onRemoved?.apply(this, arguments);
      };
      return result;
    };
  },
});
