"""The one autoencoder loop (lab.autoencoders.fit) and the per-step seed every trainer shares."""
import ast
import math
import os

import pytest
import torch

from lab import train, trainutil
from lab.autoencoders.fit import fit

AE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lab", "autoencoders")


def test_one_step_seed_for_every_trainer_and_the_generators_numbers_unchanged():
    assert train.step_seed is trainutil.step_seed
    for seed, step in ((0, 0), (3, 7), (12345, 10 ** 6)):
        old = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + 1) % (2 ** 63 - 1)  # lab.train's formula
        assert trainutil.step_seed(seed, step) == old
        assert trainutil.step_seed(seed, step, stream=2) != old
    cpu, dev = trainutil.step_generators(3, 7, "cpu", stream=1)
    assert cpu is dev and cpu.initial_seed() == trainutil.step_seed(3, 7, 1)


def _quadratic(n_data=8):
    """A linear model fitting targets: the loss is finite and falls, indices are recorded per step."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    x, y = torch.randn(n_data, 4), torch.randn(n_data, 1)
    seen = {}

    def step(idx, gen, k):
        seen[k] = idx.clone()
        loss = (model(x[idx]) - y[idx]).pow(2).mean()
        return dict(loss=loss, rec=loss, parts={"mse": loss.detach()})

    return model, step, seen


def test_batches_depend_on_seed_and_step_only(tmp_path):
    model, step, seen = _quadratic()
    h = fit(step, model.parameters(), 8, steps=4, batch_size=3, lr=1e-2, modules={"m": model},
            ckpt_dir=str(tmp_path), ckpt_every=2, seed=1, progress=False)
    assert h["step"] == [1, 2, 3, 4] and h["mse"] == h["loss"]
    first = dict(seen)
    m2, step2, seen2 = _quadratic()
    torch.manual_seed(77)
    fit(step2, m2.parameters(), 8, steps=4, batch_size=3, lr=1e-2, seed=1, progress=False)
    assert all(torch.equal(first[k], seen2[k]) for k in range(4))
    for k in range(4):
        g = trainutil.step_generators(1, k, "cpu")[0]
        assert torch.equal(first[k], torch.randint(8, (3,), generator=g))


def test_nan_guard_saves_then_raises(tmp_path):
    model, step, _ = _quadratic()

    def bad(idx, gen, k):
        out = step(idx, gen, k)
        if k == 2:
            out["loss"] = out["loss"] * float("nan")
        return out

    with pytest.raises(FloatingPointError, match="step 2"):
        fit(bad, model.parameters(), 8, steps=5, batch_size=3, lr=1e-2, modules={"m": model},
            ckpt_dir=str(tmp_path), ckpt_every=100, progress=False)
    path = trainutil.latest_checkpoint(str(tmp_path))
    assert path.endswith("step_00000002")
    _, extra = trainutil.load_checkpoint(path, {"m": torch.nn.Linear(4, 1)}, restore_rng=False)
    assert extra["history"]["step"] == [1, 2] and all(math.isfinite(v) for v in extra["history"]["loss"])


def _imports(path):
    """The lab modules a file imports at its top level, and the import statements inside functions."""
    tree = ast.parse(open(path).read())
    top = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lab"):
            top.update(f"{node.module}.{a.name}" if node.module == "lab" else node.module for a in node.names)
        elif isinstance(node, ast.Import):
            top.update(a.name for a in node.names if a.name.startswith("lab"))
    inner = [n for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))]
    return top, inner


def test_autoencoders_have_no_import_cycle_and_no_imports_inside_functions():
    names = [f[:-3] for f in os.listdir(AE_DIR) if f.endswith(".py") and f != "__init__.py"]
    graph = {}
    for name in names:
        top, inner = _imports(os.path.join(AE_DIR, f"{name}.py"))
        assert not inner, f"{name}.py imports inside a function"
        assert "lab" not in {t for t in top}, f"{name}.py: a bare `import lab` does nothing"
        graph[name] = {t.rsplit(".", 1)[-1] for t in top if t.startswith("lab.autoencoders.")}

    def visit(node, path):
        assert node not in path, "import cycle: " + " -> ".join(path + [node])
        for nxt in graph.get(node, ()):
            visit(nxt, path + [node])

    for name in names:
        visit(name, [])
