"""VRAM planning table for full-size SVD / SVD-XT and Wan, from the pack's own memory preflight.

    COMFYUI_ROOT=... python -m bench.vram_estimate        # ~2 min on CPU, no GPU needed
    COMFYUI_ROOT=<a ComfyUI with Wan 2.2> python -m bench.vram_estimate --wan    # Wan2.1-I2V 14B and Wan2.2 TI2V-5B

Builds the full-size SVD UNet (random weights, ComfyUI's own classes and config), measures its
activation profile with the preflight's probe (nodes/comfy_denoiser.activation_profile: two tiny
forwards in bf16, fitted as fixed + per-latent-pixel bytes) and prints, per setting, the activation
memory one inversion step needs plus the bf16 weights: what the preflight compares with free VRAM.
These are estimates; bench/step_cost.py --model svd-full measures the real peak on a GPU.

--wan: the same for Wan. A full 14B model does not fit this machine's memory, so each Wan model is built at full width
with 2 and with 3 of its blocks (bf16, random weights, ComfyUI's own classes); what one more block keeps and takes in is
extended in a straight line to the real block count, and the weights are counted for all blocks. Attention is assumed to keep
no score matrix for backward (the GPU's memory-efficient SDPA; the probe's tiny sizes cannot tell). With block swap: the
least VRAM (every block in RAM) and, for a 24 GB card, how many blocks the automatic setting keeps in RAM (block_swap()).
Time: each step's FLOPs counted from the model's shape (wan_forward_flops) at an assumed sustained throughput.
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


# Wan models at full width (ComfyUI's detection configs) and the settings to plan: (name, config, blocks, VAE downscale,
# [(frames, width, height), ...]): the workflows' inversion size, and the model's own generation size.
WAN_COMMON = {"image_model": "wan2.1", "patch_size": (1, 2, 2), "freq_dim": 256, "window_size": (-1, -1), "qk_norm": True,
              "cross_attn_norm": True, "eps": 1e-6}
WAN_MODELS = (
    ("Wan2.1-I2V 14B", "WAN21_I2V", {**WAN_COMMON, "dim": 5120, "num_heads": 40, "ffn_dim": 13824, "model_type": "i2v", "in_dim": 36,
                                     "out_dim": 16}, 40, 8, [(33, 480, 288), (81, 832, 480)]),
    ("Wan2.2 TI2V-5B", "WAN22_T2V", {**WAN_COMMON, "dim": 3072, "num_heads": 24, "ffn_dim": 14336, "model_type": "t2v", "in_dim": 48,
                                     "out_dim": 48}, 30, 16, [(33, 480, 288), (121, 1280, 704)]),
)
PROBE_BLOCKS = 2


def wan_profile(env: Env, supported: str, config: dict, blocks: int, probe_blocks: int = PROBE_BLOCKS) -> tuple[dict, int, int]:
    """The activation profile of a ``blocks``-block Wan model, measured on ``probe_blocks`` and ``probe_blocks`` + 1 of its
    blocks (at full width) and extended in a straight line; with the bf16 weight bytes of all blocks and of one block."""
    if blocks <= probe_blocks:
        return _measured_profile(env, supported, config, blocks)
    small, weights, per_block = _measured_profile(env, supported, config, probe_blocks)
    large, _, _ = _measured_profile(env, supported, config, probe_blocks + 1)
    more = blocks - probe_blocks
    # What the blocks keep and take in grows by the same amount per block (the first block keeps less: the line starts
    # at the second); the largest single layer does not grow.
    profile = {k: {part: small[k][part] + more * (large[k][part] - small[k][part]) for part in ("fixed", "per_pixel")}
               for k in ("total", "boundary")}
    profile["largest_layer"] = {part: max(small["largest_layer"][part], large["largest_layer"][part]) for part in ("fixed", "per_pixel")}
    return profile, weights + more * per_block, per_block


def _measured_profile(env: Env, supported: str, config: dict, blocks: int) -> tuple[dict, int, int]:
    import comfy.supported_models

    from reenact_core.embedding import UMT5_DIM

    cd, wi = env.sub("nodes.comfy_denoiser"), env.sub("nodes.wan_inversion")
    device = torch.device("cpu")
    model_config = getattr(comfy.supported_models, supported)(dict(config, num_layers=blocks))
    model_config.set_inference_dtype(torch.bfloat16, None)
    base = model_config.get_model({})
    dit = base.diffusion_model
    fill_random(dit, seed=20250226)
    cd._convert_unet(base, torch.bfloat16, device)  # as the node's private copy is set up
    with torch.inference_mode(False):
        probe = wi.probe_denoiser(base, device, torch.bfloat16, 5)
        profile = cd.activation_profile(base, probe, 5, UMT5_DIM, device, channels=config["out_dim"])
    return profile, sum(p.numel() for p in dit.parameters()) * 2, sum(p.numel() for p in dit.blocks[0].parameters()) * 2


# Block swap on a 24 GB card: what ComfyUI reports free there with nothing else loaded (the driver, the desktop and
# ComfyUI's own reserve take the rest). An assumption for the table, not a measurement.
CARD_24GB_FREE_GIB = 21.0


def wan_estimates(env: Env, models=WAN_MODELS) -> list[dict]:
    from reenact_core.wan import latent_frames_for

    cd, records = env.sub("nodes.comfy_denoiser"), []
    for name, supported, config, blocks, downscale, settings in models:
        profile, weights, per_block = wan_profile(env, supported, config, blocks)
        for frames, width, height in settings:
            # fp8 weights: half, plus the block being recomputed with its weights cast up to bf16 (checkpointing on)
            record = {"model": name, "frames": frames, "width": width, "height": height, "weights_gib": weights / GIB,
                      "weights_fp8_gib": (weights / 2 + per_block) / GIB, "blocks": blocks, "per_block_gib": per_block / GIB}
            for checkpointing in (True, False):
                act = cd.activation_bytes(profile, frames, height, width, checkpointing, latent=(latent_frames_for, downscale)) / GIB
                record["activations_ckpt_gib" if checkpointing else "activations_gib"] = act
            record.update(block_swap(record, cd))
            record.update(wan_step_time(record, config, downscale))
            records.append(record)
    return records


# Time: one inversion step's FLOPs, counted (wan_step_flops), over a sustained throughput. An assumption, not a
# measurement: about half the dense bf16 peak of an RTX 4090 (165 TFLOPS with fp32 accumulation, as PyTorch computes).
SUSTAINED_TFLOPS = 80.0
PCIE_GB_PER_S = 25.0  # pinned host-to-device copies on PCIe 4.0 x16, for block swap's copies (assumed)
IMAGE_TOKENS = 257  # CLIP-H image tokens, Wan2.1-I2V only
PER_FRAME_CONTEXT = 2 * 5  # each latent frame attends to its own 5 tokens and the 5 shared ones


def wan_forward_flops(config: dict, block_params: int, blocks: int, video_tokens: int) -> dict:
    """FLOPs of one Wan forward in the inversion, from the model's shape: each block's layers on the video tokens (2 per
    weight per token), except the projections of the context (the motion tokens; Wan2.1-I2V's CLIP image tokens), and
    attention's two matrix products (4 per channel per query-key pair): self-attention over all video tokens,
    cross-attention to each frame's own and shared tokens and the image tokens. Checked against PyTorch's FlopCounterMode
    on the tiny test model (tests/test_wan_inversion.py)."""
    dim = config["dim"]
    image = IMAGE_TOKENS if config.get("model_type") == "i2v" else 0
    text_kv = 2 * (dim * dim + dim)  # cross_attn.k and .v: on the context, not the video tokens
    image_kv = text_kv if image else 0  # k_img, v_img (on img_emb's output, already dim wide)
    on_video = block_params - text_kv - image_kv
    linear = 2 * video_tokens * on_video + 2 * image * image_kv
    attention = 4 * dim * video_tokens * (video_tokens + PER_FRAME_CONTEXT + image)
    return {"linear": blocks * linear, "attention": blocks * attention, "total": blocks * (linear + attention)}


def wan_step_time(record: dict, config: dict, downscale: int) -> dict:
    """One step with checkpointing is three forwards: the forward, its recompute, and the backward (the weights are
    frozen: only the activations' gradients, about one forward's work). Minutes per motion at the Wan workflows' steps."""
    from reenact_core.wan import latent_frames_for
    from tools.make_workflows import WAN_INVERSION

    patch = config["patch_size"]
    tokens = latent_frames_for(record["frames"]) * (record["height"] // downscale // patch[1]) * (record["width"] // downscale // patch[2])
    forward = wan_forward_flops(config, round(record["per_block_gib"] * GIB / 2), record["blocks"], tokens)["total"]
    seconds = 3 * forward / (SUSTAINED_TFLOPS * 1e12)
    block_compute = seconds / (3 * record["blocks"])
    block_copy = record["per_block_gib"] * GIB / (PCIE_GB_PER_S * 1e9)
    return {"video_tokens": tokens, "tflop_per_step": 3 * forward / 1e12, "seconds_per_step": seconds,
            "minutes_per_motion": seconds * WAN_INVERSION["steps"] / 60, "steps": WAN_INVERSION["steps"],
            "block_compute_ms": block_compute * 1e3, "block_copy_ms": block_copy * 1e3}


def block_swap(record: dict, cd) -> dict:
    """What block swap (reenact_core.block_swap) changes, with checkpointing: the least VRAM (every block in RAM, two in
    flight; fp8: two fp8 copies and one block cast up to bf16), and on a 24 GB card how many blocks the automatic
    setting keeps in RAM with bf16 weights and the GB each step then copies to the GPU (each swapped block twice).
    ``cd``: nodes.comfy_denoiser, whose rule for the blocks in flight the node applies."""
    blocks, block, act = record["blocks"], record["per_block_gib"], record["activations_ckpt_gib"]
    other = record["weights_gib"] - blocks * block
    sizes = [block] * blocks
    swapped = next((k for k in range(blocks + 1) if record["weights_gib"] - k * block + cd._in_flight(sizes, k) + act <= CARD_24GB_FREE_GIB), None)
    return {
        "least_vram_swap_all_gib": other + cd._in_flight(sizes, blocks) + act,
        "least_vram_swap_all_fp8_gib": other / 2 + 2 * block / 2 + block + act,
        "ram_swap_all_gib": blocks * block,
        "card_24gb_blocks_in_ram": swapped,
        "card_24gb_copied_per_step_gib": None if swapped is None else 2 * swapped * block,
    }


def print_wan(records: list[dict]) -> None:
    rows = [[f"{r['model']}, {r['frames']} frames {r['width']}x{r['height']}", f"{r['activations_ckpt_gib'] + r['weights_gib']:.1f} GB",
             f"{r['activations_ckpt_gib'] + r['weights_fp8_gib']:.1f} GB", f"{r['activations_gib'] + r['weights_gib']:.1f} GB",
             f"{r['least_vram_swap_all_gib']:.1f} / {r['least_vram_swap_all_fp8_gib']:.1f} GB",
             "does not fit" if r["card_24gb_blocks_in_ram"] is None else
             f"{r['card_24gb_blocks_in_ram']} of {r['blocks']}, {r['card_24gb_copied_per_step_gib']:.0f} GB copied/step",
             f"{r['tflop_per_step']:.0f} TFLOP, {r['seconds_per_step']:.1f} s, {r['minutes_per_motion']:.0f} min",
             f"{r['block_copy_ms']:.0f} / {r['block_compute_ms']:.0f} ms"] for r in records]
    print("Wan (full width, per-block costs from 2- and 3-block probes); estimate = weights + activations (+20%), 5 tokens per latent frame")
    print(table(["setting", "checkpointing, bf16 weights", "checkpointing, fp8 weights", "no checkpointing, bf16",
                 "all blocks in RAM, bf16 / fp8", f"bf16 on a 24 GB card ({CARD_24GB_FREE_GIB:g} GB free): blocks in RAM",
                 f"per step (at {SUSTAINED_TFLOPS:g} TFLOPS), per motion ({records[0]['steps']} steps)", f"a block's copy ({PCIE_GB_PER_S:g} GB/s) / compute"], rows))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON")
    parser.add_argument("--wan", action="store_true", help="the Wan models instead of SVD")
    args = parser.parse_args(argv)
    env = Env("cpu")
    if args.wan:
        records = wan_estimates(env)
        print_wan(records)
        result = dict(header("vram_estimate", env, "wan-full-width"), settings=records)
        save(result, args.out)
        return result
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
