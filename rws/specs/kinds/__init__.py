"""The built-in spec kinds, one module each; importing a module registers its kind.

To add a built-in kind: write ``rws/specs/kinds/<name>.py`` ending in ``KIND = register_kind(...)``,
then add it to the import and to ``BUILTIN_KINDS`` below.
"""

# Import order is registration order, which is the order users see kinds listed in.
from rws.specs.kinds import export, patch, soup  # isort: skip
from rws.specs.kinds import mode, heads  # isort: skip
from rws.specs.kinds import adapter, ensemble  # isort: skip

# --- BUILTIN_KINDS: every built-in kind module, in the order their names are listed to users ---
BUILTIN_KINDS = (
    export.KIND,
    patch.KIND,
    soup.KIND,
    mode.KIND,
    heads.KIND,
    adapter.KIND,
    ensemble.KIND,
)
