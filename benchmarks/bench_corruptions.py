"""Throughput of rws.corruptions vs imagecorruptions (per-image numpy/PIL/cv2 reference).

Both run the ImageNet-C parameters (the only ones imagecorruptions has) on 32x32 images on the
CPU. Ours takes the whole batch at once; the reference is looped over images. The reference is
timed on a subset of the batch (--ref-images) and scaled to the batch size, which the output
states. The two are timed in alternation (best of --repeats each) so that both see the same load
on a shared machine.

    .venv/bin/python benchmarks/bench_corruptions.py --batch-size 256 --repeats 7 \
        --json outputs/bench_corruptions.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rws.corruptions import CORRUPTIONS, corrupt, resolve_corruptions  # noqa: E402


def _time_pair(fn_a, fn_b, repeats: int) -> tuple[float, float]:
    """Best-of-``repeats`` wall time of two functions, measured in alternation after one warm-up
    call each, so that both see the same load on a shared machine (minimum = least disturbed)."""
    fn_a()
    fn_b()
    best_a = best_b = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn_a()
        t1 = time.perf_counter()
        fn_b()
        t2 = time.perf_counter()
        best_a, best_b = min(best_a, t1 - t0), min(best_b, t2 - t1)
    return best_a, best_b


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ref-images", type=int, default=32, help="images timed for the reference, scaled up")
    ap.add_argument("--types", default="all", help="corruption spec, e.g. 'all', 'noise', 'fog,jpeg'")
    ap.add_argument("--table", default="imagenet", choices=["imagenet", "cifar"],
                    help="our parameter table (the reference always uses ImageNet-C's)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1 = like the single-threaded reference; 0 = torch default)")
    ap.add_argument("--json", default=None, help="write results here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from imagecorruptions import corrupt as ref_corrupt

    names = resolve_corruptions(args.types)
    rng = np.random.default_rng(0)
    # Smooth random images: noise upsampled, so blur/edge-based types see natural-ish content.
    small = rng.random((args.batch_size, 3, args.size // 4, args.size // 4)).astype(np.float32)
    x = torch.nn.functional.interpolate(torch.from_numpy(small), size=args.size, mode="bilinear",
                                        align_corners=False).clamp(0, 1)
    x_u8 = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    n_ref = min(args.ref_images, args.batch_size)

    rows = []
    for name in names:
        gen = torch.Generator().manual_seed(0)
        # Ours on the whole batch and the reference on n_ref images, alternated, best of N each.
        t_ours, t_ref_sub = _time_pair(
            lambda: corrupt(x, name, 3, table=args.table, generator=gen),
            lambda: [ref_corrupt(im, severity=3, corruption_name=name) for im in x_u8[:n_ref]],
            args.repeats)
        t_ref = t_ref_sub * args.batch_size / n_ref
        rows.append({"corruption": name, "ours_img_s": args.batch_size / t_ours,
                     "ref_img_s": args.batch_size / t_ref, "speedup": t_ref / t_ours,
                     "ours_batch_s": t_ours, "ref_batch_s_scaled": t_ref})
        r = rows[-1]
        print(f"{name:18s} ours {r['ours_img_s']:10.0f} img/s  ref {r['ref_img_s']:8.0f} img/s  "
              f"x{r['speedup']:.1f}", file=sys.stderr)

    sp = np.array([r["speedup"] for r in rows])
    summary = {"geomean_speedup": float(np.exp(np.log(sp).mean())), "min_speedup": float(sp.min()),
               "min_speedup_type": rows[int(sp.argmin())]["corruption"],
               "n_at_least_10x": int((sp >= 10).sum()), "n_types": len(rows)}
    meta = {"batch_size": args.batch_size, "size": args.size, "severity": 3, "table": args.table,
            "device": "cpu", "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "repeats": args.repeats, "ref_images_timed": n_ref, "torch": torch.__version__,
            "note": f"reference timed on {n_ref} of {args.batch_size} images and scaled linearly"}

    print(f"\nCPU, {args.size}x{args.size}, batch {args.batch_size}, severity 3, "
          f"{torch.get_num_threads()} torch threads; reference timed on {n_ref} images and scaled.\n")
    print("| corruption | ours (img/s) | imagecorruptions (img/s) | speedup |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['corruption']} | {r['ours_img_s']:,.0f} | {r['ref_img_s']:,.0f} | {r['speedup']:.1f}x |")
    print(f"\nGeometric-mean speedup {summary['geomean_speedup']:.1f}x; minimum {summary['min_speedup']:.1f}x "
          f"({summary['min_speedup_type']}); {summary['n_at_least_10x']}/{summary['n_types']} types >= 10x.")
    result = {"meta": meta, "rows": rows, "summary": summary}
    if args.json:
        from rws.utils.io import write_json

        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
