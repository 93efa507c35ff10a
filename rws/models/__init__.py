"""Model factory: every classifier is a ``Normalized`` wrapper (pixels in [0, 1]) around ``net``.

Architectures register themselves (builder + layer rule) with ``register_model``; importing the
modules below fills the registry, in the order ``MODEL_NAMES`` lists them. See docs/models.md for
the names, the layer rule and how to add a model.
"""

# Registration order is the order of MODEL_NAMES (and of the names in the unknown-model error).
from rws.models import small_cnn, vgg, resnet_cifar, preact_resnet, wide_resnet  # noqa: F401,I001
from rws.models import timm_models, vit, robustbench_zoo  # noqa: F401
from rws.models import head_selection  # noqa: F401  (registers the distillation head-selection rules)
from rws.models.factory import create_model
from rws.models.layers import fallback_groups, head_keys, layer_groups, shallow_keys
from rws.models.normalize import Normalized
from rws.models.registry import ModelEntry, list_families, list_models, lookup, register_model

MODEL_NAMES: tuple[str, ...] = list_models()

__all__ = ["MODEL_NAMES", "ModelEntry", "Normalized", "create_model", "fallback_groups", "head_keys",
           "layer_groups", "list_families", "list_models", "lookup", "register_model", "shallow_keys"]
