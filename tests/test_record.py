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


def test_flow_matching_tables_give_fd_norm_agreement_and_sampler_keys():
    cfgs = ["euclidean", claims.lambda_config(0.1)]
    quality = pd.DataFrame([dict(config=c, seed=s, fd_images=1.0 + s, fd_tokens=2.0, norm_cv=0.1, class_agreement=0.5)
                            for s in (0, 1) for c in cfgs])
    agree = pd.DataFrame([dict(config=c, seed=s, guidance=g, class_agreement=0.3) for s in (0, 1) for c in cfgs
                          for g in ("CFG 4", "no CFG")])
    samplers = pd.DataFrame([dict(config=cfgs[1], seed=s, method=me, steps=st, fd_images=3.0 + st, fd_tokens=4.0)
                             for s in (0, 1) for me in ("euler_project", "expmap") for st in (2, 5) if s == 0 or st == 2])
    m = record.log(Run(), generation=quality, class_agreement=agree, samplers=(samplers, 2), extra={"fd_name": "FD"})
    per_config = [k for c in cfgs for k in (claims.fd_key("images", c), claims.fd_key("tokens", c), f"norm_cv_{c}",
                                            f"class_agreement_cfg_{c}", f"class_agreement_nocfg_{c}")]
    sampler = [claims.sampler_key(k, me) for k in ("images", "tokens") for me in ("euler_project", "expmap")]
    first_seed = {f"fd_images_{me}_{st}steps" for me in ("euler_project", "expmap") for st in (2, 5)}
    assert set(m) == seeded(per_config + sampler) | first_seed | {"fd_name"}
    assert m["fd_images_sampler_expmap_seed1"] == 5.0 and m["fd_images_expmap_5steps"] == 8.0
    assert m[claims.seed_key(claims.fd_key("images", "euclidean"), 1)] == 2.0


def test_u_curve_noise_gae_stem_and_probe_tables():
    u = pd.DataFrame([dict(latents="hae", seed=s, scale=sc, fd_generated=fd) for s in (0, 1)
                      for sc, fd in ((0.5, 9.0), (1.0, 3.0), (1.5, 4.0), (2.0, 8.0))])
    noise = pd.DataFrame([dict(arm=a, seed=s, sigma=sg, psnr=20 - 10 * sg) for a in ("clean_trained", "noise_trained")
                          for s in (0, 1) for sg in (0.0, 0.5)])
    gen = pd.DataFrame([dict(arm=a, seed=s, fd_images=1.0) for a in ("clean_trained", "noise_trained") for s in (0, 1)])
    gae = pd.DataFrame([dict(align=a, seed=s, psnr=20.0, probe_gap=.5, probe_flatten=.6) for a in ("pre", "post", "latent")
                        for s in (0, 1)])
    hae = pd.DataFrame([dict(model=mo, seed=s, psnr=20.0, ssim=.5, lpips=.3, token_cos=.9, probe_gap=.4)
                        for mo in ("conv_cosine", "patch_cosine", "conv_mse") for s in (0, 1)])
    probe = pd.DataFrame([dict(encoder=e, pool=p, seed=s, accuracy=.7) for e in ("teacher", "student") for p in ("gap", "flatten")
                          for s in (0, 1)])
    m = record.log(Run(), u_curve=u, latent_noise=noise, latent_noise_generation=gen, gae_alignment=gae,
                   stem_and_alignment=hae, linear_probe=probe)
    assert m["u_hae_fd_best_interior_seed0"] == 3.0 and m["u_hae_best_scale_seed1"] == 1.0
    assert m["u_hae_fd_low_seed0"] == 9.0 and m["u_hae_fd_high_seed0"] == 8.0
    assert m["noise_psnr_clean_noise_trained_seed1"] == 20.0 and m["noise_psnr_noisy_clean_trained_seed0"] == 15.0
    for cid in ("u_curve", "noise_tradeoff", "gae_alignment", "stem_vs_patch", "cosine_vs_mse", "probe_teacher_student"):
        tests, verdict, note = claims.judge(claims.BY_ID[cid], m)
        assert verdict != claims.NO_RUN and tests, (cid, note)
    assert len(m) == 2 * (4 + 4 + 2 + 9 + 3 * 5 + 4)


def test_radial_share_tables():
    stats = pd.DataFrame([dict(autoencoder="dino", seed=s, preprocess=p, cv=0.1 + s, mean_over_shell=1.0)
                          for s in (0, 1) for p in ("raw", "centred")])
    dips = pd.DataFrame([dict(autoencoder="dino", seed=s, t=t, rel_nearest_mean=t) for s in (0, 1) for t in (0.0, 0.4, 1.0)])
    shares = pd.DataFrame([dict(autoencoder="dino", seed=s, path=p, t=t, share_mean=t / 2) for s in (0, 1)
                           for p in ("linear", "shell", "slerp") for t in (0.0, 1.0, 0.5)])
    m = record.log(Run(), radial_share=(stats, dips, shares))
    assert set(m) == seeded(["dino_norm_cv_raw", "dino_norm_mean_over_shell_raw", "dino_dip_mid"]
                            + [claims.share_key("dino", p, w) for p in ("linear", "shell", "slerp")
                               for w in ("start", "end", "max")])
    assert m["dino_dip_mid_seed0"] == 0.4 and m["dino_norm_cv_raw_seed1"] == 1.1
    assert m["dino_share_linear_end_seed0"] == 0.25 and m["dino_share_linear_max_seed0"] == 0.5


def test_bad_input_names_the_table_and_what_it_lacks():
    with pytest.raises(ValueError, match="unknown table name.*'widht'"):
        record.log(Run(), widht=pd.DataFrame())
    with pytest.raises(ValueError, match="lacks column.*'floor'"):
        record.log(Run(), width=pd.DataFrame(dict(width=[4], seed=[0], loss=[0.1])))
