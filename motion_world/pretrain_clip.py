"""A CLIP-like image tower that knows what a sprite is, for the appearance-context Motion World (issue #28).

SVD's context is CLIP ViT-H's embedding of the first frame: a frozen, *semantic* summary of the image, trained
elsewhere. The first appearance-context model used Motion World's tiny CLIP tower at its random initialisation
(only the projection learned, with the UNet): measured by ``bench.context_probe``, its image token told a
sprite's class in 30% of cases, chance being 25%. A token that cannot say what the sprite is cannot carry what
the sprite's class does. This script gives the tower what CLIP has: it trains the same tower (ComfyUI's layout,
through transformers' CLIPVisionModelWithProjection, whose keys ComfyUI loads as they are) so that its projected
embedding names the class of the first frame of class-world clips (a linear read-out, as CLIP's zero-shot
classifier is a dot product with class text embeddings). ``motion_world.train --clip-vision FILE`` then keeps it
frozen, tower and projection, as SVD keeps CLIP.

    python -m motion_world.pretrain_clip --out clip_classes.safetensors [--steps 400]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--context-dim", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import safetensors.torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from motion_world import classes
    from motion_world.train import _clip_pixels, clip_vision_config, log
    from testkit.comfy_env import load_comfyui

    load_comfyui()  # _clip_pixels is ComfyUI's own CLIP preprocessing
    torch.manual_seed(args.seed)
    config = {k: v for k, v in clip_vision_config(args.context_dim).items() if k not in ("model_type", "torch_dtype")}
    tower = CLIPVisionModelWithProjection(CLIPVisionConfig(**config))
    names = [c.name for c in classes.CLASSES]
    rng = np.random.default_rng([args.seed, 2801])
    clips = [classes.sample_training_clip(rng, 8, 64) for _ in range(args.images)]
    pixels = torch.stack([c.frames[0] for c in clips])
    labels = torch.tensor([names.index(classes.class_of(c.scene).name) for c in clips])
    held_out = args.images // 5
    readout = torch.nn.Linear(args.context_dim, len(names))
    opt = torch.optim.AdamW(list(tower.parameters()) + list(readout.parameters()), lr=1e-3, weight_decay=0.01)
    gen = torch.Generator().manual_seed(args.seed)
    started = time.perf_counter()
    for step in range(args.steps):
        idx = held_out + torch.randint(args.images - held_out, (args.batch,), generator=gen)
        token = tower(pixel_values=_clip_pixels(pixels[idx])).image_embeds
        loss = torch.nn.functional.cross_entropy(readout(token), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == args.steps - 1:
            log(f"clip step {step + 1}/{args.steps} loss {loss.item():.4f} ({time.perf_counter() - started:.0f} s)")
    tower.eval()
    with torch.no_grad():
        tokens = torch.cat([tower(pixel_values=_clip_pixels(chunk)).image_embeds for chunk in pixels[:held_out].split(100)])
        accuracy = float((readout(tokens).argmax(1) == labels[:held_out]).float().mean())
    log(f"held-out class accuracy from the token: {100 * accuracy:.1f}% ({held_out} images)")
    state = {k: v.contiguous() for k, v in tower.state_dict().items() if not k.endswith("position_ids")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(state, str(args.out), metadata={"held_out_class_accuracy": f"{accuracy:.4f}", "steps": str(args.steps)})
    return {"accuracy": accuracy, "path": str(args.out)}


if __name__ == "__main__":
    main()
