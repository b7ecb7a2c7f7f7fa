"""Sigma schedule and UniPC coefficients against docs/ALGORITHM.md §4.1, §4.3 and §4.4."""

import math

import pytest
import torch

from framepack.core import sampler

REFERENCE_SIGMAS_25 = [
    1.0,
    0.99408,
    0.98773,
    0.98089,
    0.97351,
    0.96552,
    0.95683,
    0.94737,
    0.93701,
    0.92562,
    0.91304,
    0.89908,
    0.88350,
    0.86598,
    0.84615,
    0.82353,
    0.79747,
    0.76712,
    0.73134,
    0.68852,
    0.63636,
    0.57143,
    0.48837,
    0.37838,
    0.22581,
    0.0,
]
REFERENCE_TIMESTEPS_BF16 = [
    1000,
    996,
    988,
    980,
    972,
    964,
    956,
    948,
    936,
    924,
    912,
    900,
    884,
    864,
    848,
    824,
    796,
    768,
    732,
    688,
    636,
    572,
    488,
    378,
    226,
]


def test_mu_is_ln7_for_640_buckets():
    tokens = sampler.noisy_token_count((1, 16, 9, 68, 88))
    assert tokens == 13464
    assert sampler.flux_mu(tokens) == math.log(7.0)
    assert sampler.flux_mu(256) == pytest.approx(0.5)


def test_25_step_schedule():
    sigmas = sampler.flux_sigmas(25, math.log(7.0))
    assert sigmas.dtype == torch.float32 and sigmas.shape == (26,)
    assert sigmas.tolist() == pytest.approx(REFERENCE_SIGMAS_25, abs=5e-6)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0
    timesteps = (sigmas[:-1] * 1000).to(torch.bfloat16).float().tolist()
    assert timesteps == REFERENCE_TIMESTEPS_BF16


def _coefficients(step: int, order: int) -> sampler.UniPCCoefficients:
    sigmas = sampler.flux_sigmas(25, math.log(7.0), torch.float64)
    previous = [sigmas[k] for k in range(max(0, step - order), step)]
    return sampler.unipc_coefficients(previous, sigmas[step], order)


@pytest.mark.parametrize(
    ("step", "order", "h", "rks", "rhos_p", "rhos_c"),
    [
        (1, 1, 0.0059347, [], None, [0.5]),
        (2, 2, 0.0064111, [-0.925697], [0.5], [0.086272, 0.412661]),
        (3, 3, 0.0069474, [-0.922810, -1.777052], [1.427262, -0.928417], [0.230283, -0.099639, 0.368200]),
        (24, 3, 0.516216, [-0.494333, -0.798589], [2.080528, -1.656515], [0.377538, -0.241609, 0.288084]),
    ],
)
def test_unipc_coefficients_float64(step, order, h, rks, rhos_p, rhos_c):
    c = _coefficients(step, order)
    assert float(c.h) == pytest.approx(h, abs=2e-6)
    assert c.rks.tolist()[:-1] == pytest.approx(rks, abs=2e-6) and float(c.rks[-1]) == 1.0
    assert float(c.b_h) == pytest.approx(-h, abs=2e-6)
    if rhos_p is None:
        assert c.rhos_p is None
    else:
        assert c.rhos_p.tolist() == pytest.approx(rhos_p, abs=2e-6)
    assert c.rhos_c.tolist() == pytest.approx(rhos_c, abs=2e-6)


def test_first_b_value():
    sigmas = sampler.flux_sigmas(25, math.log(7.0), torch.float64)
    c = sampler.unipc_coefficients([sigmas[0]], sigmas[1], 1)
    # b_1 = (phi_1 / hh - 1) / B(h) with B(h) = hh = -h.
    hh = -c.h
    assert float((torch.expm1(hh) / hh - 1) / hh) == pytest.approx(0.499012, abs=2e-6)


def test_sampler_recovers_a_fixed_target():
    # A denoiser that always predicts the same x0: every UniPC step keeps it, so the result is x0.
    target = torch.randn(1, 16, 3, 4, 6)
    calls = []

    def denoise(x, sigma):
        calls.append(float(sigma[0]))
        return target.clone()

    sigmas = sampler.flux_sigmas(6, 0.7)
    result = sampler.sample_unipc(denoise, torch.randn(1, 16, 3, 4, 6), sigmas)
    assert torch.allclose(result, target)
    assert len(calls) == 6 and calls[0] == 1.0


def test_flow_x0_with_cfg_and_rescale():
    x = torch.randn(1, 16, 2, 4, 4)
    sigma = torch.tensor([0.5])
    velocities = {"positive": torch.randn_like(x), "negative": torch.randn_like(x)}
    x0 = sampler.flow_x0(x, sigma, lambda x_, t, branch: velocities[branch], torch.float32, 3.0, 0.0)
    expected_v = velocities["negative"] + 3.0 * (velocities["positive"] - velocities["negative"])
    assert torch.allclose(x0, x - 0.5 * expected_v)
    # cfg 1 never evaluates the negative branch.
    seen = []
    sampler.flow_x0(x, sigma, lambda x_, t, branch: seen.append(branch) or velocities[branch], torch.float32, 1.0, 0.7)
    assert seen == ["positive"]
    # Full rescale matches the positive branch's standard deviation.
    guided = sampler.rescale_guidance(expected_v, velocities["positive"], 1.0)
    assert float(guided.std()) == pytest.approx(float(velocities["positive"].std()), rel=1e-5)


def test_timestep_is_cast_to_compute_dtype():
    seen = {}

    def velocity(x, timestep, branch):
        seen["timestep"] = timestep
        return torch.zeros_like(x, dtype=torch.float32)

    sampler.flow_x0(torch.zeros(1, 16, 1, 2, 2), torch.tensor([0.99408]), velocity, torch.bfloat16, 1.0, 0.0)
    assert seen["timestep"].dtype == torch.bfloat16 and float(seen["timestep"]) == 996.0
