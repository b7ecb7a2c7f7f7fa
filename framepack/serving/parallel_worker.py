"""A worker process of sequence parallelism: rank r's transformers and the loop that runs rank 0's commands.

Rank 0 (`parallel.SequenceParallel`) spawns it with `worker_main`; it loads the transformer variants on its device,
joins the process group when told, takes rank 0's acceleration decisions, and then runs each command rank 0 sends
over its pipe (the section's RoPE tables, the block stack on its slice of the tokens, LoRA merges, its peak memory)
until told to stop or rank 0 goes away. An error is reported to rank 0 before the process exits.
"""

from __future__ import annotations

import logging
import traceback
from contextlib import ExitStack
from datetime import timedelta

import torch
import torch.distributed as dist

from ..config import LoraDownloads
from ..models import lora
from ..runtime.sequence_parallel import HOST, backend_for, empty_from_spec, install_ulysses, rank_device
from ..runtime.transformer import PackedTransformer

logger = logging.getLogger(__name__)


def worker_main(config, rank: int, world: int, port: int, connection) -> None:
    """A worker process: load, join, then serve rank 0's commands until told to stop or rank 0 goes away."""
    from ..logs import configure_logging

    configure_logging("stderr")
    try:
        _Worker(config, rank, world, port, connection).serve()
    except Exception as error:  # noqa: BLE001  (reported to rank 0, which is waiting for a reply or a collective)
        logger.error(f"worker {rank}: {traceback.format_exc()}")
        try:
            connection.send(("error", f"{type(error).__name__}: {error}"))
        except OSError:
            pass
        raise SystemExit(1) from None


class _Worker:
    """Rank `rank`'s transformers and the command loop (the methods named like the commands)."""

    def __init__(self, config, rank: int, world: int, port: int, connection):
        from ..models import load_transformer

        torch.set_grad_enabled(False)
        self.config, self.rank, self.world, self.connection = config, rank, world, connection
        self.device = rank_device(config.resolved_device(), rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        else:  # CPU processes (tests): one thread each, or OpenMP threads spinning in wait starve the other ranks
            torch.set_num_threads(1)
        dtype = config.resolved_dtype()
        self.models = {
            variant: load_transformer(config.weights_dir, variant, dtype, self.device) for variant in config.variants
        }
        self.port = port
        self.rotary: tuple[torch.Tensor, torch.Tensor] | None = None
        self.loras = ExitStack()
        connection.send(("loaded", None))

    def serve(self) -> None:
        while True:
            try:
                command, *args = self.connection.recv()
            except EOFError:  # rank 0 is gone
                return
            if command == "stop":
                self.loras.close()
                if dist.is_initialized():
                    dist.destroy_process_group()
                return
            getattr(self, command)(*args)

    def join(self, decisions: dict, float8: bool) -> None:
        from ..runtime.acceleration import accelerate
        from ..runtime.compilation import CompileRecord

        timeout = timedelta(seconds=self.config.parallel_timeout)
        store = dist.TCPStore(HOST, self.port, self.world, is_master=False, timeout=timeout)
        dist.init_process_group(
            backend_for(self.device), store=store, rank=self.rank, world_size=self.world, timeout=timeout
        )
        record = CompileRecord() if any(compiled for _, compiled in decisions.values()) else None
        applied = {}
        for variant, model in self.models.items():
            attention, compiled = decisions[variant]
            result = accelerate(
                model, self.device, attention, compile_blocks_with=record if compiled else None, float8=float8
            )
            applied[variant] = (result.attention, result.compiled)
            install_ulysses(model, self.rank, self.world)
        self.runners = {variant: PackedTransformer(model, self.device) for variant, model in self.models.items()}
        self.connection.send(("ready", applied))

    def section(self, cos_spec, sin_spec) -> None:
        cos, sin = empty_from_spec(cos_spec, self.device), empty_from_spec(sin_spec, self.device)
        dist.broadcast(cos, src=0)
        dist.broadcast(sin, src=0)
        self.rotary = (cos, sin)

    def blocks(self, variant: str, local_spec, context_spec, temb_spec) -> None:
        context, temb = empty_from_spec(context_spec, self.device), empty_from_spec(temb_spec, self.device)
        dist.broadcast(context, src=0)
        dist.broadcast(temb, src=0)
        local = empty_from_spec(local_spec, self.device)
        dist.scatter(local, None, src=0)
        local = self.runners[variant].block_stack(local, context, temb, self.rotary)
        dist.gather(local.contiguous(), None, dst=0)

    def merge_loras(self, variant: str, files: list[tuple[str, str, float]]) -> None:
        model = self.models[variant]
        loaded = lora.load_request_loras(model, files, LoraDownloads())  # local files: nothing to download
        self.loras.enter_context(lora.merged_loras(model, [(item.layers, item.scale) for item in loaded], self.device))
        self.connection.send(("merged", None))

    def unmerge_loras(self) -> None:
        self.loras.close()

    def peak_memory(self) -> None:
        if self.device.type == "cuda":
            peaks = {
                "peak_allocated_gib": torch.cuda.max_memory_allocated(self.device) / 2**30,
                "peak_reserved_gib": torch.cuda.max_memory_reserved(self.device) / 2**30,
            }
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            import resource

            peaks = {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
        self.connection.send(("peak_memory", peaks))
