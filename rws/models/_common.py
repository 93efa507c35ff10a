"""Small helpers shared by the CIFAR architectures."""

from __future__ import annotations


def scaled(channels: int, width: float) -> int:
    """Channel count after a width multiplier; never below 1 so tiny widths still build."""
    return max(1, int(channels * width))
