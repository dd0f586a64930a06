"""lab.data and lab.latents: shapes, ranges, determinism, corrupt images skipped and counted,
clear errors for missing data, latent cache round trip, reuse and resume."""

import numpy as np
import pytest
import torch
from PIL import Image

from lab import data
from lab import latent_cache as latents

torch.set_num_threads(2)


def _check_items(ds, size, n_classes):
    for i in (0, len(ds) - 1):
        x, y = ds[i]
        assert x.dtype == torch.float32 and x.shape == (3, size, size)
        assert 0.0 <= x.min() and x.max() <= 1.0 and x.std() > 0.01
        assert isinstance(y, int) and 0 <= y < n_classes


# ----------------------------------------------------------------------------- photos

def test_photos_are_real_deterministic_and_labelled():
    names = data.photo_names()
    assert len(names) >= 15 and {"chelsea", "coffee", "astronaut", "china"} <= set(names)
    ds = data.photos(n=40, size=48, seed=3)
    _check_items(ds, 48, len(names))
    assert [ds[i][1] for i in range(40)] == [i % len(names) for i in range(40)]
    again = data.photos(n=40, size=48, seed=3)
    other = data.photos(n=40, size=48, seed=4)
    assert all(torch.equal(ds[i][0], again[i][0]) for i in (0, 7, 39))
    assert not torch.equal(ds[7][0], other[7][0])
    # crops differ from each other: not the same view repeated
    assert not torch.equal(ds[0][0], ds[len(names)][0])


def test_sample_photos_full_centre_crops():
    x = data.sample_photos(32)
    assert x.shape == (len(data.photo_names()), 3, 32, 32) and 0 <= x.min() and x.max() <= 1


def test_random_resized_box_stays_inside():
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, w, h = data.random_resized_box(rng, 300, 200)
        assert 0 <= left and left + w <= 300 and 0 <= top and top + h <= 200 and w > 0 and h > 0


def test_center_crop_arr_is_adm_centre_crop():
    # a 4:1 strip whose central square is white and the rest black -> an all-white crop
    arr = np.zeros((64, 256, 3), np.uint8)
    arr[:, 96:160] = 255
    out = np.asarray(data.center_crop_arr(Image.fromarray(arr), 16))
    assert out.shape == (16, 16, 3) and out.min() == 255
    sq = np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(data.center_crop_arr(Image.fromarray(sq), 20)), sq)


# ----------------------------------------------------------------------------- fashion, digits

def test_fashion_shapes_labels_rgb():
    ds = data.fashion("test", n=50, size=32)
    assert len(ds) == 50 and len(ds.classes) == 10 and ds.classes[9] == "Ankle boot"
    _check_items(ds, 32, 10)
    x, _ = ds[0]
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # grayscale -> RGB
    assert len(data.fashion("test")) == 10000
    assert sorted(set(ds.targets)) == list(range(10))


def test_fashion_offset_takes_the_next_block():
    """Notebook 03 gives each seed its own block of the (already shuffled) split: offset k·n."""
    whole = data.fashion("test", n=30, size=16)
    block = data.fashion("test", n=10, size=16, offset=20)
    assert len(block) == 10 and all(torch.equal(block[i][0], whole[20 + i][0]) for i in range(10))
    assert block.targets == whole.targets[20:30]
    with pytest.raises(ValueError, match=r"offset=9995 \+ n=10 > 10000"):
        data.fashion("test", n=10, offset=9995)


def test_fashion_bad_split():
    with pytest.raises(ValueError, match="'train', 'test'"):
        data.fashion("val")


def test_digits():
    ds = data.digits(size=16, n=30)
    assert len(ds) == 30 and len(data.digits()) == 1797
    _check_items(ds, 16, 10)
    assert ds.targets[:10] == list(range(10))


# ----------------------------------------------------------------------------- imagefolder

