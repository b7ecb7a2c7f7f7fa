"""One video on several GPUs: worker processes that run the transformer's blocks with rank 0 (Ulysses).

Rank 0 is the process the service, the CLI or the studio runs in; it does everything as on one GPU (request,
encoders, sampler, TeaCache, history, decode). Only the block stack is shared (`SequenceParallelTransformer`,
`sequence_parallel.py`): rank 0 pads the video tokens (B, S, D) to a multiple of N, scatters one slice to each
rank, broadcasts the context and the time embedding, runs its own slice through the 60 blocks (their attention
exchanges tokens with the other ranks: `sequence_parallel.py`) and gathers the slices back. Workers only run blocks
when rank 0 asks, so TeaCache's skips (decided on rank 0 before the stack) and a cancellation (an exception on rank
0 between steps) hold for every rank without further messages.

Workers (`SequenceParallel.start`, `parallel_worker.py`) are spawned processes, worker r on cuda:r (or the CPU, for
tests: N processes with gloo in float32). Each loads only the transformer variants, with rank 0's dtype, attention
kernel, FP8 and compilation decisions. Commands come over a pipe, so an idle worker waits without a timeout;
tensors go through torch.distributed collectives (NCCL on CUDA, gloo on the CPU) that rendezvous on 127.0.0.1 and
time out after `EngineConfig.parallel_timeout` seconds. A worker that died, or a collective that failed or stalled,
raises `ParallelError` on rank 0; the engine then stays failed (every later call raises the same error at once)
until the service restarts.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

from ..config import ENV
from ..runtime.sequence_parallel import (
    HOST,
    SequenceParallelTransformer,
    backend_for,
    install_ulysses,
    split_tokens,
    tensor_spec,
)
from .parallel_worker import worker_main

logger = logging.getLogger(__name__)

STOP_SECONDS = 10.0  # how long a worker gets to stop before it is killed
POLL_SECONDS = 0.2


class ParallelError(RuntimeError):
    """A worker process died or a collective between the processes failed or stalled."""


def describe(world: int, heads: int, device: torch.device) -> str:
    """The setup log's line: 'sequence parallel over 2 GPUs (Ulysses): 24 heads, 12 per GPU; collectives: NCCL'."""
    unit, units = ("GPU", "GPUs") if device.type == "cuda" else ("process", "CPU processes")
    per_rank = -(-heads // world)
    padding = per_rank * world - heads
    padded = f" ({padding} padding head{'s' if padding > 1 else ''})" if padding else ""
    return (
        f"sequence parallel over {world} {units} (Ulysses): {heads} heads, {per_rank} per {unit}{padded}; "
        f"collectives: {'NCCL' if device.type == 'cuda' else 'gloo'}"
    )


def process_count(config, device: torch.device, memory_mode: str) -> int:
    """How many processes run the blocks: `config.gpus` resolved, checked against the GPUs and the memory mode.

    Every GPU holds the whole transformer, so more than one needs high-VRAM mode: asked for explicitly in another
    mode, that is an error; with `auto` it is one GPU, and a warning.
    """
    world = config.resolved_gpus()
    if world == 1:
        return 1
    if device.type == "cuda" and world > torch.cuda.device_count():
        raise ValueError(f"{ENV['gpus']}={config.gpus} but {torch.cuda.device_count()} GPUs are visible")
    if memory_mode not in ("high", "cpu"):
        if config.gpus == "auto":
            logger.warning(f"{memory_mode} memory mode runs on one GPU: every GPU would need the whole transformer")
            return 1
        raise ValueError(
            f"{ENV['gpus']}={config.gpus} needs high-VRAM mode (every GPU holds the whole transformer), but the "
            f"memory mode is {memory_mode}: set {ENV['memory_mode']}=high or {ENV['gpus']}=1"
        )
    return world


class SequenceParallel:
    """Rank 0's handle on the worker processes: starts them, sends them work, reports their failures.

    Args:
        processes, connections: worker r (1 to N-1) and the pipe to it, at index r - 1.
        device: rank 0's device; timeout: seconds before a collective fails.
    """

    def __init__(self, processes, connections, store, device: torch.device, timeout: float):
        self.processes, self.connections, self.store = processes, connections, store
        self.world = len(processes) + 1
        self.device, self.timeout = device, timeout
        self.failure: ParallelError | None = None
        self.joined = False

    @classmethod
    def start(cls, config, world: int, device: torch.device) -> SequenceParallel:
        """Spawn the N-1 workers; they load their transformers while rank 0 loads everything else."""
        timeout = timedelta(seconds=config.parallel_timeout)
        # Rank 0's store on a free port; the workers connect to it when told to join.
        store = dist.TCPStore(HOST, 0, world, is_master=True, timeout=timeout, wait_for_workers=False)
        context = multiprocessing.get_context("spawn")
        processes, connections = [], []
        for rank in range(1, world):
            ours, theirs = context.Pipe()
            process = context.Process(
                target=worker_main,
                args=(config, rank, world, store.port, theirs),
                name=f"framepack-worker-{rank}",
            )
            process.start()
            theirs.close()
            processes.append(process)
            connections.append(ours)
        group = cls(processes, connections, store, device, config.parallel_timeout)
        atexit.register(group.close)
        return group

    def join(self, accelerations: dict, transformers: dict, float8: bool) -> None:
        """Once rank 0 is loaded and accelerated: wait for the workers' models, form the process group, give the
        workers rank 0's decisions (attention kernel per variant, FP8, compilation) and route every rank's
        attention through Ulysses. Raises ParallelError naming a worker that failed."""
        for rank in self.ranks():
            self._reply(rank, "loaded", deadline=None)
        decisions = {variant: (applied.attention, applied.compiled) for variant, applied in accelerations.items()}
        self._send("join", decisions, float8)
        dist.init_process_group(
            backend_for(self.device),
            store=self.store,
            rank=0,
            world_size=self.world,
            timeout=timedelta(seconds=self.timeout),
        )
        for rank in self.ranks():
            applied = self._reply(rank, "ready", deadline=time.monotonic() + self.timeout)
            for variant, (attention, compiled) in applied.items():
                if (attention, compiled) != decisions[variant]:
                    raise self._fail(
                        f"worker {rank} runs the {variant} transformer with attention {attention}, compiled "
                        f"{compiled}, where rank 0 runs {decisions[variant]}"
                    )
        for model in transformers.values():
            install_ulysses(model, 0, self.world)
        self.joined = True

    def transformer(self, model, variant: str) -> SequenceParallelTransformer:
        """Rank 0's runner for `variant`'s transformer `model` (its blocks routed through Ulysses by `join`)."""
        return SequenceParallelTransformer(model, self, variant)

    # Commands. Each checks the workers first, so a dead one is reported before rank 0 waits for it.

    def set_section(self, rotary: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Send the section's RoPE tables (S, head_dim) each to every rank, once per section."""
        self._send("section", tensor_spec(rotary[0]), tensor_spec(rotary[1]))
        with self.collectives():
            for table in rotary:
                dist.broadcast(table.contiguous(), src=0)

    def scatter_blocks(self, variant: str, hidden: torch.Tensor, context: torch.Tensor, temb: torch.Tensor):
        """Start the block stack on every rank; returns rank 0's slice (B, s, D) of the padded tokens (B, S, D)."""
        slices = split_tokens(hidden, self.world)
        self._send("blocks", variant, tensor_spec(slices[0]), tensor_spec(context), tensor_spec(temb))
        with self.collectives():
            dist.broadcast(context.contiguous(), src=0)
            dist.broadcast(temb.contiguous(), src=0)
            local = torch.empty_like(slices[0])
            dist.scatter(local, [piece.contiguous() for piece in slices], src=0)
        return local

    def gather_tokens(self, local: torch.Tensor, tokens: int) -> torch.Tensor:
        """Every rank's output slice (B, s, D), in rank order, without the pads: (B, tokens, D)."""
        with self.collectives():
            slices = [torch.empty_like(local) for _ in range(self.world)]
            dist.gather(local.contiguous(), slices, dst=0)
        return torch.cat(slices, dim=1)[:, :tokens]

    @contextmanager
    def merged_loras(self, variant: str, files: list[tuple[str, str, float]]) -> Iterator[None]:
        """Inside: the (input name, local file, scale) LoRAs merged into every worker's `variant` transformer."""
        if not files:
            yield
            return
        self._send("merge_loras", variant, files)
        for rank in self.ranks():
            self._reply(rank, "merged", deadline=time.monotonic() + self.timeout)
        try:
            yield
        finally:
            if self.failure is None:
                self._send("unmerge_loras")

    def worker_peak_memory(self) -> list[dict]:
        """Each worker's peak memory since its last report (GiB): allocated and reserved on a GPU, resident on the
        CPU; the peaks restart from here."""
        self._send("peak_memory")
        return [self._reply(rank, "peak_memory", deadline=time.monotonic() + self.timeout) for rank in self.ranks()]

    def ranks(self) -> range:
        """The workers' ranks: 1 to N-1."""
        return range(1, self.world)

    @contextmanager
    def collectives(self) -> Iterator[None]:
        """Turn a failed or stalled collective into a ParallelError (naming a dead worker, if one died).

        Anything else that stops rank 0 in the middle (an interrupt) leaves the workers inside the exchange, out
        of step with rank 0 for good: that fails the group too, and is raised as it is.
        """
        try:
            yield
        except ParallelError:
            raise
        except RuntimeError as error:  # torch.distributed's errors (DistBackendError, timeouts) are RuntimeErrors
            for process in self.processes:  # a worker that just died: let its exit be seen
                process.join(POLL_SECONDS)
            first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise self._fail(
                f"a collective between the {self.world} processes failed or stalled for {self.timeout:g} s "
                f"({first_line})"
            ) from error
        except BaseException:
            self._fail("rank 0 was interrupted in the middle of a forward")
            raise

    def check(self) -> None:
        """Raise ParallelError if the group failed before or a worker is no longer running."""
        if self.failure is not None:
            raise self.failure
        for rank, process in enumerate(self.processes, start=1):
            if not process.is_alive():
                raise self._fail(f"worker {rank} stopped (exit code {process.exitcode})")

    def close(self) -> None:
        """Stop the workers (asked first, killed if they do not stop) and leave the process group."""
        for connection in self.connections:
            try:
                connection.send(("stop",))
            except (OSError, ValueError):  # a worker that is already gone
                pass
        for process in self.processes:
            process.join(STOP_SECONDS)
            if process.is_alive():
                process.kill()
                process.join()
        for connection in self.connections:
            connection.close()
        self.connections = []
        if self.joined and dist.is_initialized():
            dist.destroy_process_group()
        self.joined = False
        if self.failure is None:
            self.failure = ParallelError("the workers were stopped (engine closed)")

    def _fail(self, what: str) -> ParallelError:
        """Record the group's failure, explained by the first dead worker if any: every later call raises it."""
        dead = [
            f"worker {rank} stopped (exit code {process.exitcode})"
            for rank, process in enumerate(self.processes, start=1)
            if not process.is_alive()
        ]
        self.failure = ParallelError(
            f"sequence parallelism over {self.world} processes failed: {dead[0] if dead else what}; restart the service"
        )
        return self.failure

    def _send(self, *command) -> None:
        self.check()
        for rank, connection in enumerate(self.connections, start=1):
            try:
                connection.send(command)
            except OSError as error:
                raise self._fail(f"worker {rank} does not take commands ({error})") from error

    def _reply(self, rank: int, expected: str, deadline: float | None):
        """Worker `rank`'s next reply, which must be `expected`; its payload. Fails on a dead worker, an error
        it reports, or when `deadline` (time.monotonic) passes."""
        connection = self.connections[rank - 1]
        while not connection.poll(POLL_SECONDS):
            self.check()
            if deadline is not None and time.monotonic() > deadline:
                raise self._fail(f"worker {rank} did not answer {expected!r} within {self.timeout:g} s")
        try:
            kind, payload = connection.recv()
        except EOFError:
            self.processes[rank - 1].join(STOP_SECONDS)
            raise self._fail(f"worker {rank} stopped (exit code {self.processes[rank - 1].exitcode})") from None
        if kind != expected:
            raise self._fail(f"worker {rank}: {payload}")
        return payload
