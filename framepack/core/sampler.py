"""The reference sampler: flux-shifted sigmas and flow-matching UniPC (bh1, order <= 3), docs/ALGORITHM.md §4.

Latents are rectified-flow states x_s = (1 - s) x_0 + s eps. The model wrapper returns the x_0 prediction
x - s * v. UniPC runs in log-SNR time lambda = -ln(sigma). The reference computes the UniPC coefficients in
float32, and at the small first steps (h ~ 0.006) the phi_k recursion cancels catastrophically in float32, so
the coefficients differ visibly from float64 ones: we keep float32 to stay exact to the reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from . import controls
from .step_cache import StepCacheSettings

# x_0 prediction as a function of (x (B, C, T, H, W) float32, sigma (B,) float32).
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, torch.Tensor], None]
# (step i, x, stored x_0 predictions) -> the same, possibly edited, before step i's update.
StateEdit = Callable[[int, torch.Tensor, list[torch.Tensor]], tuple[torch.Tensor, list[torch.Tensor]]]


def flux_mu(sequence_length: int) -> float:
    """Shift parameter from the noisy token count: linear from (256, 0.5) to (4096, 1.15), capped at ln 7."""
    slope = (1.15 - 0.5) / (4096 - 256)
    intercept = 0.5 - slope * 256
    return min(slope * sequence_length + intercept, math.log(7.0))


def flux_sigmas(steps: int, mu: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(steps + 1,) sigmas e^mu / (e^mu + 1/t - 1) over t = linspace(1, 0); sigma_0 = 1, last = 0.

    float32 is what the reference samples with; float64 reproduces the test vectors of docs/ALGORITHM.md §4.4.
    """
    t = torch.linspace(1, 0, steps + 1, dtype=dtype)
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1))


def noisy_token_count(latent_shape: tuple[int, ...], patch_size: int = 2) -> int:
    """Tokens of the noisy window (B, C, T, H, W) after 1x2x2 patching: the schedule's sequence length."""
    _, _, frames, height, width = latent_shape
    return frames * height * width // (patch_size * patch_size)


@dataclass(frozen=True)
class UniPCCoefficients:
    """One UniPC bh1 update from s (last stored time) to t.

    h: lambda(t) - lambda(s) (0-d). rks: (p,) ratios r_k of older points then 1. b_h: bh1's B(h) = -h.
    phi_1: e^-h - 1. rhos_p: (p-1,) predictor weights or None for p = 1. rhos_c: (p,) corrector weights.
    """

    h: torch.Tensor
    rks: torch.Tensor
    b_h: torch.Tensor
    phi_1: torch.Tensor
    rhos_p: torch.Tensor | None
    rhos_c: torch.Tensor


def unipc_coefficients(previous_sigmas: list[torch.Tensor], sigma: torch.Tensor, order: int) -> UniPCCoefficients:
    """Coefficients of a bh1 update of `order` p from the newest of `previous_sigmas` (oldest first) to `sigma`.

    All arguments are 0-d tensors; the arithmetic runs in their dtype (float32 in sampling, as the reference).
    """
    sigma_s = previous_sigmas[-1]
    lambda_s = -torch.log(sigma_s)
    h = -torch.log(sigma) - lambda_s
    rks = [(-torch.log(previous_sigmas[-(k + 1)]) - lambda_s) / h for k in range(1, order)]
    rks = torch.stack(rks + [torch.ones_like(h)])

    hh = -h
    phi_1 = torch.expm1(hh)
    b_h = hh
    phi_k = phi_1 / hh - 1
    factorial = 1
    rows, b = [], []
    for j in range(1, order + 1):
        rows.append(rks ** (j - 1))
        b.append(phi_k * factorial / b_h)
        factorial *= j + 1
        phi_k = phi_k / hh - 1 / factorial
    r_matrix, b = torch.stack(rows), torch.stack(b)

    if order == 1:
        rhos_p, rhos_c = None, torch.tensor([0.5], dtype=h.dtype)
    elif order == 2:
        rhos_p, rhos_c = torch.tensor([0.5], dtype=h.dtype), torch.linalg.solve(r_matrix, b)
    else:
        rhos_p = torch.linalg.solve(r_matrix[:-1, :-1], b[:-1])
        rhos_c = torch.linalg.solve(r_matrix, b)
    return UniPCCoefficients(h=h, rks=rks, b_h=b_h, phi_1=phi_1, rhos_p=rhos_p, rhos_c=rhos_c)


