"""One-off: the ``data_hash`` of committed notebook-02 runs now covers the EuroSAT MS files too.

Notebook 02 recorded the scene's ``product_hash`` alone, although it also cuts paper B's EuroSAT
MS patch sets; it now records :func:`lcc_utils.sentinel2.preprocessing_data_hash` (the product
hash and EuroSAT MS's content hash), which :func:`lcc_utils.runs.execute_notebook` checks before
it skips a finished 02 run. For each committed 02 run that built EuroSAT patch sets this script
first *checks* that the EuroSAT MS under the data root is the one the run used -- it rebuilds
every patch set the run recorded (``eurosat_ms_<task>_hash`` in its ``metrics.json``) and
compares the hashes -- and only then replaces the ``"data_hash": "<product hash>"`` line of its
``params.json`` (every other byte stays). A run whose patch sets do not rebuild is left alone
and named.

Usage (from the project root)::

    .venv/bin/python scripts/migrate_preprocessing_hash.py [--data-dir ../shared/data] [--apply]

Without ``--apply`` it only prints what it would change. Running it again finds nothing to change.
"""

from __future__ import annotations

import argparse
import json
import sys

from lcc_utils import data, paper_b
from lcc_utils import sentinel2 as s2
from lcc_utils.paths import project_root, resolve_path


def _rebuilds(params: dict, metrics: dict, ds: data.ImageDataset) -> bool:
    """Whether the run's recorded EuroSAT MS patch sets rebuild with the same hashes from ``ds``."""
    tasks = [t for t in ("binary", "multiclass") if f"eurosat_ms_{t}_hash" in metrics]
    built = paper_b.build_eurosat_patchsets(ds, tasks, patch_size=params["patch_size"], bands=params["bands"],
                                            seed=params["seed"], block_size_m=params["eurosat_block_size_m"],
                                            buffer_m=params.get("eurosat_buffer_m", 0.0))
    return bool(tasks) and all(built[t][0].hash == metrics[f"eurosat_ms_{t}_hash"] for t in tasks)


def main(argv: list[str] | None = None) -> int:
    """Check and rewrite the committed 02 runs' data hashes (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--apply", action="store_true")
    args = ap.parse_args(argv)
    ds = data.load_dataset("eurosat_ms", args.data_dir)
    failed = 0
    for pfile in sorted(project_root().glob("runs/**/sentinel2/*/params.json")):
        info = json.loads(pfile.read_text())
        params, metrics = info["params"], json.loads((pfile.parent / "metrics.json").read_text())
        if params.get("eurosat_task", "none") == "none":
            continue
        product = s2.open_l2a(resolve_path(params["scene"]), params["bands"])
        old, new = s2.product_hash(product), s2.preprocessing_data_hash(product, params["eurosat_task"], args.data_dir)
        if info["data_hash"] != old:
            print(f"{pfile.parent.relative_to(project_root())}: data_hash {info['data_hash']} is not the "
                  f"product hash {old} (already migrated, or another scene): left alone")
            continue
        if not _rebuilds(params, metrics, ds):
            print(f"{pfile.parent.relative_to(project_root())}: its patch sets do not rebuild from this "
                  "EuroSAT MS: left alone")
            failed += 1
            continue
        print(f"{pfile.parent.relative_to(project_root())}: {old} -> {new} (patch sets rebuilt: same hashes)")
        if args.apply:
            text = pfile.read_text()
            fixed = text.replace(f'"data_hash": "{old}"', f'"data_hash": "{new}"', 1)
            assert {**json.loads(fixed), "data_hash": old} == info
            pfile.write_text(fixed)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
