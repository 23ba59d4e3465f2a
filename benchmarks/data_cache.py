"""Cost of the content data hash: cached loads (old key vs new) and first-time hashing.

Issue 13 asks that the decode cache notice any change of content while a cached load of
EuroSAT RGB (27,000 files) stays within 2x of the old paths+sizes key. Measured in one run,
best of ``--repeats``, old and new interleaved so that both see the same machine load:

* ``cached load_dataset``: the whole cached load (scan the tree, compute the key, read the
  cache meta, memory-map the array) as before issue 13 (private copies of the old
  ``scan_folder`` and ``file_list_hash`` below, patched into ``lcc_utils.data`` for the
  baseline; its decode-cache entry is a hard link to the new one's, so nothing is decoded
  twice) and as now (``os.scandir`` scan; stat every file, look each up in the fingerprint
  index). The ratio new/old is the result.
* ``key only`` and ``scan only``: the two parts alone, old and new, on the same tree, so
  the cost of the content key is visible apart from the faster scan that pays for it.
* ``first-time content hash``: an empty fingerprint index (a fresh cache), so every file is
  read and hashed (sha256); files in the OS page cache (the data were read just before), so
  this is the CPU cost, not the disk's.

Usage: python benchmarks/data_cache.py [--data-dir ../shared/data] [--repeats 3]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from lcc_utils import data, fingerprints
from lcc_utils.paths import cache_dir, resolve_data_dir


def old_file_list_hash(folder: Path, files: Sequence[str]) -> str:
    """The key before issue 13 (baseline): sha256 over relative paths and byte sizes."""
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f}\t{(folder / f).stat().st_size}\n".encode())
    return h.hexdigest()[:16]


def old_scan_folder(spec: data.DatasetSpec, folder: Path):
    """``data.scan_folder`` before issue 13 (baseline): pathlib listing, no link check."""
    files, labels, others = [], [], []
    for k, cls in enumerate(spec.classes):
        entries = sorted((p for p in (folder / cls).iterdir() if not p.name.startswith(".")),
                         key=lambda p: data._natural_key(p.name))
        images = [p for p in entries if p.suffix.lower() in spec.extensions]
        others += [(str(p.relative_to(folder)), "not an image file of this dataset")
                   for p in entries if p.suffix.lower() not in spec.extensions]
        files += [str(p.relative_to(folder)) for p in images]
        labels += [k] * len(images)
    return files, np.asarray(labels, dtype=np.int64), others


def once(fn: Callable[[], object]) -> float:
    """Seconds of one call (the callers keep the fastest of their repeats)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def cached_load(name: str, data_dir: Path, old: bool) -> Callable[[], object]:
    """A cached ``load_dataset``, as now or (``old``) with the old scan and key patched in."""
    def run():
        saved = data.dataset_hash, data.scan_folder
        if old:  # load_dataset looks both up at call time
            data.dataset_hash, data.scan_folder = old_file_list_hash, old_scan_folder
        try:
            return data.load_dataset(name, data_dir, download=False)
        finally:
            data.dataset_hash, data.scan_folder = saved
    return run


