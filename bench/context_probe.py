"""Issue #28: does a Motion World model read its context at all?

The transfer bench found that putting the reference's image token on a target changes nothing. This probe
asks the question directly, without sampling: on fresh training-world clips, the one-step denoising loss
(SVD's EDM weighting, one fixed noise draw per clip, so conditions are paired) with

* own       the clip's own context (its first frame's image token; or its true motion tokens)
* null      an all-zero context (what classifier-free guidance's negative gives)
* swapped   the context of a clip of another class (appearance) or another motion (motion tokens)

at several noise levels and conditioning-frame augmentation levels (SVD_img2vid_Conditioning's
``augmentation_level``). A model that reads its context loses clearly more with ``swapped`` than with
``own``; one that ignores it shows the same loss in all three. Loss is reported over the whole latent and
over the cells the sprite covers in some frame (where the motion is).

    python -m bench.context_probe --model FILE [--clips 96] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import safetensors
import safetensors.torch
import torch

REPO = Path(__file__).resolve().parent.parent


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="a Motion World file")
    parser.add_argument("--clips", type=int, default=96)
    parser.add_argument("--sigmas", default="0.5,2,8,30", help="noise levels (comma-separated)")
    parser.add_argument("--augmentation", default="0,0.5", help="conditioning-frame augmentation levels (comma-separated)")
    parser.add_argument("--seed", type=int, default=1234, help="draws the clips (the training data used other seeds)")
    parser.add_argument("--out", type=Path, help="write the table as JSON here")
    return parser.parse_args(argv)


class Probe:
    def __init__(self, path: Path):
        from motion_world import train
        from testkit.comfy_env import load_comfyui, load_pack, pack_submodule

        mw = pack_submodule(load_pack(load_comfyui(use_pytorch_cross_attention=True)), "nodes.motion_world")
        with safetensors.safe_open(str(path), framework="pt") as f:
            metadata = f.metadata()
        tensors = safetensors.torch.load_file(str(path))
        known = {name for name in train.TrainConfig.__dataclass_fields__}
        self.cfg = train.TrainConfig(**{k: v for k, v in json.loads(metadata["train_config"]).items() if k in known})
        self.base = mw.build_unet(train.unet_config(self.cfg.context_dim, self.cfg.channels)).float().eval()
        train.load_prefixed(self.base.diffusion_model, tensors, "model.diffusion_model.")
        self.ae = mw.build_vae(train.VAE_CONFIG, train.autoencoder_of(tensors)).first_stage_model.float().eval()
        self.clip = mw.build_clip_vision(train.clip_vision_config(self.cfg.context_dim)).model.float().eval()
        train.load_prefixed(self.clip, tensors, "clip_vision.")
        self.encoder = train.load_prefixed(train.MotionEncoder(self.cfg.context_dim, self.cfg.tokens), tensors, "motion_encoder.").eval()
        self.train = train

    def contexts(self, first_frames, per_frame, summary):
        """(spatial [B, F, N, D], temporal [B, N, D]) as the model was trained to read them."""
        f = self.cfg.frames
        if self.cfg.context == "motion":
            return self.encoder(per_frame, summary)
        token = self.clip.visual_projection(self.clip.vision_model(pixel_values=self.train._clip_pixels(first_frames))[2])
        return token[:, None, None, :].expand(-1, f, 1, -1), token[:, None, :]

    @torch.no_grad()
    def run(self, clips: int, sigmas: list[float], augmentations: list[float], seed: int) -> dict:
        from motion_world import classes

        world_name = self.cfg.world
        rng = np.random.default_rng(seed)
        sampled = [self.train.WORLDS[world_name](rng, self.cfg.frames, self.cfg.size) for _ in range(clips)]
        group = [classes.class_of(c.scene).name if world_name == "classes" else c.motion.family for c in sampled]
        pixels, per_frame, summary, masks = self.train.render_batch(np.random.default_rng(seed), clips, self.cfg.frames, self.cfg.size, world_name)
        raw = self.train.ae_encode_mean(self.ae, pixels.flatten(0, 1)).unflatten(0, pixels.shape[:2])
        cells = torch.nn.functional.max_pool2d(masks, self.cfg.size // raw.shape[-1]).amax(1) > 0  # [B, h, w]
        # swapped: each clip takes the context of the next clip of another class (or family)
        partner = [next(j % clips for j in range(i + 1, i + clips + 1) if group[j % clips] != group[i]) for i in range(clips)]
        own = self.contexts(pixels[:, 0], per_frame, summary)
        chosen = {
            "own": own,
            "null": tuple(torch.zeros_like(t) for t in own),
            "swapped": tuple(t[partner] for t in own),
        }
        f = self.cfg.frames
        gen = torch.Generator().manual_seed(seed)
        table = {}
        for level in augmentations:
            noisy_first = pixels[:, 0] + level * torch.randn(pixels[:, 0].shape, generator=gen)
            concat = self.train.ae_encode_mean(self.ae, noisy_first).repeat_interleave(f, 0)
            adm = self.base.encode_adm(fps=6, motion_bucket_id=127, augmentation_level=level)
            for sigma in sigmas:
                x0 = raw.flatten(0, 1) * self.train.LATENT_SCALE
                sigma_frames = torch.full((x0.shape[0],), sigma)
                noisy = x0 + sigma * torch.randn(x0.shape, generator=gen)
                row = {}
                for name, (spatial, temporal) in chosen.items():
                    out = torch.cat([
                        self.train.predict_x0(self.base, adm, noisy[s * f:e * f], sigma_frames[s * f:e * f], concat[s * f:e * f], spatial[s:e], temporal[s:e])
                        for s, e in ((s, min(s + 16, clips)) for s in range(0, clips, 16))
                    ])
                    weight = (sigma**2 + 1) / sigma**2  # SVD's EDM loss weighting
                    per_cell = ((out - x0) ** 2).mean(1).unflatten(0, (clips, f)) * weight  # [B, F, h, w]
                    sprite = cells[:, None].expand_as(per_cell)
                    row[name] = {"loss": per_cell.mean().item(), "sprite_loss": per_cell[sprite].mean().item()}
                for name in ("null", "swapped"):
                    for key in ("loss", "sprite_loss"):
                        row[name][f"{key}_vs_own"] = row[name][key] / row["own"][key] - 1.0
                table[f"aug {level:g}, sigma {sigma:g}"] = row
        result = {"context": self.cfg.context, "world": world_name, "clips": clips, "table": table}
        if self.cfg.context == "appearance":
            result["class_from_token"] = nearest_centroid_accuracy(own[1][:, 0].float(), group)
        return result


def nearest_centroid_accuracy(tokens: torch.Tensor, labels: list[str]) -> float:
    """Can the context say the class at all? Leave-one-out nearest-centroid accuracy of ``tokens`` [B, D] (cosine),
    against chance 1 / classes: a token that does not separate the classes cannot carry a class's motion."""
    unit = torch.nn.functional.normalize(tokens, dim=-1)
    names = sorted(set(labels))
    index = torch.tensor([names.index(label) for label in labels])
    sums = torch.zeros(len(names), unit.shape[1]).index_add_(0, index, unit)
    counts = torch.bincount(index, minlength=len(names)).float()
    correct = 0
    for i in range(len(labels)):
        others = (sums - torch.nn.functional.one_hot(index[i], len(names)).float()[:, None] * unit[i]) / (
            counts - torch.nn.functional.one_hot(index[i], len(names)).float()).clamp(min=1)[:, None]
        correct += int(int((torch.nn.functional.normalize(others, dim=-1) @ unit[i]).argmax()) == int(index[i]))
    return correct / len(labels)


