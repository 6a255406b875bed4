"""reenact_core.wan: per-frame cross-attention for Wan on tiny CPU tensors, then through a real ComfyUI Wan
cross-attention module (COMFYUI_ROOT, else the 2025-12 ComfyUI under REENACT_CACHE; skipped without Wan)."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from reenact_core import wan

REPO = Path(__file__).resolve().parent.parent


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    return t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)


def sdpa(q, k, v, heads, mask=None, **_):
    """torch's own fused attention with ComfyUI's signature: the independent reference."""
    if mask is not None:
        mask = mask[None, None]
    out = F.scaled_dot_product_attention(split_heads(q, heads), split_heads(k, heads), split_heads(v, heads), attn_mask=mask)
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[1], -1)


def block_mask(frames: int, s: int, m: int) -> torch.Tensor:
    """[F*S, F*M], True where a video token of frame f meets a context token of frame f."""
    return torch.kron(torch.eye(frames), torch.ones(s, m)).bool()


def qkv(b=2, frames=3, s=4, m=5, c=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, frames * s, c, generator=g), torch.randn(b, frames * m, c, generator=g),
            torch.randn(b, frames * m, c, generator=g))


# -- per_frame_cross_attention -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("attention", [wan.reference_attention, sdpa], ids=["reference", "sdpa"])
def test_per_frame_attention_is_block_diagonal_attention(attention):
    q, k, v = qkv()
    expected = sdpa(q, k, v, heads=2, mask=block_mask(3, 4, 5))
    got = wan.per_frame_cross_attention(q, k, v, latent_frames=3, heads=2, attention=attention)
    assert got.shape == q.shape
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


def test_reference_attention_matches_torch_with_and_without_a_mask():
    q, k, v = qkv(frames=2, s=3, m=3)
    torch.testing.assert_close(wan.reference_attention(q, k, v, 4), sdpa(q, k, v, 4), atol=1e-6, rtol=1e-6)
    mask = block_mask(2, 3, 3)
    torch.testing.assert_close(wan.reference_attention(q, k, v, 4, mask=mask), sdpa(q, k, v, 4, mask=mask), atol=1e-6, rtol=1e-6)
    additive = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    torch.testing.assert_close(wan.reference_attention(q, k, v, 4, mask=additive), sdpa(q, k, v, 4, mask=mask), atol=1e-6, rtol=1e-6)


def test_perturbing_one_frames_context_changes_only_that_frames_outputs():
    frames, s, m = 4, 3, 2
    q, k, v = qkv(frames=frames, s=s, m=m)
    before = wan.per_frame_cross_attention(q, k, v, frames, heads=2)
    k2, v2 = k.clone(), v.clone()
    k2[:, 2 * m:3 * m] += 1.0
    v2[:, 2 * m:3 * m] -= 2.0
    after = wan.per_frame_cross_attention(q, k2, v2, frames, heads=2)
    changed = (after - before).abs().reshape(2, frames, s, -1).amax(dim=(0, 2, 3))
    assert changed[2] > 1e-2
    assert torch.all(changed[[0, 1, 3]] <= 1e-7), changed


def test_the_attention_gets_the_frames_folded_into_the_batch_and_never_a_mask():
    q, k, v = qkv(b=2, frames=3, s=4, m=5)
    calls = []

    def spy(q_, k_, v_, heads, mask=None, **kwargs):
        calls.append((q_.shape, k_.shape, v_.shape, heads, mask, kwargs))
        return wan.reference_attention(q_, k_, v_, heads)

    wan.per_frame_cross_attention(q, k, v, 3, 2, spy, transformer_options={"x": 1})
    assert calls == [((6, 4, 8), (6, 5, 8), (6, 5, 8), 2, None, {"transformer_options": {"x": 1}})]


def test_a_batch_one_context_is_shared_by_the_batch():
    q, k, v = qkv(b=3)
    shared = wan.per_frame_cross_attention(q, k[:1], v[:1], 3, 2)
    expanded = wan.per_frame_cross_attention(q, k[:1].expand(3, -1, -1), v[:1].expand(3, -1, -1), 3, 2)
    torch.testing.assert_close(shared, expanded, atol=0, rtol=0)


@pytest.mark.parametrize("change, message", [
    (lambda q, k, v: (q[:, :-1], k, v), "11 video tokens are not 3 latent frames"),
    (lambda q, k, v: (q, k[:, :-1], v[:, :-1]), "14 context tokens are not 3 non-empty per-frame blocks"),
    (lambda q, k, v: (q, k[:, :0], v[:, :0]), "0 context tokens"),
    (lambda q, k, v: (q, k[:, :-3], v), "must have the same batch and token count"),
    (lambda q, k, v: (q, k[..., :4], v[..., :4]), "q has 8 channels but k has 4"),
    (lambda q, k, v: (q, k[:1].expand(3, -1, -1), v[:1].expand(3, -1, -1)), "context batch 3 does not match the video batch 2"),
    (lambda q, k, v: (q[0], k, v), r"must be \[batch, tokens, channels\]"),
])
def test_per_frame_attention_shape_errors_say_what_is_wrong(change, message):
    q, k, v = change(*qkv())
    with pytest.raises(ValueError, match=message):
        wan.per_frame_cross_attention(q, k, v, latent_frames=3, heads=2)


# -- frame_context -----------------------------------------------------------------------------------------------------


def test_frame_context_gives_each_frame_its_tokens_then_the_shared_set():
    frames, n, d = 3, 2, 4
    tokens = torch.arange(frames * n * d, dtype=torch.float32).reshape(frames, n, d)
    shared = -torch.arange(2 * d, dtype=torch.float32).reshape(2, d) - 1
    ctx = wan.frame_context(tokens, shared, frames)
    assert ctx.shape == (frames * (n + 2), d)
    blocks = ctx.reshape(frames, n + 2, d)
    for f in range(frames):
        assert torch.equal(blocks[f, :n], tokens[f])
        assert torch.equal(blocks[f, n:], shared)


@pytest.mark.parametrize("shared", [None, torch.zeros(0, 4)], ids=["none", "zero-rows"])
def test_frame_context_without_shared_tokens_is_the_frames_tokens_in_order(shared):
    tokens = torch.randn(3, 2, 4)
    assert torch.equal(wan.frame_context(tokens, shared, 3), tokens.reshape(6, 4))


def test_frame_context_resamples_rows_to_the_latent_frames():
    tokens = torch.stack([torch.zeros(2, 4), torch.full((2, 4), 4.0)])  # learned on 2 frames
    ctx = wan.frame_context(tokens, torch.ones(1, 4), latent_frames=5).reshape(5, 3, 4)
    assert torch.equal(ctx[:, 0, 0], torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0]))  # first and last kept, linear between
    assert torch.equal(ctx[:, 2], torch.ones(5, 4))  # the shared set is not resampled


@pytest.mark.parametrize("tokens, shared, message", [
    (torch.zeros(3, 4), None, r"frame tokens must be \[frames, tokens, dim\].*\(3, 4\)"),
    (torch.zeros(3, 0, 4), None, "at least one of each"),
    (torch.zeros(3, 2, 4), torch.zeros(1, 5), r"shared tokens must be \[tokens, 4\].*\(1, 5\)"),
    (torch.zeros(3, 2, 4), torch.zeros(4), r"shared tokens must be \[tokens, 4\]"),
])
def test_frame_context_shape_errors_say_what_is_wrong(tokens, shared, message):
    with pytest.raises(ValueError, match=message):
        wan.frame_context(tokens, shared, 3)


def test_gradients_reach_every_frames_tokens_and_the_shared_set():
    torch.manual_seed(0)
    frames, s, n, d, c = 5, 3, 2, 6, 8
    for learned_rows in (frames, 3):  # also through the resampling
        tokens = torch.randn(learned_rows, n, d, requires_grad=True)
        shared = torch.randn(2, d, requires_grad=True)
        to_k, to_v = torch.nn.Linear(d, c), torch.nn.Linear(d, c)
        ctx = wan.frame_context(tokens, shared, frames)[None]
        out = wan.per_frame_cross_attention(torch.randn(1, frames * s, c), to_k(ctx), to_v(ctx), frames, heads=2)
        (out * torch.randn_like(out)).sum().backward()
        assert torch.all(tokens.grad.abs().amax(dim=(1, 2)) > 0), tokens.grad
        assert shared.grad.abs().amax() > 0


# -- latent frame counts -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("video, latent", [(81, 21), (121, 31), (1, 1), (5, 2), (49, 13)])
def test_latent_frames_and_back(video, latent):
    assert wan.latent_frames_for(video) == latent
    assert wan.video_frames_for(latent) == video


def test_latent_frames_round_down_like_comfyui():
    assert wan.latent_frames_for(80) == 20
    assert wan.latent_frames_for(9, temporal_compression=8) == 2


@pytest.mark.parametrize("bad", [0, -3, 81.0, True, None])
def test_frame_counts_are_validated(bad):
    with pytest.raises(ValueError, match="must be a whole number >= 1"):
        wan.latent_frames_for(bad)
    with pytest.raises(ValueError, match="must be a whole number >= 1"):
        wan.video_frames_for(bad)


def test_the_module_imports_nothing_from_comfyui():
    tree = ast.parse((REPO / "reenact_core" / "wan.py").read_text())
    imported = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and not node.level}
    assert not imported & {"comfy", "comfy_extras", "nodes", "folder_paths", "comfy_api"}, imported


# -- through a real ComfyUI Wan cross-attention ------------------------------------------------------------------------

DIM, HEADS = 64, 4


@pytest.fixture(scope="module")
def comfy_wan():
    """ComfyUI's comfy.ldm.wan.model, imported without nodes (a second or two)."""
    cache = os.environ.get("REENACT_CACHE") or os.path.expanduser("~/.cache/reenact-anything")
    root = os.environ.get("COMFYUI_ROOT") or os.path.join(cache, "comfyui-2025-12")
    if not os.path.isfile(os.path.join(root, "comfy", "ldm", "wan", "model.py")):
        pytest.skip(f"the ComfyUI at {root} has no Wan (comfy/ldm/wan); run with COMFYUI=2025-12 ./dev.sh test")
    from testkit.comfy_env import import_comfy_package

    import_comfy_package(root)
    import comfy.ldm.wan.model
    import comfy.ops

    return comfy


