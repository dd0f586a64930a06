"""The one registry of paper claims: citation, the paper's numbers, the primary metric, the verdict rule.

Each claim names the paper and its table or figure, what the paper states with its numbers (checked
against the texts in ../shared/papers; `text_lost` says what the extracted text lost), the notebook
that measures it, and the metric keys that notebook logs. Keys are built by small functions in
lab.claim_keys (`gen_key`, `share_key`, ...; re-exported here) that lab.record calls on a notebook's tables, so each key is spelled in
one place and a notebook's record cell is one `record.log` call.

Primary metric (issue 23, item 5). Each claim names one metric, chosen before the runs (`primary`);
only the tests of that metric are judged (lab.power.combine), the others are shown ("also"), so no
verdict comes from picking among metrics. `mixed` survives only where the primary metric has two
sub-tests that disagree in sign (the λ sweep's two comparisons, both ends of the U-curve, ...).

Power (item 6). Every judged test prints its minimum detectable effect; a `not shown` test says
whether the paper's effect (`effects`: a relative change of the baseline arm, with the paper's
numbers) would have been detectable at our seeds, or how many it would need (lab.power).

CPU scale (item 3). A run that logs `cpu_key(claim id)` (a string: why, and the GPU command) gets
`not measured at CPU scale` for that claim and never another verdict; its numbers are shown, not
judged. A claim with no CPU recipe at all says so in `gpu_only`. `cpu_part` names a non-primary part
that such a key covers instead (the claim is then judged on its primary metric).

Seeds: a notebook logs every per-seed value under `seed_key(key, seed)`; a rule pairs values by seed.
lab.commands.report reads only this module.
"""
import re
from dataclasses import dataclass, field, replace
from statistics import mean
from typing import Callable

from lab.claim_keys import (COORDS, KID, SWAP_VARIANTS, cpu_key, ddt_key, distance_tag,  # noqa: F401
                            gae_key, gen_key, lambda_config, noise_key, per_seed, probe_key, recon_key,
                            sampler_key, share_key, shift_key, swap_key, u_key, width_key)
from lab.power import (MIXED, NOT_SHOWN, REVERSED, SUPPORTED, Effect, Test, above, combine,  # noqa: F401
                       has, interval, paired, seed_key, seed_values)

NOT_CPU = "not measured at CPU scale"
NO_RUN = "no run yet"
NOT_MEASURED = "not measured here"
DIRTY = "no verdict (dirty tree)"
VERDICTS = (SUPPORTED, NOT_SHOWN, REVERSED, MIXED, NOT_CPU, NO_RUN, NOT_MEASURED, DIRTY)

# ----------------------------------------------------------------------------------------------
# Rules: metrics -> (tests, verdict, note); None when the run lacks what the rule needs.
# Judged tests are the primary metric's; the rest carry judged=False and only show.
# ----------------------------------------------------------------------------------------------

def _shown(tests):
    """Drop shown-only tests the run has no values for (an older run, an optional metric)."""
    return [t for t in tests if t.judged or t.seeds]


SWAP_NEAR, SWAP_FAR = 0.5, 0.75  # "stays close to the anchor" / "almost as far as the whole neighbour"


def rule_swap(m):
    tests = []
    for d in ("lpips", "dino"):  # LPIPS judged, DINO shown
        dir_kept, dir_swapped, whole = (swap_key(d, v) for v in SWAP_VARIANTS)
        tests.append(paired(f"{d}: {SWAP_NEAR}× whole neighbour − (anchor dir + neighbour radius)", m,
                            dir_kept, whole, higher=False, scale=SWAP_NEAR, judged=d == "lpips"))
        tests.append(paired(f"{d}: (anchor radius + neighbour dir) − {SWAP_FAR}× whole neighbour", m,
                            dir_swapped, whole, higher=True, scale=SWAP_FAR, judged=d == "lpips"))
    return tests, combine(tests), ""


FREE_NORM = ("dino", "vae", "hae")  # latents whose token norm is free (judged)
STANDARDISED = ("dino_affine_free", "gae", "sphvae")  # norm fixed by construction: sanity rows
HALF_LOW = 0.35  # "roughly half or more": at least 0.5 − 0.15
SLERP_TOL = 1e-4


