"""Expected values of the metrics each notebook writes under its CI parameters.

``tests/expected_metrics/NN_name.json`` holds ``{"tolerance": {...}, "metrics": {...}}`` and
``written_on``, the processor and torch build that wrote it (:func:`lcc_utils.reproduce.processor`).

* **On that machine** numbers must agree within ``abs`` + ``rel`` * |expected| (defaults below; a
  file may set its own, and ``per_metric`` overrides single names); CPU results there are
  bit-identical, so any change that alters a result fails with the metric's name.
* **On another processor** its float kernels sum in another order and SGD turns the last bits
  into another trajectory: a number passes within the file's tolerance *or* the cross-processor
  tolerance of its kind (:func:`lcc_utils.reproduce.compare_metrics`: binomial standard errors at
  the run's ``n_test``, macro averages at ``n_test`` / classes, points, p-values, trajectories).
  Metrics matching ``same_machine_only["pattern"]`` are compared on the writing machine only,
  for the reason the file gives (measured: the CI chain's 12-step model at 20 % accuracy keeps it
  at CR 9 on one processor and falls to chance on another). A file without ``written_on`` (written
  before it was recorded) is compared the cross-processor way everywhere.

Everything else (counts given as integers, strings, hashes, booleans) must be equal everywhere.
Timings are never compared: a metric whose name matches ``VOLATILE`` is left out when the file is
written.

Write or refresh a file from a finished run folder (and review the diff before committing)::

    python tests/metric_check.py <run folder> > tests/expected_metrics/NN_name.json
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

#: Metric names that measure time or the machine, not the result.
VOLATILE = re.compile(r"seconds|(^|_)ms(_per|$)|per_second|latency|(^|_)device$|scores_file|cost_ratio")
DEFAULT_TOLERANCE = {"abs": 0.01, "rel": 0.0}


def compare_metrics(expected: dict, actual: dict, n_classes: int | None = None,
                    here: str | None = None) -> list[str]:
    """One line per disagreement: ``name: expected X, got Y (tolerance ...)``.

    ``n_classes``: the classes the run evaluated (macro averages); ``here``: this machine's
    :func:`lcc_utils.reproduce.processor` (looked up when not given).
    """
    from lcc_utils import reproduce

    tol = {**DEFAULT_TOLERANCE, **expected.get("tolerance", {})}
    per = expected.get("per_metric", {})
    same_machine = expected.get("written_on") is not None and expected["written_on"] == (here or reproduce.processor())
    only_there = expected.get("same_machine_only", {}).get("pattern")
    wanted = {k: v for k, v in expected["metrics"].items()
              if same_machine or not (only_there and re.search(only_there, k))}
    kinds = None if same_machine else reproduce.compare_metrics(
        wanted, {k: actual[k] for k in wanted if k in actual}, n_classes=n_classes).set_index("metric")
    problems = []
    for name, want in wanted.items():
        if name not in actual:
            problems.append(f"{name}: expected {want!r}, missing from metrics.json")
            continue
        got = actual[name]
        t = {**tol, **per.get(name, {})}
        number = isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool)
        if number and (math.isnan(want) and math.isnan(got) or abs(got - want) <= t["abs"] + t["rel"] * abs(want)):
            continue
        if not number and got == want:
            continue
        # another processor: within its kind's tolerance (strings and counts stay exact there too;
        # best_epoch may move by its trajectory tolerance)
        if kinds is not None and kinds.loc[name, "status"] in ("within", "identical", "not compared"):
            continue
        shown = f"{name}: expected {want!r}, got {got!r}"
        if number:
            shown += f" (tolerance abs {t['abs']}, rel {t['rel']}" + ("" if kinds is None else (
                f"; another processor's {kinds.loc[name, 'kind']} tolerance {kinds.loc[name, 'tolerance']:.4g}")) + ")"
        problems.append(shown)
    return problems


def expected_from_run(run_dir: str | Path) -> dict:
    """The expected-metrics document of a finished run (volatile metrics left out)."""
    from lcc_utils import reproduce

    metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    return {"tolerance": DEFAULT_TOLERANCE, "written_on": reproduce.processor(),
            "metrics": {k: v for k, v in sorted(metrics.items()) if not VOLATILE.search(k)
                        and not isinstance(v, (dict, list))}}


if __name__ == "__main__":
    print(json.dumps(expected_from_run(sys.argv[1]), indent=1))
