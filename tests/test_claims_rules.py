"""lab.claims, what each rule reports besides its verdict: the exact label, orientation, seeds and
`judged` flag of every test, the exact note, and the text a report prints. A rule that reads the
wrong key for a shown-but-not-judged row, flips its sign or mislabels it leaves every verdict
unchanged, so only these exact rows catch it. (Mutation testing found them unpinned.)

`_recon_rule` builds the two reconstruction rules when lab.claims is imported, so the registry's
copies never see a change made to it later; the tests below build the rule afresh and call it."""
import functools
import math

import pytest

from lab import claims as C
import stand_ins
from stand_ins import recon

S, N, R, MIX = C.SUPPORTED, C.NOT_SHOWN, C.REVERSED, C.MIXED


seeded = functools.partial(stand_ins.seeded, seeds=(0, 1))  # two seeds unless a test names others


def rows(tests):
    """(label, judged, seeds, values), values rounded past stand_ins.seeded's 1e-9 spread."""
    return [(t.label, t.judged, t.seeds, tuple(round(v, 6) for v in t.values)) for t in tests]


def judged(claim_id, values, **extra):
    return C.judge(C.BY_ID[claim_id], {**seeded(values), **extra})


# ----------------------------------------------------------------------------------------------
# Verdict strings, intervals, text
# ----------------------------------------------------------------------------------------------

def test_verdict_strings_are_the_reports_words():
    assert C.VERDICTS == ("supported", "not shown at this scale", "reversed at this scale",
                          "mixed (the primary metric's sub-tests disagree)", "not measured at CPU scale",
                          "no run yet", "not measured here", "no verdict (dirty tree)")


def test_no_values_give_no_interval_and_no_verdict():
    mu, lo, hi = C.interval([])
    assert math.isnan(mu) and (lo, hi) == (-math.inf, math.inf)
    assert C.Test("empty", (), ()).verdict == N  # a rule whose keys pair no seed must not be supported


def test_interval_level():
    mu, lo, hi = C.interval([1.0, 3.0], level=0.5)  # t(0.75, 1) = 1, sd √2, n 2: half-width 1
    assert mu == 2.0 and lo == pytest.approx(1.0, abs=1e-12) and hi == pytest.approx(3.0, abs=1e-12)


def test_test_text_exact():
    t = C.Test("d: a − b", (0, 1), (2.0, 2.002))
    assert t.text() == "d: a − b: mean 2, seeds [2, 2], 95% CI [1.99, 2.01] (±0.0127 at 2 seeds) → supported"
    same = C.Test("d: a − b", (0, 1), (2.0, 2.0))
    assert same.text() == ("d: a − b: mean 2, seeds [2, 2], 95% CI unbounded (identical seeds) → not shown at this "
                           "scale; every seed gave the same value: the seeds vary nothing this comparison depends on")
    info = C.Test("info", (0, 1), (-0.5, -0.5), judged=False)
    assert info.text() == "info -0.5 unbounded (identical seeds)"
    one = C.Test("one", (3,), (0.25,))
    assert one.text() == "one: mean 0.25, seeds [0.25], 95% CI unbounded (1 seed) → not shown at this scale"


def test_paired_and_above_keep_label_seeds_and_flag():
    m = seeded({"a": [3.0, 5.0], "b": [1.0, 2.0]}, seeds=(4, 2))
    t = C.paired("a vs b", m, "a", "b")
    assert (t.label, t.seeds, t.values, t.judged) == ("a vs b", (2, 4), (3.0, 2.0), True)
    u = C.above("a over 1", m, "a", 1.0, judged=False)
    assert (u.label, u.seeds, u.values, u.judged) == ("a over 1", (2, 4), (4.0, 2.0), False)
    assert C.above("a over 1", m, "a", 1.0).judged is True


