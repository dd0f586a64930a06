"""environment.yml gives a CUDA node the CUDA build of the pinned torch: the pip section names the
PyTorch CUDA index with the same torch / torchvision pins as pyproject.toml, and then the package."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def pip_lines():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["name"] == "latent-geometry-lab"
    pip = [d for d in env["dependencies"] if isinstance(d, dict)]
    assert len(pip) == 1 and "pip" in env["dependencies"], "one pip section, and pip itself"
    return pip[0]["pip"]


def test_pip_section_pins_torch_from_the_cuda_index_before_the_package():
    lines = pip_lines()
    assert "torch==2.13.0" in lines and "torchvision==0.28.0" in lines
    index = [l for l in lines if l.startswith("--extra-index-url")]
    assert len(index) == 1 and re.search(r"https://download\.pytorch\.org/whl/cu\d+$", index[0]), index
    package = [l for l in lines if l.startswith("-e .")]
    assert package and lines.index(package[0]) > lines.index("torch==2.13.0"), "torch first, then the package"


def test_pins_are_pyprojects():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {d for d in deps if d.startswith(("torch==", "torchvision=="))}
    assert pins == {"torch==2.13.0", "torchvision==0.28.0"}
    assert pins <= set(pip_lines())


def test_comments_give_the_steps_in_order():
    text = (ROOT / "environment.yml").read_text()
    steps = ["conda env create -f environment.yml", "conda activate latent-geometry-lab", "torch.cuda.is_available()"]
    at = [text.find(s) for s in steps]
    assert -1 not in at and at == sorted(at), at
