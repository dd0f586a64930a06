"""A notebook's record cell: tidy per-seed tables in, the registry's metric keys out.

`log(run, swap=df)` turns each table (named by what it holds) into {seed_key(key, seed): value}
with the key functions of lab.claims, merges them in the order given and logs them with
run.log_metrics. So a notebook never spells a key and the report (which reads only lab.claims)
finds what the notebook logged. Each table reader below says which columns it needs.
"""
from lab import claims, probes


def _rows(df, columns):
    """(seed, row) per row; the readers build their keys from the named columns."""
    missing = [c for c in ("seed", *columns) if c not in df.columns]
    if missing:
        raise ValueError(f"record: the table lacks column(s) {missing}; it has {list(df.columns)}")
    return ((int(r.seed), r) for r in df.itertuples(index=False))


# ----------------------------------------------------------------------------------------------
# Table readers: table -> (seed, {key: value}) pairs; seed None for a key logged as it is
# ----------------------------------------------------------------------------------------------

def _swap(df):  # 01: the probe's distance table; the median per seed, distance and variant
    names = dict(zip(probes.SWAP_VARIANTS, claims.SWAP_VARIANTS))
    swap = df[df.probe == "swap"].groupby(["seed", "metric", "variant"])["value"].median()
    for (s, metric, variant), v in swap.items():
        yield s, {claims.swap_key(metric, names[variant]): v}


def _radial_share(stats, dips, shares):  # 02: probes.norm_stats / linear_path_norm_dip / radial_share_along_t
    dip_of = dict(iter(dips.groupby(["autoencoder", "seed"], sort=False)))
    share_of = dict(iter(shares.groupby(["autoencoder", "seed"], sort=False)))
    for (name, s), st in stats.groupby(["autoencoder", "seed"], sort=False):
        raw, dip, share = st[st.preprocess == "raw"].iloc[0], dip_of[(name, s)], share_of[(name, s)]
        one = {f"{name}_norm_cv_raw": raw.cv, f"{name}_norm_mean_over_shell_raw": raw.mean_over_shell,
               f"{name}_dip_mid": dip.rel_nearest_mean.iloc[(dip.t - 0.5).abs().values.argmin()]}
        for path in ("linear", "shell", "slerp"):
            sh = share[share.path == path].share_mean
            one.update({claims.share_key(name, path, "start"): sh.iloc[0], claims.share_key(name, path, "end"):
                        sh.iloc[-1], claims.share_key(name, path, "max"): sh.max()})
        yield s, one


def _linear_probe(df):  # 03: one row per encoder, pool and seed
    for s, r in _rows(df, ("encoder", "pool", "accuracy")):
        yield s, {claims.probe_key(r.encoder, r.pool): r.accuracy}


def _generation(df):  # 05: the quality rows of the generators (config, seed, FD, norm CV, CFG agreement)
    for s, r in _rows(df, ("config", "fd_images", "fd_tokens", "norm_cv", "class_agreement")):
        yield s, {claims.fd_key("images", r.config): r.fd_images, claims.fd_key("tokens", r.config): r.fd_tokens,
                  f"norm_cv_{r.config}": r.norm_cv, f"class_agreement_cfg_{r.config}": r.class_agreement}


def _class_agreement(df):  # 05: the agreement table; its no-CFG rows (the CFG ones come with `generation`)
    for s, r in _rows(df[df.guidance == "no CFG"], ("config", "class_agreement")):
        yield s, {f"class_agreement_nocfg_{r.config}": r.class_agreement}


def _samplers(df, steps):  # 05: every seed at `steps`; the step sweep on the first seed, unseeded
    for s, r in _rows(df[df.steps == steps], ("method", "fd_images", "fd_tokens")):
        yield s, {claims.sampler_key("images", r.method): r.fd_images,
                  claims.sampler_key("tokens", r.method): r.fd_tokens}
    first = df[df.seed == df.seed.min()]
    yield None, {f"fd_images_{r.method}_{r.steps}steps": r.fd_images for r in first.itertuples()}


def _u_curve(df):  # 06: per latents and seed, FD at the lowest, highest and best interior decode scale
    for (name, s), g in df.groupby(["latents", "seed"], sort=False):
        fd = g.fd_generated
        yield s, {claims.u_key(name, "fd_low"): fd.iloc[0], claims.u_key(name, "fd_high"): fd.iloc[-1],
                  claims.u_key(name, "fd_best_interior"): fd.iloc[1:-1].min(),
                  f"u_{name}_best_scale": g.scale.iloc[fd.values.argmin()]}


def _stem_and_alignment(df):  # 07: the HAE arms' reconstruction, token cosine and probe
    for s, r in _rows(df, ("model", "psnr", "ssim", "lpips", "token_cos", "probe_gap")):
        yield s, {**{claims.recon_key(x, r.model): getattr(r, x) for x in ("psnr", "ssim", "lpips")},
                  f"token_cos_{r.model}": r.token_cos, f"probe_gap_{r.model}": r.probe_gap}


def _latent_noise(df):  # 07: PSNR per arm and seed on clean latents (σ = 0) and at the largest σ
    for (arm, s), d in df.groupby(["arm", "seed"]):
        yield s, {claims.noise_key("psnr_clean", arm): d.psnr[d.sigma == 0].iloc[0],
                  claims.noise_key("psnr_noisy", arm): d.psnr[d.sigma == d.sigma.max()].iloc[0]}


def _latent_noise_generation(df):  # 07: FD-effnet of each decoder on the same generated latents
    for s, r in _rows(df, ("arm", "fd_images")):
        yield s, {claims.noise_key("fd_images", r.arm): r.fd_images}


def _gae_alignment(df):  # 07
    for s, r in _rows(df, ("align", "psnr", "probe_gap", "probe_flatten")):
        yield s, {claims.gae_key(r.align, x): getattr(r, x) for x in ("psnr", "probe_gap", "probe_flatten")}


def _width(df):  # 08: loss and closed-form floor per width and seed
    for s, r in _rows(df, ("width", "loss", "floor")):
        yield s, {claims.width_key("loss", r.width): r.loss, claims.width_key("floor", r.width): r.floor}


TABLES = {"swap": _swap, "radial_share": _radial_share, "linear_probe": _linear_probe, "generation": _generation,
          "class_agreement": _class_agreement, "samplers": _samplers, "u_curve": _u_curve,
          "stem_and_alignment": _stem_and_alignment, "latent_noise": _latent_noise,
          "latent_noise_generation": _latent_noise_generation, "gae_alignment": _gae_alignment, "width": _width}


def log(run, extra=None, **tables):
    """Log every table's metrics under the registry's keys, then `extra` (run-level values) as they are.

    tables: name=DataFrame, or name=(DataFrame, ...) for a reader that takes more (radial_share: the
    three probe tables; samplers: the table and the sample_steps every seed ran). Returns the dict logged.
    """
    unknown = sorted(set(tables) - set(TABLES))
    if unknown:
        raise ValueError(f"record.log: unknown table name(s) {unknown}; known: {sorted(TABLES)}")
    m = {}
    for name, args in tables.items():
        for seed, values in TABLES[name](*(args if isinstance(args, tuple) else (args,))):
            m.update(values if seed is None else claims.per_seed(values, seed))
    m.update(extra or {})
    run.log_metrics(m)
    return m
