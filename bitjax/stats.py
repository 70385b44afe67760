"""Seed uncertainty for the studies' tables and readings: mean ± sample std, Welch / paired t, groups.

A study has few seeds (n = 3 is usual), so every claimed difference carries its test:

    from bitjax import stats
    stats.mean_std([2.70, 2.71, 2.67])               # '2.6933 ± 0.0208'
    t = stats.welch(b158, fp)                        # independent runs: Welch's t (unequal variances)
    t = stats.paired(gptq2, fp, ...)                 # runs derived from the same seed's run: paired t
    t.text()                                         # 'Δ -0.0157, Welch t -0.51 (df 2.9, p 0.65), per seed − + +: within seed noise'
    stats.ordering({"fp": [...], "b158": [...], ...})  # '{b158 ≈ fp} < {bitnet}': groups that differ

"Within seed noise" is |t| < 2 (NOISE_T). That threshold is lenient at n = 3: Student's t with 2–4
degrees of freedom puts a two-sided p of 0.12–0.18 at |t| = 2, so the p shown with each t is the one to
quote, and a difference with |t| ≥ 2 but p > 0.05 is "a hint", not a finding (`verdict`).
"""

from __future__ import annotations

import dataclasses
import math
import statistics

NOISE_T = 2.0  # |t| below this: within seed noise


def _clean(xs) -> list[float]:
    return [float(x) for x in xs if x is not None and math.isfinite(float(x))]


def mean_std(xs, fmt: str = ".4f") -> str:
    """'mean ± s' (s: the sample standard deviation, n − 1 in the denominator); one value alone; '–' for none."""
    xs = _clean(xs)
    if not xs:
        return "–"
    if len(xs) == 1:
        return format(xs[0], fmt)
    return f"{format(statistics.mean(xs), fmt)} ± {format(statistics.stdev(xs), fmt)}"


# ----------------------------------------------------------------------------- Student's t tail
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta (modified Lentz; Numerical Recipes §6.4)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularised incomplete beta function (scipy.special.betainc)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| ≥ |t|) for Student's T with `df` (real) degrees of freedom: I_{df/(df+t²)}(df/2, 1/2)."""
    if math.isnan(t) or math.isnan(df):
        return float("nan")
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


# ----------------------------------------------------------------------------- tests
@dataclasses.dataclass(frozen=True)
class Test:
    """A − B: diff = mean(A) − mean(B), its t, degrees of freedom and two-sided p; per-seed signs of
    A_s − B_s where both have seed s (seeds given, or runs taken in the same seed order)."""

    kind: str  # 'Welch' or 'paired'
    diff: float
    t: float
    df: float
    p: float
    n: tuple[int, int]
    signs: str  # e.g. '+ − +' (one per shared seed), '' when the seeds do not pair

    @property
    def noise(self) -> bool:
        """|t| < NOISE_T (or untestable: n < 2 on a side)."""
        return not abs(self.t) >= NOISE_T

    @property
    def differs(self) -> bool:
        """|t| ≥ NOISE_T and two-sided p < 0.05: the verdict 'differs' (a hint does not count)."""
        return not self.noise and self.p < 0.05

    def verdict(self) -> str:
        if math.isnan(self.t):
            return "untested (n = 1)"
        if self.noise:
            return "within seed noise"
        return "differs" if self.p < 0.05 else "a hint (t beyond ±2, p ≥ 0.05)"  # no "|": it sits in tables

    def text(self, fmt: str = ".4f") -> str:
        """'Δ +0.0350, Welch t 0.55 (df 2.3, p 0.63), per seed + − +: within seed noise'."""
        if math.isnan(self.t):
            return f"Δ {format(self.diff, '+' + fmt)}, {self.verdict()}"
        signs = f", per seed {self.signs}" if self.signs else ""
        return (
            f"Δ {format(self.diff, '+' + fmt)}, {self.kind} t {self.t:.2f} (df {self.df:.1f}, p {self.p:.2g})"
            f"{signs}: {self.verdict()}"
        )


