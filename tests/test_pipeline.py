"""The section loop's hooks: every step reported with its x_0, the frames after every section, a stop."""

import dataclasses

import pytest
import torch
from helpers.requests import TINY_HEIGHT, TINY_WIDTH, tiny_request

from framepack.core.request import build_request
from framepack.runtime.pipeline import GenerationOptions, generate


def test_hooks_see_every_step_and_section_and_a_raise_stops_the_run(tiny_models):
    request = build_request(tiny_request())  # 4 sections of 2 steps
    steps, frame_counts = [], []
    options = GenerationOptions(
        on_step=lambda section, step, x0: steps.append((section, step, tuple(x0.shape))),
        on_section=lambda frames: frame_counts.append(frames.shape[0]),
    )
    result = generate(request, tiny_models, options=options)
    assert [(s, i) for s, i, _ in steps] == [(s, i) for s in range(4) for i in range(2)]
    assert steps[0][2] == (1, 16, 3, TINY_HEIGHT // 8, TINY_WIDTH // 8)
    assert len(frame_counts) == 4 and frame_counts == sorted(frame_counts)
    assert frame_counts[-1] == result.frames.shape[0]

    class Stop(Exception):
        pass

    def stop_in_section_two(section, step, x0):
        if section == 2:
            raise Stop

    weights = {k: v.clone() for k, v in tiny_models.transformers["original"].state_dict().items()}
    with pytest.raises(Stop):
        generate(request, tiny_models, options=dataclasses.replace(options, on_step=stop_in_section_two))
    after = tiny_models.transformers["original"].state_dict()
    assert all(torch.equal(after[k], v) for k, v in weights.items())
