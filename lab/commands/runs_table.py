"""`lab runs` and `lab show`: what runs exist, their state and what they measured, without opening folders.

    lab runs [EXPERIMENT] [--state done|failed|stale|running] [--where NAME=VALUE]... [--json]
    lab show RUN [--json]        RUN: a run id (or its first characters), EXPERIMENT/RUN-ID, or a folder

`lab runs` prints one line per readable run, newest first: experiment, run id, state, commit, the
parameters that differ from the defaults in notebooks/<experiment>.ipynb (every parameter when that
notebook is missing), the headline metrics and the time the run took. Headline metrics are the
keys lab.claims reads for that experiment, each the mean over its seeds when logged per seed
(`key_seed0`, `key_seed1`, ...), then the first other scalars, HEADLINE in all. Unreadable run
folders (lab.commands.run_index) follow, with the reason (not when --state or --where filters,
since their state and parameters are unknown). `--where` values parse like notebook
parameters (`-p`), typed by the notebook's default; a run without the parameter in params.json
has its notebook's default. `--json` prints the same as a list of records, unreadable runs
with state "unreadable" and their reason.
"""
import argparse
import difflib
import json
import re
import sys
import time
from pathlib import Path
from statistics import mean

from lab import claims, runs
from lab.commands import nbtools, run_index
from lab.infra.jsonio import jsonable
from lab.infra.params import NO_DEFAULT, parse_value, read_parameters
from lab.infra.provenance import repo_root

HEADLINE = 4  # metrics per line of `lab runs`


# ----------------------------------------------------------------------------------------------
# One run as a record
# ----------------------------------------------------------------------------------------------

def notebook_defaults(experiment, notebooks):
    """{name: default} of notebooks/<experiment>.ipynb, or None when it is missing or unreadable."""
    try:
        return {name: p.default for name, p in read_parameters(Path(notebooks) / f"{experiment}.ipynb").items()}
    except (OSError, ValueError):
        return None


def changed_params(params, defaults):
    """The parameters whose value differs from the notebook default (all of them without defaults)."""
    if defaults is None:
        return dict(params)
    return {k: v for k, v in params.items() if k not in defaults or jsonable(v) != jsonable(defaults[k])}


def _scalar(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def headline(experiment, metrics, n=HEADLINE):
    """The claim keys of `experiment` (seed means), then the first other scalar metrics, n at most."""
    scalars = {k: v for k, v in metrics.items() if _scalar(v)}
    out = {}
    for key in dict.fromkeys(k for c in claims.CLAIMS if c.notebook == experiment for k in c.needs):
        seeds = claims.seed_values(scalars, key)
        if key in scalars or seeds:
            out[key] = scalars[key] if key in scalars else mean(seeds.values())
    for key, v in scalars.items():
        if key not in out and re.sub(r"_seed\d+$", "", key) not in out:
            out[key] = v
    return dict(list(out.items())[:n])


def short_commit(meta):
    commit = meta.get("commit")
    return (commit[:10] if commit else "no commit") + ("+dirty" if meta.get("dirty") else "")


def seconds(run):
    """The run's duration: recorded when it ended, so far while it is running."""
    if run.meta.get("seconds") is not None:
        return run.meta["seconds"]
    started = run.meta.get("started_unix")
    return round(time.time() - started, 3) if started and run.state == "running" else None


def record(run, defaults):
    return {"experiment": run.experiment, "run": run.id, "state": run.state, "commit": short_commit(run.meta),
            "params": changed_params(run.params, defaults), "metrics": headline(run.experiment, run.metrics),
            "seconds": seconds(run), "started": run.meta.get("started"), "dir": str(run.dir)}


# ----------------------------------------------------------------------------------------------
# lab runs
# ----------------------------------------------------------------------------------------------

def parse_where(items):
    """['lr=0.003', ...] -> [('lr', '0.003'), ...]; the value text is typed per experiment later."""
    out = []
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name.strip():
            raise ValueError(f"--where {item!r}: write NAME=VALUE, e.g. --where lr=0.003")
        out.append((name.strip(), value))
    return out


def matches(run, defaults, where):
    """True when every (name, text) of `where` equals the run's value (its notebook's default if unset)."""
    for name, text in where:
        default = (defaults or {}).get(name, run.params.get(name, NO_DEFAULT))
        value = run.params.get(name, default)
        if value is NO_DEFAULT or jsonable(parse_value(text, default)) != jsonable(value):
            return False
    return True


def _check_where_names(where, chosen, defaults):
    """A name no run nor notebook knows is a typo: say so instead of printing an empty table."""
    known = {k for r in chosen for k in r.params} | {k for d in defaults.values() for k in (d or {})}
    for name, _ in where:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.5)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"--where {name}: no run here has a parameter {name!r}{hint}; "
                             f"parameters: {', '.join(sorted(known)) or '(none)'}")


