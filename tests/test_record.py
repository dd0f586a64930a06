"""lab.record: a notebook's tidy per-seed tables become the registry's keys, one call per record cell.

The key sets are pinned on small synthetic tables, and every claim a table feeds finds its keys."""
import pandas as pd
import pytest

from lab import claims, probes, record


class Run:  # what record.log needs of lab.runs.Run
    def __init__(self):
        self.logged = {}

    def log_metrics(self, m):
        self.logged.update(m)


def seeded(keys, seeds=(0, 1)):
    return {claims.seed_key(k, s) for k in keys for s in seeds}


def test_width_table_gives_loss_and_floor_per_width_and_seed():
    df = pd.DataFrame(dict(width=[4, 8, 4, 8], seed=[0, 0, 1, 1], loss=[.5, .1, .6, .2], floor=[.5, 0., .5, 0.]))
    run = Run()
    m = record.log(run, width=df, extra={"token_dim": 8})
    assert run.logged == m
    assert set(m) == seeded(["loss_w4", "floor_w4", "loss_w8", "floor_w8"]) | {"token_dim"}
    assert m["loss_w8_seed1"] == 0.2 and m["floor_w4_seed0"] == 0.5 and m["token_dim"] == 8
    tests, verdict, _ = claims.judge(claims.BY_ID["width_check"], m)
    assert verdict != claims.NO_RUN and all(t.seeds == (0, 1) for t in tests)


def test_swap_table_logs_the_median_per_seed_distance_and_variant():
    rows = [dict(probe="swap", seed=s, metric=metric, variant=v, value=float(10 * s + k + j))
            for s in (0, 1) for metric in ("LPIPS-alex", "DINO-cos") for j, v in enumerate(probes.SWAP_VARIANTS)
            for k in (0, 1, 5)]
    rows.append(dict(probe="norm", seed=0, metric="LPIPS-alex", variant="x", value=99.0))
    m = record.log(Run(), swap=pd.DataFrame(rows))
    assert set(m) == seeded(claims.swap_key(d, v) for d in ("lpips", "dino") for v in claims.SWAP_VARIANTS)
    assert m["swap_lpips_whole_seed1"] == 10 + 1 + 2  # median of 12, 13, 17
    assert claims.judge(claims.BY_ID["swap_asymmetry"], m)[1] != claims.NO_RUN


def generation_table(cfgs, seeds=(0, 1)):
    """05's generation table as the contract of issue 23 spells it: one row per (config, seed, protocol)."""
    rows = []
    for s in seeds:
        for c in cfgs:
            for proto, cfg, interval, steps in (("paper", 1.1, "[0.0, 1.0]", 50), ("cfg4", 4.0, "[0.0, 1.0]", 25)):
                rows.append(dict(config=c, seed=s, protocol=proto, method="euler", steps=steps, cfg_scale=cfg,
                                 cfg_interval=interval, fd_images=100.0 + s, kid_images=0.01 * (s + 1),
                                 precision=0.5, recall=0.25, class_agreement=0.75, fd_tokens=2.0, n=64))
    return pd.DataFrame(rows)