def rule_radial_share(m):
    tests = []
    for name in FREE_NORM:
        for where in ("start", "end"):
            end = "noise" if where == "start" else "data"
            for coords in COORDS:
                if has(m, share_key(name, "linear", where, coords)):
                    tests.append(above(f"{name} linear share at the {end} end − {HALF_LOW}"
                                       + (" (raw tokens)" if coords == "raw" else ""), m,
                                       share_key(name, "linear", where, coords), HALF_LOW,
                                       judged=coords == "training"))
    if not any(t.judged for t in tests):
        return None
    notes = []
    for name in FREE_NORM + STANDARDISED:
        v = seed_values(m, share_key(name, "slerp", "max"))
        if v:
            ok = max(v.values()) <= SLERP_TOL
            notes.append(f"{name} slerp max share {max(v.values()):.2g} ({'0 as constructed' if ok else 'NOT 0: bug'})")
    for name in STANDARDISED[:1]:
        v = seed_values(m, share_key(name, "linear", "start"))
        if v:
            notes.append(f"sanity, standardised {name} (norm √C, 0.5 analytically): linear share at the noise "
                         f"end {mean(v.values()):.3g}")
    verdict = combine(tests)
    if any("bug" in n for n in notes):
        verdict = REVERSED
    return tests, verdict, "; ".join(notes)


PROBE_GAP = 0.03  # DINO-SAE Fig 3: "deteriorating only within 3%"


def rule_probe(m):
    tests = [paired(f"GAP: student − teacher + {PROBE_GAP}", m, probe_key("student", "gap"),
                    probe_key("teacher", "gap"), offset=PROBE_GAP),
             paired("flatten: student − teacher", m, probe_key("student", "flatten"),
                    probe_key("teacher", "flatten"), judged=False)]
    return tests, combine(tests), ""


RECON = (("psnr", True), ("ssim", True), ("lpips", False))  # (metric, higher is better)


def _recon_rule(ours, base, primary, stage=None):
    """`primary` at `stage` judged; the other metrics, and every metric after all stages, shown."""
    def rule(m):
        tests = []
        for st in dict.fromkeys((stage, None)):
            when = "after all stages" if st is None else f"stage {st}"
            tests += [paired(f"{metric} ({when}): {ours} vs {base} ({'higher' if hi else 'lower'} is better)", m,
                             recon_key(metric, ours, st), recon_key(metric, base, st), higher=hi,
                             judged=(metric, st) == (primary, stage)) for metric, hi in RECON]
        return _shown(tests), combine(tests), "rFID not measured (too few images at CPU size)"
    return rule


GEN_SHOWN = (("fd_images", "FD-effnet", False), ("fd_tokens", "FD-tokens", False),
             ("class_agreement", "class agreement", True), ("precision", "precision", True),
             ("recall", "recall", True))


def _gen_tests(m, key, ours, base, label, shown=GEN_SHOWN, tag=""):
    """KID (judged) of `ours` against `base`; the other metrics shown, labelled by name (+ `tag` where
    a rule makes two comparisons). key(metric, arm) -> metric key."""
    tests = [paired(f"KID: {label}", m, key(KID, ours), key(KID, base), higher=False)]
    tests += [paired(f"{name}{tag}", m, key(k, ours), key(k, base), higher=hi, judged=False)
              for k, name, hi in shown]
    return _shown(tests)


def _paper(metric, config):
    return gen_key(metric, config, "paper")


def rule_euclid_riemann(m):
    r, e = lambda_config(0.1), "euclidean"
    tests = _gen_tests(m, _paper, r, e, "euclidean − riemannian λ=0.1")
    tests += _shown([paired("KID with CFG 4", m, gen_key(KID, r, "cfg4"),
                            gen_key(KID, e, "cfg4"), higher=False, judged=False)])
    return tests, combine(tests), ""


def rule_lambda(m):
    best = lambda_config(0.1)
    tests = []
    for lam in (0.0, 1.0):
        tests += _gen_tests(m, _paper, best, lambda_config(lam), f"λ={lam} − λ=0.1", GEN_SHOWN[:1], f" λ={lam}")
    return tests, combine(tests), ""


def rule_sampler(m):
    tests = _gen_tests(m, sampler_key, "euler_project", "expmap", "exp map − Euler+projection", GEN_SHOWN[:3])
    return tests, combine(tests), "the λ = 0.1 generator (its radial output trained)"