@pytest.fixture
def folder(tmp_path):
    photos = (data.sample_photos(40) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    for cls in ("cats", "cups"):
        (tmp_path / cls).mkdir()
    for k in range(3):
        Image.fromarray(photos[k]).resize((60, 40)).save(tmp_path / "cats" / f"{k}.jpg")
        Image.fromarray(photos[3 + k]).save(tmp_path / "cups" / f"{k}.png")
    good = (tmp_path / "cats" / "0.jpg").read_bytes()
    (tmp_path / "cats" / "1_truncated.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "cups" / "9_not_an_image.jpg").write_bytes(b"hello")
    return tmp_path


def test_imagefolder_skips_and_counts_corrupt_images(folder):
    ds = data.imagefolder(folder, size=32)
    assert ds.classes == ["cats", "cups"] and len(ds) == 8
    loader = data.make_loader(ds, batch_size=3, shuffle=True, seed=0)
    with pytest.warns(data.SkippedImageWarning) as record:
        for epoch in range(2):
            seen = 0
            for x, y in loader:
                assert x.shape[1:] == (3, 32, 32) and 0 <= x.min() and x.max() <= 1
                seen += len(y)
            assert seen == len(ds)  # every slot filled: bad files replaced, never a crash
    assert ds.skipped == 2 and len(ds.bad) == 2
    assert any("1_truncated.jpg" in p for p in ds.bad) and any("9_not_an_image" in p for p in ds.bad)
    assert any("2 skipped" in str(w.message) or "2 unreadable" in str(w.message) for w in record)


def _png_chunk(kind, payload):
    import struct
    import zlib
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _bomb_png(path, side=20000):
    """A few-KB PNG whose header claims side x side RGB pixels (PIL refuses it as a decompression bomb)."""
    import struct
    import zlib
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(bytes(6000))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
                     + _png_chunk(b"IEND", b""))


def test_imagefolder_skips_and_counts_a_decompression_bomb(folder):
    _bomb_png(folder / "cats" / "5_bomb.png")
    assert (folder / "cats" / "5_bomb.png").stat().st_size < 8000
    ds = data.imagefolder(folder, size=32)
    with pytest.warns(data.SkippedImageWarning, match="5_bomb.png"):
        x = torch.stack([ds[i][0] for i in range(len(ds))])
    assert x.shape == (9, 3, 32, 32)
    assert any("5_bomb.png" in p for p in ds.bad) and ds.skipped == 3


def test_imagefolder_scales_16_bit_images(tmp_path):
    (tmp_path / "a").mkdir()
    levels = np.linspace(0, 255, 64).round().astype(np.uint16)
    gray16 = np.tile(levels, (64, 1)) * 257  # 8-bit level v as 16-bit v * 257 (v/255 == v*257/65535)
    Image.fromarray(gray16).save(tmp_path / "a" / "gray16.png")
    with Image.open(tmp_path / "a" / "gray16.png") as img:
        assert img.mode.startswith("I")  # PIL reads it as a 16-bit integer image
    x, _ = data.imagefolder(tmp_path, size=64)[0]
    expect = torch.from_numpy(np.tile(levels, (64, 1)) / 255.0).float()
    for c in range(3):
        torch.testing.assert_close(x[c], expect, atol=1 / 255 + 1e-6, rtol=0)


def test_imagefolder_missing_or_empty_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        data.imagefolder(tmp_path / "nope")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        data.imagefolder(tmp_path)


def _split_folder(root, train=("cats", "cups"), val=("cats", "cups"), empty=()):
    img = Image.fromarray(np.full((8, 8, 3), 120, np.uint8))
    for split, classes in (("train", train), ("val", val)):
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            if (split, cls) not in empty:
                img.save(root / split / cls / "0.png")
    return root


def test_an_empty_class_folder_is_an_error_naming_it(tmp_path):
    """Issue 21 item 6: an empty class folder silently took a label (labels seen 0, 1, 3)."""
    root = _split_folder(tmp_path, train=("a", "b", "c", "d"), val=(), empty={("train", "c")})
    with pytest.raises(FileNotFoundError, match=r"class folder .*train/c.* holds no images"):
        data.imagefolder(root / "train", size=8)


@pytest.mark.parametrize("layout, needle", [
    (dict(val=()), r"val"),  # no val/ at all
    (dict(empty={("val", "cups")}), r"val/cups.* holds no images"),
    (dict(val=("cats", "dogs")), r"train/ and val/ .*different classes.*cups.*dogs"),
])
def test_the_whole_layout_is_checked_by_the_first_data_call(tmp_path, monkeypatch, layout, needle):
    """Issue 21 item 6: notebook 05 found a missing val/ only after its autoencoder had trained.
    Now the first recipe that names the folder (zoo.generation_data -> zoo.autoencoder) refuses it
    before building or training anything, naming the folder and what is expected."""
    from lab import zoo
    monkeypatch.setenv("LAB_RUNS_DIR", str(tmp_path / "runs"))
    root = _split_folder(tmp_path / "data", **layout)
    with pytest.raises(FileNotFoundError, match=needle) as e:
        zoo.generation_data("gae", data="imagefolder", data_root=root, n=4, size=16, steps=1)
    assert str(root) in str(e.value)
    assert not list((tmp_path / "runs").rglob("step_*"))  # nothing trained
    with pytest.raises(FileNotFoundError, match=needle):
        zoo.images("imagefolder", n=2, size=16, root=root)  # a direct call checks it too
    good = _split_folder(tmp_path / "good")
    x, y = zoo.images("imagefolder", n=2, size=16, root=good)
    assert x.shape == (2, 3, 16, 16) and sorted(y.tolist()) == [0, 1]


def test_make_loader_seeded_order():
    ds = data.digits(size=8, n=40)
    order = lambda seed: torch.cat([y for _, y in data.make_loader(ds, 8, shuffle=True, seed=seed)])
    assert torch.equal(order(1), order(1)) and not torch.equal(order(1), order(2))


# ----------------------------------------------------------------------------- latents

class CountingEncoder:
    """images -> [B, 4, 3] tokens (means of four quadrants), counting images encoded."""

    def __init__(self, fail_after=None):
        self.count, self.fail_after = 0, fail_after

    def __call__(self, x):
        if self.fail_after is not None and self.count >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.count += len(x)
        h = x.shape[-1] // 2
        q = [x[..., :h, :h], x[..., :h, h:], x[..., h:, :h], x[..., h:, h:]]
        return torch.stack([t.mean((2, 3)) for t in q], 1).double()


def test_cached_latents_round_trip_reuse_resume(tmp_path):
    ds = data.digits(size=8, n=50)
    key = dict(encoder="quadrants", data="digits", res=8, n=50)
    enc = CountingEncoder()
    z, y = latents.cached_latents(enc, ds, key, batch_size=8, cache_root=tmp_path, shard_size=16,
                                  progress=False)
    assert z.shape == (50, 4, 3) and z.dtype == torch.float32 and enc.count == 50
    assert torch.equal(y, torch.tensor(ds.targets))
    x0 = ds[0][0]
    assert torch.allclose(z[0, 0], x0[:, :4, :4].mean((1, 2)))
    folder = next(tmp_path.iterdir())
    assert folder.name.startswith("encoder=quadrants-data=digits-res=8-n=50-")
    assert len(list(folder.glob("shard_*.safetensors"))) == 4

    enc2 = CountingEncoder()  # a second call reads the cache
    z2, y2 = latents.cached_latents(enc2, ds, key, batch_size=8, cache_root=tmp_path, progress=False)
    assert enc2.count == 0 and torch.equal(z, z2) and torch.equal(y, y2)

    (folder / "shard_00002.safetensors").unlink()  # a lost shard is re-encoded alone
    enc3 = CountingEncoder()
    z3, _ = latents.cached_latents(enc3, ds, key, batch_size=8, cache_root=tmp_path, progress=False)
    assert enc3.count == 16 and torch.equal(z, z3)

    enc4 = CountingEncoder()  # another key: another folder
    latents.cached_latents(enc4, ds, dict(key, res=9), batch_size=8, cache_root=tmp_path, progress=False)
    assert enc4.count == 50 and len(list(tmp_path.iterdir())) == 2


def test_cached_latents_resume_after_kill(tmp_path):
    ds = data.digits(size=8, n=40)
    key = dict(encoder="quadrants", data="digits", res=8, n=40)
    with pytest.raises(KeyboardInterrupt):
        latents.cached_latents(CountingEncoder(fail_after=24), ds, key, batch_size=8,
                               cache_root=tmp_path, shard_size=16, progress=False)
    enc = CountingEncoder()
    z, _ = latents.cached_latents(enc, ds, key, batch_size=8, cache_root=tmp_path, progress=False)
    assert enc.count == 40 - 16 and z.shape == (40, 4, 3)  # the finished first shard was kept
    ref, _ = latents.cached_latents(CountingEncoder(), ds, key, batch_size=8,
                                    cache_root=tmp_path / "fresh", progress=False)
    assert torch.equal(z, ref)


def test_cached_latents_needs_a_key(tmp_path):
    with pytest.raises(ValueError, match="key"):
        latents.cached_latents(CountingEncoder(), data.digits(size=8, n=4), {}, cache_root=tmp_path)
