"""Issue 21 item 10: two settings must never share one cached model or one latents folder.

Every argument of every zoo recipe is changed one at a time and the cache folder must change
(else an ablation compares a model with itself and the suite passes); the arguments that must
not matter (progress, batch size of an encoding) must leave it alone. The folders are computed
without training: the model classes are stand-ins and recipe_dir stops the call once it is known.
"""
import inspect
import json
import types

import pytest
import torch

from lab import latent_cache, zoo

NOT_IN_KEY = {"generator": {"progress"}, "encode": {"batch_size"}}
# arguments that only matter with another one set: checked from a base where they matter
BASE = {"rae": dict(encoder="vit_s_other", encoder_weights="a.pth"),
        "hae": dict(teacher="vit_s_other", teacher_weights="a.pth")}


class _Stop(Exception):
    pass


def _stub(*args, **kw):
    return types.SimpleNamespace(embed_dim=384, grid=(4, 4), vfm_factor=1)


@pytest.fixture
def folders(monkeypatch, tmp_path):
    """folders(fn, kwargs) -> the recipe folders the call asks for before it would train."""
    monkeypatch.setenv("LAB_RUNS_DIR", str(tmp_path))
    seen, real = [], zoo.recipe_dir

    def stop_at_folder(name, recipe):
        seen.append(real(name, recipe))
        raise _Stop
    monkeypatch.setattr(zoo, "recipe_dir", stop_at_folder)
    for name in ("RAE", "GAE", "HAE", "KLVAE", "ConvDecoder", "SphericalVAE"):
        monkeypatch.setattr(zoo, name, _stub)
    monkeypatch.setattr(zoo.encoders, "vit", _stub)

    def call(fn, kwargs):
        seen.clear()
        with pytest.raises(_Stop):
            fn(**kwargs)
        return seen[0]
    return call


def _changed(name, value):
    """Another value of the same kind as `value` (the default) for argument `name`."""
    if name == "data":
        return "photos" if value != "photos" else "fashion"
    if name in ("latents", "labels"):
        return value + 1
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 0.25
    if isinstance(value, str):
        return value + "_other"
    if isinstance(value, tuple):
        return value[1:]
    if name == "model_kw":
        return dict(width=8)
    if name == "latents_key":
        return dict(kind="other")
    if value is None:
        return {"encoder_weights": "b.pth", "teacher_weights": "b.pth", "data_root": "/elsewhere"}.get(name, 3)
    raise AssertionError(f"no variation for {name}={value!r}")


def _arguments(fn, base):
    sig = inspect.signature(fn)
    args = {n: p.default for n, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}
    args.update(base)
    missing = [n for n, p in sig.parameters.items() if n not in args]
    assert not missing, f"{fn.__name__}: give a base value for {missing}"
    return args


def _walk(fn, base, folder_of):
    args = _arguments(fn, base)
    first = folder_of(args)
    assert folder_of(dict(args)) == first  # the folder is a function of the arguments
    same, differ = [], []
    for name, value in args.items():
        other = dict(args, **{name: _changed(name, value)})
        (same if folder_of(other) == first else differ).append(name)
    assert sorted(same) == sorted(NOT_IN_KEY.get(fn.__name__, ())), \
        f"zoo.{fn.__name__}: changing {same} leaves the cache folder as it was"


@pytest.mark.parametrize("recipe", ["rae", "gae", "hae", "spherical_vae"])
def test_every_autoencoder_argument_reaches_its_folder(recipe, folders):
    fn = getattr(zoo, recipe)
    _walk(fn, BASE.get(recipe, {}), lambda kw: folders(fn, kw))


def test_every_generator_argument_reaches_its_folder(folders):
    base = dict(latents=torch.zeros(4, 2, 3), labels=torch.arange(4))
    _walk(zoo.generator, base, lambda kw: folders(zoo.generator, kw))


@pytest.mark.parametrize("kind", ["gae", "sphvae"])
def test_every_autoencoder_choice_argument_reaches_its_folder(kind, folders):
    def folder_of(kw):
        return folders(zoo.autoencoder, dict(kw, kind=kw["kind"] if kw["kind"] != kind + "_other" else
                                             ("sphvae" if kind == "gae" else "gae")))
    _walk(zoo.autoencoder, dict(kind=kind), folder_of)


