"""Weights that live in page-locked host memory and visit the GPU only while they are used (low-VRAM mode).

`HostWeights` packs modules' parameters and buffers into one host buffer of exactly their size, each module a
contiguous byte range, and page-locks it in place with cudaHostRegister. Two host copies never exist: not
`tensor.pin_memory()`, whose caching allocator rounds each block up to a power of two (a 75 MB weight takes
128 MB, about 1.5x over a whole model), and the memory-mapped safetensors pages of each source tensor are handed
back to the kernel as soon as the tensor is copied (otherwise a file stays resident until its last tensor is
released).

`BlockStreamer` runs a transformer whose 60 blocks stream through two GPU slots: while block i computes on the
current stream, block i+1 (wrapping to the first streamed block for the next step) is copied into the other slot
on a side stream, one contiguous copy per block, so transfers overlap compute. The first `resident_blocks` blocks
can instead be held on the GPU (`hold`, until `drop`; `residency.py` decides how many fit): the first streamed
block's copy then hides behind their compute, and fewer bytes cross the host link per forward. Held blocks'
weights are the device copy (a LoRA merges into it); their host copy stays as loaded, so `drop` only re-points.
Everything outside the blocks (embedders, token refiner, output head: about 0.8 GB) is on the GPU only between
`begin()` and `end()`, i.e. while a section samples. `OnDeviceWhileCalled` does the same for a whole module
around some of its methods or a `session` (the VAE around a section's decode, encoders around their forward).
On the CPU the same bookkeeping runs with plain copies,
which is what the tests check.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import mmap
import threading
import time
import weakref
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

from ..models import all_blocks

logger = logging.getLogger(__name__)

_ALIGN = 512  # bytes; keeps every tensor's start aligned for any dtype and for DMA
_MADV_PAGEOUT = 21  # Linux >= 5.4: reclaim these pages; contents stay valid (never discards data)


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _release_source_pages(tensor: torch.Tensor) -> None:
    """Ask the kernel to reclaim the whole pages under `tensor` (a copied, no longer needed source)."""
    page = mmap.PAGESIZE
    start = (tensor.data_ptr() + page - 1) // page * page
    end = (tensor.data_ptr() + tensor.nbytes) // page * page
    if end > start:
        _libc().madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_PAGEOUT)


@functools.cache
def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc


@dataclass
class WeightGroup:
    """One module's tensors, stored at byte `offset` of the host buffer; `offsets` are relative to the group."""

    tensors: list[torch.Tensor]
    host: list[torch.Tensor]
    offsets: list[int]
    offset: int
    nbytes: int

    def views(self, buffer: torch.Tensor) -> list[torch.Tensor]:
        """Tensors shaped like the group's, over `buffer` (uint8, at least `nbytes`, group-relative)."""
        return [buffer[o : o + h.nbytes].view(h.dtype).view(h.shape) for o, h in zip(self.offsets, self.host)]

    def point_to(self, views: list[torch.Tensor]) -> None:
        for tensor, view in zip(self.tensors, views):
            tensor.data = view


class HostWeights:
    """The tensors of `modules`, moved into one host buffer (page-locked when `pin`), one group per module."""

    def __init__(self, modules: list[torch.nn.Module], pin: bool):
        tensors = [[*module.parameters(), *module.buffers()] for module in modules]  # each listed once
        total = sum(_align(t.nbytes) for group in tensors for t in group)
        self.buffer = torch.empty(total, dtype=torch.uint8)
        self.groups: list[WeightGroup] = []
        cursor = 0
        for group_tensors in tensors:
            start, offsets, host = cursor, [], []
            for tensor in group_tensors:
                view = self.buffer[cursor : cursor + tensor.nbytes].view(tensor.dtype).view(tensor.shape)
                view.copy_(tensor.data)
                if tensor.device.type == "cpu":
                    _release_source_pages(tensor.data)
                tensor.data = view
                offsets.append(cursor - start)
                host.append(view)
                cursor += _align(tensor.nbytes)
            self.groups.append(WeightGroup(group_tensors, host, offsets, start, cursor - start))
        self.pinned = pin and self._page_lock()

    def _page_lock(self) -> bool:
        cudart = torch.cuda.cudart()
        pointer, size = self.buffer.data_ptr(), self.buffer.numel()
        error = int(cudart.cudaHostRegister(pointer, size, 0))
        if error != 0:
            logger.warning(
                "could not page-lock %.1f GiB of host weights (cudaError %d); copies will be slower",
                size / 2**30,
                error,
            )
            return False
        weakref.finalize(self.buffer, cudart.cudaHostUnregister, pointer)
        return True

    def bytes_of(self, group: WeightGroup) -> torch.Tensor:
        return self.buffer[group.offset : group.offset + group.nbytes]

    def onto_device(self, groups: list[WeightGroup], device: torch.device, non_blocking: bool = False) -> torch.Tensor:
        """Copy consecutive `groups` to one new `device` buffer in one copy, and point their tensors at it.

        Returns the buffer, which must live as long as the tensors point there (`WeightGroup.point_to(host)`
        points them back).
        """
        start, end = groups[0].offset, groups[-1].offset + groups[-1].nbytes
        on_device = torch.empty(end - start, dtype=torch.uint8, device=device)
        on_device.copy_(self.buffer[start:end], non_blocking=non_blocking)
        for group in groups:
            group.point_to(group.views(on_device[group.offset - start :]))
        return on_device


