"""reenact_core.block_swap on a tiny frozen stack (CPU: the "device" copies are host copies, which is all the logic needs).

What only a GPU shows (the side-stream copies overlapping compute, pinned memory) is in bench/gpu_check.py."""

from __future__ import annotations

import pytest
import torch
import torch.utils.checkpoint

from reenact_core.block_swap import BlockSwap

BLOCKS, WIDTH = 6, 16


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = torch.nn.LayerNorm(WIDTH)
        self.linear = torch.nn.Linear(WIDTH, WIDTH)
        self.register_buffer("scale", torch.tensor(0.5))

    def forward(self, x, context):
        return x + self.scale * torch.tanh(self.linear(self.norm(x)) + context)


def stack(seed=0):
    torch.manual_seed(seed)
    blocks = torch.nn.ModuleList(Block() for _ in range(BLOCKS)).requires_grad_(False)
    return blocks


def checkpoint(blocks):
    for block in blocks:
        forward = block.forward
        block.forward = lambda *a, _f=forward, **k: torch.utils.checkpoint.checkpoint(_f, *a, use_reentrant=False, **k)


def step(blocks, context):
    x = torch.ones(3, WIDTH)
    for block in blocks:
        x = block(x, context)
    loss = x.square().mean()
    loss.backward()
    return loss.detach().item()


def tokens():
    return torch.linspace(-1, 1, WIDTH).requires_grad_(True)


@pytest.mark.parametrize("checkpointing", [True, False])
def test_swapped_blocks_give_the_same_loss_and_token_gradient_and_their_host_weights_are_untouched(checkpointing):
    reference, swapped = stack(), stack()
    want_context, got_context = tokens(), tokens()
    want = step(reference, want_context)
    swap = BlockSwap(swapped, [3, 4, 5], torch.device("cpu")).install()
    host = {name: t for name, t in swapped[4].named_parameters()}
    before = {name: t.clone() for name, t in host.items()}
    if checkpointing:
        checkpoint(swapped)
    assert step(swapped, got_context) == pytest.approx(want, rel=1e-6)
    torch.testing.assert_close(got_context.grad, want_context.grad)
    for name, t in swapped[4].named_parameters():  # the block's own tensors: the same objects, the same values
        assert t is host[name] and torch.equal(t, before[name]) and t.grad is None
    # each block runs once, and once more when checkpointing recomputes it; one more copy is made ahead for the next pass
    assert swap.copies == 3 * (2 if checkpointing else 1) + 1


def test_with_checkpointing_at_most_two_blocks_are_on_the_device_and_every_copy_after_the_first_was_made_ahead():
    blocks = stack()
    swap = BlockSwap(blocks, range(2, BLOCKS), torch.device("cpu")).install()
    checkpoint(blocks)
    context = tokens()
    for _ in range(3):
        step(blocks, context)
    assert swap.peak_blocks_in_flight <= 2
    assert swap.misses == 1  # the very first block; after it, the forward and backward passes are each prefetched
    assert swap.copies == 3 * 2 * 4 + 1  # + the copy made ahead for a fourth step


def test_without_checkpointing_autograd_keeps_every_swapped_block_which_is_why_callers_turn_it_on():
    blocks = stack()
    swap = BlockSwap(blocks, range(2, BLOCKS), torch.device("cpu")).install()
    step(blocks, tokens())
    assert swap.peak_blocks_in_flight >= 4


def test_an_evaluation_forward_in_between_only_costs_a_copy_made_late():
    blocks = stack()
    swap = BlockSwap(blocks, [4, 5], torch.device("cpu")).install()
    checkpoint(blocks)
    context = tokens()
    step(blocks, context)
    with torch.no_grad():
        x = torch.ones(3, WIDTH)
        for block in blocks:
            x = block(x, context)
    loss_then = step(blocks, context)
    assert loss_then == pytest.approx(step(stack(), tokens()), rel=1e-6)
    assert swap.misses <= 3


def test_install_extend_and_remove():
    blocks = stack()
    originals = [block.forward for block in blocks]
    swap = BlockSwap(blocks, [5], torch.device("cpu")).install().install()
    swap.extend([4])
    assert swap.swapped == [4, 5] and swap.host_bytes == 2 * BlockSwap.block_bytes(blocks[0])
    assert blocks[4].forward != originals[4]
    swap.remove()
    assert [block.forward for block in blocks] == originals
    with pytest.raises(ValueError, match="among the model's 6 blocks"):
        BlockSwap(blocks, [6], torch.device("cpu"))


class StandInStreams:
    """Stands in for CudaSideStream on CPU: logs when each block's copy is issued and when the main stream waits for it."""

    def __init__(self, log):
        self.log, self.tokens = log, {}

    def copy(self, index, host):
        self.log.append(("copy", index))
        return {name: t.clone() for name, t in host.items()}, index

    def wait(self, tensors, done):
        self.log.append(("wait", done))


def test_with_streams_the_next_copy_is_issued_before_the_running_block_computes_and_each_block_waits_for_its_own():
    log = []
    blocks = stack()
    for i, block in enumerate(blocks):
        block.linear.register_forward_pre_hook(lambda module, args, i=i: log.append(("run", i)))  # inside the block's own forward
    BlockSwap(blocks, [3, 4, 5], torch.device("cpu"), streams=StandInStreams(log)).install()
    checkpoint(blocks)
    context = tokens()
    for _ in range(2):
        step(blocks, context)
    runs = [k for k, event in enumerate(log) if event[0] == "run" and event[1] >= 3]
    for k in runs:  # a swapped block runs after the main stream waited for its own copy (the wait just before)
        assert [event for event in log[:k] if event[0] == "wait"][-1] == ("wait", log[k][1])
    # The second step, forward then backward: each block waits for its copy, then the next block's copy is issued before
    # it computes (4 after 3, 5 after 4; the recompute of 5 first, 4 and 3 below it; then 3 again for the next step).
    second = [event for event in log[runs[len(runs) // 2]:] if event[1] >= 3]
    assert second == [("run", 3), ("wait", 4), ("copy", 5), ("run", 4), ("wait", 5), ("copy", 5), ("run", 5),
                      ("wait", 5), ("copy", 4), ("run", 5), ("wait", 4), ("copy", 3), ("run", 4), ("wait", 3), ("copy", 3), ("run", 3)]
