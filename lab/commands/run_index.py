"""Read every run folder under runs/ and sort it into readable runs and unreadable ones, with the
reason, so that one bad run can never break the report or be cited as evidence.

What makes a folder unreadable is lab.run_files.problem (the same check `runs.find_done` makes
before reusing a run): a status, params or metrics file that does not parse as what the lab writes
(cut short by a kill or a full disk, not UTF-8, a list or null), params.json missing, a status
field of the wrong type, a finished run's table that does not parse or has no columns, and a
`done` run whose manifest.json is missing (status.json set to done by hand, or a run finished by
code older than the manifest: re-run it) or does not match its files (one changed, deleted or
added since the run finished).
Unreadable runs are left out of everything else: a hand-edited or truncated newer run then no
longer hides an older good run with the same parameters. A folder with params.json but no
status.json is readable (its state is `stale`: created, never recorded).
"""
from dataclasses import dataclass
from pathlib import Path

from lab import run_files, runs


@dataclass(frozen=True)
class Unreadable:
    """A run folder the report cannot use, and why."""
    experiment: str
    id: str
    dir: Path
    reason: str


def folders(runs_dir=None):
    """Every run folder, experiment by experiment (folders starting with '.' or '_' are not runs:
    runs/_zoo holds the shared models)."""
    root = runs.runs_root(runs_dir)
    for exp in sorted(p for p in root.glob("*") if p.is_dir() and not p.name.startswith((".", "_"))):
        yield from sorted(d for d in exp.glob("*") if d.is_dir() and not d.name.startswith("."))


def read(runs_dir=None):
    """(readable runs, oldest first within each experiment, as runs.Run; [Unreadable])."""
    good, bad = [], []
    for d in folders(runs_dir):
        try:
            why = run_files.problem(d)
        except OSError as err:  # a file that cannot even be opened
            why = f"{type(err).__name__}: {err}"
        if why:
            bad.append(Unreadable(d.parent.name, d.name, d, why))
        else:
            good.append(runs.Run(d))
    good.sort(key=lambda r: (r.experiment, r.meta.get("started_unix") or 0, r.id))
    return good, bad


def markdown(unreadable):
    """The report's section listing the unreadable runs (lines of Markdown)."""
    lines = ["## Unreadable runs", ""]
    if not unreadable:
        return lines + ["None.", ""]
    lines += ["These run folders hold files the report cannot read; no table or claim uses them. "
              "Fix or delete the file named, or move the folder out of runs/.", "",
              "| experiment | run | reason |", "|---|---|---|"]
    for u in unreadable:
        reason = u.reason.replace("|", "\\|").replace("\n", " ")[:200]
        lines.append(f"| {u.experiment} | {u.id} | {reason} |")
    return lines + [""]