def host_to_device_bandwidth(device: torch.device, nbytes: int = 256 * 2**20) -> float:
    """GB/s of a page-locked host-to-device copy of `nbytes`: the link streamed blocks cross (inf off CUDA)."""
    if device.type != "cuda":
        return math.inf
    host = torch.empty(nbytes, dtype=torch.uint8).pin_memory()
    target = torch.empty(nbytes, dtype=torch.uint8, device=device)
    seconds = math.inf
    for _ in range(3):  # the first copy pays for setting up the mapping
        torch.cuda.synchronize(device)
        started = time.perf_counter()
        target.copy_(host, non_blocking=True)
        torch.cuda.synchronize(device)
        seconds = min(seconds, time.perf_counter() - started)
    return nbytes / seconds / 1e9


class OnDeviceWhileCalled:
    """Keeps `module`'s weights on the host; copies them to `device` for the duration of each wrapped call, or of
    a `session` that spans several calls (`weights_on_device`)."""

    def __init__(self, module: torch.nn.Module, device: torch.device, methods: tuple[str, ...], pin: bool):
        self.device = device
        self.host = HostWeights([module], pin)
        self._depth = 0
        self._lock = threading.Lock()  # a decode thread and the caller may open sessions
        for name in methods:
            setattr(module, name, self._wrap(getattr(module, name)))
        module._framepack_on_device = self  # found by `weights_on_device`

    def _to_device(self, value):
        return value.to(self.device) if isinstance(value, torch.Tensor) else value

    @contextmanager
    def session(self):
        """The weights are on the device inside this context (copied in once, however deeply it nests)."""
        group = self.host.groups[0]
        with self._lock:
            if self._depth == 0:
                self.host.onto_device([group], self.device, non_blocking=True)  # the views keep the buffer alive
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    group.point_to(group.host)

    def _wrap(self, method):
        @functools.wraps(method)
        def call(*args, **kwargs):
            with self.session():
                return method(*map(self._to_device, args), **{k: self._to_device(v) for k, v in kwargs.items()})

        return call


def weights_on_device(module: torch.nn.Module):
    """A context in which `module`'s weights are on its execution device: an `OnDeviceWhileCalled` module's
    session, nothing to do for a resident one."""
    helper = getattr(module, "_framepack_on_device", None)
    return helper.session() if helper is not None else nullcontext()


def streams_weights(module: torch.nn.Module) -> bool:
    """Whether `module` is an `OnDeviceWhileCalled` module (its weights wait on the host between uses)."""
    return getattr(module, "_framepack_on_device", None) is not None


@dataclass
class StreamTimings:
    """What streaming cost on the GPU, summed over the sections sampled while a `BlockStreamer` collects it (set
    `streamer.timings`; the benchmarks do): streamed blocks run, the time compute waited for their copies, and
    the time the copies ran on the side stream. Off CUDA only `blocks` counts."""

    blocks: int = 0
    wait_s: float = 0.0
    copy_s: float = 0.0


