"""Block swap for a frozen model: some of its blocks live in host RAM and are copied to the GPU only while they run.

Motion inversion never updates the model's weights, so a block that does not fit in VRAM needs no way back: its weights
stay in (pinned) host memory, and each call of the block runs on a fresh device copy of them that is dropped as soon as
autograd no longer needs it (host-to-device only, as musubi-tuner does for frozen weights, and unlike an offloader that
moves a block back and forth). With gradient checkpointing per block, autograd keeps none of a block's copies past its
forward; the backward pass recomputes the block, which copies it once more. So a step copies each swapped block twice,
and at most two blocks' copies exist at once: the running one, and the next one, copied ahead on a side stream while
the running one computes (the next block up in the forward pass, down in the backward pass).

Without checkpointing, autograd would keep every swapped block's copy until the backward pass: no memory saved, which
is why callers turn checkpointing on with block swap.

Why not ComfyUI's own partial loading (lowvram): current ComfyUI copies a weight that is not on the GPU into a cast
buffer that the next layer reuses (async offload, on by default on NVIDIA), so a weight autograd saved for the backward
pass would be overwritten before it is used; ComfyUI's trainer works around that by checkpointing every single linear
layer. Here every layer finds its weights already on the device, in fresh tensors of their own.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Iterable

import torch

log = logging.getLogger("reenact_anything")


class BlockSwap:
    """Keeps ``blocks[i]`` for ``i`` in ``swapped`` on the host and runs them on ``device`` copies (see the module).

    ``install()`` moves the swapped blocks' weights to the host and wraps their ``forward``; ``remove()`` unwraps them
    (their weights stay on the host: the model is a private copy thrown away afterwards). ``copies`` counts block
    copies made, ``misses`` the calls not copied ahead, ``peak_blocks_in_flight`` the most blocks whose copies were
    alive at once (for tests and the bench).
    """

    def __init__(self, blocks: list[torch.nn.Module], swapped: Iterable[int], device: torch.device, pin: bool = True, streams=None):
        self.blocks, self.device = list(blocks), torch.device(device)
        self.swapped = sorted(set(swapped))
        if any(not 0 <= i < len(self.blocks) for i in self.swapped):
            raise ValueError(f"blocks to swap {self.swapped} are not all among the model's {len(self.blocks)} blocks")
        self.pin = pin and self.device.type == "cuda"
        self.copies = 0
        self.misses = 0  # calls whose block was not copied ahead (the copy ran while the GPU waited)
        self.peak_blocks_in_flight = 0
        self._pending: dict[int, _Copy] = {}
        self._last: int | None = None
        self._direction = 1
        self._in_flight: list[list[weakref.ref]] = []
        self._streams = streams  # CudaSideStream on CUDA (made on first use); a stand-in in tests
        self._forwards: dict[int, object] = {}

    # -- placement ---------------------------------------------------------------------------------------------------

    @staticmethod
    def block_bytes(block: torch.nn.Module) -> int:
        return sum(t.numel() * t.element_size() for t in _tensors(block).values())

    @property
    def host_bytes(self) -> int:
        return sum(self.block_bytes(self.blocks[i]) for i in self.swapped)

    def install(self) -> BlockSwap:
        for i in self.swapped:
            if i in self._forwards:
                continue
            block = self.blocks[i]
            for name, tensor in _tensors(block).items():
                _set(block, name, self._to_host(tensor))
            original = block.forward
            self._forwards[i] = original
            block.forward = self._runner(i, original)
        return self

    def extend(self, more: Iterable[int]) -> None:
        """Swap these blocks too (the memory preflight found the ones swapped so far are not enough)."""
        self.swapped = sorted(set(self.swapped) | set(more))
        self.install()

    def remove(self) -> None:
        for i, original in self._forwards.items():
            self.blocks[i].forward = original
        self._forwards.clear()
        self._pending.clear()

    def _to_host(self, tensor: torch.Tensor) -> torch.Tensor:
        host = tensor.detach().to("cpu")
        if self.pin:
            try:
                host = host.pin_memory()
            except RuntimeError as error:  # the OS would not lock more RAM: pageable copies work, only slower
                log.warning("reenact: block swap keeps weights in pageable RAM (pinning failed: %s); copies will be slower", error)
                self.pin = False
        return host

    # -- running -----------------------------------------------------------------------------------------------------

    def _runner(self, index: int, original):
        def run(*args, **kwargs):
            tensors = self._take(index)
            self._note_in_flight(tensors)
            with _weights(self.blocks[index], tensors):
                return original(*args, **kwargs)

        return run

    def _take(self, index: int) -> dict[str, torch.Tensor]:
        """This block's device copy (prefetched, or made now), and the copy of the block expected next started."""
        pending = self._pending.pop(index, None)
        self._pending.clear()  # a prefetch for another block: the pass went elsewhere (an evaluation forward), dropped
        if pending is None:
            self.misses += 1
        tensors = (pending if pending is not None else self._copy(index)).ready()
        if pending is None and self._last is not None:  # not the block expected: follow the pass as it goes
            self._direction = 1 if index == self.swapped[0] or index > self._last else -1
        self._last = index
        bottom, top = self.swapped[0], self.swapped[-1]
        if self._direction > 0 and index == top and not torch.is_grad_enabled():
            following = bottom  # a forward pass without backward (an evaluation): the next forward pass starts at the bottom
        elif index == (top if self._direction > 0 else bottom):
            # The pass turns here: the backward pass recomputes the top block first, and the next forward pass
            # starts at the bottom one, so the block expected next is this one again.
            self._direction = -self._direction
            following = index
        else:
            following = self._neighbour(index, self._direction)
        if following is not None:
            self._pending[following] = self._copy(following)
        return tensors

    def _neighbour(self, index: int, direction: int) -> int | None:
        later = [i for i in self.swapped if (i - index) * direction > 0]
        return (min(later) if direction > 0 else max(later)) if later else None

    def _copy(self, index: int) -> _Copy:
        self.copies += 1
        host = _tensors(self.blocks[index])
        if self._streams is None and self.device.type == "cuda":
            self._streams = CudaSideStream(self.device)
        if self._streams is None:  # no streams to overlap with (CPU, other accelerators): copied now
            return _Copy({name: t.to(self.device, copy=True) for name, t in host.items()})
        return _Copy(*self._streams.copy(index, host), streams=self._streams)

    def _note_in_flight(self, tensors: dict[str, torch.Tensor]) -> None:
        """Track which blocks' copies are still alive (autograd may hold them), to report the most at once."""
        self._in_flight = [refs for refs in self._in_flight if any(r() is not None for r in refs)]
        self._in_flight.append([weakref.ref(t.untyped_storage()) for t in tensors.values()])
        self.peak_blocks_in_flight = max(self.peak_blocks_in_flight, len(self._in_flight) + len(self._pending))


