"""The gate code under bf16 autocast: every batch x width array stays bf16 (s, f, masks, gradients), the
per-latent gradients are float32 sums, and the values and gradients equal the fp32 reference within
bf16's tolerance; one step's peak stays within 24 bytes per batch x width element (tests measure
memory by ``probes.LiveBytes``, which counts storages, not time)."""

import pytest
import torch

from sagsae_cli.probes import step_peak_bytes
from sagsae_cli.sae import SAEConfig, build_sae

GATED = ["sa-gsae", "sa-gsae-untied", "one-sided", "sa-gsae-split", "gated"]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.mark.parametrize("variant", GATED)
def test_bf16_values_and_gradients_match_fp32_within_bf16_tolerance(variant):
    sae = build_sae(variant, SAEConfig(architecture="", d_in=32, d_sae=256, l1=0.1), seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a trained-looking state: gates open on some tokens, both signs, magnitudes
        for name, p in sae.named_parameters():
            if name == "b_gate" or name.startswith(("r_mag", "b_mag")):
                p.copy_(torch.randn(p.shape, generator=g) * (0.3 if name == "b_gate" else 0.1))
            elif name.startswith("log_threshold"):
                p.fill_(-1.0)
    x = torch.randn(512, 32, generator=g)
    got = {}
    for dtype in ("fp32", "bf16"):
        sae.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            out = sae(x, coef=0.1)
        sum(t.float() for t in out.losses.values()).backward()
        got[dtype] = out, {n: p.grad.clone() for n, p in sae.named_parameters()}
    (ref, ref_grads), (low, low_grads) = got["fp32"], got["bf16"]
    assert low.f.dtype == torch.bfloat16 and ref.f.dtype == torch.float32  # not promoted back to fp32
    assert (ref.f != 0).float().mean() > 0.05  # the comparison covers open gates
    assert _rel(low.f, ref.f) < 0.03  # a few gates flip at their threshold in bf16
    for k in ref.losses:
        assert _rel(low.losses[k], ref.losses[k]) < 0.01, k
    for name, grad in ref_grads.items():
        assert low_grads[name].dtype == torch.float32, name
        assert _rel(low_grads[name], grad) < 0.02, name


@pytest.mark.parametrize("variant", ["sa-gsae", "gated"])
def test_a_bf16_step_peaks_within_24_bytes_per_batch_x_width_element(variant):
    bf16 = step_peak_bytes(variant, d=64, width=2048, batch=1024, dtype="bf16")
    fp32 = step_peak_bytes(variant, d=64, width=2048, batch=1024, dtype="fp32")
    assert bf16 <= 24, bf16
    assert bf16 < 0.6 * fp32, (bf16, fp32)  # the arrays are half-width, not fp32 copies
