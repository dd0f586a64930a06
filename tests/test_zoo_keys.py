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
