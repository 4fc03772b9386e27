import pytest
import torch
from conftest import run_cli

from sagsae_cli.errors import SagsaeError
from sagsae_cli.store import open_store
from sagsae_cli.synthetic import SyntheticConfig, make_axes, sample_coefficients, sample_features


@pytest.mark.parametrize("rho", [-1.0, -0.5, 0.0])
def test_requested_correlation_and_l0(rho):
    cfg = SyntheticConfig(rho=rho, n_axes=16, paired_fraction=0.5, l0=3.0)
    _, paired = make_axes(cfg)
    plus, minus = sample_features(cfg, paired, 400_000, torch.Generator().manual_seed(1))
    assert (plus.sum(1) + minus.sum(1)).float().mean().item() == pytest.approx(cfg.l0, rel=0.03)
    pair = torch.from_numpy(paired)
    p_plus, p_minus = plus[:, pair].float().mean(0), minus[:, pair].float().mean(0)
    both = (plus & minus)[:, pair].float().mean(0)
    measured = (both / (p_plus * p_minus) - 1).mean().item()  # the co-firing lift minus one
    assert measured == pytest.approx(rho, abs=0.08)
    # the Pearson correlation of the two indicators is rho p / (1 - p): small, as documented
    a, b = plus[:, pair].float(), minus[:, pair].float()
    corr = (((a - a.mean(0)) * (b - b.mean(0))).mean(0) / (a.std(0) * b.std(0))).mean().item()
    assert corr == pytest.approx(rho * cfg.p / (1 - cfg.p), abs=0.01)
    assert p_plus.mean().item() == pytest.approx(cfg.p, rel=0.03)
    assert p_minus.mean().item() == pytest.approx(cfg.p, rel=0.03)
    assert not minus[:, ~pair].any()
    coef = sample_coefficients(cfg, paired, 1000, torch.Generator().manual_seed(1))
    nz = coef[coef != 0].abs()
    assert nz.max() <= 1.5  # intensities lie in [0.5, 1.5]; a+ - a- of a co-firing pair is smaller


def test_store_has_truth_pair_fraction_and_signed_axes(tmp_path):
    run_cli("harvest", "--source", "synthetic", "--protocol", "B", "--paired-fraction", "0.25", "--out",
            tmp_path / "s", "--tokens", 60_000, "--eval-tokens", 5000, "--l0", 2, "--quiet", check=0)  # fmt: skip
    s = open_store(tmp_path / "s")
    truth = s.truth()
    axes, paired = torch.from_numpy(truth["axes"]), truth["paired"]
    assert paired.mean() == pytest.approx(0.25, abs=1 / 48)
    assert torch.allclose(axes @ axes.T, torch.eye(48), atol=1e-5)
    coef = s.read("train", 0, 60_000) @ axes.T  # orthonormal axes: projection recovers coefficients
    active = coef.abs() > 0.25  # intensities are >= 0.5, noise 0.01 * sqrt(d) is far below
    assert active.float().sum(1).mean().item() == pytest.approx(2.0, rel=0.06)
    neg = (coef < -0.25).float().mean(0)
    assert neg[~torch.from_numpy(paired)].max() == 0  # one-sided axes never fire negatively
    assert neg[torch.from_numpy(paired)].min() > 0
    seq_train = set(s.read_index("train", "sequence_ids", 0, 60_000).tolist())
    seq_eval = set(s.read_index("eval", "sequence_ids", 0, 5000).tolist())
    assert not seq_train & seq_eval


def test_validation():
    for bad in (dict(rho=0.5), dict(paired_fraction=1.5), dict(l0=100.0), dict(protocol="Z")):
        with pytest.raises(SagsaeError):
            SyntheticConfig(**bad).validate()
