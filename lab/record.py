"""A notebook's record cell: tidy per-seed tables in, the registry's metric keys out.

`log(run, swap=df)` turns each table (named by what it holds) into {seed_key(key, seed): value}
with the key functions of lab.claims, merges them in the order given and logs them with
run.log_metrics. So a notebook never spells a key and the report (which reads only lab.claims)
finds what the notebook logged. Each table reader below says which columns it needs.
"""
from lab import claims, probes


def _need(df, columns):
    missing = [c for c in ("seed", *columns) if c not in df.columns]
    if missing:
        raise ValueError(f"record: the table lacks column(s) {missing}; it has {list(df.columns)}")
    return df


def _rows(df, columns):
    """(seed, row) per row; the readers build their keys from the named columns."""
    return ((int(r.seed), r) for r in _need(df, columns).itertuples(index=False))


# ----------------------------------------------------------------------------------------------
# Table readers: table -> (seed, {key: value}) pairs; seed None for a key logged as it is
# ----------------------------------------------------------------------------------------------

def _swap(df):  # 01: the probe's distance table; the median per seed, distance and variant
    names = dict(zip(probes.SWAP_VARIANTS, claims.SWAP_VARIANTS))
    swap = df[df.probe == "swap"].groupby(["seed", "metric", "variant"])["value"].median()
    for (s, metric, variant), v in swap.items():
        yield s, {claims.swap_key(metric, names[variant]): v}


def _coords(df, coords):
    """The rows of one coordinate system; a table without `coords` holds raw tokens (02 before issue 23)."""
    if "coords" not in df.columns:
        return df if coords == "raw" else df.iloc[:0]
    return df[df.coords == coords]


def _raw_if_both(df):
    """The raw-token rows of a table that holds both coordinate systems; the table itself otherwise."""
    return df[df.coords == "raw"] if "coords" in df.columns and (df.coords == "raw").any() else df


def _radial_share(stats, dips, shares):  # 02: probes.norm_stats / linear_path_norm_dip / radial_share_along_t
    stats, dips = _raw_if_both(stats), _raw_if_both(dips)  # norm statistics and the dip: of raw tokens, as before
    dip_of = dict(iter(dips.groupby(["autoencoder", "seed"], sort=False)))
    share_of = {c: dict(iter(_coords(shares, c).groupby(["autoencoder", "seed"], sort=False)))
                for c in claims.COORDS}
    for (name, s), st in stats.groupby(["autoencoder", "seed"], sort=False):
        raw, dip = st[st.preprocess == "raw"].iloc[0], dip_of[(name, s)]
        one = {f"{name}_norm_cv_raw": raw.cv, f"{name}_norm_mean_over_shell_raw": raw.mean_over_shell,
               f"{name}_dip_mid": dip.rel_nearest_mean.iloc[(dip.t - 0.5).abs().values.argmin()]}
        for coords, of in share_of.items():
            share = of.get((name, s))
            for path in ("linear", "shell", "slerp") if share is not None else ():
                sh = share[share.path == path].sort_values("t").share_mean
                one.update({claims.share_key(name, path, w, coords): v for w, v in
                            (("start", sh.iloc[0]), ("end", sh.iloc[-1]), ("max", sh.max()))})
        yield s, one


def _linear_probe(df):  # 03: one row per encoder, pool and seed
    for s, r in _rows(df, ("encoder", "pool", "accuracy")):
        yield s, {claims.probe_key(r.encoder, r.pool): r.accuracy}


GEN_METRICS = ("fd_images", "kid_images", "precision", "recall", "class_agreement", "fd_tokens")


def _generation(df):  # 05: one row per (config, seed, protocol); the protocol each ran, unseeded
    for s, r in _rows(df, ("config", "protocol", "method", "steps", "cfg_scale", "cfg_interval") + GEN_METRICS):
        yield s, {claims.gen_key(x, r.config, r.protocol): getattr(r, x) for x in GEN_METRICS}
        if "norm_cv" in df.columns:  # the paper protocol keeps the old key norm_cv_<config>
            yield s, {f"norm_cv_{r.config}" + ("" if r.protocol == "paper" else f"_{r.protocol}"): r.norm_cv}
    for proto, d in df.groupby("protocol", sort=False):
        r = d.iloc[0]
        yield None, {f"regime_{proto}": f"{r.method}, {int(r.steps)} steps, CFG {float(r.cfg_scale):g} on t in "
                                        f"{r.cfg_interval}"}


