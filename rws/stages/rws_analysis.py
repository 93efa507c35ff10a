"""The RWS analyses that need models, data or signature tensors, written to result files that
rws.report.rws_figures plots (the report itself reads result files only).

    python -m rws.stages.rws_analysis feature-maps --export STD_EXPORT --signature SIG.safetensors \
        --corruption fog --out fig9_feature_maps.safetensors --data data=cifar10_jpeg data.test_subset=100
    python -m rws.stages.rws_analysis cross-cosines --a SIGS_DIR_A --b SIGS_DIR_B --out fig5_cross_dataset.json

feature-maps (Fig. 9): the first conv block's activations of the standard model on one clean test
image and on its corrupted version, and of the patched model on the corrupted image. Tensors
``image``, ``corrupted``, ``act_clean``, ``act_std``, ``act_patched`` (C×H×W) and ``channels`` (the
``n_channels`` channels with the largest clean-activation variance); metadata: corruption,
severity, seed, export, signature, and the cosines of the std / patched activations to the clean ones.

cross-cosines (Fig. 5): per layer (and ``__all__``), the cosine between every signature of set A and
every signature of set B over the weight keys both carry, as JSON ``{layer: {a: {b: cosine}}}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Mapping, Sequence

import torch

from rws.utils.io import save_safetensors, write_text

FEATURE_MAP_KEYS = ("image", "corrupted", "act_clean", "act_std", "act_patched", "channels")


def first_block_activations(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Output of the first conv block (conv → BN → ReLU): the first ReLU's output."""
    relu = next(m for m in model.modules() if isinstance(m, torch.nn.ReLU))
    acts: list[torch.Tensor] = []
    h = relu.register_forward_hook(lambda _m, _i, o: acts.append(o.detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        h.remove()
    return acts[0]


def feature_maps(std_export: str | Path, signature: str | Path, image: torch.Tensor, corruption: str,
                 severity: int = 5, table: str = "cifar", n_channels: int = 8, seed: int = 0
                 ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of Fig. 9: std on the clean and the corrupted image, the patched model on
    the corrupted image (the patch is taken off again afterwards)."""
    from rws.corruptions import corrupt
    from rws.weights.export import load_export
    from rws.weights.patching import Patcher

    model = load_export(std_export).build().eval()
    x = image[None] if image.dim() == 3 else image[:1]
    xc = corrupt(x, corruption, severity, table=table, generator=torch.Generator().manual_seed(seed))
    a_clean = first_block_activations(model, x)[0]
    a_std = first_block_activations(model, xc)[0]
    with Patcher(model, [(signature, 1.0)]):
        a_patch = first_block_activations(model, xc)[0]
    channels = torch.argsort(a_clean.flatten(1).var(1), descending=True)[:n_channels]
    sims = [float(torch.nn.functional.cosine_similarity(a.flatten(), a_clean.flatten(), dim=0))
            for a in (a_std, a_patch)]
    tensors = {"image": x[0], "corrupted": xc[0], "act_clean": a_clean, "act_std": a_std, "act_patched": a_patch,
               "channels": channels}
    meta = {"corruption": corruption, "severity": str(severity), "seed": str(seed), "export": str(std_export),
            "signature": str(signature), "cosine_std": repr(sims[0]), "cosine_patched": repr(sims[1])}
    return {k: v.contiguous() for k, v in tensors.items()}, meta


def test_image(data_overrides: Sequence[str], index: int = 0) -> tuple[torch.Tensor, str]:
    """One test image (and the corruption table) of the data config the pipeline evaluated on."""
    from hydra.utils import instantiate

    from rws.config import compose

    dm = instantiate(compose("evaluate", list(data_overrides)).data)
    dm.setup()
    x, _ = next(iter(dm.test_dataloader()))
    return x[index], dm.corruption_table


def _weight_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    from rws.weights.signature_io import load_signature

    sig = load_signature(path)
    return {k: v.double().flatten() for k, v in sig.rws.items()}


def _key_layers(sig_path: str | Path) -> dict[str, str]:
    """state-dict key -> layer name (rws.models.layer_groups) of the signature's architecture."""
    from rws.models import layer_groups
    from rws.weights.export import build_model
    from rws.weights.signature_io import load_signature

    try:
        with torch.device("meta"):
            model = build_model(load_signature(sig_path).model_cfg)
    except Exception:  # no usable model config: fall back to module names
        return {}
    return {k: name for name, keys in layer_groups(model) for k in keys}


def cross_dataset_cosines(sigs_a: Mapping[str, str | Path], sigs_b: Mapping[str, str | Path]
                          ) -> dict[str, dict[str, dict[str, float]]]:
    """Per layer (and '__all__'), cosine between every signature of dataset A and of dataset B, over
    the weight keys both carry (heads differ across datasets and are never in a shallow signature)."""
    a = {c: _weight_tensors(p) for c, p in sigs_a.items()}
    b = {c: _weight_tensors(p) for c, p in sigs_b.items()}
    keys = sorted(set.intersection(*[set(t) for t in [*a.values(), *b.values()]]))
    owner = _key_layers(next(iter(sigs_a.values())))
    rank = {k: i for i, k in enumerate(owner)}  # forward order of the network, not string order
    keys.sort(key=lambda k: (rank.get(k, len(rank)), k))
    layers: dict[str, list[str]] = {}
    for k in keys:
        layers.setdefault(owner.get(k, k.rsplit(".", 1)[0]), []).append(k)
    layers["__all__"] = keys
    out: dict[str, dict[str, dict[str, float]]] = {}
    for layer, ks in layers.items():
        out[layer] = {}
        for ca, ta in a.items():
            va = torch.cat([ta[k] for k in ks])
            out[layer][ca] = {}
            for cb, tb in b.items():
                vb = torch.cat([tb[k] for k in ks])
                den = float(va.norm() * vb.norm())
                out[layer][ca][cb] = float(va @ vb) / den if den > 0 else float("nan")
    return out


def signatures_in(directory: str | Path) -> dict[str, Path]:
    """``{corruption: file}`` of the signature files in a directory (file stem = corruption)."""
    d = Path(directory)
    sigs = {p.stem: p for p in sorted(d.glob("*.safetensors"))}
    if not sigs:
        raise FileNotFoundError(f"no signature files (*.safetensors) in {d}")
    return sigs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    fm = sub.add_parser("feature-maps", help="Fig. 9: first conv block activations, std vs patched")
    fm.add_argument("--export", required=True, help="export directory of the standard model")
    fm.add_argument("--signature", required=True, help="signature file to patch it with")
    fm.add_argument("--corruption", required=True)
    fm.add_argument("--severity", type=int, default=5)
    fm.add_argument("--seed", type=int, default=0, help="seed of the corruption")
    fm.add_argument("--channels", type=int, default=8, help="how many channels to keep for the figure")
    fm.add_argument("--index", type=int, default=0, help="which image of the first test batch")
    fm.add_argument("--data", nargs="+", default=[], help="Hydra overrides of the data config (data=... data.x=...)")
    fm.add_argument("--out", required=True, help="the .safetensors file to write")
    cc = sub.add_parser("cross-cosines", help="Fig. 5: cosines between two datasets' signatures")
    cc.add_argument("--a", required=True, help="directory of signature set A (<corruption>.safetensors)")
    cc.add_argument("--b", required=True, help="directory of signature set B")
    cc.add_argument("--out", required=True, help="the .json file to write")
    return p


def main(argv: list[str] | None = None) -> None:
    a = build_parser().parse_args(argv)
    out = Path(a.out)
    if a.command == "feature-maps":
        image, table = test_image(a.data, a.index)
        tensors, meta = feature_maps(a.export, a.signature, image, a.corruption, a.severity, table, a.channels, a.seed)
        save_safetensors(tensors, out, metadata={**meta, "data": " ".join(a.data)})
    else:
        cos = cross_dataset_cosines(signatures_in(a.a), signatures_in(a.b))
        write_text(out, json.dumps(cos, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
