"""Spec generators: what a sweep sweeps over. A generator lists specs in sweep order and says how to
get each one's model; the engine measures them and the selection step ranks them.

- ``SoupGrid``: soups of ``members`` on a weight grid (``rws.weights.grid``). One model is built and
  each soup is written into it in place (``InPlaceSoup``), never rebuilt.
- ``SpecList``: any list of model specs, each built with the spec builder.

An α grid of RWS patches or a β grid of adapter mixes is one more generator of this shape: its specs
(``{kind: patch, ..., signatures: [{path, alpha}]}`` per α), ``extras`` (``{"alphas": [...]}``) and
a ``model`` that applies α in place when that is cheaper than a rebuild.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

import rws.specs as specs_mod


class SpecGenerator(ABC):
    """``noun`` names a spec in tables ("soup"); ``names`` the axes of ``coordinates``."""

    noun = "spec"

    @abstractmethod
    def specs(self) -> list[dict[str, Any]]:
        """The specs, in sweep order."""

    @abstractmethod
    def model(self, index: int, device: torch.device) -> nn.Module:
        """The model of spec ``index`` (may reuse one module: it is used before the next call)."""

    def check(self, device: torch.device) -> None:
        """Read what the specs need, so a bad input (a missing or foreign export, members of different
        architectures) fails before the sweep writes anything. A generator that builds one model for
        every spec builds it here and keeps it."""

    def labels(self) -> list[str]:
        """Short names for the ``model`` column."""
        return [specs_mod.spec_name(s) for s in self.specs()]

    def extras(self) -> list[dict[str, Any]]:
        """Extra columns of each spec's rows and selection entries."""
        return [{} for _ in self.specs()]

    def references(self) -> list[tuple[str, int]]:
        """(name, index) of specs to list on their own in best.md."""
        return []

    def coordinates(self) -> tuple[torch.Tensor, list[str]] | None:
        """(S, d) swept coordinates and the axis names, for figures; None when there are none."""
        return None

    def describe(self) -> dict[str, Any]:
        """What sweep.json records about the generator."""
        return {"kind": type(self).__name__}


class SoupGrid(SpecGenerator):
    """Soups ``sum_i w_i * member_i`` for every weight vector of a grid config (see rws/conf/grid)."""

    noun = "soup"

    def __init__(self, members: Sequence[str], grid: Mapping[str, Any], member_names: Sequence[str] | None = None,
                 bn: str = "combine", calibration: Callable[[], Any] | None = None) -> None:
        from rws.weights.grid import enumerate_weights
        from rws.weights.soups import soup_spec

        self.members = [str(Path(p).resolve()) for p in members]
        if not self.members:
            raise ValueError("sweep needs members: [export dirs]")
        if member_names is not None and len(member_names) != len(self.members):
            # A shorter list used to drop the unnamed members from best.md without a word.
            raise ValueError(f"sweep: member_names has {len(member_names)} names for {len(self.members)} members; "
                             f"give exactly {len(self.members)} (one per entry of members, in the same order) or "
                             f"leave member_names unset to name them after their runs")
        # Export dirs all end in 'export': name members after their run, not the last path component.
        self.names = ([str(n) for n in member_names] if member_names is not None
                      else [specs_mod.spec_name({"kind": "export", "path": p}) for p in self.members])
        self.grid = dict(grid)
        self.bn = bn
        self.affine = bool(self.grid.get("affine", True)) if self.grid.get("kind") != "front" else True
        self.weights = enumerate_weights(self.grid, len(self.members))
        self._specs = [soup_spec(self.members, w, bn=bn, affine=self.affine) for w in self.weights]
        self.calibration = calibration
        if bn == "recalibrate" and calibration is None:
            raise ValueError("bn: recalibrate needs a datamodule for calibration batches")
        self._soup: Any = None

    def specs(self) -> list[dict[str, Any]]:
        return self._specs

    def check(self, device: torch.device) -> None:
        if self._soup is None:  # built once, before anything is written
            from rws.weights.export import load_export
            from rws.weights.functional_soup import InPlaceSoup

            exports = [load_export(p) for p in self.members]
            # Attacks need input gradients only; frozen parameters spare a backward into the weights.
            model = exports[0].build(device).requires_grad_(False)
            self._soup = InPlaceSoup(model, [e.state_dict for e in exports], names=self.members, affine=self.affine)

    def model(self, index: int, device: torch.device) -> nn.Module:
        self.check(device)
        calib = self.calibration() if self.bn == "recalibrate" else None
        return self._soup.set(self.weights[index], calibration=calib)

    def _floats(self, i: int) -> list[float]:
        return [float(v) for v in self.weights[i]]

    def labels(self) -> list[str]:
        return [f"soup{[round(w, 3) for w in self._floats(i)]}" for i in range(len(self.weights))]

    def extras(self) -> list[dict[str, Any]]:
        return [{"weights": self._floats(i)} for i in range(len(self.weights))]

    def references(self) -> list[tuple[str, int]]:
        out = []
        for m, name in enumerate(self.names):
            onehot = [i for i, w in enumerate(self.weights)
                      if all(float(v) == (1.0 if j == m else 0.0) for j, v in enumerate(w))]
            if onehot:
                out.append((name, onehot[0]))
        return out

    def coordinates(self) -> tuple[torch.Tensor, list[str]]:
        return torch.tensor([self._floats(i) for i in range(len(self.weights))], dtype=torch.float64), self.names

    def describe(self) -> dict[str, Any]:
        return {"kind": "soup_grid", "members": self.members, "member_names": self.names, "bn": self.bn,
                "affine": self.affine, "grid": self.grid,
                "weights_exact": [[str(v) for v in w] for w in self.weights]}