class BlockStreamer:
    """Streams a packed transformer's blocks through two GPU slots (see the module docstring).

    Use: `begin()`; for each step `activate(i)` / run block i / `release(i)` in block order; `end()`.
    `timings`: a `StreamTimings` to collect into, or None (the default: no events recorded).
    """

    def __init__(self, model: torch.nn.Module, device: torch.device, pin: bool, resident_blocks: int = 0):
        self.device = device
        self.blocks = all_blocks(model)
        block_lists = {"transformer_blocks", "single_transformer_blocks"}
        self.resident_modules = [child for name, child in model.named_children() if name not in block_lists]
        self.host = HostWeights(self.resident_modules + self.blocks, pin)
        self.resident = self.host.groups[: len(self.resident_modules)]
        self.block_groups = self.host.groups[len(self.resident_modules) :]
        self.cuda = device.type == "cuda"
        self.copy_stream = torch.cuda.Stream(device) if self.cuda else None
        self._active = False
        self._computing: int | None = None  # the slot of the block being computed
        self._held: torch.Tensor | None = None
        self.timings: StreamTimings | None = None
        self._timed: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []
        self._partition(resident_blocks)

    def _partition(self, resident_blocks: int) -> None:
        if not 0 <= resident_blocks < len(self.blocks):
            raise ValueError(f"resident_blocks must be 0 to {len(self.blocks) - 1}: at least one block streams")
        self.resident_blocks = resident_blocks
        self.held_groups = self.block_groups[:resident_blocks]
        self.streamed_groups = self.block_groups[resident_blocks:]
        self.slot_bytes = max(group.nbytes for group in self.streamed_groups)

    def set_resident_blocks(self, resident_blocks: int) -> None:
        """Hold the first `resident_blocks` blocks from now on (a request of another size needs more or less room).

        Only outside sampling. If blocks were held, the new first `resident_blocks` are copied to the device again.
        """
        if resident_blocks == self.resident_blocks:
            return
        if self._active:
            raise RuntimeError("the held blocks cannot change while a section samples")
        holding = self._held is not None
        self.drop()
        self._partition(resident_blocks)
        if holding:
            self.hold()

    @property
    def streamed_bytes(self) -> int:
        """Bytes copied to the device per forward (the blocks that are not held)."""
        return sum(group.nbytes for group in self.streamed_groups)

    def hold(self) -> None:
        """Copy the first `resident_blocks` blocks to the device and keep them there until `drop`."""
        if self._held is not None or not self.held_groups:
            return
        self._held = self.host.onto_device(self.held_groups, self.device)

    def drop(self) -> None:
        """Point the held blocks back at their host copy and free their device memory."""
        if self._held is None:
            return
        for group in self.held_groups:
            group.point_to(group.host)
        self._held = None

    def begin(self) -> None:
        """Put the non-block weights on the device, allocate the two slots and start loading block 0."""
        if self._active:
            return
        self._resident_buffer = self.host.onto_device(self.resident, self.device, non_blocking=True)
        self.slots = [torch.empty(self.slot_bytes, dtype=torch.uint8, device=self.device) for _ in range(2)]
        self.slot_holds: list[int | None] = [None, None]
        self.copied = [torch.cuda.Event() if self.cuda else None for _ in range(2)]
        self.released = [torch.cuda.Event() if self.cuda else None for _ in range(2)]
        self._computing: int | None = None
        self._active = True
        self._load(0)

    def end(self) -> None:
        """Point every weight back at its host copy and free the device memory."""
        if not self._active:
            return
        if self.cuda:  # nothing may still read or write the buffers when they return to the allocator
            torch.cuda.current_stream(self.device).synchronize()
            self.copy_stream.synchronize()
        for group in [*self.resident, *self.streamed_groups]:
            group.point_to(group.host)
        del self._resident_buffer, self.slots
        self._active = False
        self._collect_timings()

    def _mark(self, stream) -> torch.cuda.Event | None:
        """A timing event recorded on `stream`, when timings are collected on a GPU."""
        if self.timings is None or not self.cuda:
            return None
        event = torch.cuda.Event(enable_timing=True)
        event.record(stream)
        return event

    def _collect_timings(self) -> None:
        """Add the section's recorded intervals (all finished: `end` synchronised) to `timings`."""
        timed, self._timed = self._timed, []
        if self.timings is None:
            return
        for kind, start, stop in timed:
            seconds = start.elapsed_time(stop) / 1000
            if kind == "wait":
                self.timings.wait_s += seconds
            else:
                self.timings.copy_s += seconds

    def _load(self, index: int) -> int:
        """Copy streamed block `index` into a slot on the side stream, once the slot's previous block is done;
        returns the slot. Never the slot of the block being computed: with an odd number of streamed blocks, the
        next step's first block would otherwise land in the last block's slot."""
        if index in self.slot_holds:
            return self.slot_holds.index(index)
        slot = 0 if self._computing is None else 1 - self._computing
        group = self.streamed_groups[index]
        source = self.host.bytes_of(group)
        if self.cuda:
            with torch.cuda.stream(self.copy_stream):
                if self.slot_holds[slot] is not None:
                    self.copy_stream.wait_event(self.released[slot])
                started = self._mark(self.copy_stream)
                self.slots[slot][: group.nbytes].copy_(source, non_blocking=True)
                self.copied[slot].record(self.copy_stream)
                if started is not None:
                    self._timed.append(("copy", started, self._mark(self.copy_stream)))
        else:
            self.slots[slot][: group.nbytes].copy_(source)
        self.slot_holds[slot] = index
        return slot

    def activate(self, index: int) -> None:
        """Make streamed block `index` (0 = the first block not held) usable on the current stream, and start
        prefetching the next one."""
        slot = self._load(index)
        self._computing = slot
        if self.timings is not None:
            self.timings.blocks += 1
        if self.cuda:
            compute = torch.cuda.current_stream(self.device)
            waiting = self._mark(compute)
            compute.wait_event(self.copied[slot])
            if waiting is not None:
                self._timed.append(("wait", waiting, self._mark(compute)))
        group = self.streamed_groups[index]
        group.point_to(group.views(self.slots[slot]))
        self._load((index + 1) % len(self.streamed_groups))

    def release(self, index: int) -> None:
        """Streamed block `index` is queued; its slot may be overwritten once the queued work has run."""
        if self.cuda:
            self.released[self.slot_holds.index(index)].record(torch.cuda.current_stream(self.device))
        group = self.streamed_groups[index]
        group.point_to(group.host)

    @contextmanager
    def weights_of(self, index: int):
        """Block `index`'s weights (counting every block) are on the device inside this context."""
        if index < self.resident_blocks:
            self.hold()
            yield
            return
        streamed = index - self.resident_blocks
        self.activate(streamed)
        try:
            yield
        finally:
            self.release(streamed)

    @contextmanager
    def on_device(self):
        self.begin()
        try:
            yield
        finally:
            self.end()
