import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# One thread: on a loaded 2-core box, two threads per process made small ops up to 100x slower.
torch.set_num_threads(1)

# No machine state leaks in (issue 12). Set here, at conftest import, before any test module reads
# them; the subprocesses the tests start inherit os.environ.
# - The decode cache (RWS_CACHE, the default of paths.cache_dir) is a fresh directory per session, never
#   the user's ~/.cache/rws: a warm cache takes another code path than a cold machine, and tests must
#   not write into the user's cache. The shared datasets (RWS_DATA, shared_data_dir) are read as before.
# - wandb never reaches a server, whatever the shell exports (WANDB_MODE=online included), and keeps
#   its own cache/config/staging files out of the home directory.
SESSION_DIR = Path(tempfile.mkdtemp(prefix="rws-tests-"))
os.environ["RWS_CACHE"] = str(SESSION_DIR / "cache")
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")
for _var, _sub in (("WANDB_CACHE_DIR", "wandb-cache"), ("WANDB_CONFIG_DIR", "wandb-config"),
                   ("WANDB_DATA_DIR", "wandb-data")):
    os.environ[_var] = str(SESSION_DIR / _sub)


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The unpacked shared datasets (../shared/data/unpack.sh), unpacked once if needed."""
    import subprocess

    env_dir = os.environ.get("RWS_DATA")
    if env_dir and (Path(env_dir) / "cifar10-jpeg").is_dir():
        return Path(env_dir)
    script = SHARED_DATA / "unpack.sh"
    if not script.exists():
        reason = (f"shared datasets not found: {script} is missing and RWS_DATA is unset (a clone without "
                  f"../shared/data beside it); these integration tests need CIFAR-10/Tiny-ImageNet")
        # CI has the data: there a missing dataset is a failure, never a silent skip (.ci/run sets this).
        if os.environ.get("RWS_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(reason + " (RWS_REQUIRE_SHARED_DATA=1)")
        pytest.skip(reason)
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=True).stdout.strip()
    return Path(out.splitlines()[-1])