def print_table(result: dict) -> None:
    print(f"\nContext probe ({result['context']} context, {result['world']} world, {result['clips']} clips): one-step loss, "
          "and how much worse than the clip's own context")
    header = f"{'setting':<22} {'own':>8} {'null':>8} {'swapped':>8} | {'sprite: own':>11} {'null':>8} {'swapped':>8}"
    print(header)
    print("-" * len(header))
    for setting, row in result["table"].items():
        whole = f"{row['own']['loss']:>8.4f} {100 * row['null']['loss_vs_own']:>+7.1f}% {100 * row['swapped']['loss_vs_own']:>+7.1f}%"
        sprite = f"{row['own']['sprite_loss']:>11.4f} {100 * row['null']['sprite_loss_vs_own']:>+7.1f}% {100 * row['swapped']['sprite_loss_vs_own']:>+7.1f}%"
        print(f"{setting:<22} {whole} | {sprite}")
    if "class_from_token" in result:
        print(f"class told from the image token (leave-one-out nearest centroid): {100 * result['class_from_token']:.0f}%")


def main(argv=None) -> dict:
    args = parse_args(argv)
    parse = lambda text: [float(v) for v in text.split(",") if v.strip()]  # noqa: E731
    result = Probe(args.model).run(args.clips, parse(args.sigmas), parse(args.augmentation), args.seed)
    result["model"] = args.model.name
    print_table(result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
