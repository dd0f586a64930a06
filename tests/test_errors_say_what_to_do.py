"""Issue 21 item 7: errors that name the file and say what to do (none loses data, each cost an hour).

Weights files that are not checkpoints (a text file named .pth, a cut .pth, a pickle of code or
objects) and a resume into a folder holding a checkpoint of another shape.
"""
import os
import pickle

import pytest
import torch

from lab import trainutil
from lab.infra import sources
from lab.infra.cache import AssetError


class _Payload:
    """An object torch.load(weights_only=True) refuses: a pickle of code, not tensors."""

    def __reduce__(self):
        return (os.getcwd, ())


def _check(err, path):
    msg = str(err)
    assert str(path) in msg and "not a valid checkpoint" in msg
    assert "weights_only=False" not in msg and "weights_only = False" not in msg


def test_a_text_file_named_pth_names_the_file(tmp_path):
    path = tmp_path / "model.pth"
    path.write_text("epoch 1 loss 0.3\n")  # was KeyError: 101
    with pytest.raises(AssetError) as e:
        sources.load_weights_file(path)
    _check(e.value, path)


def test_a_cut_pth_names_the_file(tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"w": torch.randn(64, 64)}, path)
    path.write_bytes(path.read_bytes()[:2000])  # was a raw miniz RuntimeError without the file
    with pytest.raises(AssetError) as e:
        sources.load_weights_file(path)
    _check(e.value, path)


def test_a_pickle_of_objects_is_refused_without_suggesting_weights_only_false(tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"w": torch.zeros(2), "run": _Payload()}, path)
    with pytest.raises(AssetError) as e:
        sources.load_weights_file(path)
    _check(e.value, path)
    assert "code or objects" in str(e.value)
    assert not isinstance(e.value.__cause__, pickle.UnpicklingError) or "weights_only" not in str(e.value)


def test_a_checkpoint_of_something_else_names_the_file(tmp_path):
    path = tmp_path / "model.pth"
    torch.save([1, 2, 3], path)  # loads, but is no state dict
    with pytest.raises(AssetError) as e:
        sources.load_weights_file(path)
    _check(e.value, path)


def test_a_real_state_dict_still_loads(tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"state_dict": {"module.w": torch.ones(3)}}, path)
    assert torch.equal(sources.load_weights_file(path)["w"], torch.ones(3))


# ----------------------------------------------------------------------------- resume into another shape


def _save(folder, width):
    model = torch.nn.Linear(4, width, bias=False)
    trainutil.save_checkpoint(str(folder), 5, {"model": model}, {})
    return model


def test_resuming_with_another_shape_says_the_folder_holds_another_shape(tmp_path):
    _save(tmp_path / "ckpt", 8)
    other = torch.nn.Linear(4, 16, bias=False)
    with pytest.raises(trainutil.CheckpointShapeError) as e:
        trainutil.load_checkpoint(str(tmp_path / "ckpt"), {"model": other})
    msg = str(e.value)
    assert str(tmp_path / "ckpt") in msg and "another shape" in msg
    assert "weight" in msg and "(8, 4)" in msg and "(16, 4)" in msg
    assert "--out-dir" in msg  # how to start fresh
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["step_00000005"]  # intact: never set aside


def test_lab_train_resumed_with_another_width_says_how_to_start_fresh(tmp_path):
    """`python -m lab.train ... --out-dir D` then the same D with another --width: was a raw
    size-mismatch RuntimeError from load_state_dict."""
    from lab.train import train_generator
    z = torch.nn.functional.normalize(torch.randn(16, 4, 8), dim=-1) * 8 ** 0.5
    y = torch.arange(16) % 2
    kw = dict(steps=2, batch_size=8, size="tiny", out_dir=str(tmp_path / "run"), ckpt_every=1, progress=False)
    train_generator(z, y, model_kw=dict(width=16, depth=1), **kw)
    with pytest.raises(trainutil.CheckpointShapeError) as e:
        train_generator(z, y, model_kw=dict(width=32, depth=1), **dict(kw, steps=4))
    msg = str(e.value)
    assert str(tmp_path / "run" / "checkpoints") in msg and "another shape" in msg and "--out-dir" in msg
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())[-1] == "step_00000002"
