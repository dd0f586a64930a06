"""lab.power: the minimum detectable effect (MDE) of a paired seed comparison and the seeds a paper's
effect would need, checked against closed forms (scipy's t quantiles, a known sd), and the power text
of a row (issue 23, item 6)."""
import math

import pytest
from scipy import stats

from lab import power as P


def t975(df):
    return stats.t.ppf(0.975, df)


def test_mde_is_the_half_width_of_the_t_interval():
    assert P.mde([1.0, 2.0, 3.0]) == pytest.approx(t975(2) * 1.0 / math.sqrt(3), abs=1e-12)
    assert P.mde([4.0, 4.0]) == 0.0
    assert P.mde([5.0]) == math.inf  # one seed: no interval, nothing detectable
    # the euclid_vs_riemann seeds on FD-effnet: ±61 at 3 seeds
    assert P.mde([-47.0, 1.9, -26.0]) == pytest.approx(60.9, abs=0.1)


@pytest.mark.parametrize("sd, effect, want", [
    (1.0, 1.0, 7),      # t(.975,5)/√6 = 1.05 ≥ 1 > t(.975,6)/√7 = 0.925
    (1.0, 2.0, 4),      # t(.975,2)/√3 = 2.48 ≥ 2 > t(.975,3)/√4 = 1.59
    (1.0, -2.0, 4),     # the sign of the effect does not matter
    (0.0, 0.5, 2),      # no spread: two seeds see any non-zero effect
    (1.0, 0.0, None),   # a zero effect is never detectable
])
def test_seeds_needed_is_the_smallest_n_whose_half_width_is_below_the_effect(sd, effect, want):
    n = P.seeds_needed(sd, effect)
    assert n == want
    if n and sd:
        assert t975(n - 1) * sd / math.sqrt(n) < abs(effect) <= t975(n - 2) * sd / math.sqrt(n - 1)


def test_seeds_needed_gives_up_beyond_the_cap():
    assert P.seeds_needed(1.0, 1e-3, n_max=1000) is None


def test_a_paper_effect_is_a_relative_change_of_our_baseline():
    e = P.Effect(-0.834, "gFID 15.95 → 2.65")
    assert e.rel == pytest.approx((2.65 - 15.95) / 15.95, abs=1e-3)
    assert e.size(200.0) == pytest.approx(166.8)
    assert e.size(-200.0) == pytest.approx(166.8)  # a magnitude


def test_not_shown_text_gives_the_mde_and_the_seeds_the_paper_would_need():
    t = P.Test("KID: euclidean − riemannian", (0, 1, 2), (-4.0, 1.0, 6.0), base_mean=10.0,
               paper=P.Effect(-0.1, "gFID 5 → 4.5"))
    sd = 5.0
    assert t.verdict == P.NOT_SHOWN and t.mde == pytest.approx(t975(2) * sd / math.sqrt(3))
    need = P.seeds_needed(sd, 1.0)
    assert need > 3
    text = t.text()
    assert f"(±{t.mde:.3g} at 3 seeds)" in text
    assert (f"not shown at this scale; the paper's effect (gFID 5 → 4.5: -10% of our baseline 10 = 1) "
            f"would need ~{need} seeds") in text


def test_not_shown_text_says_when_the_paper_effect_was_detectable():
    t = P.Test("x", (0, 1, 2), (-1.0, 0.0, 1.0), base_mean=100.0, paper=P.Effect(-0.5, "10 → 5"))
    assert t.verdict == P.NOT_SHOWN
    assert "the paper's effect (10 → 5: -50% of our baseline 100 = 50) was detectable at 3 seeds" in t.text()


def test_without_a_paper_number_the_text_says_so():
    t = P.Test("x", (0, 1, 2), (-1.0, 0.0, 1.0))
    assert t.text().endswith("not shown at this scale; the paper gives no effect size")
    # a shown-but-not-judged test is short: no verdict, no power
    short = P.Test("FD-effnet", (0, 1), (2.0, 4.0), judged=False).text()
    assert short == "FD-effnet 3 [-9.71, 15.7]"


def test_supported_text_still_gives_the_mde():
    t = P.Test("x", (0, 1, 2), (1.0, 1.1, 0.9))
    assert t.verdict == P.SUPPORTED and t.text().endswith(f"(±{t.mde:.3g} at 3 seeds) → supported")


def test_identical_seeds_give_no_interval_and_no_verdict():
    """Seeds that vary nothing the statistic depends on (one shared model, one fixed probe split) give
    n equal values: sd 0 is not certainty, so the test has no interval, no verdict and says why."""
    for values in ((-0.002, -0.002, -0.002), (0.5, 0.5)):
        t = P.Test("GAP: student − teacher + 0.03", tuple(range(len(values))), values, base_mean=0.81,
                   paper=P.Effect(-0.022, "89% → 87%"))
        assert t.verdict == P.NOT_SHOWN and t.mde == math.inf and t.ci[1:] == (-math.inf, math.inf)
        assert "95% CI unbounded (identical seeds)" in t.text()
        assert t.text().endswith("not shown at this scale; every seed gave the same value: the seeds vary "
                                 "nothing this comparison depends on")
    assert P.Test("x", (0, 1), (0.5, 0.5 + 1e-12)).verdict == P.SUPPORTED  # any spread is an interval
