"""Data parallel training on the CPU: 2 processes, gloo backend (trainer=ddp, per-rank random streams)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    # One intra-op thread per process: 2 processes share the CPUs.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_ddp_trains_on_cpu_exports_once_and_tests_each_image_once(tmp_path: Path) -> None:
    """``trainer=ddp trainer.devices=2`` on the CPU (it failed with "SyncBatchNorm layers only work
    with GPU modules"): one epoch on the embedded digits in 2 gloo processes writes one valid export,
    and its test accuracy is that of the exported model on the whole test split, each image counted
    once. The split has an odd size (111), so Lightning's padding DistributedSampler would count one
    image twice and shift the accuracy."""
    from rws.config import compose
    from rws.weights.export import load_export
    from hydra.utils import instantiate

    run = tmp_path / "run"
    data = ["data.subset_per_class=20", "data.test_subset=111", "data.eval_batch_size=16"]
    cmd = [sys.executable, "train.py", "trainer=ddp", "trainer.devices=2", "trainer.max_epochs=1",
           "trainer.enable_progress_bar=false", *data, f"paths.output_dir={tmp_path}", f"hydra.run.dir={run}"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400, env=_env())
    assert p.returncode == 0, p.stderr[-3000:]

    logs = "".join(f.read_text() for f in run.glob("*.log"))
    assert logs.count("2 processes, gloo backend") == 2, logs[-2000:]  # both ranks ran, on gloo
    assert logs.count("export written to") == 1, logs[-2000:]
    assert [str(f.relative_to(tmp_path)) for f in tmp_path.rglob("model.safetensors")] == ["run/export/model.safetensors"]
    exp = load_export(run / "export")
    metrics = json.loads((run / "metrics.json").read_text())
    assert exp.metrics["metrics"]["test/acc"] == metrics["test/acc"]
    assert metrics["epochs"] == 1

    # An independent evaluation of the export on the same test split, in this process.
    model = exp.build().eval()
    dm = instantiate(compose("train", data).data)
    dm.setup("test")
    correct = n = 0
    with torch.no_grad():
        for x, y in dm.test_dataloader():
            correct += int((model(x).argmax(1) == y).sum())
            n += len(y)
    assert n == 111
    assert 0 < correct < n  # between the extremes, where one repeated image would show
    assert metrics["test/acc"] == pytest.approx(correct / n, abs=1e-6), (metrics["test/acc"], correct, n)


SCRIPT = textwrap.dedent('''
    """Fit a method for a few steps in 2 CPU processes (Lightning re-runs this script per rank) and
    write each rank's random draws to <out>/rank<r>.json."""
    import json, sys
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    kind, out = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    MODEL = {"_target_": "rws.models.create_model", "name": "small_cnn", "num_classes": 4, "width": 0.25}
    COMMON = dict(model=MODEL, optim={"name": "sgd", "lr": 0.01, "momentum": 0.0, "weight_decay": 0.0,
                                      "nesterov": False}, sched={"name": "none", "warmup_epochs": 0}, seed=0)
    CORRUPTIONS = ["gaussian_noise", "shot_noise", "impulse_noise", "brightness", "contrast", "saturate"]

    if kind == "corruption":
        from rws.methods.corruption import CorruptionModule

        class Recording(CorruptionModule):
            def corrupt_batch(self, x):
                g = torch.Generator()
                g.set_state(self._gen.get_state())  # the corruption choice the batch is about to draw
                self.draws.append(torch.randint(len(self.corruption_names), (len(x),), generator=g).tolist())
                return super().corrupt_batch(x)

        module = Recording(corruptions=CORRUPTIONS, severity=[1, 5], **COMMON)
    else:
        from rws.methods.adversarial import AdversarialModule

        class Recording(AdversarialModule):
            def _pick_threat(self):
                j = super()._pick_threat()
                self.draws.append(j)
                return j

        threats = [{"norm": "linf", "eps": 8 / 255}, {"norm": "l2", "eps": 0.5}, {"norm": "l1", "eps": 4.0}]
        module = Recording(mode="eat", threats=threats, attack_steps=1, **COMMON)
    module.draws = []

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(96, 3, 32, 32, generator=g), torch.randint(0, 4, (96,), generator=g)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=6, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=out)
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=8))
    with open(f"{out}/rank{trainer.global_rank}.json", "w") as f:
        json.dump({"draws": module.draws, "seed": module._gen.initial_seed(),
                   "eat_seen": getattr(module, "eat_seen", torch.zeros(0)).tolist(),
                   "backend": torch.distributed.get_backend(), "world": trainer.world_size}, f)