def test_distance_tag_of_other_metrics():
    assert C.distance_tag("LPIPS-vgg") == "lpips" and C.distance_tag("DINO-cos (x)") == "dino"
    assert C.distance_tag("SSIM (per image)") == "ssim_per_image_"
    assert C.swap_key("PSNR dB", "whole") == "swap_psnr_db_whole"


# ----------------------------------------------------------------------------------------------
# judge's notes
# ----------------------------------------------------------------------------------------------

def test_judge_notes_exact():
    assert C.judge(C.BY_ID["ddt_head"], {}) == ([], C.NO_RUN, "not logged: ddt_kid_images_plain, ddt_kid_images_ddt")
    assert C.judge(C.BY_ID["shift"], {}) == ([], C.NO_RUN, "not logged: shift_kid_images_shift, shift_kid_images_noshift")
    assert C.judge(C.BY_ID["u_curve"], {}) == ([], C.NO_RUN, "the run logs none of the values this rule reads")


def test_judge_needs_a_rule_and_a_notebook():
    """A claim with a notebook but no rule yet (or a rule but no notebook) is not measured."""
    no_rule = C.Claim("x", C.HAE, "Tab. 0", "s", "n", "05_flow_matching", ())
    assert C.judge(no_rule, {}) == ([], C.NOT_MEASURED, "no notebook measures this")
    no_notebook = C.Claim("y", C.HAE, "Tab. 0", "s", "n", "", (), rule=lambda m: ([], S, ""))
    assert C.judge(no_notebook, {}) == ([], C.NOT_MEASURED, "no notebook measures this")


# ----------------------------------------------------------------------------------------------
# Each rule's rows and note, exactly
# ----------------------------------------------------------------------------------------------

def test_swap_rows():
    vals = {}
    for d, (kept, swapped, whole) in (("lpips", (0.125, 0.5, 0.5)), ("dino", (0.375, 0.25, 1.0))):
        vals.update({C.swap_key(d, v): x for v, x in zip(C.SWAP_VARIANTS, (kept, swapped, whole))})
    tests, v, note = judged("swap_asymmetry", vals)
    assert [(t.label, t.judged, t.seeds) for t in tests] == [
        ("lpips: 0.5× whole neighbour − (anchor dir + neighbour radius)", True, (0, 1)),
        ("lpips: (anchor radius + neighbour dir) − 0.75× whole neighbour", True, (0, 1)),
        ("dino: 0.5× whole neighbour − (anchor dir + neighbour radius)", False, (0, 1)),
        ("dino: (anchor radius + neighbour dir) − 0.75× whole neighbour", False, (0, 1))]
    want = [0.25 - 0.125, 0.5 - 0.375, 0.5 - 0.375, 0.25 - 0.75]
    assert [t.values for t in tests] == [pytest.approx((w, w), abs=1e-8) for w in want]
    assert (v, note) == (S, "")  # DINO's reversed half is shown, not judged


def shares(linear, slerp_max, names=("dino", "vae")):
    vals = {}
    for name in names:
        vals[C.share_key(name, "linear", "start")], vals[C.share_key(name, "linear", "end")] = linear
        vals[C.share_key(name, "slerp", "max")] = slerp_max
    return vals


def test_radial_share_rows_and_notes():
    vals = {**shares((0.5, 0.75), 0.0), C.share_key("dino_affine_free", "linear", "start"): 0.5,
            C.share_key("gae", "linear", "start"): 0.25, C.share_key("gae", "slerp", "max"): 0.0}
    tests, v, note = judged("radial_share", vals)
    assert rows(tests) == [
        ("dino linear share at the noise end − 0.35", True, (0, 1), pytest.approx((0.15, 0.15))),
        ("dino linear share at the data end − 0.35", True, (0, 1), pytest.approx((0.4, 0.4))),
        ("vae linear share at the noise end − 0.35", True, (0, 1), pytest.approx((0.15, 0.15))),
        ("vae linear share at the data end − 0.35", True, (0, 1), pytest.approx((0.4, 0.4)))]
    assert v == S
    # only the first standardised latent gets a sanity row (gae's linear share is not reported)
    assert note == ("dino slerp max share 0 (0 as constructed); vae slerp max share 0 (0 as constructed); "
                    "gae slerp max share 0 (0 as constructed); sanity, standardised dino_affine_free "
                    "(norm √C, 0.5 analytically): linear share at the noise end 0.5")


