"""The explorer's callbacks (lab.explore): every slider changes the decode, the edits are lab.probes'."""
import matplotlib.pyplot as plt
import pytest
import torch

from lab import explore, probes


class PatchAE(torch.nn.Module):
    """A stand-in autoencoder: 4×4 pixel patches are the tokens (C = 48), decode is the inverse.

    Every latent edit shows in the decoded pixels, and nothing needs training or weights.
    """

    def encode(self, x):
        B = x.shape[0]
        p = x.unfold(2, 4, 4).unfold(3, 4, 4)  # [B, 3, h, w, 4, 4]
        return p.permute(0, 2, 3, 1, 4, 5).reshape(B, -1, 48) + 0.1

    def decode(self, z):
        B, N, _ = z.shape
        h = int(N ** 0.5)
        p = (z - 0.1).reshape(B, h, h, 3, 4, 4).permute(0, 3, 1, 4, 2, 5)
        return p.reshape(B, 3, 4 * h, 4 * h).clamp(0, 1)


def l2(a, b):
    return (a - b).flatten(1).norm(dim=1)


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 8, 8, generator=g) * 0.8
    y = torch.tensor([0, 1, 0, 1, 0, 2, 2, 1])
    return x, y


@pytest.fixture
def ex(data):
    return explore.Explorer(PatchAE(), *data, distances={"L2": l2}, name="patch")


def test_partners_are_the_other_images_of_the_class(data):
    _, y = data
    assert explore.partners(y, 0) == [2, 4]
    assert explore.partners(y, 5) == [6]


def test_swap_variants_match_lab_probes():
    g = torch.Generator().manual_seed(1)
    za, zb = torch.randn(2, 4, 16, generator=g), torch.randn(2, 4, 16, generator=g) * 3
    ref = probes.component_swap(za, zb)
    for swap, variant in (("radius", probes.SWAP_VARIANTS[0]), ("direction", probes.SWAP_VARIANTS[1]),
                          ("both", probes.SWAP_VARIANTS[2])):
        assert torch.equal(explore.edit_latent(za, zb, swap=swap), ref[variant]), swap
    # the names say what comes from the partner
    got = explore.edit_latent(za, zb, swap="radius")
    torch.testing.assert_close(got.norm(dim=-1), zb.norm(dim=-1))
    torch.testing.assert_close(got / got.norm(dim=-1, keepdim=True), za / za.norm(dim=-1, keepdim=True))


def test_angle_and_norm_edits_match_lab_probes():
    z = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(2))
    noisy = explore.edit_latent(z, angle=0.3, seed=5)
    ref = probes.angular_noise(z, [0.3], generator=torch.Generator().manual_seed(5))[0]
    assert torch.equal(noisy, ref)
    torch.testing.assert_close(noisy.norm(dim=-1), z.norm(dim=-1))  # rotation at fixed norm
    fixed = explore.edit_latent(z, norm_scale=0.5, norm_mode="fixed", mean_norm=4.0)
    assert torch.equal(fixed, probes.rescale_norms(z, [2.0])[0])
    assert torch.equal(explore.edit_latent(z, norm_scale=1.5), 1.5 * z)
    assert torch.equal(explore.edit_latent(z), z)  # the default slider positions edit nothing


def test_swap_without_partner_and_unknown_choices_are_refused():
    z = torch.randn(1, 4, 8)
    with pytest.raises(ValueError, match="partner"):
        explore.edit_latent(z, swap="radius")
    with pytest.raises(ValueError, match="swap"):
        explore.edit_latent(z, z, swap="radial")
    with pytest.raises(ValueError, match="norm_mode"):
        explore.edit_latent(z, norm_mode="unit")


def test_a_lone_image_is_shown_unswapped(data):
    x, y = data
    ex = explore.Explorer(PatchAE(), x, torch.arange(len(x)), distances={"L2": l2})
    v = ex.view(index=0, swap="both")
    assert v["setting"]["swap_skipped"] and v["setting"]["swap"] == "none" and v["distances"]["L2"] == 0


def test_default_view_is_the_reconstruction(ex, data):
    v = ex.view(index=0)
    assert torch.equal(v["decoded"], v["recon"]) and v["distances"] == {"L2": 0.0}
    torch.testing.assert_close(v["recon"], data[0][0])  # the stand-in reconstructs exactly


@pytest.mark.parametrize("change", [dict(norm_scale=1.4), dict(norm_scale=0.8, norm_mode="fixed"), dict(angle=0.2),
                                    dict(swap="radius"), dict(swap="direction"), dict(swap="both"),
                                    dict(index=3)])
def test_each_slider_changes_the_decode(ex, change):
    base = ex.view(index=0)
    v = ex.view(**{"index": 0, **change})
    assert not torch.equal(v["decoded"], base["decoded"]), change
    if "index" not in change:
        assert v["distances"]["L2"] > 0


