"""One-off: committed run files name no machine (location fields only; run hashes unchanged).

Runs made before ``runs._recorded_params`` and ``runs.machine_free`` recorded their locations
portably hold the absolute paths of the machine that made them:

- ``params.json`` ``params.data_dir``: ``/work/shared/data``, the study's resolved data root.
  Written as today's code writes a data root beside the project: ``../shared/data`` (relative
  to the project root; :func:`lcc_utils.paths.resolve_data_dir` resolves it the same way).
- ``params.json`` ``coreset_info.scores_file`` (notebook 04): ``/work/main/cache/coreset_scores/<f>``.
  Written as :func:`lcc_utils.runs.shown_path` names a cache file: ``cache/coreset_scores/<f>``.
- ``map_report.json`` ``path`` and ``exact_patch_mode.path`` (notebook 08): ``/work/h11/runs/...``
  and ``/work/h11/cache/...``. Written as ``runs/...`` and ``cache/...`` (what ``Run.save_json``
  writes today; the newer committed 08 run already reads so).

Every one of these is a location, never hashed (``runs.LOCATION_PARAMS``; ``coreset_info`` is
provenance beside ``params``) nor compared (``runs.LOCATION_METRICS``). The rewrite is textual,
value by value, so every other byte stays as ``runs.py`` wrote it; the script checks that the
parsed JSON differs in those values alone and that ``runs.params_hash`` of every rewritten
``params.json`` is the same before and after (and still the folder's suffix where it was).

Usage (from the project root)::

    .venv/bin/python scripts/migrate_machine_paths.py [--apply]

Without ``--apply`` it only lists the files it would change. Running it again after ``--apply``
finds nothing to change.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

from lcc_utils import runs
from lcc_utils.paths import project_root

#: An absolute path under some project checkout's ``cache/`` or ``runs/`` (the old machine's root
#: is whatever comes before the first of them).
UNDER_PROJECT = re.compile(r"^/[^\"\s]*?/(cache|runs)/(.+)$")
#: A data root beside a project checkout (the team's and CI's layout): ``<parent>/shared/data``.
SHARED_DATA = re.compile(r"^/[^\"\s]*/shared/data/?$")


def portable(key: str, value: object) -> object:
    """The value today's code records for an absolute location ``value`` (``value`` when not one)."""
    if not isinstance(value, str) or not value.startswith("/"):
        return value
    if key == "data_dir" and SHARED_DATA.match(value):
        return "../shared/data"
    m = UNDER_PROJECT.match(value)
    if m and key in ("scores_file", "path"):
        return f"{m.group(1)}/{m.group(2)}"
    raise ValueError(f"no portable form known for {key}={value!r}")


def rewrites(info: dict, name: str) -> dict[tuple[str, ...], tuple[str, str]]:
    """``{json key path: (old, new)}`` for the location fields of one run file."""
    wanted = {"params.json": [("params", "data_dir"), ("coreset_info", "scores_file")],
              "map_report.json": [("path",), ("exact_patch_mode", "path")]}.get(name, [])
    out = {}
    for keys in wanted:
        v = info
        for k in keys:
            v = v.get(k) if isinstance(v, dict) else None
        new = portable(keys[-1], v)
        if new != v:
            out[keys] = (v, new)
    return out


def _set(info: dict, keys: tuple[str, ...], value: str) -> dict:
    out = json.loads(json.dumps(info))
    d = out
    for k in keys[:-1]:
        d = d[k]
    d[keys[-1]] = value
    return out


def migrate_file(path: Path, apply: bool) -> bool:
    """Rewrite the location fields of one file; return whether it had any."""
    text = path.read_text()
    info = json.loads(text)
    todo = rewrites(info, path.name)
    if not todo:
        return False
    want, out = info, text
    for keys, (old, new) in todo.items():
        line = f'"{keys[-1]}": {json.dumps(old)}'
        if out.count(line) != 1:
            raise RuntimeError(f"{path}: expected one {line!r}")
        out = out.replace(line, f'"{keys[-1]}": {json.dumps(new)}')
        want = _set(want, keys, new)
    if json.loads(out) != want:
        raise RuntimeError(f"{path}: the rewrite changed more than {sorted(todo)}")
    if path.name == "params.json" and "params" in info:
        before, after = runs.params_hash(info["params"]), runs.params_hash(want["params"])
        if before != after:
            raise RuntimeError(f"{path}: params_hash {before} -> {after}")
    if apply:
        path.write_text(out)
    return True


def tracked_run_files(root: Path) -> list[Path]:
    """The ``params.json`` and ``map_report.json`` files git tracks under ``runs/``."""
    names = subprocess.run(["git", "ls-files", "runs"], cwd=root, capture_output=True, text=True,
                           check=True).stdout.split()
    return [root / n for n in names if Path(n).name in ("params.json", "map_report.json")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--apply", action="store_true", help="rewrite the files (default: only list them)")
    args = ap.parse_args()
    root = project_root()
    changed = [p for p in tracked_run_files(root) if migrate_file(p, args.apply)]
    for p in changed:
        print(("rewrote " if args.apply else "would rewrite ") + str(p.relative_to(root)))
    print(f"{len(changed)} file(s) {'rewritten' if args.apply else 'to rewrite (pass --apply)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
