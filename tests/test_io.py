"""rws.utils.io: atomic writes keep the user's usual file mode."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from rws.utils.io import write_json, write_text


def test_atomic_writes_get_the_umask_mode_not_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        a = write_text(tmp_path / "a.md", "x")
        os.umask(0o027)
        b = write_json(tmp_path / "sub" / "b.json", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(a.stat().st_mode) == 0o644
    assert stat.S_IMODE(b.stat().st_mode) == 0o640
    assert not list(tmp_path.rglob("*.tmp"))
