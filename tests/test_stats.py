"""bitjax.stats against scipy.stats (a test-only dependency: skipped without it) and numpy restatements."""

import math
import statistics

import numpy as np
import pytest

from bitjax import stats

scipy_stats = pytest.importorskip("scipy.stats")
special = pytest.importorskip("scipy.special")

CASES = [
    ([2.7656, 2.7158, 2.6691], [2.7118, 2.7174, 2.6741]),
    ([3.0689, 3.1378, 3.4779, 3.2], [2.7011, 2.7132]),
    ([1.0, 1.1, 0.9], [1.0, 1.3, 1.6]),
    ([0.5, 0.52, 0.49, 0.51, 0.55], [0.40, 0.47, 0.45, 0.52, 0.44]),
]


@pytest.mark.parametrize("a,b", CASES)
def test_welch_is_scipys(a, b):
    got = stats.welch(a, b)
    ref = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert got.t == pytest.approx(ref.statistic, rel=1e-12)
    assert got.p == pytest.approx(ref.pvalue, rel=1e-9)
    assert got.df == pytest.approx(ref.df, rel=1e-12)
    assert got.diff == pytest.approx(np.mean(a) - np.mean(b), abs=1e-15)


@pytest.mark.parametrize("a,b", [c for c in CASES if len(c[0]) == len(c[1])])
def test_paired_is_scipys(a, b):
    got = stats.paired(a, b)
    ref = scipy_stats.ttest_rel(a, b)
    assert got.t == pytest.approx(ref.statistic, rel=1e-12)
    assert got.p == pytest.approx(ref.pvalue, rel=1e-9)
    assert got.df == len(a) - 1
    assert got.signs == " ".join("+" if x > y else "−" if x < y else "0" for x, y in zip(a, b))


@pytest.mark.parametrize("a,b,x", [(1.0, 0.5, 0.3), (0.75, 0.5, 0.9), (12.0, 0.5, 0.99), (2.5, 3.5, 0.5)])
def test_betainc_is_scipys(a, b, x):
    assert stats.betainc(a, b, x) == pytest.approx(special.betainc(a, b, x), rel=1e-10)


def test_paired_pairs_by_seed_and_signs():
    # seeds in different orders: pairing must follow the seed, not the position
    t = stats.paired([3.0, 1.0, 2.0], [2.5, 1.5, 1.0], seeds_a=["2", "0", "1"], seeds_b=["2", "0", "1"])
    d = np.array([0.5, -0.5, 1.0])
    assert t.diff == pytest.approx(d.mean())
    assert t.t == pytest.approx(d.mean() / (d.std(ddof=1) / math.sqrt(3)))
    assert t.signs == "+ − +"
    # a: seeds 0, 1, 2 = 1, 2, 3; b: seed 1 = 2.5, seed 2 = 2.5, seed 0 = 0.5 → signs + − +
    w = stats.welch([1.0, 2.0, 3.0], [2.5, 2.5, 0.5], seeds_a=["0", "1", "2"], seeds_b=["1", "2", "0"])
    assert w.signs == "+ − +"


def test_mean_std_is_sample_std():
    xs = [2.7118, 2.7174, 2.6741]
    m, s = np.mean(xs), np.std(xs, ddof=1)
    assert stats.mean_std(xs) == f"{m:.4f} ± {s:.4f}"
    assert stats.mean_std([2.5]) == "2.5000"
    assert stats.mean_std([]) == "–"


def test_verdicts():
    close = stats.welch([1.0, 1.1, 0.9], [1.05, 1.15, 0.95])  # |t| ≈ 0.6
    assert close.noise and close.verdict() == "within seed noise"
    far = stats.welch([1.0, 1.01, 0.99], [2.0, 2.01, 1.99])
    assert not far.noise and far.verdict() == "differs" and far.p < 0.05
    one = stats.welch([1.0], [2.0, 2.1])
    assert math.isnan(one.t) and one.noise and one.verdict().startswith("untested")
    assert "within seed noise" in close.text() and "Welch t" in close.text()


def test_groups_split_where_runs_differ():
    v = {
        "a": [1.00, 1.02, 0.98],
        "b": [1.01, 1.05, 0.99],  # within noise of a
        "c": [1.50, 1.52, 1.48],  # far from a and b
        "d": [1.51, 1.49, 1.55],  # within noise of c
        "e": [3.0, 3.01, 2.99],
        "f": [3.1, 3.4, 3.3],  # |t| > 2 from e but p > 0.05 (a hint): not split off
    }
    # reference: restate the rule with scipy's Welch t (a split needs |t| ≥ 2 and p < 0.05)
    differs = lambda x, y: (r := scipy_stats.ttest_ind(x, y, equal_var=False)).statistic ** 2 >= 4 and r.pvalue < 0.05
    names = sorted(v, key=lambda k: statistics.mean(v[k]))
    ref = []
    for n in names:
        if ref and not any(differs(v[n], v[m]) for m in ref[-1]):
            ref[-1].append(n)
        else:
            ref.append([n])
    fe = scipy_stats.ttest_ind(v["f"], v["e"], equal_var=False)
    assert abs(fe.statistic) >= 2 and fe.pvalue >= 0.05  # the case the rule is about
    assert stats.groups(v) == ref == [["a", "b"], ["c", "d"], ["e", "f"]]
    assert stats.ordering(v) == "{a ≈ b} < {c ≈ d} < {e ≈ f}"
