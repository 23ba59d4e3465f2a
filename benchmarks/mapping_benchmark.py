"""Wall-to-wall mapping throughput: classify_scene vs a naive one-patch-at-a-time loop.

A synthetic L2A-like scene (multi-band GeoTIFF: B02 B03 B04 B08 B11 B12 as uint16 DNs at
10 m + an SCL band with a cloud) is classified by paper B's LightweightCNN (random
weights: speed does not depend on them) with patch 32 and stride 16:

* ``classify_scene`` mode ``fcn`` (the default for GAP networks) on the whole scene, in
  float32 and in bfloat16 autocast (with its map agreement with float32);
* ``classify_scene`` mode ``patch`` (exact sliding patches, batched) on a crop;
* ``classify_scene_naive`` (read + classify one patch at a time) on a smaller crop,

all in the same process on this CPU (the naive loop single-threaded: its best setting
here). Pixels/s and the ratio to the naive loop are the
result; a full 10980 x 10980 tile time is extrapolated from the fcn rate (the paper-B goal:
>= 1 Mpx/s, i.e. under 2 minutes a tile). The machine load is recorded: on a shared machine
absolute numbers move with it, the ratio much less.

Memory (``--memory-sizes 1024 4096``): for each scene size a fresh child process maps the
scene (fcn) and writes the class and probability COGs, and reports its peak resident memory
(``ru_maxrss``); flat memory means the peak barely moves while the scene grows 16x. Results in
``benchmarks/results/mapping_memory.csv``.

Usage: python benchmarks/mapping_benchmark.py [--size 4096] [--patch-crop 1024]
       [--naive-crop 256] [--threads 2] [--out benchmarks/results/mapping_benchmark.csv]
       python benchmarks/mapping_benchmark.py --memory-sizes 1024 4096 [--tmp /dev/shm]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin
from rasterio.windows import Window

from lcc_utils import mapping as mp
from lcc_utils import sentinel2 as s2
from lcc_utils.models import create_model

BANDS = ("B02", "B03", "B04", "B08", "B11", "B12")
#: GDAL block cache of the memory benchmark's children (MB).
GDAL_CACHEMAX_MB = "32"


def make_scene(path: Path, size: int, seed: int = 0) -> Path:
    """Write a smooth random-field scene with a cloud, block by block (never whole in memory)."""
    rng = np.random.default_rng(seed)
    prof = {"driver": "GTiff", "dtype": "uint16", "count": 7, "width": size, "height": size,
            "crs": "EPSG:32634", "transform": from_origin(300000, 5000000, 10, 10), "nodata": 0,
            "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate"}
    base = np.array([800, 1000, 1200, 2500, 2200, 1600], np.float32)
    with rasterio.open(path, "w", **prof) as dst:
        dst.descriptions = (*BANDS, "SCL")
        dst.update_tags(DATETIME="2021-06-01")
        for r in range(0, size, 512):
            for c in range(0, size, 512):
                h, w = min(512, size - r), min(512, size - c)
                yy, xx = np.mgrid[r:r + h, c:c + w].astype(np.float32)
                veg = (np.sin(xx / 150.0) * np.cos(yy / 170.0) > 0).astype(np.float32)
                x = base[:, None, None] * (1 + 0.6 * veg * np.array(
                    [-0.5, -0.3, -0.6, 0.8, -0.2, -0.4], np.float32)[:, None, None])
                x = x + rng.normal(0, 50, (6, h, w)).astype(np.float32)
                scl = np.where(veg > 0, 4, 5).astype(np.uint16)
                scl[(yy < size // 8) & (xx < size // 8)] = 9
                dst.write(np.concatenate([np.clip(x, 1, 60000).astype(np.uint16), scl[None]]),
                          window=Window(c, r, w, h))
    return path


def crop(src: Path, dst: Path, size: int) -> Path:
    """A size x size crop from the scene centre (away from the synthetic cloud)."""
    with rasterio.open(src) as s:
        off = (s.width - size) // 2
        win = Window(off, off, size, size)
        prof = s.profile | {"width": size, "height": size, "blockxsize": 256, "blockysize": 256,
                            "transform": s.window_transform(win)}
        data = s.read(window=win)
        desc, tags = s.descriptions, s.tags()
    with rasterio.open(dst, "w", **prof) as d:
        d.write(data)
        d.descriptions = desc
        d.update_tags(**tags)
    return dst


def memory_child(scene: str, out_dir: str, window_size: int) -> None:
    """Map ``scene`` and write its COGs in this (fresh) process; print the peak RSS as JSON."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model("lightweight_cnn", 2, in_chans=6).eval()
    product = s2.open_l2a(scene)
    out = Path(out_dir)
    t0 = time.perf_counter()
    mp.classify_scene(product, model, out / "map.tif", 32, 16, mean=[0.1] * 6, std=[0.05] * 6,
                      classes=["non_vegetation", "vegetation"], window_size=window_size, progress=False)
    peak_map = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    mp.write_map_cogs(out / "map.tif", out / "class.tif", out / "prob.tif")
    print(json.dumps({"seconds": round(time.perf_counter() - t0, 2), "peak_rss_after_map_mb": round(peak_map, 1),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


def memory_benchmark(sizes: list[int], tmp_root: str | None, window_size: int, out: Path) -> None:
    """Peak memory of map + COGs at several scene sizes, each in a fresh process."""
    rows = []
    for size in sizes:
        with tempfile.TemporaryDirectory(dir=tmp_root) as tmp:
            scene = make_scene(Path(tmp) / "scene.tif", size)
            # GDAL's block cache grows with what is read up to GDAL_CACHEMAX (default 5 % of RAM):
            # pinned here so the peak measures the mapper, not the cache's budget
            res = subprocess.run([sys.executable, __file__, "--memory-child", str(scene), tmp,
                                  "--window-size", str(window_size)], check=True, capture_output=True,
                                 text=True, env={**os.environ, "GDAL_CACHEMAX": GDAL_CACHEMAX_MB})
            r = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append({"scene_px": size, "pixels": size * size, "window_size": window_size,
                     "gdal_cachemax_mb": GDAL_CACHEMAX_MB, **r,
                     "load_avg_1min": round(os.getloadavg()[0], 2), "date": time.strftime("%Y-%m-%d %H:%M")})
        print(f"{size}x{size}: peak RSS {r['peak_rss_after_map_mb']:.0f} MB after the map, "
              f"{r['peak_rss_mb']:.0f} MB after the COGs ({r['seconds']:.1f} s)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"peak memory ratio {rows[-1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.2f} for "
          f"{rows[-1]['pixels'] / rows[0]['pixels']:.0f}x the pixels; wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--memory-sizes", type=int, nargs="*", help="only measure peak memory at these scene sizes")
    ap.add_argument("--memory-child", nargs=2, metavar=("SCENE", "OUT_DIR"), help=argparse.SUPPRESS)
    ap.add_argument("--tmp", default=None, help="folder for the synthetic scenes (e.g. /dev/shm)")
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--patch-crop", type=int, default=1024)
    ap.add_argument("--naive-crop", type=int, default=256)
    ap.add_argument("--patch-size", type=int, default=32)
    ap.add_argument("--stride", type=int, default=16)
    ap.add_argument("--window-size", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                         "mapping_benchmark.csv"))
    args = ap.parse_args()
    if args.memory_child:
        return memory_child(*args.memory_child, args.window_size)
    if args.memory_sizes:
        return memory_benchmark(args.memory_sizes, args.tmp, args.window_size,
                                Path(__file__).parent / "results" / "mapping_memory.csv")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model("lightweight_cnn", 2, in_chans=6).eval()
    mean, std = [0.1] * 6, [0.05] * 6
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        full = make_scene(tmp / "scene.tif", args.size)
        print(f"synthetic scene {args.size}x{args.size} written in {time.perf_counter() - t0:.1f} s")
        scenes = {"fcn": (full, args.size), "fcn_bf16": (full, args.size),
                  "patch": (crop(full, tmp / "patch.tif", args.patch_crop), args.patch_crop),
                  "naive": (crop(full, tmp / "naive.tif", args.naive_crop), args.naive_crop)}
        for method, (path, size) in scenes.items():
            product = s2.open_l2a(path)
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            # The naive loop runs single-threaded: its best setting. With 2 threads on this
            # shared 2-core machine one 32x32 forward took ~128 ms instead of ~1.5 ms (thread
            # sync overhead under contention), which would flatter the ratio.
            threads = 1 if method == "naive" else args.threads
            torch.set_num_threads(threads)
            if method == "naive":
                mp.classify_scene_naive(product, model, args.patch_size, args.stride, mean=mean,
                                        std=std, progress=False)
            else:
                mp.classify_scene(product, model, tmp / f"{method}_map.tif", args.patch_size,
                                  args.stride, mean=mean, std=std, mode=method.split("_")[0],
                                  precision="bf16" if method.endswith("bf16") else "fp32",
                                  window_size=args.window_size, progress=True)
            dt = time.perf_counter() - t0
            rows.append({"method": method, "threads": threads, "scene_px": size,
                         "pixels": size * size,
                         "seconds": round(dt, 3), "px_per_s": round(size * size / dt),
                         "load_avg_1min": round(load, 2), "agreement_vs_fp32": None})
            if method == "fcn_bf16":
                agree = mp.map_agreement(tmp / "fcn_map.tif", tmp / "fcn_bf16_map.tif")
                print(f"bf16 vs fp32 map agreement: {agree:.4%}")
                rows[-1]["agreement_vs_fp32"] = round(agree, 6)
            print(f"{method:>8}: {size}x{size} px in {dt:7.2f} s -> {size * size / dt:,.0f} px/s "
                  f"(load {load:.1f})")
    naive = next(r["px_per_s"] for r in rows if r["method"] == "naive")
    for r in rows:
        r.update({"ratio_vs_naive": round(r["px_per_s"] / naive, 1),
                  "full_tile_s_10980": round(10980**2 / r["px_per_s"], 1),
                  "patch_size": args.patch_size, "stride": args.stride,
                  "cpu": platform.processor() or platform.machine(),
                  "cpus": os.cpu_count(), "torch": torch.__version__,
                  "date": time.strftime("%Y-%m-%d %H:%M")})
    for r in rows:
        print(f"{r['method']:>8}: {r['ratio_vs_naive']:6.1f}x naive; full 10980^2 tile "
              f"~{r['full_tile_s_10980']:.0f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmpf = out.with_name(out.name + ".tmp")
    with open(tmpf, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmpf, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