def make_cross_attention(comfy, kind: str, seed: int = 0):
    """A tiny WanT2VCrossAttention / WanI2VCrossAttention, as WanModel builds them, with random weights."""
    settings = {"operations": comfy.ops.disable_weight_init, "device": "cpu", "dtype": torch.float32}
    module = comfy.ldm.wan.model.WAN_CROSSATTENTION_CLASSES[kind](DIM, HEADS, (-1, -1), True, 1e-6, operation_settings=settings)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # disable_weight_init leaves the weights uninitialised
        for name, p in module.named_parameters():
            p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g) if "norm" in name else 0.2 * torch.randn(p.shape, generator=g))
    return module.eval()


def video_and_prompt(b=2, frames=3, s=6, prompt_len=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, frames * s, DIM, generator=g), torch.randn(b, prompt_len, DIM, generator=g)


def comfy_attention(comfy):
    return comfy.ldm.wan.model.optimized_attention


@pytest.mark.parametrize("backend", ["reference", "comfy"])
def test_every_frame_given_the_prompt_is_the_stock_t2v_cross_attention(comfy_wan, backend):
    module = make_cross_attention(comfy_wan, "t2v_cross_attn")
    x, prompt = video_and_prompt()
    attention = comfy_attention(comfy_wan) if backend == "comfy" else wan.reference_attention
    framewise = wan.FramewiseCrossAttention(module, latent_frames=3, attention=attention)
    with torch.no_grad():
        stock = module(x, prompt, transformer_options={})
        got = framewise(x, prompt.repeat(1, 3, 1), transformer_options={})  # frame f's block: the whole prompt
        one = framewise(x[:1], wan.frame_context(prompt[0].expand(3, -1, -1), None, 3))  # the same through frame_context
    torch.testing.assert_close(got, stock, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one, stock[:1], atol=1e-5, rtol=1e-5)