def test_partner_slider_picks_another_same_class_image(ex, data):
    _, y = data
    a, b = ex.view(index=0, swap="both", partner=0), ex.view(index=0, swap="both", partner=1)
    assert a["setting"]["partner"] == 2 and b["setting"]["partner"] == 4 and y[2] == y[4] == y[0]
    assert not torch.equal(a["decoded"], b["decoded"])
    torch.testing.assert_close(a["decoded"], data[0][2])  # the whole partner decodes to the partner


def test_geometry_and_metrics(ex):
    norms, gauss, stats, share = ex.geometry()
    assert len(norms) == len(gauss) == 8 * 4
    slerp = share[share.path == "slerp"].share_mean
    assert slerp.abs().max() < 1e-6  # the geodesic target is tangent (spherical FM: exactly 0)
    m = ex.metrics(ex.view(index=0, angle=0.1))
    assert m["token_dim"] == 48 and m["distance_l2"] > 0
    assert m["radial_share_slerp_noise_end"] < 1e-6 and 0 < m["radial_share_linear_noise_end"] < 1
    for fig in (explore.view_figure(ex.view(index=0, swap="radius")), explore.geometry_figure(ex)):
        assert fig.axes
        plt.close(fig)


def test_app_redraws_on_every_control(monkeypatch, data):
    pytest.importorskip("ipywidgets")
    loaded = []
    monkeypatch.setattr(explore, "load_autoencoder", lambda kind, **kw: loaded.append(kind) or PatchAE())
    box, state = explore.app(*data, kind="gae", distances={"L2": l2})
    assert loaded == ["gae"] and torch.equal(state["view"]["decoded"], state["view"]["recon"])
    ctl = state["controls"]
    for name, value in [("norm_scale", 1.3), ("norm_mode", "fixed"), ("angle", 0.3), ("swap", "radius"),
                        ("swap", "direction"), ("swap", "both"), ("partner", 1), ("index", 4)]:
        before = state["view"]["decoded"]
        ctl[name].value = value
        assert not torch.equal(state["view"]["decoded"], before), name
    ctl["kind"].value = "vae"
    assert loaded == ["gae", "vae"] and state["explorer"].name == "vae"
    plt.close("all")


def test_controls_that_cannot_act_are_disabled_with_the_reason(monkeypatch, data):
    pytest.importorskip("ipywidgets")
    x, y = data
    y = torch.tensor([0, 1, 0, 1, 0, 2, 3, 1])  # image 5 and 6 are alone in their class
    monkeypatch.setattr(explore, "load_autoencoder", lambda kind, **kw: PatchAE())
    _, state = explore.app(x, y, kind="gae", distances={"L2": l2}, swap="none")
    ctl, why = state["controls"], state["why"]
    assert not ctl["swap"].disabled and ctl["partner"].disabled  # swap none: the partner does nothing
    assert "swap" in why.value and "partner" in why.value
    ctl["swap"].value = "radius"
    assert not ctl["swap"].disabled and not ctl["partner"].disabled and why.value == ""
    ctl["index"].value = 5
    assert ctl["swap"].disabled and ctl["partner"].disabled
    assert "no same-class partner" in why.value and "image 5" in why.value
    ctl["index"].value = 4
    assert not ctl["swap"].disabled and not ctl["partner"].disabled and why.value == ""
    plt.close("all")


def test_switching_the_autoencoder_says_it_is_loading_and_when_it_is_ready(monkeypatch, data):
    pytest.importorskip("ipywidgets")
    seen = []

    def load(kind, **kw):
        seen.append(state_ref[0]["status"].value if state_ref else None)
        return PatchAE()
    state_ref = []
    monkeypatch.setattr(explore, "load_autoencoder", load)
    _, state = explore.app(*data, kind="gae", distances={"L2": l2})
    state_ref.append(state)
    assert "gae" in state["status"].value and "ready" in state["status"].value
    state["controls"]["kind"].value = "vae"
    assert "training" in seen[-1] and "vae" in seen[-1]  # shown while the zoo loads or trains it
    assert "vae" in state["status"].value and "ready" in state["status"].value
    plt.close("all")


def test_loading_uses_text_bars_so_no_widget_model_is_left_behind(monkeypatch):
    import sys
    import tqdm.asyncio
    import tqdm.auto
    import tqdm.notebook
    import lab.probes
    monkeypatch.setattr(tqdm.auto, "tqdm", tqdm.notebook.tqdm)  # as in a JupyterLab kernel
    monkeypatch.setattr(lab.probes, "tqdm", tqdm.notebook.tqdm)
    inside = []
    monkeypatch.setattr(explore.zoo, "rae", lambda **kw: inside.append(sys.modules["lab.probes"].tqdm) or PatchAE())
    explore.load_autoencoder("rae", steps=1)
    assert inside == [tqdm.asyncio.tqdm] and lab.probes.tqdm is tqdm.notebook.tqdm  # restored after
