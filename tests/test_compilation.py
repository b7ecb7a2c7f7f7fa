"""Compilation switches and the checks that keep the log truthful about what runs compiled."""

from __future__ import annotations

import copy
import types

import pytest
import torch

from framepack.models import all_blocks
from framepack.runtime.acceleration import accelerate
from framepack.runtime.compilation import CompileRecord, capture_problem, compile_decision


@pytest.mark.parametrize(
    ("mode", "memory_mode", "compiled"),
    [
        ("auto", "high", True),
        ("auto", "cpu", False),
        ("auto", "low", True),
        ("on", "high", True),
        ("on", "cpu", True),
        ("on", "low", True),
        ("off", "high", False),
        ("off", "cpu", False),
    ],
)
def test_compile_decision(mode, memory_mode, compiled):
    decided, reason = compile_decision(mode, memory_mode)
    assert decided is compiled and reason


def test_blocks_that_dynamo_cannot_capture_whole_are_reported_not_compiled(tiny_models):
    model = copy.deepcopy(tiny_models.transformers["original"])
    assert capture_problem(model) is None
    block = model.transformer_blocks[0]
    forward = block.forward

    def broken(self, *args, **kwargs):
        torch._dynamo.graph_break()
        return forward(*args, **kwargs)

    block.forward = types.MethodType(broken, block)
    assert capture_problem(model) is not None
    applied = accelerate(model, torch.device("cpu"), compile_blocks_with=CompileRecord())
    assert not applied.compiled and "blocks not compiled" in applied.notes[-1]
    assert all(b._compiled_call_impl is None for b in all_blocks(model))


def test_compile_record_counts_graphs_and_keeps_a_graph_inductor_cannot_build_eager():
    record = CompileRecord()
    compiled = torch.compile(lambda x: torch.sin(x) * 2, backend=record, fullgraph=True)
    x = torch.randn(8)
    assert torch.allclose(compiled(x), torch.sin(x) * 2)
    assert record.graphs == 1 and record.failures == []
    broken = CompileRecord()
    graph = types.SimpleNamespace(forward=lambda value: value)  # not an FX graph: inductor fails on it
    fallback = broken(graph, [x])
    assert fallback(x) is x and broken.graphs == 0 and len(broken.failures) == 1
    assert "ran eagerly" in broken.summary()
