"""One bad run never breaks the report (issue 9, case 4): lab.commands.run_index sorts run folders
into readable and unreadable (with the reason); the report lists the unreadable ones apart and
never cites them, and an older good run with the same parameters stays the evidence."""
import json
import subprocess
import sys

import pandas as pd
import pytest

from lab import claims as registry
from lab import runs
from lab.commands import report, run_index

EXP = "exp_t"
CLAIM = registry.Claim("t_claim", registry.RAE, "Tab. 0", "a statement", "a number", EXP, ("score",),
                       rule=lambda m: ([], registry.NOT_SHOWN, f"score {m['score']}"))


def _run(root, score, table=None):
    r = runs.create(EXP, {"n": 1}, runs_dir=root)
    r._write_status(commit="f" * 40, dirty=False)
    r.log_metrics({"score": score})
    if table is not None:
        r.log_table("curve", table)
    r.done()
    return r


def _write(path, data):
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


DAMAGE = {  # what a hostile user or a kill did to the newer run -> a word the reason must contain
    "empty_table": (lambda r: _write(r.dir / "tables" / "curve.csv", pd.DataFrame().to_csv(index=False)),
                    "curve.csv"),  # what run.log_table("curve", pd.DataFrame()) writes
    "status_not_utf8": (lambda r: _write(r.dir / "status.json", b'{"status": "done", "host": "\xff\xfe"}'),
                        "status.json"),
    "status_list": (lambda r: _write(r.dir / "status.json", "[1, 2]"), "status.json"),
    "params_list": (lambda r: _write(r.dir / "params.json", '["n", 1]'), "params.json"),
    "metrics_null": (lambda r: _write(r.dir / "metrics.json", "null"), "metrics.json"),
    "params_cut": (lambda r: _write(r.dir / "params.json", (r.dir / "params.json").read_text()[:4]), "params.json"),
    "metrics_cut": (lambda r: _write(r.dir / "metrics.json", (r.dir / "metrics.json").read_text()[:5]),
                    "metrics.json"),
    "finished_unix_text": (lambda r: _write(r.dir / "status.json", json.dumps(
        dict(json.loads((r.dir / "status.json").read_text()), finished_unix="yesterday"))), "finished_unix"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_bad_run_is_listed_apart_and_never_cited(tmp_path, damage):
    root = tmp_path / "runs"
    good = _run(root, 1.0, table={"a": [1, 2]})
    bad = _run(root, 9.0, table={"a": [3]})
    hurt, word = DAMAGE[damage]
    hurt(bad)

    readable, unreadable = run_index.read(root)
    assert [r.id for r in readable] == [good.id]
    assert [u.id for u in unreadable] == [bad.id] and word in unreadable[0].reason

    out = tmp_path / "reports"
    report.build(root, out, claims=[CLAIM])
    claims = pd.read_csv(out / "claims.csv")
    assert claims["run"].tolist() == [f"{EXP}/{good.id}"]  # the older good run is the evidence
    assert claims["parameters"].tolist() == ["n=1"]
    page = (out / "README.md").read_text()
    assert "score 1.0" in page and "score 9.0" not in page
    section = page.split("## Unreadable runs", 1)[1]
    assert bad.id in section and word in section
    assert bad.id not in (out / EXP / "README.md").read_text()


def test_the_report_command_survives_every_bad_run_at_once(tmp_path):
    root = tmp_path / "runs"
    _run(root, 1.0)
    for hurt, _ in DAMAGE.values():
        hurt(_run(root, 9.0, table={"a": [3]}))
    proc = subprocess.run([sys.executable, "-m", "lab.commands.report", "--runs", str(root), "--out",
                           str(tmp_path / "reports")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"{len(DAMAGE)} unreadable" in proc.stdout
    page = (tmp_path / "reports" / "README.md").read_text()
    assert page.split("## Unreadable runs", 1)[1].count(f"| {EXP} ") == len(DAMAGE)


def test_readable_runs_keep_their_states(tmp_path):
    root = tmp_path / "runs"
    done = _run(root, 1.0)
    failed = runs.create(EXP, {"n": 2}, runs_dir=root)
    failed.fail(RuntimeError("boom"))
    (root / EXP / "empty-folder").mkdir()  # created, never recorded: stale, not unreadable
    (root / EXP / "empty-folder" / "params.json").write_text("{}")
    readable, unreadable = run_index.read(root)
    assert {r.id: r.state for r in readable} == {done.id: "done", failed.id: "failed", "empty-folder": "stale"}
    assert unreadable == []
