"""Golden parity: every reference run in fixtures/golden reproduced through the local predict command, eager (the
compiled service's runs are in test_compiled.py)."""

from __future__ import annotations

import pytest
from helpers.golden import check_golden_case, golden_case_names, load_golden_case
from helpers.requests import predict_args
from safetensors.torch import load_file


@pytest.mark.parametrize("case_name", golden_case_names())
def test_golden_case(case_name, run_cli, tmp_path, block_stack_runs, tiny_models):
    """Through the local command, eager."""
    case = load_golden_case(case_name)
    output, dump = tmp_path / "out.mp4", tmp_path / "dump.safetensors"
    result = run_cli(*predict_args(case["input"], output, "--dump-tensors", str(dump), "--compile", "off"))
    assert result.code == 0, result.stderr
    check_golden_case(case_name, load_file(dump), output, block_stack_runs, tiny_models)
