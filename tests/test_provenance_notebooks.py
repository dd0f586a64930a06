"""Provenance hashes a notebook without its tagged parameters cell and without outputs, execution
counts or metadata: editing a parameter in JupyterLab (which autosaves the .ipynb) keeps the run
clean; an edit to any other code cell still makes it dirty."""
import json
import shutil
import subprocess
from pathlib import Path

from lab.infra import provenance

NB = Path(__file__).resolve().parents[1] / "notebooks" / "08_width.ipynb"


def repo_with_notebook(root):
    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout
    git("init", "-q")
    git("config", "user.email", "t@t")
    git("config", "user.name", "t")
    (root / "lab").mkdir()
    (root / "lab" / "a.py").write_text("x = 1\n")
    (root / "notebooks").mkdir()
    shutil.copy(NB, root / "notebooks" / NB.name)
    git("add", ".")
    git("commit", "-qm", "code")
    return root / "notebooks" / NB.name


def edit(path, change):
    nb = json.loads(path.read_text())
    change(nb["cells"], nb)
    path.write_text(json.dumps(nb, indent=1) + "\n")  # JupyterLab's own layout


def params_cell(cells):
    return next(c for c in cells if "parameters" in c["metadata"].get("tags", []))


def test_editing_a_parameter_and_running_keeps_the_code_clean(tmp_path):
    nb = repo_with_notebook(tmp_path)

    def autosaved_interactive_run(cells, whole):
        p = params_cell(cells)
        p["source"] = ["".join(p["source"]).replace("seed = 0", "seed = 5")]
        for c in cells:
            if c["cell_type"] == "code":
                c["execution_count"] = 7
                c["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["hi\n"]}]
                c["metadata"]["scrolled"] = True
        whole["metadata"]["widgets"] = {"state": {}}
    edit(nb, autosaved_interactive_run)
    assert "seed = 5" in nb.read_text()
    state = provenance.code_state(tmp_path)
    assert state["dirty"] is False and state["diff_sha256"] is None
    assert provenance.code_is_clean(state)[0]


def test_editing_another_code_cell_still_makes_the_run_dirty(tmp_path):
    nb = repo_with_notebook(tmp_path)
    code = [i for i, c in enumerate(json.loads(nb.read_text())["cells"])
            if c["cell_type"] == "code" and "parameters" not in c["metadata"].get("tags", [])]

    def also_params(cells, whole):
        params_cell(cells)["source"] = ["seed = 5\n"]
    edit(nb, also_params)
    edit(nb, lambda cells, whole: cells[code[-1]]["source"].append("\nprint(1)"))
    one = provenance.code_state(tmp_path)
    assert one["dirty"] is True and len(one["diff_sha256"]) == 64
    edit(nb, lambda cells, whole: params_cell(cells).update(source=["seed = 6\n"]))
    assert provenance.code_state(tmp_path)["diff_sha256"] == one["diff_sha256"]  # the code edit alone names it
    edit(nb, lambda cells, whole: cells[code[-1]]["source"].append("\nprint(2)"))
    assert provenance.code_state(tmp_path)["diff_sha256"] != one["diff_sha256"]


def test_a_new_cell_or_a_removed_tag_is_code(tmp_path):
    nb = repo_with_notebook(tmp_path)
    edit(nb, lambda cells, whole: cells.append({"cell_type": "code", "metadata": {}, "execution_count": None,
                                                "outputs": [], "source": ["1 + 1"]}))
    assert provenance.code_state(tmp_path)["dirty"] is True
    subprocess.run(["git", "-C", str(tmp_path), "checkout", "-q", "--", "notebooks"], check=True)
    assert provenance.code_state(tmp_path)["dirty"] is False
    edit(nb, lambda cells, whole: params_cell(cells)["metadata"].update(tags=[]))  # now an ordinary cell
    assert provenance.code_state(tmp_path)["dirty"] is True
