"""The test suite itself (issue 12).

- The session does not depend on the machine's state (tests/conftest.py): the decode cache is a fresh
  directory per session (never the user's ~/.cache/rws, nor an exported RWS_CACHE) for this process
  and the subprocesses it starts, and wandb is offline even when the shell exports WANDB_MODE=online.
- A broken import fails, never skips: ``pytest.importorskip`` only for optional third-party packages,
  with the package named in the reason.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOME_CACHE = Path("~/.cache/rws").expanduser()


def test_session_cache_and_wandb_mode() -> None:
    from rws.config import compose
    from rws.data.cache import default_cache_dir

    cache = Path(os.environ["RWS_CACHE"])
    assert cache != HOME_CACHE and HOME_CACHE not in cache.parents
    assert Path(tempfile.gettempdir()) in cache.parents
    assert default_cache_dir() == cache
    assert Path(compose("train", []).paths.cache_dir) == cache
    assert os.environ["WANDB_MODE"] == "offline"
    # A subprocess (the CLI tests start many) sees the same settings.
    code = "import os; print(os.environ['RWS_CACHE'], os.environ['WANDB_MODE'])"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert child == [str(cache), "offline"]
    if os.environ.get("RWS_TEST_ENV_REPORT"):
        Path(os.environ["RWS_TEST_ENV_REPORT"]).write_text(str(cache))


def test_exported_machine_state_does_not_leak(tmp_path: Path) -> None:
    """A session started from a shell that exports WANDB_MODE=online and RWS_CACHE=<a warm cache>
    still gets offline wandb and an empty cache of its own, removed when the session ends."""
    warm = tmp_path / "warm-cache"
    (warm / "decoded").mkdir(parents=True)
    report = tmp_path / "cache-used.txt"
    env = {**os.environ, "WANDB_MODE": "online", "RWS_CACHE": str(warm), "RWS_TEST_ENV_REPORT": str(report),
           "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        f"{Path(__file__).relative_to(ROOT)}::test_session_cache_and_wandb_mode"],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    used = Path(report.read_text())
    assert used != warm and not used.exists()  # its own cache, gone with the session


# Third-party packages that are not dependencies of rws (pyproject.toml): their tests may skip.
OPTIONAL_PACKAGES = {"robustbench"}


def test_importorskip_only_for_optional_packages() -> None:
    bad = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "importorskip"):
                continue
            where = f"{path.name}:{node.lineno}"
            module = node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) else None
            reason = next((k.value.value for k in node.keywords
                           if k.arg == "reason" and isinstance(k.value, ast.Constant)), "")
            package = str(module).split(".")[0]
            if package not in OPTIONAL_PACKAGES:
                bad.append(f"{where}: importorskip({module!r}) (import it directly: a project module or a dependency)")
            elif package not in reason:
                bad.append(f"{where}: importorskip({module!r}) without the package in its reason")
    assert not bad, "\n".join(bad)
