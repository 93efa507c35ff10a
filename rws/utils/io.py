"""Atomic file writes and safe loading.

Every file this project writes goes through a temp file in the same directory followed by
``os.replace``, so a crash never leaves a half-written checkpoint, signature or results file.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (setting it to read it would
    briefly change the mode of files other threads create)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: set it to read it, and put it straight back
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 whatever the umask; the result gets the mode of any file the user
        # writes (0666 minus the umask), so exports and results are readable by the group as usual.
        os.chmod(tmp_path, 0o666 & ~_umask())
        fault_point(f"replace/{path.name}")
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


# Fault injection, for the crash-safety tests only (tests/test_crash_safety.py): they SIGKILL train.py,
# evaluate.py and sweep.py at exact points (polling the files from outside and killing is racy) and check
# that a kill never leaves a torn file and that a rerun finishes without redoing finished work. A no-op
# unless RWS_FAULT_KILL_AT=<label>[:<n>] is set: the process kills itself the n-th time (default 1) it
# reaches the point <label>. Labels (docs/CONTRACTS.md, "Crash safety"): replace/<file name> (atomic_path,
# temp file written, before the rename), append-torn (ResultsWriter.write, half of the rows' bytes on
# disk), cell (Engine, a measured cell's rows on disk).
_fault_hits: dict[str, int] = {}


def fault_point(label: str, before_kill: Callable[[], Any] | None = None) -> None:
    """Kill this process (SIGKILL) here if RWS_FAULT_KILL_AT names ``label`` (see above);
    ``before_kill`` runs first (e.g. writes the torn half of a row)."""
    want = os.environ.get("RWS_FAULT_KILL_AT")
    if not want:
        return
    name, _, n = want.rpartition(":")
    if not (name and n.isdigit()):
        name, n = want, "1"
    if name != label:
        return
    _fault_hits[label] = _fault_hits.get(label, 0) + 1
    if _fault_hits[label] == int(n):
        if before_kill is not None:
            before_kill()
        os.kill(os.getpid(), signal.SIGKILL)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json_text(obj))


def json_text(obj: Any) -> str:
    """The text ``write_json`` writes: indented JSON, tensors and paths as plain values."""
    return json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def torch_save(obj: Any, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def torch_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a torch file without unpickling code (weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location=map_location, weights_only=True)


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                     metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def load_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Return (tensors, metadata) from a safetensors file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"safetensors file not found: {path}")
    tensors: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            for k in f.keys():
                tensors[k] = f.get_tensor(k)
    except Exception as e:  # truncated, a pickle, a text file, ...: the library's message names no file
        if type(e).__name__ != "SafetensorError" and not isinstance(e, (OSError, ValueError)):
            raise
        from rws.errors import UserError

        raise UserError(f"not a readable safetensors file ({e})", path,
                        "expected a complete safetensors file written by rws (re-create it if it was cut short)") from e
    return tensors, meta


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
