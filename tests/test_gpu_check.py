"""tests/gpu_check.sh (issue 22, item 5) without a GPU: its arguments, and how it receives the parts of
its payload over several device calls (each checked against SHA256SUMS, a bad one named)."""
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "gpu_check.sh"


def run(root, *args, **env):
    return subprocess.run(["bash", str(root / "tests" / "gpu_check.sh"), *args], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, **env))


def copy_of_the_script(tmp_path):
    (tmp_path / "tests").mkdir(parents=True)
    shutil.copy(SCRIPT, tmp_path / "tests" / "gpu_check.sh")
    return tmp_path


def test_the_script_parses_and_refuses_an_unknown_argument(tmp_path):
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    r = run(copy_of_the_script(tmp_path), "--gpu", OUT=str(tmp_path / "out"))
    assert r.returncode == 2 and "unknown argument '--gpu'" in r.stderr


def test_parts_are_checked_on_arrival_and_a_bad_one_is_named(tmp_path):
    root = copy_of_the_script(tmp_path / "tree")
    pack = root / ".gpucheck"
    pack.mkdir()
    (pack / "part_00").write_bytes(b"first part")
    (pack / "part_01").write_bytes(b"second part, damaged in transit")
    sums = [f"{hashlib.sha256(b'first part').hexdigest()}  part_00",
            f"{hashlib.sha256(b'second part').hexdigest()}  part_01"]
    (pack / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    stage, out = tmp_path / "stage", tmp_path / "out"
    r = run(root, "--receive", OUT=str(out), GPU_CHECK_STAGE=str(stage))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "received part_00" in r.stdout and "BAD part_01" in r.stdout and "1 of 2 parts" in r.stdout
    assert (stage / "part_00").read_bytes() == b"first part" and not (stage / "part_01").exists()
    r = run(root, OUT=str(out), GPU_CHECK_STAGE=str(stage))  # the final call: a part is missing, nothing runs
    assert r.returncode == 1 and "waiting for the other parts" in r.stdout
    assert "1 of 2 parts" in (out / "summary.txt").read_text()
