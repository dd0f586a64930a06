"""Paper figures: every saved figure has a vector twin, one style, labelled axes, the stamp off the axes."""
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from lab import figures, probes, runs


@pytest.fixture
def run(tmp_path):
    return runs.create("99_figtest", {"a": 1}, runs_dir=str(tmp_path))


def test_save_figure_writes_png_and_vector_pdf(run):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    ax.set_xlabel("x (units)")
    png = run.save_figure(fig, "line")
    pdf = png.with_suffix(".pdf")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pdf.is_file() and pdf.read_bytes()[:5] == b"%PDF-"
    assert b"/Subtype /Image" not in pdf.read_bytes()  # a line plot stays vector: no embedded raster
    assert fig.texts == []  # the stamp belongs to the files, not to the figure shown inline
    plt.close(fig)


def test_stamp_sits_below_every_axes(run):
    """The run/commit stamp must not overlap any axes, tick labels or axis labels included."""
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    ax.set_xlabel("a long x label\nover three\nlines (units)")  # reaches the figure's bottom edge
    seen = {}
    original = fig.savefig

    def spy(*args, **kw):
        renderer = fig.canvas.get_renderer()
        seen["stamp"] = [t.get_window_extent(renderer) for t in fig.texts]
        seen["axes"] = [a.get_tightbbox(renderer) for a in fig.axes]
        return original(*args, **kw)

    fig.savefig = spy
    run.save_figure(fig, "stamped")
    assert len(seen["stamp"]) == 1
    stamp = seen["stamp"][0]
    for box in seen["axes"]:
        assert stamp.y1 <= box.y0 + 1e-6, (stamp, box)
    plt.close(fig)


def test_style_is_the_lab_style():
    matplotlib.rcdefaults()
    figures.style()
    assert matplotlib.rcParams["pdf.fonttype"] == 42
    assert matplotlib.rcParams["axes.spines.top"] is False


def _labels(fig):
    return [(a.get_xlabel(), a.get_ylabel()) for a in fig.axes if a.get_xlabel() or a.get_ylabel()]


def test_radial_share_figure_reads_like_the_paper():
    share = probes.radial_share_along_t(torch.randn(6, 4, 16), ts=np.linspace(0.1, 0.9, 5))
    fig = figures.plot_radial_share(share)
    ax = fig.axes[0]
    assert ax.get_xlabel() == figures.T_LABEL and "radial share" in ax.get_ylabel()
    assert ax.get_ylim()[0] < 0.01 and ax.get_ylim()[1] > 0.99
    assert {t.get_text() for t in ax.get_legend().get_texts()} >= {"linear", "shell", "slerp"}
    plt.close(fig)


def test_u_curve_marks_the_best_scale_and_names_units():
    df = pd.DataFrame(dict(scale=[0.5, 1.0, 1.5], decode_radius=[2.0, 4.0, 6.0], fd_generated=[30.0, 10.0, 20.0],
                           psnr_reconstruction=[15.0, 20.0, 18.0]))
    fig = figures.plot_u_curve(df)
    (x0, y0), (x1, y1) = _labels(fig)[:2]
    assert "latent units" in x0 and "lower is better" in y0 and "dB" in y1
    assert "best: 10.0 at 4" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()][0]
    plt.close(fig)


def test_width_figure_labels_every_loss():
    df = pd.DataFrame(dict(width=[4, 8, 16], n=8, loss=[0.6, 0.1, 0.05], floor=[0.5, 0.0, 0.0]))
    fig = figures.plot_width(df)
    ax = fig.axes[0]
    assert "channels" in ax.get_xlabel()
    assert [t.get_text() for t in ax.texts] == ["0.600", "0.100", "0.050"]
    plt.close(fig)


def test_report_copies_and_links_the_vector_twin(tmp_path):
    from lab.commands import report
    r = runs.create("99_figtest", {"a": 1}, runs_dir=str(tmp_path / "runs"))
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    r.save_figure(fig, "curve")
    plt.close(fig)
    r.done()
    out = tmp_path / "reports"
    report.build(runs_dir=str(tmp_path / "runs"), out=str(out))
    copied = out / "99_figtest" / "figures" / r.id
    assert (copied / "curve.png").is_file() and (copied / "curve.pdf").read_bytes()[:5] == b"%PDF-"
    assert f"([PDF](figures/{r.id}/curve.pdf))" in (out / "99_figtest" / "README.md").read_text()


def test_gae_panel_names_the_kl_arm_and_plots_the_primary_flatten_probe():
    """Notebook 07's GAE panel: the KL arm is not a second 'latent' bar, and the probe drawn is the
    claim's primary (Flatten, GAE Tab 1), not GAP."""
    hae = pd.DataFrame(dict(model=["conv"], psnr=[18.0]))
    noise = pd.DataFrame(dict(train_tau=[0.0, 0.0], sigma=[0.0, 0.1], psnr=[18.0, 17.0]))
    gae = pd.DataFrame(dict(align=["pre", "post", "latent", "latent"], latent_reg=["norm", "norm", "norm", "kl"],
                            psnr=[20.0, 19.0, 19.5, 18.0], probe_gap=[0.5, 0.6, 0.7, 0.65],
                            probe_flatten=[0.8, 0.81, 0.82, 0.79]))
    fig = figures.plot_ablations(hae, noise, gae)
    ax = fig.axes[2]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["pre", "post", "latent", "latent + KL"]
    twin = fig.axes[3]
    heights = [p.get_height() for p in twin.patches]
    assert heights == pytest.approx([0.8, 0.81, 0.82, 0.79])
    assert "Flatten" in twin.get_ylabel()
    plt.close(fig)
