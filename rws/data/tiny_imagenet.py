"""Tiny-ImageNet-200 in its original layout.

train/<wnid>/images/*.JPEG; val/images/*.JPEG labelled by val/val_annotations.txt; class index =
position of the wnid in sorted(wnids.txt). The labelled val split serves as the test set (the
official test split has no labels).
"""

from __future__ import annotations

from pathlib import Path

from rws.data.errors import SHARED_HINT, DatasetNotFoundError
from rws.data.image_folder import is_image

LAYOUT = ("wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG and val/val_annotations.txt "
          "(file<TAB>wnid<TAB>box...)")


def _missing(root: Path, what: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        "Tiny-ImageNet-200", root, f"{LAYOUT}; missing {what}",
        f"{SHARED_HINT} (reduced copy: tiny-imagenet-200/), or download "
        "http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it",
    )


def read_wnids(root: str | Path) -> list[str]:
    root = Path(root).expanduser()
    f = root / "wnids.txt"
    if not f.is_file():
        raise _missing(root, "wnids.txt")
    return sorted({line.strip() for line in f.read_text().splitlines() if line.strip()})


def scan_tiny_imagenet(root: str | Path, split: str) -> tuple[list[Path], list[int], list[str]]:
    """(files, labels, wnids) for ``split`` in {"train", "val"}, sorted by path."""
    root = Path(root).expanduser()
    wnids = read_wnids(root)
    index = {w: i for i, w in enumerate(wnids)}
    files: list[Path] = []
    labels: list[int] = []
    if split == "train":
        if not (root / "train").is_dir():
            raise _missing(root, "train/")
        for w in wnids:
            d = root / "train" / w / "images"
            found = sorted(p for p in d.iterdir() if is_image(p.name)) if d.is_dir() else []
            files.extend(found)
            labels.extend([index[w]] * len(found))
    elif split == "val":
        ann = root / "val" / "val_annotations.txt"
        if not ann.is_file():
            raise _missing(root, "val/val_annotations.txt")
        rows = sorted(line.split("\t")[:2] for line in ann.read_text().splitlines() if line.strip())
        for name, w in rows:
            if w not in index:
                raise ValueError(f"{ann}: {name} has wnid {w} that is not in wnids.txt")
            files.append(root / "val" / "images" / name)
            labels.append(index[w])
        absent = [f for f in files[:5] if not f.is_file()]
        if absent:
            raise _missing(root, f"val/images/{absent[0].name}")
    else:
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    return files, labels, wnids