def test_radial_share_bug_note():
    tests, v, note = judged("radial_share", shares((0.5, 0.75), 2e-4, names=("dino",)))
    assert v == R and note == "dino slerp max share 0.0002 (NOT 0: bug)"


def test_probe_rows():
    vals = {C.probe_key("teacher", "gap"): 0.75, C.probe_key("student", "gap"): 0.5,
            C.probe_key("teacher", "flatten"): 0.25, C.probe_key("student", "flatten"): 0.875}
    tests, v, note = judged("probe_teacher_student", vals)
    assert rows(tests) == [("GAP: student − teacher + 0.03", True, (0, 1), pytest.approx((-0.22, -0.22))),
                           ("flatten: student − teacher", False, (0, 1), (0.625, 0.625))]
    assert (v, note) == (R, "")


@pytest.mark.parametrize("deltas, want", [
    ((0.25, -0.125, 0.0625), S),     # only PSNR at stage 1 votes
    ((0.0, 0.125, -0.0625), N),
    ((-0.25, 0.125, -0.0625), R),
])
def test_recon_rule_built_afresh(deltas, want):
    ours, base = "conv_cosine", "patch_cosine"
    rule = C._recon_rule(ours, base, "psnr", stage=1)
    vals = {**recon(ours, base, deltas, stage=1), **recon(ours, base, (1.0, 1.0, 1.0))}
    tests, v, note = rule(seeded(vals))
    d_psnr, d_ssim, d_lpips = deltas
    assert rows(tests) == [
        (f"psnr (stage 1): {ours} vs {base} (higher is better)", True, (0, 1), (d_psnr, d_psnr)),
        (f"ssim (stage 1): {ours} vs {base} (higher is better)", False, (0, 1), (d_ssim, d_ssim)),
        (f"lpips (stage 1): {ours} vs {base} (lower is better)", False, (0, 1), (-d_lpips, -d_lpips)),
        (f"psnr (after all stages): {ours} vs {base} (higher is better)", False, (0, 1), (1.0, 1.0)),
        (f"ssim (after all stages): {ours} vs {base} (higher is better)", False, (0, 1), (1.0, 1.0)),
        (f"lpips (after all stages): {ours} vs {base} (lower is better)", False, (0, 1), (-1.0, -1.0))]
    assert v == want and note == "rFID not measured (too few images at CPU size)"
    assert C.judge(C.BY_ID["stem_vs_patch"], seeded(vals))[1:] == (v, note)
    # after all stages only (no stage-1 rows logged): cosine_vs_mse's LPIPS
    rule = C._recon_rule(ours, "conv_mse", "lpips")
    tests, v, note = rule(seeded(recon(ours, "conv_mse", deltas)))
    assert [(t.label, t.judged) for t in tests] == [
        (f"psnr (after all stages): {ours} vs conv_mse (higher is better)", False),
        (f"ssim (after all stages): {ours} vs conv_mse (higher is better)", False),
        (f"lpips (after all stages): {ours} vs conv_mse (lower is better)", True)]


def gen(metric, pairs, protocol="paper"):
    return {C.gen_key(metric, c, protocol): v for c, v in pairs}


