"""The 19 common corruptions of Hendrycks & Dietterich as batched torch ops.

``corrupt(x, name, severity, table="cifar"|"tiny_imagenet"|"imagenet", generator=None)`` works on (B, 3, H, W)
tensors in [0, 1] on any device; ``resolve_corruptions`` expands specs such as "all" or "noise";
``write_corrupted_arrays`` writes CIFAR-10-C-style ``.npy`` files. See docs/corruptions.md.
"""

from rws.corruptions.api import canonical_name, corrupt, resolve_corruptions
from rws.corruptions.arrays import write_corrupted_arrays
from rws.corruptions.params import ALIASES, CORRUPTIONS, CPU_SHIFTS, GROUPS, SEVERITIES, TABLES
from rws.corruptions.weather import frost_dir

__all__ = ["ALIASES", "CORRUPTIONS", "CPU_SHIFTS", "GROUPS", "SEVERITIES", "TABLES", "canonical_name", "corrupt",
           "frost_dir", "resolve_corruptions", "write_corrupted_arrays"]
