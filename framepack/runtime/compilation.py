"""Compiling the transformer blocks with torch.compile, and knowing whether they really run compiled.

`FRAMEPACK_COMPILE` (service) and `--compile` (CLI) choose: `auto` compiles on a CUDA GPU, whether the weights
are resident or stream from the host; `on` also compiles on the CPU, with inductor's C++ backend (how the tests
run the compiled configuration); `off` keeps everything eager. Streamed blocks compile too: a compiled block
takes its weights as graph inputs (dynamo lifts module parameters), so pointing them at another device buffer
per call (`streaming.BlockStreamer`) neither recompiles nor changes the result (tested).

Each block is compiled in place, one code object for all blocks of a kind, with dynamic shapes from the start:
the token counts (prompt length, resolution, window, history) are symbols, so one graph per kind serves every
request, and nothing recompiles between steps, sections or requests. (Compiled for the first shape seen, dynamo
would recompile at the second value of each size, an 18 s stall on an H200 for a prompt of another length.)
Compiling can fail without an error reaching the caller (dynamo falls back to eager for a frame it cannot
handle), so two checks keep the log truthful:
- at setup, each kind of block is captured as one whole graph on a small probe input (`capture_problem`);
  a block that cannot be is not compiled, and the log says why;
- at run time every graph goes through `CompileRecord`, which counts the graphs inductor built and records
  any it could not build (that graph then runs eagerly), for the per-prediction log.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..config import COMPILE_MODES
from ..models import all_blocks

logger = logging.getLogger(__name__)


def compile_decision(mode: str, memory_mode: str) -> tuple[bool, str]:
    """Whether to compile, and why, for a compile mode and a memory mode ("cpu", "high" or "low")."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    if mode == "off":
        return False, "compilation off"
    if mode == "auto" and memory_mode == "cpu":
        return False, "compile auto: only blocks that run on a GPU are compiled"
    return True, f"compile {mode}"


def compiler_missing(device: torch.device) -> str | None:
    """Why torch.compile cannot build kernels for `device` (inductor needs Triton on CUDA), or None."""
    if device.type != "cuda":
        return None
    try:
        import triton  # noqa: F401
    except ImportError as error:
        return f"torch.compile unavailable ({error})"
    return None


def _error_line(error: Exception) -> str:
    """`Type: first line of the message`, for a log line (compiler messages run to many lines)."""
    lines = str(error).splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


@dataclass
class CompileRecord:
    """A torch.compile backend: inductor, counting the graphs it builds and recording any it cannot build."""

    graphs: int = 0
    failures: list[str] = field(default_factory=list)

    def __call__(self, graph: torch.fx.GraphModule, example_inputs):
        from torch._dynamo.exc import RestartAnalysis
        from torch._inductor.compile_fx import compile_fx

        try:
            compiled = compile_fx(graph, example_inputs)
        except RestartAnalysis:  # not a failure: dynamo's signal to trace again (with dynamic float scalars)
            raise
        # Broad on purpose: any inductor failure must leave a working (eager) graph and a logged reason.
        except Exception as error:  # noqa: BLE001
            self.failures.append(_error_line(error))
            return graph.forward
        self.graphs += 1
        return compiled

    def summary(self) -> str:
        line = f"{self.graphs} block graphs compiled"
        if self.failures:
            line += f"; {len(self.failures)} ran eagerly (inductor failed: {self.failures[-1]})"
        return line


def _probe_inputs(block: torch.nn.Module, model) -> tuple:
    """Small inputs of a block's forward: 8 tokens, 4 context tokens, RoPE tables (8, head_dim)."""
    parameter = next(block.parameters())
    width = model.config.num_attention_heads * model.config.attention_head_dim
    make = lambda *shape: torch.randn(*shape, device=parameter.device, dtype=parameter.dtype)  # noqa: E731
    rope = (make(8, model.config.attention_head_dim), make(8, model.config.attention_head_dim))
    return make(1, 8, width), make(1, 4, width), make(1, width), None, rope


@contextmanager
def _weights_visiting(block: torch.nn.Module, device: torch.device | None):
    """`block`'s weights copied to `device` inside this context, if they are elsewhere; restored after.

    Not a deep copy of the block: its attention processor may hold objects that cannot be copied (on the GPU,
    a kernel library's module).
    """
    tensors = [*block.parameters(), *block.buffers()]
    if device is None or not tensors or tensors[0].device.type == device.type:
        yield
        return
    kept = [tensor.data for tensor in tensors]
    try:
        for tensor in tensors:
            tensor.data = tensor.data.to(device)
        yield
    finally:
        for tensor, data in zip(tensors, kept):
            tensor.data = data


def capture_problem(model, device: torch.device | None = None) -> str | None:
    """None if dynamo captures each kind of block of `model` as one graph on `device`, else why not.

    Captures only (no kernels are built), then forgets the capture so the real shapes compile afresh. A block
    whose weights are elsewhere (streamed blocks wait in host memory) is probed as a copy on `device`: its
    attention kernel may run on the GPU only.
    """
    captured = []

    def capture(graph, _example_inputs):
        captured.append(graph)
        return graph.forward

    try:
        with torch.no_grad():
            for block in (model.transformer_blocks[0], model.single_transformer_blocks[0]):
                with _weights_visiting(block, device):
                    torch.compile(block.forward, backend=capture, fullgraph=True, dynamic=True)(
                        *_probe_inputs(block, model)
                    )
    # Broad on purpose: dynamo raises many error types for code it cannot capture.
    except Exception as error:  # noqa: BLE001
        return _error_line(error)
    finally:
        torch._dynamo.reset()
    return None if len(captured) == 2 else f"captured {len(captured)} graphs for 2 block kinds"


def compiled_graphs() -> int:
    """How many graphs dynamo has compiled in this process (blocks, VAE norms, recompilations included)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def use_symbolic_sizes() -> None:
    """Let dynamic shapes stay independent: sizes equal by chance in the first call (a square warm-up's height
    and width, say) would otherwise be assumed equal forever, and recompile when they differ."""
    import torch.fx.experimental._config as fx_config

    fx_config.use_duck_shape = False


def compile_blocks(model, record: CompileRecord, dynamic: bool = True) -> None:
    """Compile every block of `model` in place through `record` (whole-graph: no breaks allowed).

    `dynamic=False` compiles for the shapes of the first call, as this project did before (the benchmark
    compares the two).
    """
    import torch._inductor.config as inductor_config

    # Round fused bf16 intermediates where eager PyTorch rounds them: a compiled single-stream block then
    # differs from the eager one by 1.2e-4 instead of 1.5e-3 (relative L2, H200), at the same speed.
    inductor_config.emulate_precision_casts = True
    # fullgraph=True turns dynamo's recompile limit (8 per code object) into a failed prediction. With dynamic
    # shapes a new shape does not recompile; the higher limit is only a safety margin.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    use_symbolic_sizes()
    for block in all_blocks(model):
        block.compile(backend=record, fullgraph=True, dynamic=dynamic)


def settle_cublas(device: torch.device) -> None:
    """Run one float32 matrix product on `device`, in the thread that will run the transformer.

    On an H200 the compiled blocks' output changed, for good, once a thread had run its first float32 cuBLAS
    product (weights bit-identical; BENCHMARKS.md); a LoRA merge runs such a product. Running one before each
    generation makes every request give the same video whatever ran before it.
    """
    if device.type == "cuda":
        torch.ones(64, 16, device=device) @ torch.ones(16, 64, device=device)
        torch.cuda.synchronize(device)
