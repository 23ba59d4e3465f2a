"""One-off: rewrite the ``data_hash`` of committed runs from the old paths+sizes key to the content hash.

Until the data hash became a content hash (``lcc_utils.fingerprints``), ``ImageDataset.hash``
was sha256 over (relative path, byte size) of every file and ``product_hash`` over (file
name, byte size) of the band files. The committed ``runs/**/params.json`` record those old
values, so ``runs.start_run`` ("run ... was made on other data") and
``paper_a.prepare_compression`` would refuse every committed run although the data are the
same files. This script recomputes, for every dataset and the Sentinel-2 product under the
data root, the OLD value (private copies of the old functions below) and the NEW content
hash, and replaces each old value by the new one in ``params.json`` -- a textual
replacement of the ``"data_hash": "<old>"`` line only, so every other byte of the file
stays as ``runs.py`` wrote it (checked: the parsed JSON differs in ``data_hash`` alone).

Hashes that are not data hashes of these datasets stay as they are: patch-set hashes
recorded as ``data_hash`` (notebooks 06/07; computed from pixels, unchanged) and the
``runs_hash`` of notebook 09. Deliberately NOT rewritten: the executed notebooks' printed
output ("data hash: ..."), ``scores_file`` paths in ``metrics.json`` and the cache paths and
``source`` string in ``runs/sentinel2/*/artefacts.json``: they record what a past execution
printed or which cache file it used, and no code compares them with the data.

Usage (from the project root)::

    .venv/bin/python scripts/migrate_data_hash.py [--data-dir ../shared/data] [--apply]

Without ``--apply`` it only prints the mapping and the files it would change. Running it
again after ``--apply`` finds nothing to change.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from lcc_utils import data
from lcc_utils import sentinel2 as s2
from lcc_utils.paths import project_root, resolve_data_dir

#: The Sentinel-2 product the committed runs of notebooks 02 and 08 read (their ``scene``).
SCENES = ("sentinel2-l2a/S2A_29RKH_20200219_0_L2A",)


def old_file_list_hash(folder: Path, files: list[str]) -> str:
    """The old ``data.file_list_hash``: sha256 over relative paths and byte sizes."""
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f}\t{(folder / f).stat().st_size}\n".encode())
    return h.hexdigest()[:16]


def old_product_hash(product: s2.L2AProduct) -> str:
    """The old ``sentinel2.product_hash``: band/SCL file names and sizes + metadata bytes."""
    h = hashlib.sha256()
    files = sorted({p for p, _ in product.sources.values()}
                   | ({product.scl[0]} if product.scl else set()))
    for f in files:
        h.update(f"{f.name}:{f.stat().st_size}|".encode())
    root = product.path if product.path.is_dir() else product.path.parent
    for meta in sorted(root.glob("*.json")) + sorted(root.glob("MTD_MSIL2A.xml")):
        h.update(meta.read_bytes())
    h.update("|".join(product.bands).encode())
    return h.hexdigest()[:16]


def hash_mapping(data_dir: str | None) -> dict[str, tuple[str, str]]:
    """``{old hash: (what, new hash)}`` for every dataset and scene found under the data root."""
    root = resolve_data_dir(data_dir)
    out = {}
    for name, spec in data.DATASETS.items():
        folder = root / spec.subdir
        if not folder.is_dir():
            print(f"  {name}: not under {root}, skipped")
            continue
        files, _, _ = data.scan_folder(spec, folder)
        out[old_file_list_hash(folder, files)] = (name, data.dataset_hash(folder, files))
    for scene in SCENES:
        if (root / scene).is_dir():
            product = s2.open_l2a(root / scene)  # the notebooks' default bands, as the runs used
            out[old_product_hash(product)] = (scene, s2.product_hash(product))
    return out


def migrate(runs_root: Path, mapping: dict[str, tuple[str, str]], apply: bool) -> list[Path]:
    """Replace old data hashes in ``params.json`` files; return the files (to be) changed."""
    changed = []
    for p in sorted(runs_root.rglob("params.json")):
        text = p.read_text()
        info = json.loads(text)
        old = info.get("data_hash")
        if old not in mapping:
            continue
        new = mapping[old][1]
        line = f'"data_hash": "{old}"'
        if text.count(line) != 1:
            raise RuntimeError(f"{p}: expected one {line!r}")
        out = text.replace(line, f'"data_hash": "{new}"')
        if json.loads(out) != {**info, "data_hash": new}:
            raise RuntimeError(f"{p}: the rewrite changed more than data_hash")
        changed.append(p)
        if apply:
            p.write_text(out)
    return changed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=None, help="data root (default: $LCC_DATA_DIR, else data/)")
    ap.add_argument("--runs", default=str(project_root() / "runs"), help="runs root (default: runs/)")
    ap.add_argument("--apply", action="store_true", help="rewrite the files (default: only list them)")
    args = ap.parse_args()
    mapping = hash_mapping(args.data_dir)
    for old, (what, new) in mapping.items():
        print(f"{what}: {old} -> {new}")
    changed = migrate(Path(args.runs), mapping, args.apply)
    root = Path(args.runs).parent
    for p in changed:
        print(("rewrote " if args.apply else "would rewrite ") + str(p.relative_to(root)))
    print(f"{len(changed)} params.json {'rewritten' if args.apply else 'to rewrite (pass --apply)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
