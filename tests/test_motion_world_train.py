"""motion_world/train.py, the script that trains the bundled Motion World model, in miniature: it
is deterministic for a seed, it trains both contexts (motion tokens; the SVD-like variant whose context
is an embedding of the first frame), it continues a saved file, and what it writes loads in ComfyUI
through the pack's loader as an SVD model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch

from testkit.comfy_env import pack_submodule

TINY = ["--ae-steps", "2", "--ae-batch", "2", "--clips", "6", "--unet-steps", "2", "--unet-batch", "2", "--threads", "1"]


def train(tmp_path, name: str, *extra: str):
    from motion_world import train as train_script

    out = tmp_path / name
    train_script.main([*TINY, *extra, "--out", str(out)])
    with safetensors.safe_open(str(out), framework="pt") as f:
        metadata = f.metadata()
    return out, safetensors.torch.load_file(str(out)), metadata


@pytest.fixture(scope="module")
def motion_model(tmp_path_factory, comfy, pack):
    return train(tmp_path_factory.mktemp("train"), "motion.safetensors")


def test_same_seed_same_file_other_seed_other_weights(tmp_path, motion_model):
    _, first, _ = motion_model
    _, again, _ = train(tmp_path, "again.safetensors")
    _, other, _ = train(tmp_path, "other.safetensors", "--seed", "1")
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def load(pack, path):
    return pack_submodule(pack.module, "nodes.motion_world").load_motion_world(str(path))


def test_written_file_loads_as_svd_and_its_image_token_is_the_null_context(comfy, pack, motion_model):
    import comfy.model_base

    path, _, metadata = motion_model
    model, clip_vision, _ = load(pack, path)
    assert isinstance(model.model, comfy.model_base.SVD_img2vid)
    assert metadata["context"] == "motion" and json.loads(metadata["train_config"])["unet_steps"] == 2
    with torch.inference_mode():  # as ComfyUI runs nodes
        embeds = clip_vision.encode_image(torch.rand(2, 64, 64, 3)).image_embeds
    assert embeds.shape[-1] == 64 and torch.count_nonzero(embeds) == 0


def test_appearance_variant_context_is_an_embedding_of_the_first_frame(comfy, pack, tmp_path, motion_model):
    # on the motion model's autoencoder (same latent space), as the model card's variant command trains it
    motion_path, motion_tensors, _ = motion_model
    path, tensors, metadata = train(tmp_path, "appearance.safetensors", "--context", "appearance", "--autoencoder", str(motion_path))
    assert metadata["context"] == "appearance"
    autoencoder = [k for k in motion_tensors if k.startswith("first_stage_model.")]
    assert autoencoder and all(torch.equal(motion_tensors[k], tensors[k]) for k in autoencoder)
    assert torch.count_nonzero(tensors["clip_vision.visual_projection.weight"]) > 0
    _, clip_vision, _ = load(pack, path)
    images = torch.stack([torch.full((64, 64, 3), 0.2), torch.full((64, 64, 3), 0.8)])
    with torch.inference_mode():
        embeds = clip_vision.encode_image(images).image_embeds.float()
    assert embeds.shape == (2, 64) and not torch.allclose(embeds[0], embeds[1])


def test_resume_keeps_the_autoencoder_trains_on_and_records_the_earlier_stage(tmp_path, motion_model):
    path, before, before_meta = motion_model
    _, after, metadata = train(tmp_path, "continued.safetensors", "--resume", str(path), "--seed", "1")
    autoencoder = [k for k in before if k.startswith("first_stage_model.")]
    unet = [k for k in before if k.startswith("model.diffusion_model.")]
    assert autoencoder and all(torch.equal(before[k], after[k]) for k in autoencoder)
    assert not all(torch.equal(before[k], after[k]) for k in unet)
    stages = json.loads(metadata["earlier_stages"])
    assert stages == [{k: before_meta[k] for k in ("train_config", "final_loss", "train_seconds")}]


def test_decoder_stage_changes_only_the_decoder_so_the_unets_latent_space_stands(tmp_path, motion_model):
    path, before, before_meta = motion_model
    # --ae-batch 8 with --decoder-on-unet 1.0: one whole clip per batch goes through the resumed UNet first
    _, after, metadata = train(
        tmp_path, "decoder.safetensors", "--resume", str(path), "--unet-steps", "0", "--decoder-steps", "2", "--ae-batch", "8",
        "--decoder-on-unet", "1.0",
    )
    assert after.keys() == before.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("first_stage_model.decoder.", "first_stage_model.post_quant_conv.")) for k in changed)
    assert metadata["final_loss"] == before_meta["final_loss"]  # the UNet did not train
    assert json.loads(metadata["earlier_stages"])[-1]["train_config"] == before_meta["train_config"]


def test_reconstruction_loss_weighs_errors_on_and_next_to_the_sprite_by_the_sprite_weight():
    from motion_world.train import reconstruction_loss

    target, mask = torch.zeros(1, 8, 8, 3), torch.zeros(1, 8, 8)
    mask[0, 3:5, 3:5] = 1.0  # the sprite; its one-pixel ring is rows/columns 2..5
    on_sprite, next_to_it, far = target.clone(), target.clone(), target.clone()
    on_sprite[0, 3, 3], next_to_it[0, 2, 5], far[0, 7, 0] = 0.5, 0.5, 0.5
    plain = [reconstruction_loss(r, target) for r in (on_sprite, next_to_it, far)]
    assert plain[0] == plain[1] == plain[2] == reconstruction_loss(far, target, mask, 0.0)
    assert torch.isclose(plain[2], torch.tensor(3 * (0.5 + 2 * 0.25) / 192))  # L1 + 2 L2 of one pixel over 8x8x3 values
    weighted = [reconstruction_loss(r, target, mask, 20.0) for r in (on_sprite, next_to_it, far)]
    assert torch.isclose(weighted[0], weighted[1]) and torch.isclose(weighted[0] / weighted[2], torch.tensor(21.0))


def test_decoder_stage_with_a_sprite_weight_trains_another_decoder_and_records_it(tmp_path, motion_model):
    path, before, _ = motion_model
    args = ["--resume", str(path), "--unet-steps", "0", "--decoder-steps", "2", "--ae-batch", "4"]
    _, plain, _ = train(tmp_path, "plain.safetensors", *args)
    _, weighted, metadata = train(tmp_path, "weighted.safetensors", *args, "--decoder-sprite-weight", "20")
    decoder = [k for k in before if k.startswith("first_stage_model.decoder.")]
    assert not all(torch.equal(plain[k], weighted[k]) for k in decoder)
    assert all(torch.equal(plain[k], weighted[k]) for k in before if k not in decoder and "post_quant_conv" not in k)
    assert json.loads(metadata["train_config"])["decoder_sprite_weight"] == 20.0


def test_one_command_trains_the_decoder_on_the_unet_it_just_trained_after_the_unet(tmp_path):
    # --ae-batch 8 with --decoder-on-unet 1.0: one whole clip per decoder batch goes through the new UNet first
    args = ["--ae-batch", "8"]
    _, without, _ = train(tmp_path, "without.safetensors", *args)
    _, with_stage, metadata = train(tmp_path, "with.safetensors", *args, "--decoder-steps", "2", "--decoder-on-unet", "1.0")
    changed = {k for k in without if not torch.equal(without[k], with_stage[k])}
    # the decoder stage comes after the UNet and leaves the encoder alone, so the UNet is the same
    assert changed and all(k.startswith(("first_stage_model.decoder.", "first_stage_model.post_quant_conv.")) for k in changed)
    assert json.loads(metadata["train_config"])["decoder_on_unet"] == 1.0 and "earlier_stages" not in metadata


@pytest.mark.parametrize(
    ("option", "trains_another"),
    [
        (["--ae-sprite-weight", "20"], "first_stage_model.encoder."),  # and so the UNet, on other latents
        (["--unet-sprite-weight", "3"], "model.diffusion_model."),
        (["--bf16"], "model.diffusion_model."),
        (["--token-noise", "0.5"], "model.diffusion_model."),
        (["--token-merge", "0.5"], "model.diffusion_model."),
    ],
)
def test_training_options_train_other_weights_are_recorded_and_stay_deterministic(tmp_path, motion_model, option, trains_another):
    _, plain, _ = motion_model
    _, tensors, metadata = train(tmp_path, "a.safetensors", *option)
    _, again, _ = train(tmp_path, "b.safetensors", *option)
    assert all(torch.equal(tensors[k], again[k]) for k in tensors)
    assert not all(torch.equal(plain[k], tensors[k]) for k in plain if k.startswith(trains_another))
    if option[0] in ("--unet-sprite-weight", "--token-noise", "--token-merge"):  # the autoencoder trains before the UNet: these do not reach it
        assert all(torch.equal(plain[k], tensors[k]) for k in plain if k.startswith("first_stage_model."))
    name = option[0][2:].replace("-", "_")
    assert json.loads(metadata["train_config"])[name] == (True if len(option) == 1 else float(option[1]))


def test_token_noise_scales_with_each_tokens_rms_and_is_deterministic_for_a_generator():
    from motion_world.train import perturbed

    tokens = torch.cat([torch.full((4000, 1, 64), 0.1), torch.full((4000, 1, 64), 10.0)], dim=1)  # [B, 2 tokens, D]
    noisy = perturbed(tokens, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(noisy, perturbed(tokens, 0.5, torch.Generator().manual_seed(0)))
    noise_std = (noisy - tokens).std(dim=(0, 2))
    assert torch.allclose(noise_std, torch.tensor([0.05, 5.0]), rtol=0.02)  # 0.5 x each token's RMS


def test_token_merge_replaces_the_n_tokens_of_the_picked_clips_by_their_mean():
    from motion_world.train import merged_tokens

    spatial = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).view(2, 3, 2, 4)  # [B, F, N, D]
    temporal = spatial[:, 0]  # [B, N, D]
    merge = torch.tensor([False, True])
    for tokens in (spatial, temporal):
        out = merged_tokens(tokens, merge)
        assert torch.equal(out[0], tokens[0])  # clips not picked keep their tokens
        assert torch.equal(out[1], tokens[1].mean(-2, keepdim=True).expand_as(tokens[1]))  # N equal tokens: their mean


def test_denoising_loss_is_svds_edm_loss_and_weighs_the_sprites_latent_cells_by_the_sprite_weight():
    from motion_world.train import denoising_loss

    x0, sigma = torch.zeros(2, 4, 4, 4), torch.tensor([1.0, 2.0])
    cells = torch.zeros(2, 4, 4, dtype=torch.bool)
    cells[:, 1, 1] = True  # the sprite covers one latent cell of each frame
    on_sprite, off_sprite = x0.clone(), x0.clone()
    on_sprite[0, :, 1, 1], off_sprite[0, :, 3, 3] = 0.5, 0.5
    plain = denoising_loss(off_sprite, x0, sigma)
    assert torch.isclose(plain, torch.tensor(2.0 * 4 * 0.25 / 128))  # weight (1 + 1) / 1 on frame 0, over 2x4x4x4 values
    assert plain == denoising_loss(on_sprite, x0, sigma) == denoising_loss(off_sprite, x0, sigma, cells, 0.0)
    weighted = denoising_loss(on_sprite, x0, sigma, cells, 3.0) / denoising_loss(off_sprite, x0, sigma, cells, 3.0)
    assert torch.isclose(weighted, torch.tensor(4.0))
    assert torch.isclose(denoising_loss(x0 + 1, x0, torch.ones(2), cells, 3.0), torch.tensor(2.0))  # normalised


def test_no_unet_steps_without_a_model_to_keep_says_what_to_give(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train(tmp_path, "x.safetensors", "--unet-steps", "0", "--decoder-steps", "2")
    assert "--unet-steps 0" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_class_coupled_world_trains_and_is_recorded(tmp_path, motion_model):
    motion_path, _, _ = motion_model
    _, _, metadata = train(tmp_path, "classes.safetensors", "--world", "classes", "--context", "appearance", "--autoencoder", str(motion_path))
    assert json.loads(metadata["train_config"])["world"] == "classes" and metadata["context"] == "appearance"


def test_render_batch_draws_from_the_world_it_is_given():
    from motion_world import classes
    from motion_world.train import render_batch

    pixels, *_ = render_batch(np.random.default_rng(0), 3, 8, 64, "classes")
    assert pixels.shape == (3, 8, 64, 64, 3)
    with pytest.raises(ValueError):
        render_batch(np.random.default_rng(0), 1, 8, 64, "nowhere")
    assert classes.CLASSES


def test_conditioning_frame_augmentation_noises_half_the_frames_and_tells_the_model_each_level(comfy, pack, motion_model):
    """--cond-aug (issue #28): SVD_img2vid_Conditioning's augmentation_level, in training: noisy first frames for the
    concatenated latent on about half the clips, the clean latent on the rest, and each clip's level in its micro-conditioning."""
    from motion_world import train as train_script

    _, tensors, _ = motion_model
    mw = pack_submodule(pack.module, "nodes.motion_world")
    ae = mw.build_vae(train_script.VAE_CONFIG, train_script.autoencoder_of(tensors)).first_stage_model.float().eval()
    base = mw.build_unet(train_script.unet_config(64, 64)).float()
    first = torch.rand(32, 64, 64, 3)
    concat, adm = train_script.augmented_condition(base, ae, first, 2.0, 3, torch.Generator().manual_seed(0))
    assert concat.shape == (96, 4, 8, 8) and adm.shape[0] == 32
    clean = train_script.ae_encode_mean(ae, first)
    kept = [i for i in range(32) if torch.allclose(concat[3 * i], clean[i], atol=1e-5)]
    assert 8 <= len(kept) <= 24 and all(torch.equal(concat[3 * i], concat[3 * i + 2]) for i in range(32))
    stock = base.encode_adm(fps=6, motion_bucket_id=127, augmentation_level=0.0)
    assert all(torch.equal(adm[i], stock[0]) == (i in kept) for i in range(32))


def test_a_pretrained_clip_tower_learns_the_classes_and_stays_frozen_in_training(comfy, pack, tmp_path, motion_model):
    """motion_world.pretrain_clip gives the appearance context what SVD's CLIP has (its token names the sprite's class),
    and train --clip-vision keeps that tower and its projection as they are, as SVD keeps CLIP frozen."""
    from motion_world import pretrain_clip

    tower = tmp_path / "clip.safetensors"
    result = pretrain_clip.main(["--out", str(tower), "--steps", "60", "--images", "400", "--batch", "32"])
    assert result["accuracy"] > 0.5  # 4 classes: chance is 0.25
    motion_path, _, _ = motion_model
    path, tensors, _ = train(tmp_path, "classes.safetensors", "--world", "classes", "--context", "appearance", "--autoencoder",
                             str(motion_path), "--clip-vision", str(tower), "--cond-aug", "1.0")
    pretrained = safetensors.torch.load_file(str(tower))
    saved = {k[len("clip_vision."):]: v for k, v in tensors.items() if k.startswith("clip_vision.")}
    assert pretrained.keys() <= saved.keys()
    assert all(torch.allclose(saved[k].float(), pretrained[k].float(), atol=1e-3, rtol=1e-3) for k in pretrained)  # fp16 in the file
    assert json.loads(safetensors.safe_open(str(path), framework="pt").metadata()["train_config"])["cond_aug"] == 1.0
