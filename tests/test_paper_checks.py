"""The Table 5 consistency check: the one-hot Pdist bound on the Bayes accuracy, on the paper's numbers
and on sampled tasks where the Bayes accuracy is known."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mcmi.cli import main
from mcmi.paper_checks import bayes_accuracy_lower_bound, table5_onehot_check
from mcmi.synthetic import bayes_posterior, sample_gaussian, task_means

PAPER_DIR = Path(__file__).resolve().parents[1] / "config" / "paper"


def test_paper_table5_bounds() -> None:
    df = table5_onehot_check(PAPER_DIR, num_points=5000).set_index("delta_mu")
    assert df["bayes_acc_lower_bound"].round(1).tolist() == [66.0, 76.2, 99.0, 99.8]
    assert df["paper_groundtruth_acc"].tolist() == [57.21, 69.68, 76.98, 81.68]
    assert (df["gap_to_bound"] > 0).all()                              # every ground-truth student is below it
    assert (df["bayes_acc_lower_bound_slack"] > df["paper_groundtruth_acc"]).all()   # even with 3 sigma slack
    assert df.loc["4", "largest_consistent_n"] == 55


@pytest.mark.parametrize("delta_mu, std", [(0.5, 4.0), (2.0, 4.0), (1.0, 2.0)])
def test_onehot_pdist_bound_holds_on_sampled_tasks(delta_mu: float, std: float) -> None:
    """Pdist^2 of one-hot labels vs P* exceeds N x (Bayes error) on samples (up to sampling slack)."""
    means = task_means(10, 30, delta_mu, task_seed=1)
    x, y = sample_gaussian(means, std, 20_000, seed=1)
    p_star = bayes_posterior(x, means, std)
    pdist = float(torch.linalg.norm(p_star - F.one_hot(y, 10).double()))
    expected_bayes_acc = 100 * float(p_star.max(-1).values.mean())
    assert bayes_accuracy_lower_bound(pdist, len(y), z_slack=3.0) <= expected_bayes_acc
    # and the bound is the exact identity E||P* - e_y||^2 = 1 - E||P*||^2 up to sampling noise
    assert pdist**2 / len(y) == pytest.approx(1 - float(p_star.square().sum(-1).mean()), abs=3 / len(y) ** 0.5)


def test_bound_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        bayes_accuracy_lower_bound(3.0, 0)


def test_cli_writes_csv_and_markdown(tmp_path: Path) -> None:
    assert main(["paper-check", "--paper-dir", str(PAPER_DIR), "--out", str(tmp_path / "check")]) == 0
    md = (tmp_path / "check.md").read_text()
    assert "| 0.5 | 41.23 |" in md and "| 66.0 |" in md
    assert len((tmp_path / "check.csv").read_text().splitlines()) == 5
