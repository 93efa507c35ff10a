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
        raise FileNotFoundError(f"{script} is missing: the integration tests need ../shared/data beside the repo")
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=True).stdout.strip()
    return Path(out.splitlines()[-1])