def rule_u_curve(m):
    tests, hae = [], has(m, u_key("hae", "kid_best_interior"))
    for name in ("hae", "gae"):
        if has(m, u_key(name, "kid_best_interior")):
            for metric, tag in (("kid", "KID"), ("fd", "FD")):
                tests += _shown([paired(f"{name}: {tag} at the {end} scale − best interior {tag}", m,
                                        u_key(name, f"{metric}_best_interior"), u_key(name, f"{metric}_{end}"),
                                        higher=False, judged=metric == "kid" and (name == "hae" or not hae))
                                 for end in ("low", "high")])
    if not tests:
        return None
    return tests, combine(tests), "judged on the HAE student where measured (the paper's setting), else GAE"


NOISE_COST_DB = 1.0  # the papers' clean-latent cost: about 1 dB PSNR (HAE Tab 2: 26.2 → 25.2)


def rule_noise(m):
    clean, noisy = "clean_trained", "noise_trained"
    tests = _gen_tests(m, lambda k, a: noise_key(k, a), noisy, clean, "clean-trained − noise-trained decoder "
                       "on the same generated latents", GEN_SHOWN[:1])
    tests += [paired("PSNR at the largest σ: noise-trained − clean-trained", m, noise_key("psnr_noisy", noisy),
                     noise_key("psnr_noisy", clean), judged=False),
              paired(f"PSNR on clean latents: noise-trained − clean-trained + {NOISE_COST_DB} dB", m,
                     noise_key("psnr_clean", noisy), noise_key("psnr_clean", clean), offset=NOISE_COST_DB,
                     judged=False)]
    return _shown(tests), combine(tests), ""


def rule_width(m):
    widths = sorted({int(g.group(1)) for k in m if (g := re.match(r"loss_w(\d+)_seed\d+$", k))})
    n = int(m["token_dim"])
    narrow, wide = [w for w in widths if w < n], [w for w in widths if w >= n]
    if not narrow or not wide:
        return [], NOT_SHOWN, f"need widths on both sides of the token dimension {n}"
    tests = [paired(f"d={w}: loss − 0.9·floor (held at the floor)", m, width_key("loss", w),
                    width_key("floor", w), scale=0.9) for w in narrow]
    tests += [paired(f"d={w}: floor at d={narrow[-1]} − loss (below it)", m, width_key("loss", w),
                     width_key("floor", narrow[-1]), higher=False) for w in wide]
    return tests, combine(tests), f"n={n}"


def rule_shift(m):
    tests = _gen_tests(m, shift_key, "shift", "noshift", "no shift − shift", GEN_SHOWN[:1])
    alpha = seed_values(m, shift_key("alpha", "shift"))
    note = f"α = {mean(alpha.values()):.3g} with the shift, 1 without" if alpha else ""
    return tests, combine(tests), note


def rule_ddt(m):
    tests = _gen_tests(m, ddt_key, "ddt", "plain", "plain DiT − DiT^DH (same trunk)", GEN_SHOWN[:1])
    return tests, combine(tests), ""


def rule_gae_alignment(m):
    tests = [paired(f"Flatten probe: latent − {a}", m, gae_key("latent", "probe_flatten"),
                    gae_key(a, "probe_flatten")) for a in ("pre", "post")]
    tests += [paired(f"GAP probe: latent − {a}", m, gae_key("latent", "probe_gap"), gae_key(a, "probe_gap"),
                     judged=False) for a in ("pre", "post")]
    tests.append(paired("PSNR: pre − latent (pre reconstructs slightly better)", m, gae_key("pre", "psnr"),
                        gae_key("latent", "psnr"), judged=False))
    return _shown(tests), combine(tests), ""


def rule_latent_norm_kl(m):
    tests = [paired(f"{metric}: KL − RMS latent normalisation ({'higher' if hi else 'lower'} is better)", m,
                    gae_key("latent", metric), gae_key("latent", metric, "kl"), higher=hi,
                    judged=metric == "lpips") for metric, hi in (("lpips", False), ("psnr", True), ("ssim", True))]
    return _shown(tests), combine(tests), ""


# ----------------------------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------------------------