def test_every_frame_given_the_prompt_is_the_stock_i2v_cross_attention(comfy_wan):
    module = make_cross_attention(comfy_wan, "i2v_cross_attn")
    x, prompt = video_and_prompt()
    image = torch.randn(2, 7, DIM, generator=torch.Generator().manual_seed(2))
    framewise = wan.FramewiseCrossAttention(module, latent_frames=3, attention=comfy_attention(comfy_wan))
    assert framewise.has_image_branch
    with torch.no_grad():
        stock = module(x, torch.cat([image, prompt], dim=1), context_img_len=7, transformer_options={})
        got = framewise(x, prompt.repeat(1, 3, 1), context_img=image, transformer_options={})
    torch.testing.assert_close(got, stock, atol=1e-5, rtol=1e-5)


def test_keep_prompt_sums_a_global_attention_over_the_prompt(comfy_wan):
    module = make_cross_attention(comfy_wan, "t2v_cross_attn")
    x, prompt = video_and_prompt()
    framewise = wan.FramewiseCrossAttention(module, latent_frames=3, keep_prompt=True)
    with torch.no_grad():
        stock = module(x, prompt)
        got = framewise(x, prompt.repeat(1, 3, 1), prompt=prompt)
    # o(A + A) = 2 o(A) - bias: both branches see the same prompt here
    torch.testing.assert_close(got, 2 * stock - module.o.bias, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="keep_prompt=True needs the embedded prompt"):
        framewise(x, prompt.repeat(1, 3, 1))
    with pytest.raises(ValueError, match="has no image branch"):
        framewise(x, prompt.repeat(1, 3, 1), prompt=prompt, context_img=prompt)


