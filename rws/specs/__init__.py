"""Model specs: one small recursive config that says how a model is built from exports.

Each kind (export, patch, soup, ...) is a plug-in in ``rws.specs.kinds`` registered with
``register_kind``; ``rws.specs.core`` is the one module that recurses. See docs/specs.md.
"""

from rws.specs.context import BuildContext
from rws.specs.core import build, canonical, load_spec, spec_id, spec_name, to_json, validate
from rws.specs.registry import SpecError, SpecKind, get_kind, kind_names, register_kind
from rws.specs import kinds  # noqa: F401,E402  (registers the built-in kinds)

__all__ = ["BuildContext", "SpecError", "SpecKind", "build", "canonical", "get_kind", "kind_names", "load_spec",
           "register_kind", "spec_id", "spec_name", "to_json", "validate"]
