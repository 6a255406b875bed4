"""VRAM planning table for full-size SVD / SVD-XT, from the pack's own memory preflight.

    COMFYUI_ROOT=... python -m bench.vram_estimate        # ~2 min on CPU, no GPU needed

Builds the full-size SVD UNet (random weights, ComfyUI's own classes and config), measures its
activation profile with the preflight's probe (nodes/comfy_denoiser.activation_profile: two tiny
forwards in bf16, fitted as fixed + per-latent-pixel bytes) and prints, per setting, the activation
memory one inversion step needs plus the bf16 weights: what the preflight compares with free VRAM.
These are estimates; bench/step_cost.py --model svd-full measures the real peak on a GPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bench._common import Env, build_full_svd, fill_random, header, save, table

GIB = 2**30
SETTINGS = (  # (model, frames, width, height)
    ("SVD", 14, 512, 288),
    ("SVD", 14, 1024, 576),
    ("SVD-XT", 25, 512, 288),
    ("SVD-XT", 25, 1024, 576),
)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON")
    args = parser.parse_args(argv)
    env = Env("cpu")
    nodes = env.sub("nodes.comfy_denoiser")
    base = build_full_svd(torch.bfloat16)
    fill_random(base.diffusion_model, seed=20240301)
    weights = sum(p.numel() * p.element_size() for p in base.parameters())
    device = torch.device("cpu")
    base.diffusion_model.requires_grad_(False)
    with torch.inference_mode(False):
        denoiser = nodes.ComfySVDDenoiser(base, device, 6, 127, 0.0)
        profile = nodes.activation_profile(base, denoiser, 5, 1024, device)
    rows, records = [], []
    for model, frames, width, height in SETTINGS:
        record = {"model": model, "frames": frames, "width": width, "height": height, "weights_gib": weights / GIB}
        for checkpointing in (True, False):
            act = nodes.activation_bytes(profile, frames, height, width, checkpointing) / GIB
            record["activations_ckpt_gib" if checkpointing else "activations_gib"] = act
        records.append(record)
        rows.append([
            f"{model} {frames} frames {width}x{height}", f"{record['activations_ckpt_gib'] + weights / GIB:.1f} GB",
            f"{record['activations_gib'] + weights / GIB:.1f} GB",
        ])
    print(f"Full-size SVD UNet, bf16 weights {weights / GIB:.2f} GB; 5 tokens per frame; estimate = weights + activations (+20%)")
    print(table(["setting", "with checkpointing", "without"], rows))
    result = dict(header("vram_estimate", env, "svd-full"), profile=profile, settings=records)
    save(result, args.out)
    return result


if __name__ == "__main__":
    main()
