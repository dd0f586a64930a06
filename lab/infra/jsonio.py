"""Atomic file writes, JSON that survives numpy / torch values, CSV rows: the I/O of run folders.

A reader sees the old file or the new one, never a half: every write goes to a temporary file
in the same folder and is moved into place with os.replace, so a killed process leaves at most
a `.<name>.<pid>.<ns>.tmp` beside the file, never a truncated file.
"""
import csv
import io
import json
import os
import time
from pathlib import Path


def write_atomic(path, data):
    """Write text or bytes so that a reader sees the old file or the new one, never a half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_json(path, default=None):
    """The parsed file, or `default` when it is missing, truncated or not UTF-8."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return default


def write_json(path, obj):
    write_atomic(path, json.dumps(jsonable(obj), indent=1, allow_nan=True) + "\n")


def jsonable(v):
    """Plain JSON types from numpy / torch scalars and arrays, tuples and paths."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):  # numpy, torch
        return jsonable(v.tolist())
    if hasattr(v, "item") and not isinstance(v, (str, bytes, int, float, bool)):
        return v.item()
    return v


def canonical(obj):
    """The form in which two parameter sets compare equal (sorted keys, tuples as lists)."""
    return json.dumps(jsonable(obj), sort_keys=True, separators=(",", ":"))


def read_rows(path):
    """The rows of a CSV file as dicts of text ([] when missing or unreadable)."""
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except (FileNotFoundError, UnicodeDecodeError, csv.Error):
        return []


def write_rows(path, rows):
    """Write dict rows as CSV, atomically; the columns are every key in first-seen order and
    list / dict values are stored as JSON text."""
    cols = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})
    write_atomic(path, buf.getvalue())
