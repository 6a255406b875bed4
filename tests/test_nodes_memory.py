"""Memory and speed features of the inversion, in a real ComfyUI on the random-weight SVD test checkpoint:
the activation-memory estimate behind the preflight, the preflight's verdict, offloading the VAE and
CLIP vision during the loop. (The attention swap and the private copy: test_gpu_path.py.)"""

from __future__ import annotations

import os
import weakref

import pytest
import torch

from testkit.comfy_env import pack_submodule, run_node
from testkit.media import moving_square_frames, write_video

GIB = 2**30


@pytest.fixture(scope="module")
def denoiser_module(pack):
    return pack_submodule(pack.module, "nodes.comfy_denoiser")


@pytest.fixture(scope="module")
def profile(comfy, svd, denoiser_module):
    model = svd[0]
    with denoiser_module.trainable_model(model, torch.float32, False) as (base, device):
        probe = denoiser_module.ComfySVDDenoiser(base, device, 6, 127, 0.0)
        return denoiser_module.activation_profile(base, probe, 3, 1024, device)


def saved_bytes(denoiser_module, model, frames: int, side: int, checkpointing: bool) -> int:
    """Activation bytes autograd really keeps for one step's backward (what the preflight estimates)."""
    seen: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in weights:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with denoiser_module.trainable_model(model, torch.float32, checkpointing) as (base, device):
        weights = {t.untyped_storage().data_ptr() for t in list(base.parameters()) + list(base.buffers())}
        denoiser = denoiser_module.ComfySVDDenoiser(base, device, 6, 127, 0.0)
        tokens = torch.zeros(frames, 3, 1024, requires_grad=True)
        shared = torch.zeros(3, 1024, requires_grad=True)
        noisy = torch.randn(frames, 4, side, side)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = denoiser(noisy, torch.tensor(1.0), tokens, shared, noisy[0])
        del out
    return sum(seen.values())


def test_activation_estimate_tracks_what_autograd_keeps(svd, denoiser_module, profile):
    """Fitted on 2-frame probes, extrapolated to 6 frames at 24x24 latents: within a factor of two of
    what a real step keeps (without checkpointing, where every activation is saved)."""
    assert profile["total"]["per_pixel"] > profile["boundary"]["per_pixel"] > 0 and profile["largest_layer"]["per_pixel"] > 0
    estimate = denoiser_module.activation_bytes(profile, 6, 192, 192, checkpointing=False)
    actual = saved_bytes(denoiser_module, svd[0], 6, 24, checkpointing=False)
    assert 0.5 < estimate / actual < 2.0, (estimate, actual)


def test_the_memory_probe_counts_what_autograd_saves_and_keeps_none_of_it(denoiser_module):
    """On a GPU the probe runs the loaded model once without checkpointing. Were it to keep what each layer saves for
    backward (an fp8 layer's bf16 weight, a swapped block's copy), a 14B model's would fill the card before the probe
    ends. Here each unit saves a 'weight cast' nothing else holds: it is counted, and gone as soon as the unit is done."""
    units = [torch.nn.Identity() for _ in range(3)]
    gone = []

    def denoiser(noisy, sigma, frame_tokens, shared, image_latent):
        x = noisy.reshape(-1, 8) * frame_tokens.sum()
        for unit in units:
            cast = torch.ones(8, 8)
            alive = weakref.ref(cast)
            x = unit(x) @ cast  # autograd saves `cast` for the backward pass
            del cast
            gone.append(alive() is None)
        return x

    counted = denoiser_module._saved_activations(units, set(), denoiser, 1, 4, torch.device("cpu"), 8, 4)
    assert gone == [True, True, True]
    assert counted["total"] >= 3 * 8 * 8 * 4 and counted["largest_layer"] >= 8 * 8 * 4