def test_the_real_module_is_block_diagonal_over_frames(comfy_wan):
    frames, s, n = 4, 6, 3
    module = make_cross_attention(comfy_wan, "t2v_cross_attn")
    framewise = wan.FramewiseCrossAttention(module, latent_frames=frames, attention=comfy_attention(comfy_wan))
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, frames * s, DIM, generator=g)
    tokens, shared = torch.randn(frames, n, DIM, generator=g), torch.randn(2, DIM, generator=g)
    with torch.no_grad():
        ctx = wan.frame_context(tokens, shared, frames)[None]
        before = framewise(x, ctx)
        # the same as one attention over everything with a block-diagonal mask
        q, k, v = module.norm_q(module.q(x)), module.norm_k(module.k(ctx)), module.v(ctx)
        masked = module.o(sdpa(q, k.expand(2, -1, -1), v.expand(2, -1, -1), HEADS, mask=block_mask(frames, s, n + 2)))
        torch.testing.assert_close(before, masked, atol=1e-5, rtol=1e-5)

        perturbed = tokens.clone()
        perturbed[1] += torch.randn(n, DIM, generator=g)
        after = framewise(x, wan.frame_context(perturbed, shared, frames)[None])
    changed = (after - before).abs().reshape(2, frames, s, DIM).amax(dim=(0, 2, 3))
    assert changed[1] > 1e-3
    assert torch.all(changed[[0, 2, 3]] <= 1e-7), changed


def test_gradients_reach_the_tokens_through_the_real_module(comfy_wan):
    frames = 3
    module = make_cross_attention(comfy_wan, "t2v_cross_attn").requires_grad_(False)
    framewise = wan.FramewiseCrossAttention(module, latent_frames=frames, attention=comfy_attention(comfy_wan))
    x, _ = video_and_prompt(b=1, frames=frames)
    tokens = torch.randn(frames, 2, DIM, requires_grad=True)
    shared = torch.randn(1, DIM, requires_grad=True)
    out = framewise(x, wan.frame_context(tokens, shared, frames))
    (out * torch.randn_like(out)).sum().backward()
    assert torch.all(tokens.grad.abs().amax(dim=(1, 2)) > 0)
    assert shared.grad.abs().amax() > 0