def test_euclid_riemann_rows():
    r, e = C.lambda_config(0.1), "euclidean"
    vals = {**gen(C.KID, ((r, 0.03), (e, 0.04))), **gen("fd_images", ((r, 30.0), (e, 40.0))),
            **gen("fd_tokens", ((r, 2.5), (e, 2.0))), **gen("class_agreement", ((r, 0.5), (e, 0.625))),
            **gen(C.KID, ((r, 0.25), (e, 0.125)), "cfg4")}
    tests, v, note = judged("euclid_vs_riemann", vals)
    assert rows(tests) == [
        ("KID: euclidean − riemannian λ=0.1", True, (0, 1), pytest.approx((0.01, 0.01))),
        ("FD-effnet", False, (0, 1), (10.0, 10.0)),
        ("FD-tokens", False, (0, 1), (-0.5, -0.5)),
        ("class agreement", False, (0, 1), (-0.125, -0.125)),
        ("KID with CFG 4", False, (0, 1), (-0.125, -0.125))]
    assert (v, note) == (S, "")
    assert tests[0].base_mean == pytest.approx(0.04) and tests[0].paper.source == "gFID 15.95 → 2.65"


def test_lambda_rows():
    vals = gen(C.KID, [(C.lambda_config(x), f) for x, f in ((0.0, 4.5), (0.1, 4.0), (1.0, 5.75))])
    tests, v, note = judged("lambda_sweep", vals)
    assert rows(tests) == [("KID: λ=0.0 − λ=0.1", True, (0, 1), (0.5, 0.5)),
                           ("KID: λ=1.0 − λ=0.1", True, (0, 1), (1.75, 1.75))]
    assert (v, note) == (S, "")
    assert [t.paper.source for t in tests] == ["gFID 4.4 → 3.9", "gFID 5.7 → 3.9"]


def test_sampler_rows():
    vals = {C.sampler_key(C.KID, "euler_project"): 0.5, C.sampler_key(C.KID, "expmap"): 0.25,
            C.sampler_key("fd_tokens", "euler_project"): 2.0, C.sampler_key("fd_tokens", "expmap"): 2.5}
    tests, v, note = judged("sampler", vals)
    assert rows(tests) == [("KID: exp map − Euler+projection", True, (0, 1), (-0.25, -0.25)),
                           ("FD-tokens", False, (0, 1), (0.5, 0.5))]
    assert (v, note) == (R, "the λ = 0.1 generator (its radial output trained)")
    assert tests[0].paper is None and tests[0].text().endswith("→ reversed at this scale")


def test_u_curve_rows():
    vals = {}
    for name, low, best, high in (("hae", 30.0, 8.0, 7.5), ("gae", 9.0, 8.0, 10.0)):
        for metric in ("kid", "fd"):
            vals.update({C.u_key(name, f"{metric}_low"): low, C.u_key(name, f"{metric}_best_interior"): best,
                         C.u_key(name, f"{metric}_high"): high})
    tests, v, note = judged("u_curve", vals)
    assert [(t.label, t.judged) for t in tests] == [
        ("hae: KID at the low scale − best interior KID", True), ("hae: KID at the high scale − best interior KID", True),
        ("hae: FD at the low scale − best interior FD", False), ("hae: FD at the high scale − best interior FD", False),
        ("gae: KID at the low scale − best interior KID", False), ("gae: KID at the high scale − best interior KID", False),
        ("gae: FD at the low scale − best interior FD", False), ("gae: FD at the high scale − best interior FD", False)]
    assert rows(tests[:2]) == [(tests[0].label, True, (0, 1), (22.0, 22.0)), (tests[1].label, True, (0, 1), (-0.5, -0.5))]
    assert v == MIX and note == "judged on the HAE student where measured (the paper's setting), else GAE"
    assert tests[0].paper.source == "gFID 7.36 → 2.65" and tests[1].paper is None


