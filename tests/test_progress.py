"""Progress bars: plain text under papermill (lab.commands.nbtools), widgets in a JupyterLab kernel,
and no TqdmWarning ('IProgress not found ...') in either."""
import json
import subprocess
import sys

import nbformat
import pytest

from lab.commands import nbtools

LOOP = "from tqdm.auto import tqdm\nfor i in tqdm(range(n), desc='bar', mininterval=0):\n    pass"


def _notebook(path, cells):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("n = 3")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params] + [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def _outputs(path):
    return [o for c in nbformat.read(path, 4).cells if c.cell_type == "code" for o in c.get("outputs", [])]


def test_papermill_run_prints_text_bars_and_no_tqdm_warning(tmp_path):
    nb = _notebook(tmp_path / "progress_check.ipynb", [
        "from lab import runs\nrun = runs.start('progress_check', globals())", LOOP, "run.done()"])
    res = nbtools.execute(nb, {}, runs_dir=str(tmp_path / "runs"))
    assert res["status"] == "done", res["error"]
    outs = _outputs(res["notebook"])
    text = json.dumps(outs)
    assert "TqdmWarning" not in text and "IProgress" not in text
    assert not any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outs)
    bars = "".join(o.get("text", "") for o in outs if o.get("name") == "stderr")
    assert "bar: 100%" in bars and "3/3" in bars  # the finished text bar, not a widget frozen at 0%


def test_jupyterlab_kernel_gets_widget_bars_without_warning(tmp_path, monkeypatch):
    """A kernel that nbtools did not start (JupyterLab's) keeps tqdm's widget bar."""
    pytest.importorskip("ipywidgets")
    import papermill as pm
    monkeypatch.delenv("LAB_PROGRESS", raising=False)
    nb = _notebook(tmp_path / "lab_kernel.ipynb", ["import warnings\nwarnings.simplefilter('always')\nimport lab",
                                                   LOOP])
    out = tmp_path / "out.ipynb"
    pm.execute_notebook(str(nb), str(out), kernel_name=nbtools.kernel_name(), progress_bar=False)
    outs = _outputs(out)
    assert "TqdmWarning" not in json.dumps(outs) and "IProgress" not in json.dumps(outs)
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outs)


def test_terminal_gets_the_text_bar_without_warning():
    code = ("import warnings; warnings.simplefilter('error')\n"
            "import lab\nfrom tqdm.auto import tqdm\nfrom tqdm.std import tqdm as text_bar\n"
            "assert issubclass(tqdm, text_bar) and not any(c.__module__ == 'tqdm.notebook' for c in tqdm.__mro__)\n"
            "list(tqdm(range(3), desc='bar', mininterval=0))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "bar: 100%" in r.stderr and "Warning" not in r.stderr
