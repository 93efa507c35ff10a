"""Run one pipeline step as a subprocess of the project's own CLIs, skipping finished steps."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_step(title: str, argv: list[str], done_marker: Path | None = None, env: dict | None = None) -> float:
    """Run ``python argv...`` from the project root; skip when ``done_marker`` exists (resume)."""
    if done_marker is not None and Path(done_marker).exists():
        print(f"[skip] {title}: {done_marker} exists", flush=True)
        return 0.0
    cmd = [sys.executable, *argv]
    print(f"[run ] {title}\n       {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise SystemExit(f"step failed ({title}), exit code {proc.returncode}: {' '.join(cmd)}")
    dt = time.time() - t0
    print(f"[done] {title} in {dt:.1f}s", flush=True)
    return dt