def test_noise_rows():
    vals = {C.noise_key("psnr_clean", "clean_trained"): 30.0, C.noise_key("psnr_clean", "noise_trained"): 29.5,
            C.noise_key("psnr_noisy", "clean_trained"): 15.0, C.noise_key("psnr_noisy", "noise_trained"): 22.0,
            C.noise_key(C.KID, "clean_trained"): 0.5, C.noise_key(C.KID, "noise_trained"): 0.25,
            C.noise_key("fd_images", "clean_trained"): 50.0, C.noise_key("fd_images", "noise_trained"): 52.0}
    tests, v, note = judged("noise_tradeoff", vals)
    label = "clean-trained − noise-trained decoder on the same generated latents"
    assert rows(tests) == [
        (f"KID: {label}", True, (0, 1), (0.25, 0.25)),
        ("FD-effnet", False, (0, 1), (-2.0, -2.0)),
        ("PSNR at the largest σ: noise-trained − clean-trained", False, (0, 1), (7.0, 7.0)),
        ("PSNR on clean latents: noise-trained − clean-trained + 1.0 dB", False, (0, 1), (0.5, 0.5))]
    assert (v, note) == (S, "")


def test_width_rows_with_three_narrow_widths():
    """The wide widths are compared with the floor of the widest narrow one (d=12 of 4, 8, 12)."""
    n = 16
    vals = {}
    for w, loss in {4: 0.75, 8: 0.5, 12: 0.25, 16: 0.375, 32: 0.125}.items():
        vals[C.width_key("loss", w)], vals[C.width_key("floor", w)] = loss, max(n - w, 0) / n
    tests, v, note = judged("width_check", vals, token_dim=n)
    assert [(t.label, t.judged, t.seeds) for t in tests] == [
        ("d=4: loss − 0.9·floor (held at the floor)", True, (0, 1)),
        ("d=8: loss − 0.9·floor (held at the floor)", True, (0, 1)),
        ("d=12: loss − 0.9·floor (held at the floor)", True, (0, 1)),
        ("d=16: floor at d=12 − loss (below it)", True, (0, 1)),
        ("d=32: floor at d=12 − loss (below it)", True, (0, 1))]
    want = [0.75 - 0.675, 0.5 - 0.45, 0.25 - 0.225, 0.25 - 0.375, 0.25 - 0.125]
    assert [t.values for t in tests] == [pytest.approx((w, w), abs=1e-8) for w in want]
    assert (v, note) == (MIX, "n=16")  # d=16 above the floor at d=12 (0.25), though below d=8's (0.5)


def test_shift_rows():
    vals = {C.shift_key(C.KID, "shift"): 4.75, C.shift_key(C.KID, "noshift"): 23.0}
    tests, v, note = judged("shift", vals)
    assert rows(tests) == [("KID: no shift − shift", True, (0, 1), (18.25, 18.25))]
    assert (v, note) == (S, "")


def test_gae_alignment_rows():
    vals = {}
    for a, flat, gap, psnr in (("pre", 0.25, 0.5, 27.0), ("post", 0.5, 0.5, 26.5), ("latent", 0.625, 0.25, 26.0)):
        vals[C.gae_key(a, "probe_flatten")], vals[C.gae_key(a, "probe_gap")], vals[C.gae_key(a, "psnr")] = flat, gap, psnr
    tests, v, note = judged("gae_alignment", vals)
    assert rows(tests) == [("Flatten probe: latent − pre", True, (0, 1), (0.375, 0.375)),
                           ("Flatten probe: latent − post", True, (0, 1), (0.125, 0.125)),
                           ("GAP probe: latent − pre", False, (0, 1), (-0.25, -0.25)),
                           ("GAP probe: latent − post", False, (0, 1), (-0.25, -0.25)),
                           ("PSNR: pre − latent (pre reconstructs slightly better)", False, (0, 1), (1.0, 1.0))]
    assert (v, note) == (S, "")


def test_per_seed_renames_every_key():
    assert C.per_seed({"fd_images_euclidean": 40.0, "token_dim": 16}, 3.0) == {
        "fd_images_euclidean_seed3": 40.0, "token_dim_seed3": 16}
