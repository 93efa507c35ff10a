"""What a spec builder may need besides the spec: the device, a default datamodule, a cache."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from rws.specs.calibration import CalibrationSource, calibration_stream, compose_datamodule
from rws.specs.registry import SpecError


@dataclass
class BuildContext:
    """Passed to every kind's builder; kinds reach their children only through it.

    ``data``: the datamodule used by calibration sources that name no ``data`` (the one being
    evaluated). ``cache``: shared by every context derived from this one (``with_device``), e.g.
    the datamodules composed for calibration sources, keyed by their source.
    """

    device: str | torch.device = "cpu"
    data: Any = None
    cache: dict[Any, Any] = field(default_factory=dict)

    def with_device(self, device: str | torch.device) -> "BuildContext":
        """The same context (same data, same cache object) on another device."""
        return replace(self, device=device)

    def build(self, spec: Any) -> nn.Module:
        """Build a (child) spec on this context's device, in eval mode."""
        from rws.specs.core import build  # core imports this module

        return build(spec, context=self)

    def state_dict(self, spec: Any) -> dict[str, torch.Tensor]:
        """A spec's state dict on the CPU, keys sorted as in an export file. An export is read from
        its file without building a model; other kinds are built on the CPU.

        Why CPU and sorted: weight arithmetic over these (soups) then gives the same tensors on every
        device, and a built member gives the very tensors its export would. The soup's matrix-vector
        product can round a value differently (1 ulp) depending on its position in the stacked
        vector, and export files list tensors sorted while built models list them in module order."""
        from rws.specs.core import validate

        spec = validate(spec)
        if spec["kind"] == "export":
            from rws.weights.export import load_export

            return load_export(spec["path"]).state_dict
        state = self.with_device("cpu").build(spec).state_dict()
        return {k: state[k].detach() for k in sorted(state)}

    def calibration_batches(self, source: Mapping[str, Any]) -> Iterable[tuple[torch.Tensor, Any]]:
        """The (x, y) batches a declarative calibration source describes (see rws.specs.calibration)."""
        src = CalibrationSource.parse(source)
        return calibration_stream(self._datamodule(src), src)

    def _datamodule(self, src: CalibrationSource) -> Any:
        if src.data is None:
            if self.data is None:
                raise SpecError("calibration source names no 'data' and the build context has no default "
                                "datamodule: add data: <a config name in rws/conf/data> to the source, or "
                                "build with BuildContext(data=datamodule)")
            return self.data
        key = ("calibration_datamodule", src.data, src.overrides)
        if key not in self.cache:
            self.cache[key] = compose_datamodule(src.data, src.overrides)
        return self.cache[key]
