import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# One thread: on a loaded 2-core box, two threads per process made small ops up to 100x slower.
torch.set_num_threads(1)
# wandb must never try to reach a server from the test suite.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


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
