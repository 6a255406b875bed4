"""Widget values that scale the shipped workflows down for a 2-core CPU with the random-weight test
checkpoint: same graph, same nodes, same links; only sizes, frame counts and step counts shrink.

Used by the server end-to-end tests (on the API prompt), the browser test (on the page's widgets)
and the demo.
"""

from __future__ import annotations

SIZE = 64

# class_type -> {widget name: value}. Frame counts keep the workflows' intent: SVD-XT stays longer
# than the 14-frame motion it reuses, so the embedding is still resampled.
CPU_OVERRIDES: dict[str, dict[str, object]] = {
    "MotionTextualInversion": {"steps": 3, "width": SIZE, "height": SIZE, "video_frames": 4, "precision": "fp32"},
    "SVD_img2vid_Conditioning": {"width": SIZE, "height": SIZE, "video_frames": 4},
    "KSampler": {"steps": 2},
}

# SVD-XT workflow: more frames than the embedding has, to exercise resampling.
XT_FRAMES = 7


# The Wan workflows: 5 frames (2 latent frames: the first, and one to learn and generate), 64x64 (4x4 latent
# frames; Wan's VAEs compress 8x or 16x, its patches are 2x2).
WAN_FRAMES = 5
WAN_CPU_OVERRIDES: dict[str, dict[str, object]] = {
    "MotionTextualInversion": {"steps": 3, "width": SIZE, "height": SIZE, "video_frames": WAN_FRAMES, "precision": "fp32"},
    "WanImageToVideo": {"width": SIZE, "height": SIZE, "length": WAN_FRAMES},
    "Wan22ImageToVideoLatent": {"width": SIZE, "height": SIZE, "length": WAN_FRAMES},
    "KSampler": {"steps": 2},
}


def wan_overrides_for(class_type: str, checkpoint_name: str | None = None) -> dict[str, object]:
    return dict(WAN_CPU_OVERRIDES.get(class_type, {}))


def overrides_for(class_type: str, checkpoint_name: str | None = None) -> dict[str, object]:
    values = dict(CPU_OVERRIDES.get(class_type, {}))
    if class_type == "SVD_img2vid_Conditioning" and checkpoint_name and "xt" in checkpoint_name:
        values["video_frames"] = XT_FRAMES
    return values