HAE, SAE, GAE, SFM, RAE = "HAE", "DINO-SAE", "GAE", "Spherical FM", "RAE"
PAPERS = {HAE: "HAE: Hyperspherical Autoencoder (../shared/papers/000_*)",
          SAE: "DINO-SAE: DINO Spherical Autoencoder (001_*)",
          GAE: "GAE: Geometric Autoencoder for Diffusion Models (002_*)",
          SFM: "Aligning Latent Geometry for Spherical Flow Matching (003_*, text stops at its §3.4)",
          RAE: "RAE: Diffusion Transformers with Representation Autoencoders (004_*)"}
GEN_PRIMARY = "KID on EfficientNet-Lite0 features (FD-effnet, FD-tokens, class agreement, precision/recall shown)"


@dataclass(frozen=True)
class Claim:
    id: str
    paper: str
    where: str           # table or figure
    statement: str       # what the paper says
    number: str          # the paper's number(s), as the text gives them
    notebook: str        # the experiment that measures it ("" when none does)
    needs: tuple         # keys (before seed_key) a run must log
    rule: Callable = None  # metrics -> (tests, verdict, note) | None
    text_lost: str = ""  # what the extracted paper text lost
    params: dict = field(default_factory=dict)  # parameter values a run must have to count
    primary: str = ""    # the metric whose tests alone decide the verdict, named before the runs
    effects: tuple = ()  # the paper's Effect per judged test (one: every test; None: no number)
    protocol: str = ""   # the run's key holding the sampling protocol; "" when no generator
    gpu_only: str = ""   # no CPU recipe: what it needs and the GPU command
    cpu_part: str = ""   # the non-primary part a cpu_key covers (the claim is still judged)


def _e(a, b, where):
    """The paper's change from baseline `a` to `b`, relative to `a`."""
    return Effect((b - a) / a, f"{where} {a:g} → {b:g}")