def test_flow_matching_tables_give_kid_precision_recall_per_protocol_and_sampler_keys():
    cfgs = ["euclidean", claims.lambda_config(0.1)]
    agree = pd.DataFrame([dict(config=c, seed=s, guidance=g, n=8, class_agreement=0.3) for s in (0, 1) for c in cfgs
                          for g in ("CFG 4", "no CFG")])
    samplers = pd.DataFrame([dict(config=cfgs[1], seed=s, method=me, steps=st, fd_images=3.0 + st, fd_tokens=4.0,
                                  kid_images=0.5 + st, class_agreement=0.25, n=8)
                             for s in (0, 1) for me in ("euler_project", "expmap") for st in (2, 5) if s == 0 or st == 2])
    m = record.log(Run(), generation=generation_table(cfgs), class_agreement=agree, samplers=(samplers, 2),
                   extra={"shift_alpha": 1.22, "protocol_paper": "CFG 1.1 (HAE App. E), 50 Euler steps"})
    metrics = ("fd_images", "kid_images", "precision", "recall", "class_agreement", "fd_tokens")
    per_config = [claims.gen_key(x, c, p) for c in cfgs for x in metrics for p in ("paper", "cfg4")]
    per_config += [f"class_agreement_nocfg_{c}" for c in cfgs]
    sampler = [claims.sampler_key(k, me) for k in ("fd_images", "fd_tokens", "kid_images", "class_agreement")
               for me in ("euler_project", "expmap")]
    first_seed = {f"{k}_{me}_{st}steps" for k in ("fd_images", "kid_images") for me in ("euler_project", "expmap")
                  for st in (2, 5)}
    unseeded = {"shift_alpha", "protocol_paper", "regime_paper", "regime_cfg4", "protocol_samplers"}
    assert set(m) == seeded(per_config + sampler) | first_seed | unseeded
    assert m[claims.seed_key(claims.gen_key("kid_images", "euclidean", "paper"), 1)] == 0.02
    assert m["kid_images_sampler_expmap_seed1"] == 2.5 and m["fd_images_expmap_5steps"] == 8.0
    assert m["regime_cfg4"] == "euler, 25 steps, CFG 4 on t in [0.0, 1.0]"
    assert m["protocol_samplers"] == "unguided (DINO-SAE), 2 steps"
    cv = record.log(Run(), generation=generation_table(cfgs).assign(norm_cv=0.5))  # notebook 05 adds norm_cv
    assert cv["norm_cv_euclidean_seed1"] == 0.5 and cv["norm_cv_euclidean_cfg4_seed1"] == 0.5
    for cid in ("euclid_vs_riemann", "sampler"):
        tests, verdict, note = claims.judge(claims.BY_ID[cid], m)
        assert verdict != claims.NO_RUN and tests, (cid, note)
    assert claims.regime(claims.BY_ID["euclid_vs_riemann"], m) == (
        "time shift α = 1.22; sampling: CFG 1.1 (HAE App. E), 50 Euler steps")


def test_generation_table_without_a_protocol_is_refused():
    old = generation_table(["euclidean"]).drop(columns=["protocol"])
    with pytest.raises(ValueError, match="lacks column.*'protocol'"):
        record.log(Run(), generation=old)


def test_u_curve_noise_gae_stem_and_probe_tables():
    u = pd.DataFrame([dict(latents="hae", seed=s, scale=sc, decode_radius=sc, fd_generated=fd, kid_generated=fd / 100,
                           psnr_reconstruction=20.0, n=8) for s in (0, 1)
                      for sc, fd in ((0.5, 9.0), (1.0, 3.0), (1.5, 4.0), (2.0, 8.0))])
    noise = pd.DataFrame([dict(arm=a, seed=s, sigma=sg, psnr=20 - 10 * sg) for a in ("clean_trained", "noise_trained")
                          for s in (0, 1) for sg in (0.0, 0.5)])
    gen = pd.DataFrame([dict(arm=a, seed=s, fd_images=1.0, kid_images=0.5, n=8)
                        for a in ("clean_trained", "noise_trained") for s in (0, 1)])
    gae = pd.DataFrame([dict(align=a, latent_reg=r, seed=s, psnr=20.0, ssim=.5, lpips=.3, probe_gap=.5, probe_flatten=.6)
                        for a, r in (("pre", "norm"), ("post", "norm"), ("latent", "norm"), ("latent", "kl"))
                        for s in (0, 1)])
    hae = pd.DataFrame([dict(model=mo, seed=s, stage=st, psnr=20.0 + st, ssim=.5, lpips=.3, token_cos=.9, probe_gap=.4)
                        for mo in ("conv_cosine", "patch_cosine", "conv_mse") for s in (0, 1) for st in (1, 4)])
    probe = pd.DataFrame([dict(encoder=e, pool=p, seed=s, accuracy=.7) for e in ("teacher", "student") for p in ("gap", "flatten")
                          for s in (0, 1)])
    ddt = pd.DataFrame([dict(arm=a, seed=s, kid_images=0.1, fd_images=50.0, n=8) for a in ("plain", "ddt") for s in (0, 1)])
    shift = pd.DataFrame([dict(arm=a, seed=s, alpha=al, kid_images=0.1, fd_images=50.0, n=8)
                          for a, al in (("shift", 1.22), ("noshift", 1.0)) for s in (0, 1)])
    m = record.log(Run(), u_curve=u, latent_noise=noise, latent_noise_generation=gen, gae_alignment=gae,
                   stem_and_alignment=hae, linear_probe=probe, ddt_head=ddt, shift=shift)
    assert m["u_hae_kid_best_interior_seed0"] == 0.03 and m["u_hae_best_scale_seed1"] == 1.0
    assert m["u_hae_fd_low_seed0"] == 9.0 and m["u_hae_kid_high_seed0"] == 0.08 and m["u_hae_fd_best_interior_seed0"] == 3.0
    assert m["noise_psnr_clean_noise_trained_seed1"] == 20.0 and m["noise_psnr_noisy_clean_trained_seed0"] == 15.0
    assert m[claims.seed_key(claims.noise_key("kid_images", "clean_trained"), 0)] == 0.5
    assert m[claims.seed_key(claims.recon_key("psnr", "conv_mse", 1), 0)] == 21.0
    assert m[claims.seed_key(claims.recon_key("psnr", "conv_mse"), 0)] == 24.0  # after all stages
    assert m[claims.seed_key(claims.gae_key("latent", "lpips", "kl"), 1)] == 0.3
    assert m[claims.seed_key(claims.shift_key("alpha", "shift"), 1)] == 1.22
    for cid in ("u_curve", "noise_tradeoff", "gae_alignment", "stem_vs_patch", "cosine_vs_mse", "probe_teacher_student",
                "ddt_head", "shift", "latent_norm_vs_kl"):
        tests, verdict, note = claims.judge(claims.BY_ID[cid], m)
        assert verdict != claims.NO_RUN and tests, (cid, note)
    per_seed = 7 + 4 + 4 + 4 * 5 + 3 * 2 * 5 + 4 + 2 * 2 + 2 * 3
    assert len(m) == 2 * per_seed