def pick_experiment(name, known):
    """`name` itself, or the one known experiment it starts (`05` -> 05_flow_matching)."""
    hits = nbtools.named(name, known)
    if len(hits) == 1:
        return hits[0]
    close = hits or difflib.get_close_matches(name, known, n=3, cutoff=0.4)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"experiment {name!r}: no notebook and no runs of that name{hint} "
                     f"(experiments: {', '.join(known) or '(none)'})")


def collect(runs_dir=None, experiment=None, state=None, where=(), notebooks=None):
    """(records of the matching readable runs, newest first; records of the unreadable ones)."""
    notebooks = Path(notebooks or repo_root() / "notebooks")
    good, bad = run_index.read(runs_dir)
    if experiment:
        known = sorted({r.experiment for r in good} | {u.experiment for u in bad}
                       | {p.stem for p in notebooks.glob("*.ipynb")})
        experiment = pick_experiment(experiment, known)
        good = [r for r in good if r.experiment == experiment]
        bad = [u for u in bad if u.experiment == experiment]
    defaults = {exp: notebook_defaults(exp, notebooks) for exp in {r.experiment for r in good}}
    where = parse_where(where)
    _check_where_names(where, good, defaults)
    chosen = [r for r in good if (state is None or r.state == state) and matches(r, defaults[r.experiment], where)]
    chosen.sort(key=lambda r: (r.meta.get("started_unix") or 0, r.id), reverse=True)
    unreadable = [] if state or where else [
        {"experiment": u.experiment, "run": u.id, "state": "unreadable", "reason": u.reason, "dir": str(u.dir)}
        for u in bad]
    return [record(r, defaults[r.experiment]) for r in chosen], unreadable


def duration(s):
    if s is None:
        return ""
    return f"{s:.1f} s" if s < 90 else f"{s / 60:.1f} min" if s < 5400 else f"{s / 3600:.1f} h"


def _value(v):
    return f"{v:.4g}" if _scalar(v) else json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def _pairs(d):
    return " ".join(f"{k}={_value(v)}" for k, v in d.items())


def table(records):
    """The records as the printed table (a pandas DataFrame)."""
    import pandas as pd
    cols = ["experiment", "run", "state", "commit", "changed", "headline", "time"]
    return pd.DataFrame([{"experiment": r["experiment"], "run": r["run"], "state": r["state"], "commit": r["commit"],
                          "changed": _pairs(r["params"]), "headline": _pairs(r["metrics"]),
                          "time": duration(r["seconds"])} for r in records], columns=cols)


def runs_main(argv=None):
    ap = argparse.ArgumentParser(prog="lab runs", description="List the runs, newest first: experiment, run id, "
                                 "state, commit, parameters that differ from the notebook's defaults, headline "
                                 "metrics and the time each took.")
    ap.add_argument("experiment", nargs="?", help="one experiment (a notebook name, or its first characters: 05)")
    ap.add_argument("--state", choices=runs.STATES, help="only runs in this state")
    ap.add_argument("--where", action="append", default=[], metavar="NAME=VALUE",
                    help="only runs with this parameter value (repeatable; values parse like -p)")
    ap.add_argument("--json", action="store_true", help="print a JSON list of records")
    ap.add_argument("--runs-dir", default=None, help="runs folder (default $LAB_RUNS_DIR or runs/)")
    ap.add_argument("--notebooks", default=None, help="folder of the notebooks whose defaults apply (default notebooks/)")
    args = ap.parse_args(argv)
    try:
        found, unreadable = collect(args.runs_dir, args.experiment, args.state, args.where, args.notebooks)
    except ValueError as err:
        ap.error(str(err))
    if args.json:
        print(json.dumps(jsonable(found + unreadable), indent=1, allow_nan=True))
        return 0
    root = runs.runs_root(args.runs_dir)
    print(table(found).to_string(index=False) if found else f"no run matches under {root}")
    if unreadable:
        print("\nUnreadable runs (no table or claim uses them; fix or move the file named):")
        for u in unreadable:
            print(f"  {u['experiment']}/{u['run']}: {u['reason']}")
    return 0