CLAIMS = [
    Claim("swap_asymmetry", SFM, "Fig. 3",
          "Swapping in a same-class neighbour's direction moves the decode almost as far as the whole "
          "neighbour; swapping in only its radius leaves it close to the anchor, on LPIPS and DINOv2 distances.",
          "no numbers in the text (a figure)", "01_direction_magnitude",
          tuple(swap_key(d, v) for d in ("lpips", "dino") for v in SWAP_VARIANTS), rule_swap,
          "the text stops at §3.4: Fig. 3's values are not in it", primary="LPIPS of the swapped decodes (DINO shown)"),
    Claim("radial_share", SFM, "Fig. 4 / Tab. 1",
          "Near both endpoints the radial part of the linear-path velocity is roughly half or more of the "
          "total; slerp on the sphere makes it zero by construction.",
          "roughly half or more (per-tokenizer values lost)", "02_radial_share",
          (share_key("dino", "linear", "start"),), rule_radial_share,
          "the per-tokenizer shares of Tab. 1 ('about … at both endpoints') are lost",
          primary="linear-path radial share in the flow's training coordinates (standardised tokens; raw shown)"),
    Claim("probe_teacher_student", SAE, "Fig. 3",
          "With the cosine loss the student's linear probe stays within 3% top-1 of the teacher's.",
          "DINOv3 89% vs DINO-SAE 87% top-1 (ImageNet-1K)", "03_linear_probe",
          (probe_key("teacher", "gap"), probe_key("student", "gap")), rule_probe, primary="GAP probe top-1 (Flatten shown)"),
    Claim("stem_vs_patch", HAE, "Tab. 5",
          "The hierarchical CNN patch embedding reconstructs far better than the standard ViT patchification.",
          "PSNR 19.55 → 26.20 dB, rFID 0.47 → 0.37", "07_ae_ablations",
          tuple(recon_key("psnr", mo, 1) for mo in ("conv_cosine", "patch_cosine")),
          _recon_rule("conv_cosine", "patch_cosine", "psnr", stage=1),
          "the prose says 'boosting the PSNR to 19.55 dB', a typo for the table's 26.20",
          primary="PSNR at stage 1, as HAE Tab. 5 (after all stages, SSIM, LPIPS shown)",
          effects=(_e(19.55, 26.20, "PSNR"),)),
    Claim("cosine_vs_mse", SAE, "§3 (Training Loss)",
          "Cosine alignment leaves the norm free for detail; MSE alignment degrades reconstruction. Ours "
          "compares at matched effective weight, so the row tests direction vs magnitude, not step size.",
          "no number (an argument, citing higher rFID under MSE)", "07_ae_ablations",
          tuple(recon_key("lpips", mo) for mo in ("conv_cosine", "conv_mse")),
          _recon_rule("conv_cosine", "conv_mse", "lpips"),
          primary="LPIPS after all stages (the paper cites rFID; PSNR, SSIM shown)"),
    Claim("euclid_vs_riemann", HAE, "Tab. 4",
          "Riemannian FM on the sphere generates far better than Euclidean FM at the same budget.",
          "gFID 15.95 (Euclidean) vs 2.65 (Riemannian)", "05_flow_matching",
          (_paper(KID, lambda_config(0.1)), _paper(KID, "euclidean")), rule_euclid_riemann,
          "the text does not give the Riemannian row's λ; ours uses HAE's chosen λ = 0.1 (Tab. 6)",
          primary=GEN_PRIMARY, effects=(_e(15.95, 2.65, "gFID"),), protocol="protocol_paper"),
    Claim("lambda_sweep", HAE, "Tab. 6",
          "A radial penalty λ = 0.1 beats no penalty (λ = 0) and a strict one (λ = 1).",
          "gFID 4.40 / 3.90 / 5.70 at λ = 0 / 0.1 / 1", "05_flow_matching",
          tuple(_paper(KID, lambda_config(x)) for x in (0.0, 0.1, 1.0)), rule_lambda,
          "the λ symbols (table header and prose values) are lost; the rows read 0.0, 1.0, 0.1",
          primary=GEN_PRIMARY, effects=(_e(4.40, 3.90, "gFID"), _e(5.70, 3.90, "gFID")), protocol="protocol_paper"),
    Claim("sampler", SAE, "App. A",
          "Euler with projection generates better than the Rodrigues (exp-map) rotation sampler.",
          "no number ('empirically … better generation quality')", "05_flow_matching",
          tuple(sampler_key(KID, s) for s in ("euler_project", "expmap")), rule_sampler,
          primary=GEN_PRIMARY, protocol="protocol_samplers"),
    Claim("u_curve", HAE, "App. C (Fig. 7)",
          "gFID against the decoding scale of generated HAE latents is U-shaped (scale swept 8 → 20).",
          "gFID 7.36 at the low end, best 2.65 at the chosen scale", "06_decoder_scale",
          (), rule_u_curve, "the scale values (where 7.36 and 2.65 occur) are lost",
          primary="KID of generated latents decoded at each scale (FD shown)",
          effects=(_e(7.36, 2.65, "gFID"), None), protocol="protocol_paper"),
    Claim("noise_tradeoff", RAE, "Tab. 5 (also HAE Tab. 2, GAE Tab. 4)",
          "Noise-augmented decoder training improves generation and robustness at a small cost on clean latents.",
          "RAE gFID 4.81 → 4.28, rFID 0.49 → 0.57; HAE Tab. 2 rFID 0.37 → 0.78, PSNR 26.2 → 25.2, gFID "
          "32.64 → 2.65; GAE Tab. 4 C_σ 0.05 / 0.1 / 0.2: PSNR 27.78 / 27.37 / 26.99, gFID 2.58 / 2.36 / 2.32",
          "07_ae_ablations", tuple(noise_key(KID, a) for a in ("clean_trained", "noise_trained")), rule_noise,
          primary="KID of the same generated latents through each decoder (RAE Tab. 5 gFID; PSNR shown)",
          effects=(_e(4.81, 4.28, "RAE gFID"),), protocol="protocol_paper"),
    Claim("width_check", RAE, "Tab. 3",
          "A DiT narrower than the token dimension cannot fit one latent: its loss stays at the floor (n−d)/n.",
          "DiT-S on DINOv2-B 0.52 (floor 0.5); DiT-B 0.024", "08_width", ("token_dim",), rule_width,
          "nothing lost; the floor 0.5 = (768 − 384)/768 follows from Thm. 1, the table gives only the losses",
          primary="loss against the floor (n − d)/n"),
    Claim("shift", RAE, "Tab. 4",
          "The dimension-dependent time shift is needed for high-dimensional latents.",
          "gFID 23.08 (no shift) → 4.81 (shift)", "07_ae_ablations",
          tuple(shift_key(KID, a) for a in ("shift", "noshift")), rule_shift,
          primary="KID, shift on vs off at α > 1 (FD shown)", effects=(_e(23.08, 4.81, "gFID"),),
          protocol="protocol_paper"),
    Claim("gae_alignment", GAE, "Tab. 1",
          "Latent alignment keeps the most semantics (linear probe); pre alignment reconstructs slightly better.",
          "probe 20.9 / 60.8 / 63.2, rFID 0.40 / 0.48 / 0.51 (pre / post / latent)", "07_ae_ablations",
          tuple(gae_key(a, "probe_flatten") for a in ("pre", "post", "latent")), rule_gae_alignment,
          primary="Flatten probe top-1, as GAE Tab. 1 (GAP probe and PSNR shown)",
          effects=(_e(20.9, 63.2, "Flatten probe"), _e(60.8, 63.2, "Flatten probe"))),
    Claim("ddt_head", RAE, "Tab. 6",
          "A wide, shallow DDT head beats the plain DiT on RAE latents.",
          "gFID 4.28 → 2.16 (DINOv2-B, DiT-XL vs DiT^DH-XL)", "07_ae_ablations",
          tuple(ddt_key(KID, a) for a in ("plain", "ddt")), rule_ddt,
          text_lost="the issue cited Tab. 15, which is the head-shape ablation (2.36 / 2.31 / 2.16)",
          primary="KID, plain DiT vs DiT^DH on DINO tokens (FD shown)", effects=(_e(4.28, 2.16, "gFID"),),
          protocol="protocol_paper"),
    Claim("latent_norm_vs_kl", GAE, "Tab. 7",
          "Latent normalisation beats the KL constraint for reconstruction and generation.",
          "rFID 0.977 → 0.764, gFID 16.72 → 12.55", "07_ae_ablations",
          tuple(gae_key("latent", "lpips", r) for r in ("norm", "kl")), rule_latent_norm_kl,
          primary="LPIPS of the reconstruction (GAE Tab. 7 rFID; PSNR, SSIM shown; generation not judged)",
          effects=(_e(0.977, 0.764, "rFID"),), cpu_part="generation"),
]