def test_radial_share_tables():
    # probes.radial_tables: every table stacked in coords order, training first
    stats = pd.DataFrame([dict(autoencoder="dino", seed=s, preprocess=p, cv=0.1 + s + 5 * (co == "training"),
                               mean_over_shell=1.0, coords=co)
                          for co in ("training", "raw") for s in (0, 1) for p in ("raw", "centred")])
    dips = pd.DataFrame([dict(autoencoder="dino", seed=s, t=t, rel_nearest_mean=t + 5 * (co == "training"), coords=co)
                         for co in ("training", "raw") for s in (0, 1) for t in (0.0, 0.4, 1.0)])
    shares = pd.DataFrame([dict(autoencoder="dino", seed=s, coords=co, path=p, t=t, share_mean=t / 2 + (co == "raw"))
                           for s in (0, 1) for co in ("training", "raw")
                           for p in ("linear", "shell", "slerp") for t in (0.0, 1.0, 0.5)])
    m = record.log(Run(), radial_share=(stats, dips, shares))
    assert set(m) == seeded(["dino_norm_cv_raw", "dino_norm_mean_over_shell_raw", "dino_dip_mid"]
                            + [claims.share_key("dino", p, w, co) for p in ("linear", "shell", "slerp")
                               for w in ("start", "end", "max") for co in ("training", "raw")])
    assert m["dino_dip_mid_seed0"] == 0.4 and m["dino_norm_cv_raw_seed1"] == 1.1
    assert m[claims.seed_key(claims.share_key("dino", "linear", "end"), 0)] == 0.5  # t = 1, wherever the row is
    assert m[claims.seed_key(claims.share_key("dino", "linear", "start", "raw"), 0)] == 1.0
    assert claims.judge(claims.BY_ID["radial_share"], m)[1] != claims.NO_RUN
    # a table without the coords column holds raw tokens (what 02 logged before issue 23): never judged
    raw_only = [d[d.coords == "raw"].drop(columns=["coords"]) for d in (stats, dips, shares)]
    m = record.log(Run(), radial_share=tuple(raw_only))
    assert m[claims.seed_key(claims.share_key("dino", "linear", "end", "raw"), 0)] == 1.5
    assert claims.judge(claims.BY_ID["radial_share"], m)[1] == claims.NO_RUN


def test_bad_input_names_the_table_and_what_it_lacks():
    with pytest.raises(ValueError, match="unknown table name.*'widht'"):
        record.log(Run(), widht=pd.DataFrame())
    with pytest.raises(ValueError, match="lacks column.*'floor'"):
        record.log(Run(), width=pd.DataFrame(dict(width=[4], seed=[0], loss=[0.1])))


def test_a_u_curve_without_kid_is_refused_by_name():
    u = pd.DataFrame([dict(latents="gae", seed=0, scale=sc, fd_generated=1.0) for sc in (0.5, 1.0, 2.0)])
    with pytest.raises(ValueError, match="lacks column.*'kid_generated'"):
        record.log(Run(), u_curve=u)
