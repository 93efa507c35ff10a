"""``python -m rws.stages.patch ... bn_mix=convex``: the key composes and its value reaches the patch spec
(through the stage's main on the composed config)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rws.config import compose


def _perturbed(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: (v + 0.01 * torch.randn(v.shape, generator=g)).abs() if k.endswith("running_var")
            else (v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone())
            for k, v in state.items()}


def _tiny_exports(tmp_path: Path) -> dict[str, str]:
    """θ_init, θ_std and a fog model of a tiny small_cnn (std and fog: θ_init perturbed), as exports."""
    from rws.models import create_model
    from rws.weights.export import save_export

    cfg_model = {"name": "small_cnn", "num_classes": 3, "width": 0.125}
    torch.manual_seed(0)
    model = create_model(**cfg_model).eval()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    paths = {}
    for i, name in enumerate(["init", "std", "fog"]):
        model.load_state_dict(init if i == 0 else _perturbed(init, i))
        paths[name] = str(save_export(tmp_path / name, model, cfg_model))
    return paths


@pytest.mark.parametrize("mix", ["convex", "affine"])
def test_bn_mix_from_the_patch_cli_reaches_the_spec(tmp_path: Path, mix: str) -> None:
    from rws.stages import patch as stage
    from rws.stages.extract import extract_all
    from rws.weights.export import load_export
    from rws.weights.patching import Patcher
    from rws.weights.signature_io import load_signature

    paths = _tiny_exports(tmp_path)
    extract_all(paths["init"], paths["std"], {"fog": paths["fog"]}, tmp_path / "sigs", layers={"k": 2},
                bits=32, bn_policy="robust", analysis=False)
    sig = tmp_path / "sigs" / "fog.safetensors"
    cfg = compose("patch", [f"base={paths['std']}", f"out={tmp_path / 'patched'}",
                            f"signatures=[{{path: {sig}, alpha: 2.0}}]", f"bn_mix={mix}"])
    assert cfg.bn_mix == mix
    stage.main(cfg)  # the stage's task on the composed config, as `python -m rws.stages.patch` runs it
    out = load_export(tmp_path / "patched")
    record = out.metrics["config"]["patch"]
    assert record["bn_mix"] == mix and record["spec"]["bn_mix"] == mix
    # Σα = 2 > 1: convex (robust statistics) and affine (2·robust − std) give different statistics.
    live = load_export(paths["std"]).build()
    with Patcher(live, [(load_signature(sig), 2.0)], bn_mix=mix):
        want = {k: v.clone() for k, v in live.state_dict().items()}
    stat = next(k for k in load_signature(sig).stats if k.endswith("running_mean"))
    assert torch.equal(out.state_dict[stat], want[stat])


def test_extract_and_patch_run_as_modules(tmp_path: Path) -> None:
    """``python -m rws.stages.extract`` and ``python -m rws.stages.patch`` (the Hydra entry points, as
    subprocesses) on tiny exports: the signature file is extract_all's in-process one, tensor for tensor,
    with the same analysis, and the patched export is the base patched in-process by Patcher."""
    import json
    import subprocess
    import sys

    from rws.stages.extract import extract_all
    from rws.weights.export import load_export
    from rws.weights.patching import Patcher
    from rws.weights.signature_io import load_signature

    root = Path(__file__).resolve().parents[1]
    paths = _tiny_exports(tmp_path)

    def run(*argv: str) -> None:
        p = subprocess.run([sys.executable, "-m", *argv, f"paths.output_dir={tmp_path / 'hydra'}"], cwd=root,
                           capture_output=True, text=True, timeout=240)
        assert p.returncode == 0, p.stderr[-3000:]

    run("rws.stages.extract", f"init={paths['init']}", f"std={paths['std']}", f"robust={{fog: {paths['fog']}}}",
        f"out={tmp_path / 'sigs'}", "layers.k=2", "bits=32")
    extract_all(paths["init"], paths["std"], {"fog": paths["fog"]}, tmp_path / "ref", layers={"k": 2}, bits=32,
                bn_policy="robust")
    sig, ref = (load_signature(tmp_path / d / "fog.safetensors") for d in ("sigs", "ref"))
    assert sig.layers == ref.layers and len(sig.layers) == 2 and sig.bits == 32 and sig.corruption == "fog"
    assert list(sig.rws) == list(ref.rws) and all(torch.equal(sig.rws[k], ref.rws[k]) for k in ref.rws)
    assert list(sig.stats) == list(ref.stats) and all(torch.equal(sig.stats[k], ref.stats[k]) for k in ref.stats)
    analysis = json.loads((tmp_path / "sigs" / "analysis.json").read_text())
    assert analysis["relative_norm"] == json.loads((tmp_path / "ref" / "analysis.json").read_text())["relative_norm"]

    run("rws.stages.patch", f"base={paths['std']}", f"out={tmp_path / 'patched'}",
        f"signatures=[{{path: {tmp_path / 'sigs' / 'fog.safetensors'}, alpha: 0.5}}]")
    live = load_export(paths["std"]).build()
    with Patcher(live, [(ref, 0.5)]):
        want = {k: v.clone() for k, v in live.state_dict().items()}
    got = load_export(tmp_path / "patched").state_dict
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert any(not torch.equal(want[k], v) for k, v in load_export(paths["std"]).state_dict.items())