''')


def test_ddp_ranks_draw_their_own_corruptions_and_norms(tmp_path: Path) -> None:
    """Under DDP every rank built its method with the same seed, so every rank drew the same
    corruption per example and the same norm per batch (here E-AT's). Now each rank's private
    generators are reseeded from (seed, rank) when fitting starts; rank 0 keeps the single-process
    stream. E-AT's cumulative counts are summed over the ranks, so both ranks hold the same counts."""
    script = tmp_path / "fit_two_ranks.py"
    script.write_text(SCRIPT)
    procs = {}
    for kind in ("corruption", "adversarial"):
        out = tmp_path / kind
        out.mkdir()
        procs[kind] = subprocess.Popen([sys.executable, str(script), kind, str(out)], cwd=tmp_path, env=_env(),
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for kind, proc in procs.items():
        _, err = proc.communicate(timeout=400)
        assert proc.returncode == 0, (kind, err[-3000:])

    ranks = {kind: [json.loads((tmp_path / kind / f"rank{r}.json").read_text()) for r in (0, 1)] for kind in procs}
    for kind, (r0, r1) in ranks.items():
        assert r0["world"] == r1["world"] == 2 and r0["backend"] == "gloo"
        assert len(r0["draws"]) == len(r1["draws"]) == 6
        assert r0["draws"] != r1["draws"], (kind, r0["draws"])
    from rws.methods.base import rank_seed

    for r0, r1 in ranks.values():
        assert r0["seed"] == 0 and r1["seed"] == rank_seed(0, 1) != 0
    r0, r1 = ranks["adversarial"]
    assert r0["eat_seen"] == r1["eat_seen"] and sum(r0["eat_seen"]) == 2 * 6 * 8, (r0["eat_seen"], r1["eat_seen"])
    # Already the first batch's corruptions differ (before, the ranks' streams parted only later, as
    # some corruptions, e.g. shot noise's Poisson draws, consume a data-dependent share of the stream).
    assert ranks["corruption"][0]["draws"][0] != ranks["corruption"][1]["draws"][0]
    # Rank 0's first draws are the single-process stream of seed 0.
    assert ranks["corruption"][0]["draws"][0] == torch.randint(6, (8,), generator=torch.Generator().manual_seed(0)).tolist()
    assert ranks["adversarial"][0]["draws"][0] == int(torch.multinomial(torch.full((3,), 1 / 3), 1,
                                                                        generator=torch.Generator().manual_seed(0)))


def test_rank_reseeding_covers_every_private_generator() -> None:
    """Every method keeps its randomness in ``torch.Generator`` attributes; the base class reseeds
    all of them per rank (the attack objects share the method's generator, so they follow), rank 0
    untouched, and a second fit derives the same stream again."""
    from rws.methods.base import rank_seed
    from rws.methods.corruption import CorruptionModule
    from rws.methods.cotrain import CoTrainModule

    model = {"_target_": "rws.models.create_model", "name": "small_cnn", "num_classes": 4, "width": 0.25}
    adapter = {**model, "adapter": "dual_bn"}
    mods = [CorruptionModule(model=model, corruptions=["contrast"], seed=3),
            CoTrainModule(model=adapter, seed=3)]
    for m in mods:
        gens = [v for v in vars(m).values() if isinstance(v, torch.Generator)]
        assert gens, type(m).__name__
        state = [g.get_state() for g in gens]
        m.seed_generators_for_rank(0)
        assert all(torch.equal(g.get_state(), s) for g, s in zip(gens, state))
        m.seed_generators_for_rank(2)
        assert all(g.initial_seed() == rank_seed(3, 2) for g in gens)
        m.seed_generators_for_rank(2)
        assert all(g.initial_seed() == rank_seed(3, 2) for g in gens)
    assert len({rank_seed(3, r) for r in range(64)}) == 64 and rank_seed(3, 0) == 3
