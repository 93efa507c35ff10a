"""Long-format results: one row per measurement, append-only.

``results.jsonl`` is the source of truth: rows are appended and flushed as they are measured, so
a killed run loses at most the cell in flight and resumes by skipping keys already present.
``results.csv`` is a convenience copy rewritten atomically from the JSONL on ``close()``.
A sharded job (``shard=i/n``, see ``rws.evaluation.shards``) writes ``results.shard-i-of-n.jsonl``
(and ``.csv``) instead; readers of a directory read every result file in it.

A row's key is (spec_id, suite, condition, level, settings): ``settings`` is the hash of every
resolved option that changes the cell's value (``rws.evaluation.cells.settings_hash``). Rows
written before that column existed have none, so they are read and summarized but never reused
for resuming.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

from rws.evaluation.shards import Shard
from rws.utils.io import fault_point, write_json, write_text

COLUMNS = ("spec_id", "spec", "model", "suite", "condition", "level", "metric", "value", "n", "settings",
           "seed", "git", "timestamp")
JSONL = "results.jsonl"
CSV = "results.csv"
SUMMARY = "summary.json"
_SHARD_FILE = re.compile(r"^results\.shard-(\d+)-of-(\d+)\.(jsonl|csv)$")

CellKey = tuple[str, str, str, str, str]  # (spec_id, suite, condition, level as str, settings hash)


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
    return (str(row["spec_id"]), str(row["suite"]), str(row["condition"]), level_str(row.get("level")),
            str(row.get("settings") or ""))


def result_files(directory: str | os.PathLike, ext: str = "jsonl") -> list[Path]:
    """``results.<ext>`` and every ``results.shard-i-of-n.<ext>`` of a directory, unsharded first."""
    d = Path(directory)
    files = [d / f"results.{ext}"] if (d / f"results.{ext}").is_file() else []
    shards = []
    for p in d.glob(f"results.shard-*-of-*.{ext}"):
        m = _SHARD_FILE.match(p.name)
        if m:
            shards.append(((int(m.group(2)), int(m.group(1))), p))
    return files + [p for _k, p in sorted(shards)]


class ResultsWriter:
    """Append rows to ``<dir>/results.jsonl`` (``results.shard-i-of-n.jsonl`` for a shard); on close
    rewrite the matching CSV from it.

    Use as a context manager. ``existing_keys()`` and ``rows()`` cover every result file of the
    directory (all shards), so an interrupted or sharded run can be continued into it.
    """

    def __init__(self, directory: str | os.PathLike, shard: Shard | None = None) -> None:
        self.dir = Path(directory)
        stem = f"results.{shard.suffix}" if shard else "results"
        self.jsonl = self.dir / f"{stem}.jsonl"
        self.csv = self.dir / f"{stem}.csv"
        # Opened at the first row: a run that fails before measuring anything (a bad input) leaves no file.
        self._fh: Any = None

    def _open(self) -> Any:
        if self._fh is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            repair_torn_tail(self.jsonl)  # else the first row appended would be glued onto a killed run's torn row
            self._fh = open(self.jsonl, "a", encoding="utf-8")
        return self._fh

    def write(self, rows: Iterable[dict[str, Any]]) -> int:
        """Append rows (missing columns become ""), flush and fsync. Returns how many were written.
        The rows go out in one write, so a kill leaves all of them, none, or a torn last line (which
        readers skip and the next writer cuts off), not some of a cell's rows."""
        lines = []
        for row in rows:
            full = {c: row.get(c, "") for c in COLUMNS}
            full.update({k: v for k, v in row.items() if k not in full})
            lines.append(json.dumps(full, default=str) + "\n")
        text = "".join(lines)
        fh = self._open()

        def torn() -> None:  # fault injection (rws.utils.io.fault_point): a kill mid-write
            fh.write(text[: len(text) // 2])
            fh.flush()

        fault_point("append-torn", torn)
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
        return len(lines)

    def existing_keys(self) -> set[CellKey]:
        return {cell_key(r) for r in self.rows()}

    def rows(self) -> list[dict[str, Any]]:
        """Every row of the directory, this writer's included."""
        if self._fh is not None and not self._fh.closed:
            self._fh.flush()
        return read_dir(self.dir) if self.dir.is_dir() and result_files(self.dir) else []

    def write_summary(self, summary: dict[str, Any]) -> Path:
        return write_json(self.dir / SUMMARY, summary)

    def close(self) -> None:
        if self._fh is not None:
            if self._fh.closed:
                return
            self._fh.close()
        elif not self.jsonl.is_file():  # nothing measured and nothing there before: write nothing
            return
        else:
            repair_torn_tail(self.jsonl)
        write_csv(self.csv, read_jsonl(self.jsonl))

    def __enter__(self) -> "ResultsWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def repair_torn_tail(path: str | os.PathLike) -> bool:
    """End a JSONL file on a whole line: a run killed mid-append can leave its last line cut short
    (no newline). That line is cut off, or ended with a newline if it is a whole row. The file's own
    writer calls this before appending (one writer per file: shards have their own). True if it
    changed the file."""
    try:
        f = open(path, "rb+")
    except FileNotFoundError:
        return False
    with f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return False
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return False
        cut, pos = 0, size
        while pos > 0:  # the start of the last line
            step = min(1 << 16, pos)
            pos -= step
            f.seek(pos)
            i = f.read(step).rfind(b"\n")
            if i >= 0:
                cut = pos + i + 1
                break
        f.seek(cut)
        try:
            whole = isinstance(json.loads(f.read()), dict)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError
            whole = False
        if whole:
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
        else:
            f.truncate(cut)
        f.flush()
        os.fsync(f.fileno())
    return True


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


def read_dir(directory: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of every result file of a directory (all shards); JSONL files, else the CSV copies."""
    files = result_files(directory, "jsonl")
    if files:
        return [r for f in files for r in read_jsonl(f)]
    files = result_files(directory, "csv")
    if files:
        return [r for f in files for r in read_csv(f)]
    raise FileNotFoundError(f"no {JSONL}, {CSV} or results.shard-*-of-*.jsonl in {directory}")


def read_results(path_or_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows from a results directory (every result file in it, all shards) or one file."""
    p = Path(path_or_dir)
    if p.is_dir():
        return read_dir(p)
    if not p.is_file():
        raise FileNotFoundError(f"results not found: {p}")
    return read_csv(p) if p.suffix == ".csv" else read_jsonl(p)


def read_many(paths: Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for p in paths:
        rows.extend(read_results(p))
    return rows
