"""rws.utils.io beyond the file mode (tests/test_io.py): a failed write leaves the target as it was,
JSON of tensors and paths, loaders that name the file, the fault-injection hook the crash-safety tests
drive (tests/test_crash_safety.py), and the umask read where /proc is missing."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rws.errors import UserError
from rws.utils import io


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "results.json"
    io.write_json(target, {"v": 1})
    with pytest.raises(RuntimeError, match="crash mid-write"):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half a fi")
            assert tmp.parent == tmp_path and tmp.name.startswith(".results.json.")
            raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_json_text_of_tensors_numpy_and_paths(tmp_path: Path) -> None:
    text = io.json_text({"t": torch.tensor([1.5, 2.0]), "s": torch.tensor(3), "np": np.float32(0.25),
                         "p": Path("/a/b"), "n": [1, None]})
    assert json.loads(text) == {"t": [1.5, 2.0], "s": 3, "np": 0.25, "p": "/a/b", "n": [1, None]}
    assert text.endswith("}\n")
    with pytest.raises(TypeError, match="not JSON serializable: object"):
        io.json_text({"x": object()})
    # write_json writes exactly that text
    assert io.write_json(tmp_path / "d" / "x.json", {"p": Path("q")}).read_text() == io.json_text({"p": "q"})


def test_torch_and_safetensors_round_trip_and_name_the_missing_file(tmp_path: Path) -> None:
    obj = {"w": torch.arange(4.0), "step": 3}
    path = io.torch_save(obj, tmp_path / "ck" / "a.pt")
    back = io.torch_load(path)
    assert back["step"] == 3 and torch.equal(back["w"], obj["w"])
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*nope.pt"):
        io.torch_load(tmp_path / "nope.pt")

    t = torch.arange(6.0).reshape(2, 3).t()  # non-contiguous: stored contiguous
    io.save_safetensors({"t": t, "u": torch.ones(2, dtype=torch.int8)}, tmp_path / "s.safetensors", {"k": "v"})
    tensors, meta = io.load_safetensors(tmp_path / "s.safetensors")
    assert meta == {"k": "v"} and torch.equal(tensors["t"], t) and tensors["u"].dtype == torch.int8
    with pytest.raises(FileNotFoundError, match="safetensors file not found"):
        io.load_safetensors(tmp_path / "missing.safetensors")


def test_unreadable_safetensors_is_a_user_error_naming_the_file(tmp_path: Path) -> None:
    good = io.save_safetensors({"t": torch.ones(100)}, tmp_path / "good.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-50])  # cut short
    text = tmp_path / "text.safetensors"
    text.write_text("not a safetensors file at all")
    for bad in (cut, text):
        with pytest.raises(UserError) as e:
            io.load_safetensors(bad)
        assert e.value.where == str(bad) and e.value.what.startswith("not a readable safetensors file")


def test_a_bug_inside_the_loader_is_not_turned_into_a_user_error(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors

    path = io.save_safetensors({"t": torch.ones(2)}, tmp_path / "a.safetensors")

    def broken(*_a, **_k):
        raise KeyError("an internal bug")

    monkeypatch.setattr(safetensors, "safe_open", broken)
    with pytest.raises(KeyError, match="an internal bug"):
        io.load_safetensors(path)


def test_sha256_file_reads_in_chunks(tmp_path: Path) -> None:
    data = os.urandom(3000)
    (tmp_path / "b").write_bytes(data)
    assert io.sha256_file(tmp_path / "b", chunk=1024) == hashlib.sha256(data).hexdigest()


def test_umask_without_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    old = os.umask(0o027)
    try:
        assert io._umask() == 0o027  # from /proc/self/status
        real_read = Path.read_text

        def no_proc(self: Path, *a, **k):
            if str(self).startswith("/proc"):
                raise OSError("no /proc here")
            return real_read(self, *a, **k)

        monkeypatch.setattr(Path, "read_text", no_proc)
        assert io._umask() == 0o027  # set and put straight back
        assert os.umask(0o027) == 0o027
    finally:
        os.umask(old)


def test_fault_point_is_a_no_op_unless_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RWS_FAULT_KILL_AT", raising=False)
    io.fault_point("cell")  # unset: nothing happens
    monkeypatch.setenv("RWS_FAULT_KILL_AT", "replace/other.json")
    io.fault_point("cell")
    io.fault_point("replace/results.json")  # another label: nothing happens
    monkeypatch.setenv("RWS_FAULT_KILL_AT", "cell:3")
    monkeypatch.setattr(io, "_fault_hits", {})
    io.fault_point("cell")
    io.fault_point("cell")  # the 1st and 2nd time: still alive, counted
    assert io._fault_hits == {"cell": 2}


def test_fault_point_kills_the_process_the_nth_time(tmp_path: Path) -> None:
    marker = tmp_path / "before_kill"
    code = (f"import pathlib\nfrom rws.utils.io import fault_point\n"
            f"for i in range(5):\n"
            f"    print(i, flush=True)\n"
            f"    fault_point('append-torn', before_kill=lambda: pathlib.Path({str(marker)!r}).write_text(str(i)))\n")
    env = {**os.environ, "RWS_FAULT_KILL_AT": "append-torn:2", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr  # SIGKILL, at the second pass
    assert proc.stdout.split() == ["0", "1"] and marker.read_text() == "1"
    env["RWS_FAULT_KILL_AT"] = "append-torn"  # no count: the first time
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9 and proc.stdout.split() == ["0"] and marker.read_text() == "0"
