"""The one error a missing or malformed dataset raises."""

from __future__ import annotations

from pathlib import Path

from rws.errors import UserError


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset is not where the config says; the message says what to put there and how.

    Subclasses FileNotFoundError so generic ``except FileNotFoundError`` handlers still catch it.
    """

    def __init__(self, name: str, path: str | Path, layout: str, how: str) -> None:
        self.name, self.path, self.layout, self.how = name, Path(path), layout, how
        super().__init__(
            f"{name} dataset not found at {path}\n"
            f"  expected layout: {layout}\n"
            f"  how to get it:   {how}"
        )


SHARED_HINT = (
    "unpack the shared archives with `../shared/data/unpack.sh` (prints the directory; "
    "point RWS_DATA or paths.data_dir=... at it), or set data.root=/path/to/dataset"
)