def test_the_latents_folder_names_the_autoencoder(monkeypatch, tmp_path):
    """zoo.encode keyed the latents by the caller's key alone: two autoencoders given one key shared
    one latents folder. Now the folder names the autoencoder's recipe too."""
    monkeypatch.setenv("LAB_RUNS_DIR", str(tmp_path))
    seen = []
    monkeypatch.setattr(latent_cache, "cached_latents", lambda fn, ds, key, **kw: seen.append(
        latent_cache.key_dir(key, len(ds), kw["cache_root"])[0]))
    x, y = torch.zeros(4, 3, 8, 8), torch.arange(4)

    def folder_of(kw):
        ae = torch.nn.Linear(1, 1)
        ae.recipe = dict(kind="gae", seed=kw.pop("seed"))
        seen.clear()
        zoo.encode(ae, **kw)
        return seen[0]
    base = dict(x=x, labels=y, key=dict(data="fashion", split="train"), seed=0)
    assert folder_of(dict(base)) != folder_of(dict(base, seed=1))  # another autoencoder, one key
    assert folder_of(dict(base)) != folder_of(dict(base, key=dict(data="fashion", split="test")))
    assert folder_of(dict(base)) != folder_of(dict(base, x=x[:3], labels=y[:3]))
    assert folder_of(dict(base)) == folder_of(dict(base, batch_size=2))  # how it is batched: no matter
    ae = torch.nn.Linear(1, 1)
    ae.recipe = dict(kind="gae", seed=0)
    seen.clear()
    zoo.encode(ae, x, y, dict(ae.recipe, split="train"))  # the notebooks' key: its folder name is kept
    assert seen[0] == latent_cache.key_dir(dict(ae.recipe, split="train"), 4, zoo.root() / "latents")[0]


def test_every_generation_data_argument_reaches_a_folder(monkeypatch, tmp_path):
    """generation_data's arguments go to the autoencoder (checked above), the latents folders and the
    real-feature folders: each one changed alone changes at least one of them."""
    monkeypatch.setenv("LAB_RUNS_DIR", str(tmp_path))
    seen = []

    def fake_ae(kind="hae", **kw):
        ae = torch.nn.Linear(1, 1)
        ae.recipe = dict(kind=kind, **kw)
        seen.append(("ae", json.dumps(ae.recipe, sort_keys=True, default=str)))
        return ae if kind == "hae" else (ae, dict(ae.recipe, split="train"))
    monkeypatch.setattr(zoo, "autoencoder", fake_ae)
    monkeypatch.setattr(zoo, "hae", fake_ae)
    monkeypatch.setattr(zoo, "dataset", lambda data, n, size, split="train", seed=0, root=None: (
        torch.utils.data.TensorDataset(torch.zeros(n, 3, 2, 2), torch.arange(n) % 2)))
    monkeypatch.setattr(latent_cache, "cached_latents", lambda fn, ds, key, **kw: (
        seen.append(("latents", latent_cache.key_dir(key, len(ds), kw["cache_root"])[0])), None)[1] or (None, None))
    monkeypatch.setattr(zoo, "_cached_array", lambda name, key, compute, what: (
        seen.append((name, zoo.recipe_dir(name, key))), torch.zeros(1).numpy())[1])
    monkeypatch.setattr(zoo.class_agreement, "reference", lambda *a: {})

    def folder_of(kw):
        seen.clear()
        zoo.generation_data(**kw)
        return list(seen)
    kind_other = {"gae": "sphvae", "sphvae": "hae", "hae": "gae"}
    for kind in ("gae", "hae"):
        args = _arguments(zoo.generation_data, dict(kind=kind))
        first = folder_of(args)
        for name, value in args.items():
            other = kind_other[value] if name == "kind" else _changed(name, value)
            if kind == "hae" and name == "steps":  # the shared HAE (zoo.hae's defaults) ignores it by design
                assert folder_of(dict(args, **{name: other})) == first
                continue
            assert folder_of(dict(args, **{name: other})) != first, \
                f"zoo.generation_data({kind!r}): changing {name} leaves every folder as it was"


def test_latents_of_two_autoencoders_differ_and_test_latents_are_the_encoded_test_images(monkeypatch, tmp_path):
    """Trained for real at the tiniest size (digits, a few steps): two autoencoders differing in one
    field give two sets of latents, and the cached test latents are ae.encode(test images)."""
    monkeypatch.setenv("LAB_RUNS_DIR", str(tmp_path))
    kw = dict(data="digits", n=16, size=16, steps=2, n_test=8, feature_size=32, n_classifier=16)
    a = zoo.generation_data("sphvae", seed=0, **kw)
    b = zoo.generation_data("sphvae", seed=1, **kw)
    assert a["key"] != b["key"] and not torch.equal(a["z"], b["z"]) and not torch.equal(a["z_test"], b["z_test"])
    for d in (a, b):
        with torch.no_grad():
            torch.testing.assert_close(d["z_test"], d["ae"].encode(d["x_test"]).float())
            torch.testing.assert_close(d["z"], d["ae"].encode(zoo.images("digits", 16, 16)[0]).float())
    again = zoo.generation_data("sphvae", seed=0, **kw)  # loaded from the caches: the same latents
    assert torch.equal(again["z"], a["z"]) and torch.equal(again["z_test"], a["z_test"])
