"""How far our batched JPEG codec is from PIL/libjpeg (the codec every reference script calls).

For each table's five qualities: mean and max absolute difference in grey levels (0..255) between
``corrupt(x, "jpeg_compression", s, table)`` and PIL's ``save(JPEG, quality=q)`` + decode, on uniform
random noise images (the hard case: all energy in high frequencies) and on 32x32 crops of sklearn's
sample photos (the crops tests/test_corruptions.py uses).

    .venv/bin/python benchmarks/jpeg_agreement.py --n 64 --size 32 --seed 0
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rws.corruptions import corrupt  # noqa: E402
from rws.corruptions.params import TABLES  # noqa: E402


def natural_crops(size: int) -> np.ndarray:
    import cv2
    from sklearn.datasets import load_sample_images

    crops = [cv2.resize(im[y:y + 200, x:x + 200], (size, size), interpolation=cv2.INTER_AREA)
             for im in load_sample_images().images for y, x in [(0, 0), (100, 200), (200, 300), (150, 50)]]
    return np.stack(crops)


def pil_jpeg(u8: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    out = []
    for im in u8:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, "JPEG", quality=quality)
        out.append(np.asarray(Image.open(buf).convert("RGB")))
    return np.stack(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=64, help="noise images")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(1)
    images = {"noise": np.random.default_rng(a.seed).integers(0, 256, (a.n, a.size, a.size, 3), dtype=np.uint8),
              "photos": natural_crops(a.size)}
    print(f"mean |ours - PIL| in grey levels (max in brackets), {a.size}x{a.size}")
    for kind, u8 in images.items():
        x = torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255
        for table in TABLES:
            cells = []
            for sev, q in enumerate(TABLES[table]["jpeg_compression"], 1):
                ours = corrupt(x, "jpeg_compression", sev, table=table).permute(0, 2, 3, 1).numpy()
                d = np.abs(np.floor(ours * 255 + 1e-3) - pil_jpeg(u8, q).astype(np.float32))
                cells.append(f"q{q} {d.mean():.2f} ({d.max():.0f})")
            print(f"{kind:6s} {table:13s} " + "  ".join(cells))


if __name__ == "__main__":
    main()
