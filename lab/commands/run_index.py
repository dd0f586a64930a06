"""Read every run folder under runs/ and sort it into readable runs and unreadable ones, with the
reason, so that one bad run can never break the report or be cited as evidence.

A run folder is evidence: the report may cite it only when every file it reads parses as what the
lab writes. A folder is unreadable when
  - status.json, params.json or metrics.json is not UTF-8, not JSON (cut short by a kill or a
    full disk) or not a JSON object (a list, null);
  - params.json is missing (a claim would cite "parameters (none)" for a run that had some);
  - a status field has the wrong type (a text `finished_unix` would break the sorting);
  - metrics.csv is not UTF-8, or a finished run's tables/*.csv does not parse or has no columns
    (what `run.log_table(name, pd.DataFrame())` writes).
Unreadable runs are left out of everything else: a truncated metrics.json in a newer run then no
longer hides an older good run with the same parameters. A folder with params.json but no
status.json is readable (its state is `stale`: created, never recorded).
"""
import json
from dataclasses import dataclass
from pathlib import Path

from lab import runs

_TEXT_FIELDS = ("status", "host", "started", "finished", "error", "commit", "device", "updated")
_NUMBER_FIELDS = ("started_unix", "finished_unix", "seconds")


@dataclass(frozen=True)
class Unreadable:
    """A run folder the report cannot use, and why."""
    experiment: str
    id: str
    dir: Path
    reason: str


def _json_object(path, required):
    """(object, None) or (None, reason); ({}, None) for a missing optional file."""
    if not path.is_file():
        return (None, f"{path.name} is missing") if required else ({}, None)
    raw = path.read_bytes()
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        return None, f"{path.name} is not UTF-8 text ({err.reason} at byte {err.start})"
    except json.JSONDecodeError as err:
        return None, f"{path.name} is not valid JSON, probably cut short ({err.msg}, {len(raw)} bytes)"
    if not isinstance(obj, dict):
        return None, f"{path.name} holds {type(obj).__name__}, not a JSON object"
    return obj, None


def _status_problem(meta):
    for key in _TEXT_FIELDS:
        if meta.get(key) is not None and not isinstance(meta[key], str):
            return f"status.json field {key!r} is {type(meta[key]).__name__}, not text"
    for key in _NUMBER_FIELDS:
        v = meta.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            return f"status.json field {key!r} is {v!r}, not a number"
    if meta.get("status") is not None and meta["status"] not in runs.STATES:
        return f"status.json status {meta['status']!r} is not one of {', '.join(runs.STATES)}"
    return None


def _table_problem(path):
    import pandas as pd
    try:
        df = pd.read_csv(path)
    except UnicodeDecodeError:
        return f"tables/{path.name} is not UTF-8 text"
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as err:
        return f"tables/{path.name} does not parse as a table ({type(err).__name__}: {err})"
    if len(df.columns) == 0:
        return f"tables/{path.name} has no columns"
    return None


def problem(folder):
    """None when the report can read this run folder, else the reason it cannot."""
    folder = Path(folder)
    meta, why = _json_object(folder / "status.json", required=False)
    why = why or _status_problem(meta)
    if why:
        return why
    for name, required in (("params.json", True), ("metrics.json", False)):
        why = _json_object(folder / name, required)[1]
        if why:
            return why
    csv = folder / "metrics.csv"
    if csv.is_file():
        try:
            csv.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            return "metrics.csv is not UTF-8 text"
    if meta.get("status") == "done":
        for table in sorted((folder / "tables").glob("*.csv")):
            why = _table_problem(table)
            if why:
                return why
    return None


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
            why = problem(d)
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