def link_old_cache_entry(name: str, new_key: str, old_key: str) -> list[Path]:
    """Hard-link the decoded cache of the new key under the old key's name (same pixels)."""
    d = cache_dir() / "decoded"
    made = []
    for ext in (".raw", ".json"):
        src, dst = d / f"{name}-{new_key}-raise{ext}", d / f"{name}-{old_key}-raise{ext}"
        if not dst.exists():
            os.link(src, dst)
            made.append(dst)
    return made


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--repeats", type=int, default=3, help="timings per measurement; the fastest counts")
    ap.add_argument("--datasets", nargs="+", default=["eurosat", "eurosat_ms", "ucmerced"],
                    help="datasets whose first-time hashing cost is measured")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "data_cache.csv"))
    args = ap.parse_args()
    root = resolve_data_dir(args.data_dir)
    rows = []

    # ---- cached EuroSAT RGB load: old key vs new key, interleaved
    name = "eurosat"
    spec = data.get_dataset_spec(name)
    folder = root / spec.subdir
    ds = data.load_dataset(name, root, download=False)  # decodes once if the cache is cold
    files = ds.files
    old_key = old_file_list_hash(folder, files)
    made = link_old_cache_entry(name, ds.hash, old_key)
    try:
        t = {"old": [], "new": [], "old_key": [], "new_key": [], "old_scan": [], "new_scan": []}
        for _ in range(args.repeats):
            t["old"].append(once(cached_load(name, root, old=True)))
            t["new"].append(once(cached_load(name, root, old=False)))
            t["old_key"].append(once(lambda: old_file_list_hash(folder, files)))
            t["new_key"].append(once(lambda: data.dataset_hash(folder, files)))
            t["old_scan"].append(once(lambda: old_scan_folder(spec, folder)))
            t["new_scan"].append(once(lambda: data.scan_folder(spec, folder)))
    finally:
        for p in made:
            p.unlink()
    b = {k: min(v) for k, v in t.items()}
    idx = fingerprints.index_path(folder)
    rows += [
        {"measurement": "cached load_dataset, old (pathlib scan, paths + sizes key)", "dataset": name,
         "files": len(files), "seconds": b["old"], "ratio_vs_old": 1.0,
         "note": f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (other jobs running)"},
        {"measurement": "cached load_dataset, new (scandir scan, content key)", "dataset": name,
         "files": len(files), "seconds": b["new"], "ratio_vs_old": b["new"] / b["old"]},
        {"measurement": "scan only, old (pathlib)", "dataset": name, "files": len(files),
         "seconds": b["old_scan"], "ratio_vs_old": 1.0},
        {"measurement": "scan only, new (os.scandir + link check)", "dataset": name, "files": len(files),
         "seconds": b["new_scan"], "ratio_vs_old": b["new_scan"] / b["old_scan"]},
        {"measurement": "key only, old (paths + sizes)", "dataset": name, "files": len(files),
         "seconds": b["old_key"], "ratio_vs_old": 1.0},
        {"measurement": "key only, new (stat + fingerprint index)", "dataset": name, "files": len(files),
         "seconds": b["new_key"], "ratio_vs_old": b["new_key"] / b["old_key"],
         "note": f"index {idx.stat().st_size / 1e6:.1f} MB"},
    ]

    # ---- first-time content hashing: an empty index (a fresh cache) per repeat
    saved_env = os.environ.get("LCC_CACHE_DIR")
    try:
        for name in args.datasets:
            spec = data.get_dataset_spec(name)
            folder = root / spec.subdir
            if not folder.is_dir():
                print(f"{name}: not under {root}, skipped")
                continue
            files, _, _ = data.scan_folder(spec, folder)
            mb = sum(os.stat(folder / f).st_size for f in files) / 1e6
            secs = []
            for _ in range(args.repeats):
                with tempfile.TemporaryDirectory() as tmp:
                    os.environ["LCC_CACHE_DIR"] = tmp
                    secs.append(once(lambda folder=folder, files=files: data.dataset_hash(folder, files)))
            s = min(secs)
            rows.append({"measurement": "first-time content hash (empty index, sha256)", "dataset": name,
                         "files": len(files), "seconds": s, "MB": mb, "MB_per_s": mb / s,
                         "files_per_s": len(files) / s})
    finally:
        if saved_env is None:
            os.environ.pop("LCC_CACHE_DIR", None)
        else:
            os.environ["LCC_CACHE_DIR"] = saved_env

    cols = ["measurement", "dataset", "files", "seconds", "ratio_vs_old", "MB", "MB_per_s", "files_per_s", "note"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; best of {args.repeats}")
    for r in rows:
        extra = (f"  x{r['ratio_vs_old']:.2f} vs old" if "ratio_vs_old" in r else
                 f"  {r['MB']:.0f} MB, {r['MB_per_s']:.0f} MB/s, {r['files_per_s']:.0f} files/s")
        print(f"{r['measurement']:<60} {r['dataset']:<11} {r['files']:>6} files {r['seconds']:7.3f} s{extra}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
