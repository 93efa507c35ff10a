"""Moved to ``rws.specs``: this re-export keeps old imports working until every caller switches
(then this file is deleted)."""

from rws.specs import (BuildContext, SpecError, SpecKind, build, canonical, get_kind, kind_names,  # noqa: F401
                       load_spec, register_kind, spec_id, spec_name, to_json, validate)
