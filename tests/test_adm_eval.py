"""Evaluation as the papers do (issue 22, item 4): ADM .npz batches round-trip, RAE's 'equal' labels,
and FID / sFID / IS / precision / recall of lab.adm_eval against float64 references written here
from the formulas, on a randomly initialised Inception-v3 saved to a file (a stand-in: the values mean
nothing, the shapes, formulas and file formats do) and a reference batch made from real photos."""
import json

import numpy as np
import pytest
import torch

from lab import adm_eval, data
from lab.commands import adm_eval as adm_cli

SIZE = 96  # the stand-in runs at 96 px (9x faster than 299); the 299 layout is checked once


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    """numpy's BLAS (the 2048-d Fréchet eigendecompositions) on one thread, like torch (conftest): on
    the shared 2-core machine a second thread only spun (the pipeline test: 50 s of CPU, 20 s on one)."""
    from threadpoolctl import threadpool_limits
    with threadpool_limits(1):
        yield


# ----------------------------------------------------------------------------- float64 references

def fd_reference(a, b):
    """Fréchet distance of two feature sets in float64, by a route lab.frechet does not take: with
    centred rows A, B, the nonzero eigenvalues of Σa·Σb are the squared singular values of A·Bᵀ over
    (na - 1)(nb - 1), so tr((Σa Σb)^½) is the nuclear norm of A·Bᵀ over √((na - 1)(nb - 1))."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    A, B = a - a.mean(0), b - b.mean(0)
    na, nb = len(a) - 1, len(b) - 1
    tr_sqrt = np.linalg.svd(A @ B.T, compute_uv=False).sum() / np.sqrt(na * nb)
    return ((a.mean(0) - b.mean(0)) ** 2).sum() + (A ** 2).sum() / na + (B ** 2).sum() / nb - 2 * tr_sqrt


def is_reference(logits, split):
    """ADM's formula, float64 numpy: per split exp(mean_x sum_y p (log p - log mean_x p)), then the mean
    (p log p taken as 0 where p underflows to 0, its limit; ADM's float32 would give NaN there)."""
    from scipy.special import xlogy
    z = np.asarray(logits, np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    scores = []
    for i in range(0, len(p), split):
        part = p[i:i + split]
        kl = xlogy(part, part) - xlogy(part, part.mean(0, keepdims=True))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return np.mean(scores)


def pr_reference(real, fake, k=3):
    """Kynkäänniemi et al. by brute force in float64: k-th nearest other point's distance as radius."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)

    def dist(x, y):
        return np.sqrt(((x[:, None, :] - y[None, :, :]) ** 2).sum(-1))

    def covered(query, ref):
        radii = np.sort(dist(ref, ref), 1)[:, k]  # column 0 is the point itself
        return np.mean([(dist(q[None], ref)[0] <= radii).any() for q in query])
    return covered(fake, real), covered(real, fake)


def test_fd_reference_is_the_frechet_formula():
    from scipy import linalg
    g = np.random.default_rng(0)
    a, b = g.normal(size=(40, 5)), g.normal(1, 2, size=(30, 5))
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    want = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2) - 2 * np.trace(linalg.sqrtm(s1 @ s2).real)
    assert fd_reference(a, b) == pytest.approx(want, rel=1e-10)


# ----------------------------------------------------------------------------- files and labels

def test_samples_npz_round_trips_in_adms_layout(tmp_path):
    g = np.random.default_rng(0)
    images = g.integers(0, 256, size=(10, 8, 6, 3), dtype=np.uint8)
    labels = torch.arange(10) % 4
    path = adm_eval.save_samples_npz(tmp_path / "s.npz", images, labels)
    with np.load(path) as f:  # plain numpy reads it as ADM's evaluator does
        assert sorted(f.files) == ["arr_0", "arr_1"]
        assert f["arr_0"].dtype == np.uint8 and f["arr_0"].shape == (10, 8, 6, 3)
        assert np.array_equal(f["arr_0"], images) and np.array_equal(f["arr_1"], labels.numpy())
    assert adm_eval.npz_image_shape(path) == (10, 8, 6, 3)
    batches = list(adm_eval.iter_npz_images(path, batch_size=4))
    assert [len(b) for b in batches] == [4, 4, 2] and np.array_equal(np.concatenate(batches), images)
    # unconditional: arr_0 only; a compressed file streams the same
    adm_eval.save_samples_npz(tmp_path / "u.npz", torch.from_numpy(images))
    assert np.load(tmp_path / "u.npz").files == ["arr_0"]
    np.savez_compressed(tmp_path / "c.npz", images)
    assert np.array_equal(np.concatenate(list(adm_eval.iter_npz_images(tmp_path / "c.npz", 3))), images)


def test_to_uint8_nhwc_rounds_back_to_the_bytes_an_image_came_from():
    u8 = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).expand(2, 3, 16, 16)
    out = adm_eval.to_uint8_nhwc(data.to_float(u8))
    assert out.shape == (2, 16, 16, 3) and np.array_equal(out, u8.permute(0, 2, 3, 1).numpy())


def test_bad_sample_files_are_named_and_nothing_is_overwritten(tmp_path):
    images = np.zeros((4, 8, 8, 3), np.uint8)
    path = adm_eval.save_samples_npz(tmp_path / "s.npz", images)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="s.npz exists and is kept"):
        adm_eval.save_samples_npz(path, images + 1)
    assert path.read_bytes() == before
    with pytest.raises(ValueError, match=r"uint8 images \[N, H, W, 3\].*to_uint8_nhwc"):
        adm_eval.save_samples_npz(tmp_path / "f.npz", images.astype(np.float32))
    with pytest.raises(ValueError, match=r"uint8 images \[N, H, W, 3\]"):
        adm_eval.save_samples_npz(tmp_path / "nchw.npz", images.transpose(0, 3, 1, 2))
    with pytest.raises(ValueError, match=r"labels must be \[N\] = \[4\]"):
        adm_eval.save_samples_npz(tmp_path / "l.npz", images, labels=[0, 1])
    with pytest.raises(ValueError, match="must end in .npz"):
        adm_eval.save_samples_npz(tmp_path / "s.npy", images)
    np.savez(tmp_path / "other.npz", images=images)
    with pytest.raises(ValueError, match=r"other.npz: no array 'arr_0' \(it has \['images'\]\)"):
        adm_eval.npz_image_shape(tmp_path / "other.npz")
    (tmp_path / "cut.npz").write_bytes(before[: len(before) // 2])
    with pytest.raises(ValueError, match="cut.npz is not a readable .npz"):
        list(adm_eval.iter_npz_images(tmp_path / "cut.npz"))


def test_equal_labels_are_class_balanced_shuffled_and_seeded():
    y = adm_eval.equal_labels(60, 6, seed=3)
    assert torch.bincount(y, minlength=6).tolist() == [10] * 6
    assert not torch.equal(y, torch.sort(y).values)                   # shuffled, not in class blocks
    assert torch.equal(y, adm_eval.equal_labels(60, 6, seed=3))       # the seed fixes the order
    assert not torch.equal(y, adm_eval.equal_labels(60, 6, seed=4))
    with pytest.raises(ValueError, match="n=10 must be a positive multiple of num_classes=3"):
        adm_eval.equal_labels(10, 3)


def test_export_samples_writes_a_balanced_labelled_batch_from_a_generator(tmp_path):
    class Colour:
        """decode: latent tokens [b, 1, 3] -> 4x4 images of that colour through a sigmoid."""
        def decode(self, z):
            return torch.sigmoid(z[:, 0, :, None, None].expand(-1, 3, 4, 4))
    still = lambda x, t, y: torch.zeros_like(x)  # noqa: E731  (each sample is its prior noise)
    path = adm_eval.export_samples(tmp_path / "s.npz", still, Colour(), 12, (1, 3), num_classes=4, seed=5,
                                   batch_size=8, steps=2)
    with np.load(path) as f:
        images, labels = f["arr_0"], f["arr_1"]
    assert images.shape == (12, 4, 4, 3) and images.dtype == np.uint8
    assert np.array_equal(labels, adm_eval.equal_labels(12, 4, seed=5).numpy())
    for k, (i, j) in enumerate(((0, 8), (8, 12))):  # chunk k's noise comes from step_seed(5, k)
        z = torch.randn(j - i, 1, 3, generator=torch.Generator().manual_seed(adm_eval.step_seed(5, k)))
        assert np.array_equal(images[i:j], adm_eval.to_uint8_nhwc(Colour().decode(z)))

    def never(x, t, y):
        raise AssertionError("sampled although the file exists")
    with pytest.raises(FileExistsError, match="s.npz exists and is kept"):
        adm_eval.export_samples(path, never, Colour(), 12, (1, 3), num_classes=4)


# ----------------------------------------------------------------------------- the formulas alone

def test_inception_score_is_adms_formula_over_splits():
    logits = torch.randn(30, 12, generator=torch.Generator().manual_seed(0)) * 3
    assert adm_eval.inception_score(logits, split_size=10) == pytest.approx(is_reference(logits, 10), rel=1e-12)
    assert adm_eval.inception_score(logits) == pytest.approx(is_reference(logits, 30), rel=1e-12)
    assert adm_eval.inception_score(torch.zeros(8, 5)) == pytest.approx(1.0)   # one prediction: IS 1
    assert adm_eval.inception_score(torch.eye(5) * 100) == pytest.approx(5.0)  # 5 sure, distinct: IS 5


def test_metric_keys_name_the_network_file():
    assert adm_eval.metric_key("sFID", "pt.pth") == "sFID (inception: pt.pth)"
    with pytest.raises(ValueError, match="metric='fid'"):
        adm_eval.metric_key("fid", "pt.pth")


# ----------------------------------------------------------------------------- with a stand-in Inception

@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    """A random 1008-class (FID layout) Inception-v3 in a file. Its batch norms are set from a batch of
    real photos (a random net's activations otherwise grow to ~1e11 and every softmax is one-hot)."""
    from torchvision.models import inception_v3
    torch.manual_seed(0)
    net = inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative: the running stats become this batch's statistics
    x, _ = data.tensors(data.photos(n=8, size=SIZE, seed=5))
    net.train()
    with torch.no_grad():
        net(2 * x - 1)
    path = tmp_path_factory.mktemp("inception") / "standin_inception.pth"
    torch.save(net.state_dict(), path)
    return path


def uint8_images(ds, n):
    return adm_eval.to_uint8_nhwc(data.tensors(ds, n)[0])


def test_outputs_at_299_have_adms_shapes_and_layers(stand_in):
    model = adm_eval.load_inception(stand_in)
    seen = []
    model.net.Mixed_6d.register_forward_hook(lambda m, i, out: seen.append(out))
    out = adm_eval.inception_outputs(model, uint8_images(data.photos(n=2, size=64, seed=1), 2))
    assert out["pool"].shape == (2, 2048) and out["logits"].shape == (2, 1008)
    assert out["spatial"].shape == (2, 7 * 17 * 17)   # 2023: mixed_6/conv is 17x17, 7 channels kept
    # TF's mixed_6 is Mixed_6d; its output starts with the 1x1 branch: channels [:7] in HWC order
    assert torch.equal(out["spatial"], seen[0].permute(0, 2, 3, 1)[..., :7].reshape(2, -1))
    w, b = model.net.fc.weight, model.net.fc.bias
    assert b.abs().sum() > 0 and torch.allclose(out["logits"], out["pool"] @ w.T)  # no bias, as ADM
    with pytest.raises(ValueError, match="size=64: Inception-v3 needs an int >= 75"):
        adm_eval.load_inception(stand_in, size=64)


def features(model, path, batch_size=8):
    outs = [adm_eval.inception_outputs(model, b) for b in adm_eval.iter_npz_images(path, batch_size)]
    return {k: torch.cat([o[k] for o in outs]).double().numpy() for k in outs[0]}


def test_reference_statistics_are_read_when_stored_and_computed_when_not(stand_in, tmp_path):
    model = adm_eval.load_inception(stand_in, size=SIZE)
    images = uint8_images(data.photos(n=12, size=64, seed=2), 12)
    bare = adm_eval.save_samples_npz(tmp_path / "bare.npz", images)
    computed = adm_eval.read_reference(bare, model=model, batch_size=8)
    f = features(model, bare)
    assert computed["pool statistics"] == computed["spatial statistics"] == "computed from arr_0"
    for mu, sigma, kind in (("mu", "sigma", "pool"), ("mu_s", "sigma_s", "spatial")):
        np.testing.assert_allclose(computed[mu], f[kind].mean(0), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(computed[sigma], np.cov(f[kind], rowvar=False), rtol=1e-6, atol=1e-9)
    ref = adm_eval.save_reference_npz(tmp_path / "ref.npz", images, model, batch_size=8)
    with np.load(ref) as z:
        assert sorted(z.files) == ["arr_0", "mu", "mu_s", "sigma", "sigma_s"]
        assert z["mu"].shape == (2048,) and z["sigma_s"].shape == (7 * 4 * 4,) * 2  # 4x4 grid at 96 px
        z_mu = z["mu"]
    stored = adm_eval.read_reference(ref)  # no network needed
    assert stored["pool statistics"] == "stored" and np.array_equal(stored["mu"], z_mu)
    with pytest.raises(ValueError, match="bare.npz holds no mu/sigma: pass model="):
        adm_eval.read_reference(bare)


def test_evaluate_npz_matches_float64_references(stand_in, tmp_path):
    """The whole pipeline: a reference batch of real photos with stored statistics, a sample batch of
    other photos and digits, every number against its float64 reference on the same features."""
    ref_images = uint8_images(data.photos(n=16, size=64, seed=0), 16)
    samples = np.concatenate([uint8_images(data.photos(n=10, size=64, seed=7), 10),
                              uint8_images(data.digits(size=64, n=6), 6)])
    model = adm_eval.load_inception(stand_in, size=SIZE)
    ref = adm_eval.save_reference_npz(tmp_path / "ref.npz", ref_images, model, batch_size=8)
    smp = adm_eval.save_samples_npz(tmp_path / "samples.npz", samples, adm_eval.equal_labels(16, 2))
    got = adm_eval.evaluate_npz(smp, ref, stand_in, batch_size=8, size=SIZE)
    fr, fs = features(model, ref), features(model, smp)
    key = {m: adm_eval.metric_key(m, "standin_inception.pth") for m in adm_eval.METRICS}
    assert got[key["FID"]] == pytest.approx(fd_reference(fs["pool"], fr["pool"]), rel=1e-6)
    assert got[key["sFID"]] == pytest.approx(fd_reference(fs["spatial"], fr["spatial"]), rel=1e-6)
    assert got[key["IS"]] == pytest.approx(is_reference(fs["logits"], 5000), rel=1e-6)
    assert 1.5 < got[key["IS"]] < 16                       # not a degenerate softmax
    precision, recall = pr_reference(fr["pool"], fs["pool"])
    assert (got[key["precision"]], got[key["recall"]]) == (precision, recall)
    assert got["reference statistics"] == {"pool": "stored", "spatial": "stored"}
    assert (got["n_samples"], got["n_reference"], got["input size"]) == (16, 16, SIZE)
    assert "not 299" in got["caveat"]                      # a stand-in at 96 px compares with nothing
    json.dumps(got)                                        # the command prints it as it is


def test_stored_statistics_of_another_size_are_refused(stand_in, tmp_path):
    images = np.zeros((4, 64, 64, 3), np.uint8)
    smp = adm_eval.save_samples_npz(tmp_path / "s.npz", images)
    np.savez(tmp_path / "ref.npz", images, mu=np.zeros(2048), sigma=np.eye(2048), mu_s=np.zeros(2023),
             sigma_s=np.eye(2023))  # ADM's 299-px spatial statistics
    with pytest.raises(ValueError, match="ref.npz: stored mu_s has 2023 dims, this network gives 112 at 96 px"):
        adm_eval.evaluate_npz(smp, tmp_path / "ref.npz", stand_in, size=SIZE)
    few = adm_eval.save_samples_npz(tmp_path / "few.npz", images[:3])
    with pytest.raises(ValueError, match="few.npz: 3 images; precision/recall need more than k=3"):
        adm_eval.evaluate_npz(few, tmp_path / "ref.npz", stand_in, size=SIZE)


def test_caveat_says_when_numbers_do_not_compare_with_papers():
    class Net:
        fid_standard = True
    assert adm_eval.comparability_caveat(Net, "6726825d" + "0" * 56, 299) is None
    assert "sha256 does not start with 6726825d" in adm_eval.comparability_caveat(Net, "ab" * 32, 299)
    assert "not 299" in adm_eval.comparability_caveat(Net, "6726825d" + "0" * 56, 128)
    Net.fid_standard = False
    assert "not the TF FID Inception" in adm_eval.comparability_caveat(Net, "6726825d" + "0" * 56, 299)


# ----------------------------------------------------------------------------- the command

def test_command_evaluates_and_prints_json(tmp_path, monkeypatch, capsys):
    calls = []

    def fake(samples, ref, inception, batch_size, device, size):
        calls.append((samples, ref, inception, batch_size, device, size))
        return {"FID (inception: w.pth)": 1.5, "caveat": "stand-in"}
    monkeypatch.setattr(adm_eval, "evaluate_npz", fake)
    for p in ("s.npz", "r.npz", "w.pth"):
        (tmp_path / p).write_bytes(b"x")
    s, r, w = (str(tmp_path / p) for p in ("s.npz", "r.npz", "w.pth"))
    adm_cli.main([s, r, "--inception", w, "--json", "--batch-size", "16"])
    assert json.loads(capsys.readouterr().out) == {"FID (inception: w.pth)": 1.5, "caveat": "stand-in"}
    assert calls == [(s, r, w, 16, None, 299)]
    adm_cli.main([s, r, "--inception", w])
    out = capsys.readouterr().out
    assert "FID (inception: w.pth)" in out and "1.5" in out and "caveat: stand-in" in out
    with pytest.raises(SystemExit, match="--inception"):
        adm_cli.main([s, r])
    with pytest.raises(SystemExit, match="missing.pth does not exist"):
        adm_cli.main([s, r, "--inception", str(tmp_path / "missing.pth")])


def test_command_packs_a_folder_of_images(tmp_path):
    from PIL import Image
    folder = tmp_path / "samples"
    folder.mkdir()
    images = np.random.default_rng(0).integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:06d}.png")
    adm_cli.main(["--pack", str(folder), str(tmp_path / "s.npz")])
    with np.load(tmp_path / "s.npz") as f:
        assert f.files == ["arr_0"] and np.array_equal(f["arr_0"], images)
    with pytest.raises(SystemExit, match="s.npz exists and is kept"):
        adm_cli.main(["--pack", str(folder), str(tmp_path / "s.npz")])
    Image.fromarray(images[0][:4]).save(folder / "000009.png")
    with pytest.raises(SystemExit, match=r"000009.png is 8x4, the first image 8x8"):
        adm_cli.main(["--pack", str(folder), str(tmp_path / "t.npz")])


def test_command_writes_a_reference_batch_with_adms_statistics(stand_in, tmp_path, capsys):
    images = uint8_images(data.photos(n=2, size=64, seed=3), 2)
    src = adm_eval.save_samples_npz(tmp_path / "real.npz", images)
    adm_cli.main(["--reference", str(src), str(tmp_path / "ref.npz"), "--inception", str(stand_in)])
    assert "2 images with mu, sigma, mu_s, sigma_s" in capsys.readouterr().out
    with np.load(tmp_path / "ref.npz") as f:
        assert np.array_equal(f["arr_0"], images)
        assert f["mu"].shape == (2048,) and f["sigma"].shape == (2048, 2048)
        assert f["mu_s"].shape == (2023,) and f["sigma_s"].shape == (2023, 2023)  # 299 px: ADM's layout