def _signs(a, b, seeds_a, seeds_b) -> str:
    if seeds_a is None or seeds_b is None:
        if len(a) != len(b):
            return ""
        pairs = list(zip(a, b))
    else:
        sb = dict(zip(seeds_b, b))
        pairs = [(x, sb[s]) for s, x in zip(seeds_a, a) if s in sb]
    return " ".join("+" if x > y else "−" if x < y else "0" for x, y in pairs)


def welch(a, b, seeds_a=None, seeds_b=None) -> Test:
    """Welch's t for mean(a) − mean(b) (independent runs, unequal variances; scipy.stats.ttest_ind with
    equal_var=False): t = Δ / √(s_a²/n_a + s_b²/n_b), Welch–Satterthwaite degrees of freedom."""
    a, b = _clean(a), _clean(b)
    diff = statistics.mean(a) - statistics.mean(b)
    if len(a) < 2 or len(b) < 2:
        nan = float("nan")
        return Test("Welch", diff, nan, nan, nan, (len(a), len(b)), _signs(a, b, seeds_a, seeds_b))
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    t = diff / se if se > 0 else math.copysign(math.inf, diff) if diff else 0.0
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if se > 0 else float(len(a) + len(b) - 2)
    return Test("Welch", diff, t, df, t_two_sided_p(t, df), (len(a), len(b)), _signs(a, b, seeds_a, seeds_b))


def paired(a, b, seeds_a=None, seeds_b=None) -> Test:
    """Paired t for mean(a − b) over shared seeds (scipy.stats.ttest_rel): runs derived from one run (a PTQ
    of the seed's FP model and that model). Pairs by seed when seeds are given, else by position."""
    if seeds_a is not None and seeds_b is not None:
        sb = dict(zip(seeds_b, b))
        pairs = [(float(x), float(sb[s])) for s, x in zip(seeds_a, a) if s in sb]
    else:
        if len(a) != len(b):
            raise ValueError(f"paired: {len(a)} and {len(b)} values; pass the seeds to pair them")
        pairs = [(float(x), float(y)) for x, y in zip(a, b)]
    d = [x - y for x, y in pairs]
    signs = " ".join("+" if x > 0 else "−" if x < 0 else "0" for x in d)
    diff = statistics.mean(d)
    if len(d) < 2:
        nan = float("nan")
        return Test("paired", diff, nan, nan, nan, (len(d), len(d)), signs)
    se = statistics.stdev(d) / math.sqrt(len(d))
    t = diff / se if se > 0 else math.copysign(math.inf, diff) if diff else 0.0
    df = float(len(d) - 1)
    return Test("paired", diff, t, df, t_two_sided_p(t, df), (len(d), len(d)), signs)


# ----------------------------------------------------------------------------- orderings
def groups(values: dict[str, list[float]], test=welch) -> list[list[str]]:
    """An ordering as groups, lowest mean first: walking the names by mean, one joins the current group
    unless it differs (|t| ≥ NOISE_T and p < 0.05: `Test.differs`) from a member; the first that differs
    from any member starts the next group. So no pair inside a group is shown to differ (each is within
    seed noise or only a hint), and each group's first member differs from at least one member of the
    group before (not necessarily from all of them)."""
    names = sorted(values, key=lambda k: statistics.mean(_clean(values[k])))
    out: list[list[str]] = []
    for name in names:
        if out and not any(test(values[name], values[m]).differs for m in out[-1]):
            out[-1].append(name)
        else:
            out.append([name])
    return out


def ordering(values: dict[str, list[float]], test=welch) -> str:
    """'{b158 ≈ fp ≈ a48} < {fbi ≈ rtn3} < {bitnet}': `groups` written out (≈: not shown to differ)."""
    return " < ".join("{" + " ≈ ".join(g) + "}" for g in groups(values, test))