class _Copy:
    """A block's device tensors; with streams, copied on the side stream and usable once ``done`` is reached."""

    def __init__(self, tensors: dict[str, torch.Tensor], done=None, streams=None):
        self.tensors, self.done, self.streams = tensors, done, streams

    def ready(self) -> dict[str, torch.Tensor]:
        if self.streams is not None:
            self.streams.wait(self.tensors, self.done)
        return self.tensors


class CudaSideStream:
    """The CUDA calls of copying ahead: the copy is issued on a side stream, so it runs while the current block computes
    on the main stream; the main stream waits for it only when the block it is for runs. (tests/test_block_swap.py
    checks that order with a stand-in; bench/gpu_check.py runs this on a GPU.)"""

    def __init__(self, device: torch.device):
        self.device, self.side = device, torch.cuda.Stream(device)

    def copy(self, index: int, host: dict[str, torch.Tensor]):
        with torch.cuda.stream(self.side):
            tensors = {name: t.to(self.device, non_blocking=True) for name, t in host.items()}
            done = torch.cuda.Event()
            done.record(self.side)
        return tensors, done

    def wait(self, tensors: dict[str, torch.Tensor], done) -> None:
        main = torch.cuda.current_stream(self.device)
        main.wait_event(done)
        for t in tensors.values():
            t.record_stream(main)  # allocated on the side stream, used and freed on this one


def _tensors(block: torch.nn.Module) -> dict[str, torch.Tensor]:
    named = dict(block.named_parameters(remove_duplicate=False))
    named.update(block.named_buffers(remove_duplicate=False))
    return named


def _owner(block: torch.nn.Module, name: str) -> tuple[torch.nn.Module, str]:
    *path, attr = name.split(".")
    owner = block
    for part in path:
        owner = getattr(owner, part)
    return owner, attr


def _set(block: torch.nn.Module, name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Put ``tensor`` where ``name`` is (a Parameter stays a frozen Parameter); return what was there."""
    owner, attr = _owner(block, name)
    table = owner._parameters if attr in owner._parameters else owner._buffers
    old = table[attr]
    table[attr] = torch.nn.Parameter(tensor, requires_grad=False) if isinstance(old, torch.nn.Parameter) else tensor
    return old


@contextlib.contextmanager
def _weights(block: torch.nn.Module, tensors: dict[str, torch.Tensor]):
    """Run ``block`` on these tensors in place of its host weights; the host weights are back afterwards."""
    saved = {name: _set(block, name, tensor) for name, tensor in tensors.items()}
    try:
        yield
    finally:
        for name, tensor in saved.items():
            owner, attr = _owner(block, name)
            (owner._parameters if attr in owner._parameters else owner._buffers)[attr] = tensor
