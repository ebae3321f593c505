"""Tests for experiments/claims.py: Student's t against tabulated values, Welch's test, a run."""
import json

import numpy as np
import pytest

from experiments.claims import t_pvalue, welch


@pytest.mark.parametrize("t, df, p", [(2.776, 4, 0.05), (12.706, 1, 0.05), (1.96, 1e6, 0.05),
                                      (4.604, 4, 0.01), (0.0, 3, 1.0)])
def test_t_pvalue_matches_the_tables(t, df, p):
    assert t_pvalue(t, df) == pytest.approx(p, abs=2e-4)


def test_welch_on_a_known_case():
    t, df, p = welch([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert t == pytest.approx(-3 / np.sqrt(2 / 3)) and df == pytest.approx(4.0)
    assert p == pytest.approx(t_pvalue(t, 4.0))


def test_the_claims_experiment(cli, tmp_path):
    code, _, err = cli("claims", "--out", tmp_path)
    assert code == 0, err
    report = json.loads((tmp_path / "claims.json").read_text())
    assert report["filters"]["models"]["pgd"]["filters"] == 32
