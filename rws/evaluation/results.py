"""Long-format results: one row per measurement, append-only.

``results.jsonl`` is the source of truth: rows are appended and flushed as they are measured, so
a killed sweep loses at most the cell in flight and can resume by skipping keys already present.
``results.csv`` is a convenience copy rewritten atomically from the JSONL on ``close()``.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
from pathlib import Path
from typing import Any, Iterable

from rws.utils.io import write_json, write_text

COLUMNS = ("spec_id", "spec", "model", "suite", "condition", "level", "metric", "value", "n", "seed",
           "git", "timestamp")
JSONL = "results.jsonl"
CSV = "results.csv"
SUMMARY = "summary.json"

CellKey = tuple[str, str, str, str]  # (spec_id, suite, condition, level as str)


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def level_str(level: Any) -> str:
    """Levels compare as strings so 5, 5.0 and "5" (CSV round trip) are one key."""
    if level is None or level == "":
        return ""
    if isinstance(level, float) and level.is_integer():
        return str(int(level))
    if isinstance(level, str):
        try:
            return level_str(float(level))
        except ValueError:
            return level
    return str(level)


def cell_key(row: dict[str, Any]) -> CellKey:
    return (str(row["spec_id"]), str(row["suite"]), str(row["condition"]), level_str(row.get("level")))


class ResultsWriter:
    """Append rows to ``<dir>/results.jsonl``; on close rewrite ``results.csv`` from it.

    Use as a context manager. ``existing_keys()`` lists the (spec_id, suite, condition, level)
    cells already on disk, so an interrupted run can be continued into the same directory.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.dir / JSONL
        self.csv = self.dir / CSV
        self._fh = open(self.jsonl, "a", encoding="utf-8")

    def write(self, rows: Iterable[dict[str, Any]]) -> int:
        """Append rows (missing columns become ""), flush and fsync. Returns how many were written."""
        count = 0
        for row in rows:
            full = {c: row.get(c, "") for c in COLUMNS}
            full.update({k: v for k, v in row.items() if k not in full})
            self._fh.write(json.dumps(full, default=str) + "\n")
            count += 1
        self._fh.flush()
        os.fsync(self._fh.fileno())
        return count

    def existing_keys(self) -> set[CellKey]:
        return {cell_key(r) for r in read_jsonl(self.jsonl)} if self.jsonl.exists() else set()

    def existing_spec_ids(self) -> set[str]:
        return {k[0] for k in self.existing_keys()}

    def rows(self) -> list[dict[str, Any]]:
        self._fh.flush()
        return read_jsonl(self.jsonl)

    def write_summary(self, summary: dict[str, Any]) -> Path:
        return write_json(self.dir / SUMMARY, summary)

    def close(self) -> None:
        if self._fh.closed:
            return
        self._fh.close()
        write_csv(self.csv, read_jsonl(self.jsonl))

    def __enter__(self) -> "ResultsWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def write_csv(path: str | os.PathLike, rows: list[dict[str, Any]]) -> Path:
    extra = sorted({k for r in rows for k in r} - set(COLUMNS))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS) + extra, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _csv_cell(v) for k, v in r.items()})
    return write_text(path, buf.getvalue())


def _csv_cell(v: Any) -> Any:
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                # A crash mid-write can leave a truncated last line; everything before it is good.
                continue
    return rows


def read_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8", newline="") as f:
        return [_typed(r) for r in csv.DictReader(f)]


def _typed(row: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = dict(row)
    for k in ("value",):
        if out.get(k) not in (None, ""):
            out[k] = float(out[k])
    for k in ("n", "seed"):
        if out.get(k) not in (None, ""):
            out[k] = int(float(out[k]))
    lvl = out.get("level", "")
    if lvl not in (None, ""):
        try:
            f = float(lvl)
            out["level"] = int(f) if f.is_integer() and "." not in lvl else f
        except ValueError:
            pass
    return out


def read_results(path_or_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows from a results directory or file (.jsonl preferred over .csv)."""
    p = Path(path_or_dir)
    if p.is_dir():
        if (p / JSONL).is_file():
            return read_jsonl(p / JSONL)
        if (p / CSV).is_file():
            return read_csv(p / CSV)
        raise FileNotFoundError(f"no {JSONL} or {CSV} in {p}")
    if not p.is_file():
        raise FileNotFoundError(f"results not found: {p}")
    return read_csv(p) if p.suffix == ".csv" else read_jsonl(p)


def read_many(paths: Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for p in paths:
        rows.extend(read_results(p))
    return rows