def test_checkpointing_estimate_is_smaller(profile, denoiser_module):
    full = denoiser_module.activation_bytes(profile, 14, 576, 1024, checkpointing=False)
    ckpt = denoiser_module.activation_bytes(profile, 14, 576, 1024, checkpointing=True)
    assert ckpt < full / 2


def test_preflight_says_what_to_lower_when_it_will_not_fit(profile, denoiser_module):
    needed = denoiser_module.activation_bytes(profile, 14, 576, 1024, checkpointing=False)
    denoiser_module.check_memory(profile, needed + 1, 14, 576, 1024, checkpointing=False)  # fits: no error
    with pytest.raises(denoiser_module.NotEnoughMemory) as err:
        denoiser_module.check_memory(profile, needed // 10, 14, 576, 1024, checkpointing=False)
    message = str(err.value)
    assert "GB of free VRAM" in message and "gradient_checkpointing" in message and "512x288" in message and "video_frames" in message
    with pytest.raises(denoiser_module.NotEnoughMemory) as err:
        denoiser_module.check_memory(profile, 0, 14, 576, 1024, checkpointing=True)
    assert "gradient_checkpointing" not in str(err.value)  # already on: not offered again


def test_inversion_offloads_vae_and_clip_vision(comfy, svd, pack):
    """During (and after) the loop the VAE and CLIP vision are no longer loaded models of ComfyUI."""
    from testkit.svd_checkpoint import tiny_clip_vision

    mm = comfy.model_management
    model, _, vae = svd
    clip_vision = tiny_clip_vision()
    write_video(moving_square_frames(8, 64), os.path.join(comfy.folder_paths.get_input_directory(), "offload_square.mp4"))
    reference, _, _, _ = run_node(
        comfy, "LoadMotionReference", video="offload_square.mp4", frame_load_cap=0, skip_first_frames=0, select_every_nth=1, custom_width=0, custom_height=0
    )
    loaded_during = []
    inversion = pack_submodule(pack.module, "nodes.inversion")
    original = inversion.invert

    def spy(*args, **kwargs):
        loaded_during.append([m.model for m in mm.current_loaded_models])
        return original(*args, **kwargs)

    inversion.invert = spy
    try:
        run_node(
            comfy, "MotionTextualInversion", model=model, vae=vae, clip_vision=clip_vision, motion_reference=reference, steps=1,
            learning_rate=0.05, tokens_per_frame=2, video_frames=4, width=64, height=64, seed=0, fps=6, motion_bucket_id=127,
            augmentation_level=0.0, precision="fp32", gradient_checkpointing=True,
        )
    finally:
        inversion.invert = original
    (loaded,) = loaded_during
    assert vae.patcher not in loaded
    assert clip_vision.patcher not in loaded


def test_gradient_checkpointing_really_saves_activation_memory(svd, denoiser_module):
    """ComfyUI runs a UNet block's layers itself, so checkpointing must wrap the layers: with it on,
    autograd keeps far less for the backward pass."""
    full = saved_bytes(denoiser_module, svd[0], 4, 16, checkpointing=False)
    ckpt = saved_bytes(denoiser_module, svd[0], 4, 16, checkpointing=True)
    assert ckpt < 0.3 * full, (ckpt, full)


def test_private_copy_for_models_from_custom_loaders(svd, pack, denoiser_module, monkeypatch):
    """Models that newer ComfyUI cannot reload from file (custom loaders, e.g. Motion World) are copied
    in memory; the copy must work on every ComfyUI (newer model configs refuse deepcopy) and share
    no tensor with the model other nodes use."""
    private_model = pack_submodule(pack.module, "nodes.private_model")
    monkeypatch.setattr(private_model, "copy_branch", lambda patcher: "copy")
    shared = {p.data_ptr() for p in svd[0].model.parameters()}
    with denoiser_module.trainable_model(svd[0], torch.float32, False) as (base, _):
        assert base is not svd[0].model
        assert not shared & {p.data_ptr() for p in base.parameters()}
