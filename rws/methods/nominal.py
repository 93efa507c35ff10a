"""Standard (nominal) training on clean images: the base class as it is."""

from rws.methods.base import ClassifierModule


class NominalModule(ClassifierModule):
    """Clean cross-entropy training."""