class SpecList(SpecGenerator):
    """Explicit model specs (dicts, spec files or export dirs), each built by ``build(spec, device)``."""

    def __init__(self, specs: Sequence[Any], build: Callable[[dict[str, Any], torch.device], nn.Module]) -> None:
        self._specs = [specs_mod.load_spec(s) for s in specs]
        if not self._specs:
            raise ValueError("sweep needs members=[export dirs] (a soup grid) or specs=[...] (a spec list)")
        self.build = build

    def specs(self) -> list[dict[str, Any]]:
        return self._specs

    def model(self, index: int, device: torch.device) -> nn.Module:
        return self.build(self._specs[index], device)

    def references(self) -> list[tuple[str, int]]:
        return list(zip(self.labels(), range(len(self._specs))))

    def describe(self) -> dict[str, Any]:
        return {"kind": "spec_list"}


# The adapters paper's soups (Table 7 / Fig. 5): beta in [0, 1] plus its extrapolations -0.05 and 1.05.
PAPER_BETAS = (-0.05, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.05)


class AdapterBetaGrid(SpecGenerator):
    """Adversarial model soups of one adapter export: ``betas`` (β·φ_clean + (1 − β)·φ_robust) or,
    with ``plane={low, high, step}``, every (β1, β2) of the token plane (appendix D).

    The export is built once and each spec only switches its mode (``set_mode``, which touches φ
    alone), so a β costs one forward pass per batch and no rebuild. ``specs()`` are the equivalent
    ``{kind: adapter, ...}`` specs: rows, resume keys and selection are those of building each one."""

    noun = "beta"

    def __init__(self, base: str, betas: Sequence[float] | None = None,
                 plane: Mapping[str, Any] | None = None) -> None:
        import math

        self.base = str(Path(base).resolve())
        if plane and betas is not None:
            raise ValueError("adapter: give adapter.betas=[...] (a beta line) or adapter.plane={low, high, step} "
                             "(the token plane), not both")
        if plane:
            low, high, step = (float(plane.get(k)) for k in ("low", "high", "step"))
            if not (math.isfinite(low) and math.isfinite(high) and math.isfinite(step)) or step <= 0 or high < low:
                raise ValueError(f"adapter.plane must be {{low, high, step}} with step > 0 and high >= low, got {dict(plane)}")
            n = int(round((high - low) / step)) + 1
            axis = [round(low + i * step, 10) for i in range(n)]
            self.points: list[tuple[float, ...]] = [(b1, b2) for b1 in axis for b2 in axis]
            self.names = ["beta1", "beta2"]
        else:
            values = [float(b) for b in (betas if betas is not None else PAPER_BETAS)]
            if not values or not all(math.isfinite(b) for b in values):
                raise ValueError(f"adapter.betas must be a non-empty list of finite numbers, got {betas!r}")
            self.points = [(b,) for b in values]
            self.names = ["beta"]
        base_spec = {"kind": "export", "path": self.base}
        self._specs = [{"kind": "adapter", "base": base_spec, **dict(zip(self.names, p))} for p in self.points]
        self._model: nn.Module | None = None

    def specs(self) -> list[dict[str, Any]]:
        return self._specs

    def model(self, index: int, device: torch.device) -> nn.Module:
        from rws.models.contracts import set_mode

        self.check(device)
        point = self.points[index]
        set_mode(self._model, point[0] if len(point) == 1 else point)
        return self._model

    def check(self, device: torch.device) -> None:
        from rws.models.contracts import has_modes

        if self._model is None:  # built once (check(), before anything is written)
            from rws.weights.export import load_export

            # Attacks need input gradients only; frozen parameters spare a backward into the weights.
            self._model = load_export(self.base).build(device).requires_grad_(False)
            if not has_modes(self._model):
                raise ValueError(f"adapter.base {self.base} is not an adapter model (it declares no clean/robust "
                                 f"modes); train it with model.adapter=<kind>")

    def labels(self) -> list[str]:
        return [("beta=" + ",".join(f"{v:g}" for v in p)) for p in self.points]

    def extras(self) -> list[dict[str, Any]]:
        return [dict(zip(self.names, p)) for p in self.points]

    def coordinates(self) -> tuple[torch.Tensor, list[str]]:
        return torch.tensor(self.points, dtype=torch.float64), list(self.names)

    def describe(self) -> dict[str, Any]:
        return {"kind": "adapter_beta_grid", "base": self.base, "axes": self.names,
                "points": [list(p) for p in self.points]}