def _class_agreement(df):  # 05: the agreement table; its no-CFG rows (the guided ones come with `generation`)
    for s, r in _rows(df[df.guidance == "no CFG"], ("config", "class_agreement")):
        yield s, {f"class_agreement_nocfg_{r.config}": r.class_agreement}


SAMPLER_METRICS = ("fd_images", "fd_tokens", "kid_images", "class_agreement")


def _samplers(df, steps):  # 05: every seed at `steps`, unguided; the step sweep on the first seed, unseeded
    for s, r in _rows(df[df.steps == steps], ("method",) + SAMPLER_METRICS):
        yield s, {claims.sampler_key(x, r.method): getattr(r, x) for x in SAMPLER_METRICS}
    first = df[df.seed == df.seed.min()]
    yield None, {f"{x}_{r.method}_{r.steps}steps": getattr(r, x) for r in first.itertuples()
                 for x in ("fd_images", "kid_images")}
    yield None, {"protocol_samplers": f"unguided (DINO-SAE), {int(steps)} steps"}


def _u_curve(df):  # 06: per latents and seed, KID and FD at the lowest, highest and best interior scale
    df = _need(df, ("latents", "scale", "fd_generated", "kid_generated")).sort_values("scale")
    for (name, s), g in df.groupby(["latents", "seed"], sort=False):
        one = {f"u_{name}_best_scale": g.scale.iloc[g.kid_generated.values.argmin()]}
        for metric, col in (("kid", g.kid_generated), ("fd", g.fd_generated)):
            one.update({claims.u_key(name, f"{metric}_low"): col.iloc[0], claims.u_key(name, f"{metric}_high"):
                        col.iloc[-1], claims.u_key(name, f"{metric}_best_interior"): col.iloc[1:-1].min()})
        yield s, one


def _stem_and_alignment(df):  # 07: the HAE arms at stage 1 and after all stages (the last stage logged)
    last = df.stage.max() if "stage" in df.columns else None
    for s, r in _rows(df, ("model", "psnr", "ssim", "lpips", "token_cos", "probe_gap")):
        stage = getattr(r, "stage", None)
        st = None if stage == last and (last is None or last > 1) else stage
        yield s, {claims.recon_key(x, r.model, st): getattr(r, x)
                  for x in ("psnr", "ssim", "lpips", "token_cos", "probe_gap")}


def _latent_noise(df):  # 07: PSNR per arm and seed on clean latents (σ = 0) and at the largest σ
    for (arm, s), d in df.groupby(["arm", "seed"]):
        yield s, {claims.noise_key("psnr_clean", arm): d.psnr[d.sigma == 0].iloc[0],
                  claims.noise_key("psnr_noisy", arm): d.psnr[d.sigma == d.sigma.max()].iloc[0]}


def _latent_noise_generation(df):  # 07: KID and FD-effnet of each decoder on the same generated latents
    for s, r in _rows(df, ("arm", "fd_images", "kid_images")):
        yield s, {claims.noise_key(x, r.arm): getattr(r, x) for x in ("fd_images", "kid_images")}


def _gae_alignment(df):  # 07: per align and latent_reg (norm: GAE's RMS normalisation; kl: GAE Tab. 7)
    for s, r in _rows(df, ("align", "psnr", "ssim", "lpips", "probe_gap", "probe_flatten")):
        yield s, {claims.gae_key(r.align, x, getattr(r, "latent_reg", "norm")): getattr(r, x)
                  for x in ("psnr", "ssim", "lpips", "probe_gap", "probe_flatten")}


def _arms(key, columns):  # 07's ddt_head and shift tables: one row per arm and seed
    def read(df):
        for s, r in _rows(df, ("arm",) + columns):
            yield s, {key(x, r.arm): getattr(r, x) for x in columns}
    return read


def _width(df):  # 08: loss and closed-form floor per width and seed
    for s, r in _rows(df, ("width", "loss", "floor")):
        yield s, {claims.width_key("loss", r.width): r.loss, claims.width_key("floor", r.width): r.floor}


TABLES = {"swap": _swap, "radial_share": _radial_share, "linear_probe": _linear_probe, "generation": _generation,
          "class_agreement": _class_agreement, "samplers": _samplers, "u_curve": _u_curve,
          "stem_and_alignment": _stem_and_alignment, "latent_noise": _latent_noise,
          "latent_noise_generation": _latent_noise_generation, "gae_alignment": _gae_alignment, "width": _width,
          "ddt_head": _arms(claims.ddt_key, ("kid_images", "fd_images")),
          "shift": _arms(claims.shift_key, ("kid_images", "fd_images", "alpha"))}


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