def _weighted_sum(differences: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_k weights[k] * differences[:, k] for differences (B, K, ...)."""
    return torch.tensordot(differences, weights.to(differences.device), dims=([1], [0]))


def unipc_update(
    x: torch.Tensor,
    model_outputs: list[torch.Tensor],
    coefficients: UniPCCoefficients,
    sigma_ratio: torch.Tensor,
    batch_sigma: torch.Tensor,
    denoise: Denoiser,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictor-corrector step to `batch_sigma`; returns (x_t, model output at the predicted x).

    x: (B, C, T, H, W) float32; model_outputs: stored x_0 predictions, oldest first; `coefficients` for this
    step's order p = len(coefficients.rhos_c); sigma_ratio = t / s.
    """
    c, order = coefficients, len(coefficients.rhos_c)
    m0 = model_outputs[-1]
    differences = [(model_outputs[-(k + 1)] - m0) / c.rks[k - 1] for k in range(1, order)]
    stacked = torch.stack(differences, dim=1) if differences else None

    x_base = sigma_ratio * x - c.phi_1 * m0
    predictor = _weighted_sum(stacked, c.rhos_p) if stacked is not None else 0
    x_pred = x_base - c.b_h * predictor
    m_t = denoise(x_pred, batch_sigma)
    corrector = _weighted_sum(stacked, c.rhos_c[:-1]) if stacked is not None else 0
    x_t = x_base - c.b_h * (corrector + c.rhos_c[-1] * (m_t - m0))
    return x_t, m_t


def unipc_schedule(sigmas: torch.Tensor) -> list[UniPCCoefficients | None]:
    """Coefficients of every step (None for step 0, which only evaluates), computed once on the CPU.

    Computing them up front keeps tiny tensor ops and linalg.solve (which synchronises) out of the step loop.
    """
    sigmas = sigmas.cpu()
    order = min(3, len(sigmas) - 2)
    schedule: list[UniPCCoefficients | None] = [None]
    for i in range(1, len(sigmas) - 1):
        step_order = min(i, order)
        previous = [sigmas[k] for k in range(i - step_order, i)]
        schedule.append(unipc_coefficients(previous, sigmas[i], step_order))
    return schedule


def _to_device(c: UniPCCoefficients, device: torch.device) -> UniPCCoefficients:
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    return UniPCCoefficients(
        h=move(c.h), rks=move(c.rks), b_h=move(c.b_h), phi_1=move(c.phi_1), rhos_p=move(c.rhos_p), rhos_c=move(c.rhos_c)
    )


def sample_unipc(
    denoise: Denoiser,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    callback: StepCallback | None = None,
    edit_state: StateEdit | None = None,
) -> torch.Tensor:
    """Run len(sigmas) - 1 model evaluations and return the last x_0 prediction (B, C, T, H, W).

    As in the reference, the final sigma (0) is never stepped to: the result is the prediction made at
    sigmas[-2]. `callback(i, x0)` runs after every step i; `edit_state` may change the state before each
    update (camera movement).
    """
    order = max(min(3, len(sigmas) - 2), 1)
    device = noise.device
    schedule = [None if c is None else _to_device(c, device) for c in unipc_schedule(sigmas.float())]
    sigmas_cpu = sigmas.float().cpu()
    ratios = [(sigmas_cpu[i] / sigmas_cpu[i - 1]).to(device) if i else None for i in range(len(sigmas_cpu) - 1)]
    batch_sigmas = sigmas_cpu.to(device)[:, None].expand(-1, noise.shape[0])
    x = noise
    model_outputs: list[torch.Tensor] = []
    for i in range(len(sigmas_cpu) - 1):
        if i == 0:
            model_outputs = [denoise(x, batch_sigmas[0])]
        else:
            if edit_state is not None:
                x, model_outputs = edit_state(i, x, model_outputs)
            x, m_t = unipc_update(x, model_outputs, schedule[i], ratios[i], batch_sigmas[i], denoise)
            model_outputs = (model_outputs + [m_t])[-order:]
        if callback is not None:
            callback(i, model_outputs[-1])
    return model_outputs[-1]


def rescale_guidance(guided: torch.Tensor, positive: torch.Tensor, rescale: float) -> torch.Tensor:
    """Blend the CFG prediction with a copy rescaled to the positive branch's std (per sample)."""
    if rescale == 0:
        return guided
    dims = list(range(1, positive.ndim))
    rescaled = guided * (positive.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return rescale * rescaled + (1.0 - rescale) * guided


def flow_x0(
    x: torch.Tensor,
    sigma: torch.Tensor,
    velocity: Callable[[torch.Tensor, torch.Tensor, str], torch.Tensor],
    dtype: torch.dtype,
    cfg_scale: float,
    cfg_rescale: float,
) -> torch.Tensor:
    """The reference model wrapper: x_0 = x - sigma * v with real CFG and rescale, in float32.

    `velocity(x, timestep, branch)` runs the transformer for branch "positive" or "negative" on x cast to the
    compute dtype; timestep = sigma * 1000 is cast to the compute dtype too (bf16 rounds it: 996, 988, ...).
    The x used in x_0 is the cast one, as in the reference.
    """
    x_cast = x.to(dtype)
    timestep = (sigma.float() * 1000.0).to(dtype)
    positive = velocity(x_cast, timestep, "positive").float()
    if cfg_scale == 1.0:
        guided = positive
    else:
        negative = velocity(x_cast, timestep, "negative").float()
        guided = rescale_guidance(negative + cfg_scale * (positive - negative), positive, cfg_rescale)
    return x_cast.float() - guided * sigma.float().reshape(-1, *([1] * (x.ndim - 1)))


@dataclass(frozen=True)
class SamplingSettings:
    """How one section is sampled: the request's sampler inputs, and nothing else."""

    steps: int
    distilled_cfg_scale: float
    cfg_scale: float = 1.0
    cfg_rescale: float = 0.0
    variant: str = "original"
    step_cache: StepCacheSettings = field(default_factory=StepCacheSettings)
    camera_movement: float = 0.0

    @classmethod
    def from_request(cls, request) -> SamplingSettings:
        """The sampler inputs of a `request.GenerationRequest`."""
        return cls(
            steps=request.steps,
            distilled_cfg_scale=request.distilled_cfg_scale,
            cfg_scale=request.cfg_scale,
            cfg_rescale=request.cfg_rescale,
            variant=request.model_variant,
            step_cache=request.step_cache_settings,
            camera_movement=request.camera_movement,
        )


def camera_roll(steps: int, amount: float):
    """The sampler state edit for camera movement: roll each latent frame once, at 20% of the steps."""
    at_step = controls.camera_step(steps)

    def roll(i: int, x: torch.Tensor, outputs: list[torch.Tensor]):
        if i != at_step:
            return x, outputs
        shifts = controls.camera_shifts(x.shape[2], x.shape[4], amount)

        def apply(t: torch.Tensor) -> torch.Tensor:
            return torch.stack([torch.roll(t[:, :, j], s, dims=-1) for j, s in enumerate(shifts)], dim=2)

        # The stored predictions move with the state so UniPC's multistep terms stay consistent with it.
        return apply(x), [apply(m) for m in outputs]

    return roll