# ----------------------------------------------------------------------------------------------
# lab show
# ----------------------------------------------------------------------------------------------

def find(ref, runs_dir=None):
    """The folder of run `ref`: a run folder path, EXPERIMENT/RUN-ID, a run id or its unique start."""
    path = Path(ref)
    if path.is_dir() and ((path / "params.json").exists() or (path / "status.json").exists()):
        return path
    folders = {f"{d.parent.name}/{d.name}": d for d in run_index.folders(runs_dir)}
    for test in (lambda key, d: key == ref or d.name == ref,
                 lambda key, d: key.startswith(ref) or d.name.startswith(ref)):
        hits = [d for key, d in folders.items() if test(key, d)]
        if len(hits) == 1:
            return hits[0]
        if hits:
            raise ValueError(f"run {ref!r} is ambiguous: {', '.join(sorted(f'{d.parent.name}/{d.name}' for d in hits))}")
    names = sorted(folders) + sorted({d.name for d in folders.values()})
    close = difflib.get_close_matches(ref, names, n=5, cutoff=0.5)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise ValueError(f"no run {ref!r} under {runs.runs_root(runs_dir)}{hint} (`lab runs` lists the runs)")


def describe(run, defaults):
    """Everything `lab show` prints, as one JSON-ready dict."""
    meta = run.meta
    return {"experiment": run.experiment, "run": run.id, "dir": str(run.dir), "state": run.state,
            "commit": short_commit(meta), "device": meta.get("device"), "started": meta.get("started"),
            "finished": meta.get("finished"), "seconds": seconds(run), "error": meta.get("error"),
            "timings": meta.get("timings", {}), "params": run.params,
            "changed": sorted(changed_params(run.params, defaults)), "metrics": run.metrics,
            "tables": {name: list(run.table(name).shape) for name in run.tables()},
            "figures": [str(p) for p in run.figures()],
            "notebooks": [str(p) for p in sorted(run.dir.glob("*.ipynb"))]}


def show_lines(d):
    lines = [f"run       {d['experiment']}/{d['run']}", f"folder    {d['dir']}",
             f"state     {d['state']}  ({duration(d['seconds']) or 'no duration'}; commit {d['commit']}; "
             f"device {d['device'] or '?'}; started {d['started'] or '?'}; finished {d['finished'] or '-'})"]
    if d["error"]:
        lines.append(f"error     {d['error']}")
    if d["timings"]:
        lines.append("timings   " + ", ".join(f"{k} {duration(v)}" for k, v in d["timings"].items()))
    lines.append("parameters (* differs from the notebook's default)")
    lines += [f"  {'*' if k in d['changed'] else ' '} {k} = {v!r}" for k, v in d["params"].items()] or ["    (none)"]
    width = max((len(k) for k in d["metrics"]), default=0)
    lines.append("metrics")
    lines += [f"    {k:<{width}}  {_value(v)}" for k, v in d["metrics"].items()] or ["    (none)"]
    lines.append("tables")
    lines += [f"    {name}  {r} rows x {c} columns" for name, (r, c) in d["tables"].items()] or ["    (none)"]
    lines.append("figures")
    lines += [f"    {p}" for p in d["figures"]] or ["    (none)"]
    lines += [f"notebook  {p}" for p in d["notebooks"]]
    return lines


def show_main(argv=None):
    ap = argparse.ArgumentParser(prog="lab show", description="One run's parameters, status, metrics, tables "
                                 "(with their shapes) and figure paths.")
    ap.add_argument("run", help="a run id (or its first characters), EXPERIMENT/RUN-ID, or a run folder")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--runs-dir", default=None, help="runs folder (default $LAB_RUNS_DIR or runs/)")
    ap.add_argument("--notebooks", default=None, help="folder of the notebooks whose defaults apply (default notebooks/)")
    args = ap.parse_args(argv)
    try:
        folder = find(args.run, args.runs_dir)
    except ValueError as err:
        ap.error(str(err))
    bad = [u for u in run_index.read(folder.parent.parent)[1] if u.dir == folder]
    if bad:
        print(f"lab show: {folder.parent.name}/{folder.name} is unreadable: {bad[0].reason}", file=sys.stderr)
        return 1
    run = runs.Run(folder)
    d = describe(run, notebook_defaults(run.experiment, args.notebooks or repo_root() / "notebooks"))
    print(json.dumps(jsonable(d), indent=1, allow_nan=True) if args.json else "\n".join(show_lines(d)))
    return 0


if __name__ == "__main__":
    sys.exit(runs_main())
