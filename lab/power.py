"""Statistics on seeds: the paired t-interval, its minimum detectable effect, and a verdict with its power.

A comparison is a `Test`: per-seed values of a statistic oriented so that positive means the paper's
direction (a margin already subtracted). `supported` only when the 95% t-interval of the mean lies
above zero, `reversed` when it lies below, else `not shown`; one seed gives an unbounded interval, and so
do seeds that all give the same value (they vary nothing the statistic depends on: no uncertainty measured).

Power (issue 23, item 6). The minimum detectable effect (MDE) at n seeds is the interval's
half-width, t_{0.975,n-1} · sd / √n: a true mean difference smaller than that is likely to read as
`not shown`. For a `not shown` test the text says whether the paper's effect would have been
detectable: the paper's effect is stored as a relative change of the baseline arm (`Effect`, e.g.
gFID 15.95 → 2.65 is −83%), applied to our baseline's mean, and the seeds it needs are the smallest
n with t_{0.975,n-1} · sd / √n < |effect| at our per-seed sd.
"""
import math
import re
from dataclasses import dataclass
from statistics import mean, stdev

from scipy import stats

SUPPORTED = "supported"
NOT_SHOWN = "not shown at this scale"
REVERSED = "reversed at this scale"
MIXED = "mixed (the primary metric's sub-tests disagree)"
LEVEL = 0.95
MAX_SEEDS = 1000  # seeds_needed gives up beyond this


def seed_key(key, seed):
    return f"{key}_seed{int(seed)}"


def seed_values(m, key):
    """{seed: value} of `key` in metrics m (keys seed_key(key, s))."""
    pat = re.compile(re.escape(key) + r"_seed(\d+)$")
    return {int(g.group(1)): float(v) for k, v in m.items() if (g := pat.match(k))}


def has(m, key):
    return bool(seed_values(m, key))


def _t(n, level=LEVEL):
    return stats.t.ppf(0.5 + level / 2, n - 1)


def mde(values, level=LEVEL):
    """Half-width of the t-interval of the mean: the smallest mean difference these seeds can see."""
    values = list(values)
    if len(values) < 2:
        return math.inf
    return _t(len(values), level) * stdev(values) / math.sqrt(len(values))


def interval(values, level=LEVEL):
    """(mean, low, high): the t-interval of the mean; unbounded for fewer than two values."""
    values = list(values)
    if not values:
        return math.nan, -math.inf, math.inf
    mu, half = mean(values), mde(values, level)
    return mu, mu - half, mu + half


def seeds_needed(sd, effect, level=LEVEL, n_max=MAX_SEEDS):
    """Smallest n ≥ 2 with t_{0.975,n-1} · sd / √n < |effect|; None if no n ≤ n_max does."""
    effect = abs(effect)
    if effect == 0:
        return None
    for n in range(2, n_max + 1):
        if _t(n, level) * sd / math.sqrt(n) < effect:
            return n
    return None


@dataclass(frozen=True)
class Effect:
    """The paper's effect as a relative change of the baseline arm, with the numbers it comes from."""
    rel: float     # (paper's favoured arm − baseline arm) / baseline arm
    source: str    # e.g. "gFID 15.95 → 2.65 (HAE Tab. 4)"

    def size(self, base_mean):
        """The paper's effect in our units: |rel| × |our baseline mean|."""
        return abs(self.rel * base_mean)


@dataclass(frozen=True)
class Test:
    """One comparison: per-seed values oriented so that > 0 is the paper's direction."""
    label: str
    seeds: tuple
    values: tuple
    judged: bool = True         # False: shown beside the verdict ("also"), not part of it
    base_mean: float = math.nan  # mean of the baseline arm over the paired seeds
    paper: Effect = None        # the paper's effect, attached by lab.claims.judge

    @property
    def identical(self):
        """Every seed gave the same value: the seeds vary nothing the statistic depends on (one shared
        model on one fixed split), so sd 0 measures no uncertainty and there is no interval."""
        return len(self.values) >= 2 and len(set(self.values)) == 1

    @property
    def ci(self):
        return (mean(self.values), -math.inf, math.inf) if self.identical else interval(self.values)

    @property
    def mde(self):
        return math.inf if self.identical else mde(self.values)

    @property
    def verdict(self):
        _, lo, hi = self.ci
        return SUPPORTED if lo > 0 else REVERSED if hi < 0 else NOT_SHOWN

    def power_text(self):
        """Could these seeds have seen the paper's effect? Only said for a `not shown` test."""
        if self.identical:
            return "every seed gave the same value: the seeds vary nothing this comparison depends on"
        if self.paper is None or math.isnan(self.base_mean):
            return "the paper gives no effect size"
        size = self.paper.size(self.base_mean)
        what = (f"the paper's effect ({self.paper.source}: {self.paper.rel:+.0%} of our baseline "
                f"{self.base_mean:.3g} = {size:.3g})")
        n = len(self.values)
        need = seeds_needed(stdev(self.values), size) if n >= 2 else None
        if need is None:
            return f"{what} would need more than {MAX_SEEDS} seeds"
        return f"{what} was detectable at {n} seeds" if need <= n else f"{what} would need ~{need} seeds"

    def text(self):
        mu, lo, hi = self.ci
        ci = f"[{lo:.3g}, {hi:.3g}]" if math.isfinite(lo) else (
            "unbounded (identical seeds)" if self.identical else "unbounded (1 seed)")
        if not self.judged:
            return f"{self.label} {mu:.3g} {ci}"
        per = ", ".join(f"{v:.3g}" for v in self.values)
        n = len(self.values)
        power = f" (±{self.mde:.3g} at {n} seeds)" if n >= 2 and not self.identical else ""
        tail = f"; {self.power_text()}" if self.verdict == NOT_SHOWN and n >= 2 else ""
        return f"{self.label}: mean {mu:.3g}, seeds [{per}], 95% CI {ci}{power} → {self.verdict}{tail}"


def paired(label, m, ours, base, *, higher=True, scale=1.0, offset=0.0, judged=True):
    """Per seed: ours − scale·base (or scale·base − ours when lower is better) + offset.
    `base` is the arm the paper improves on: its mean is the baseline of the paper's relative effect."""
    a, b = seed_values(m, ours), seed_values(m, base)
    seeds = tuple(sorted(set(a) & set(b)))
    sign = 1.0 if higher else -1.0
    base_mean = mean(b[s] for s in seeds) if seeds else math.nan
    return Test(label, seeds, tuple(sign * (a[s] - scale * b[s]) + offset for s in seeds), judged, base_mean)


def above(label, m, key, bound, *, judged=True):
    """Per seed: value − bound (the paper says the value exceeds the bound)."""
    v = seed_values(m, key)
    return Test(label, tuple(sorted(v)), tuple(v[s] - bound for s in sorted(v)), judged)


def combine(tests):
    """The verdict from the judged tests (one primary metric): all supported -> supported; some
    supported and some reversed (two sub-tests of the primary disagree) -> mixed; any reversed
    otherwise -> reversed; else not shown. Tests with judged=False never count."""
    got = {t.verdict for t in tests if t.judged}
    if not got:
        return NOT_SHOWN
    if got == {SUPPORTED}:
        return SUPPORTED
    if SUPPORTED in got and REVERSED in got:
        return MIXED
    return REVERSED if REVERSED in got else NOT_SHOWN