BY_ID = {c.id: c for c in CLAIMS}


def _with_effects(claim, tests):
    """Attach the paper's effect to each judged test, in order (one effect: every judged test)."""
    if not claim.effects:
        return tests
    out, i = [], 0
    for t in tests:
        if t.judged:
            out.append(replace(t, paper=claim.effects[min(i, len(claim.effects) - 1)]))
            i += 1
        else:
            out.append(t)
    return out


def judge(claim, m):
    """(tests, verdict, note) of `claim` on metrics m; NO_RUN when m lacks a key it needs;
    NOT_CPU when the claim has no CPU recipe or the run logged cpu_key(claim.id)."""
    if claim.gpu_only:
        return [], NOT_CPU, claim.gpu_only
    if claim.rule is None or not claim.notebook:
        return [], NOT_MEASURED, "no notebook measures this"
    missing = [k for k in claim.needs if not (has(m, k) or k in m)]
    why = m.get(cpu_key(claim.id))
    if why is not None and not claim.cpu_part:  # never another verdict: numbers shown, none judged
        out = None if missing else claim.rule(m)
        return [replace(t, judged=False) for t in (out[0] if out else [])], NOT_CPU, str(why)
    if missing:
        return [], NO_RUN, "not logged: " + ", ".join(missing)
    out = claim.rule(m)
    if out is None:
        return [], NO_RUN, "the run logs none of the values this rule reads"
    tests, verdict, note = out
    if why is not None:
        note = "; ".join(x for x in (note, f"{claim.cpu_part}: {NOT_CPU} ({why})") if x)
    return _with_effects(claim, tests), verdict, note


def regime(claim, m):
    """The regime a generation row ran in: the time shift α and the sampling protocol ('' otherwise)."""
    if not claim.protocol:
        return ""
    parts, missing = [], []
    per = {k[len("shift_alpha_"):]: v for k, v in sorted(m.items()) if k.startswith("shift_alpha_")}  # 06: per latents
    if "shift_alpha" in m:
        parts.append(f"time shift α = {float(m['shift_alpha']):.3g}")
    elif per:
        parts.append("time shift α = " + ", ".join(f"{float(v):.3g} ({k})" for k, v in per.items()))
    else:
        missing.append("time shift α")
    if claim.protocol in m:
        parts.append(f"sampling: {m[claim.protocol]}")
    else:
        missing.append("sampling protocol")
    return "; ".join(parts + ([" and ".join(missing) + " not logged"] if missing else []))
