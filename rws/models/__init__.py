"""Model factory: every classifier is a ``Normalized`` wrapper (pixels in [0, 1]) around ``net``.

See docs/models.md for the names, the layer rule and how to add a model.
"""

from rws.models.factory import MODEL_NAMES, create_model
from rws.models.layers import head_keys, layer_groups, shallow_keys
from rws.models.normalize import Normalized

__all__ = ["MODEL_NAMES", "Normalized", "create_model", "head_keys", "layer_groups", "shallow_keys"]
