"""``make demo`` and the ``lcc`` command: plan, summary width, package paths outside a checkout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lcc_utils import cli, demo, paths, study

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_every_notebook_once_in_dependency_order():
    plan = [(nb.stem, demo_params) for nb in dict.fromkeys(nb for nb, _ in study.study_plan("smoke"))
            for demo_params in study.demo_runs(nb)]
    stems = [s for s, _ in plan]
    assert sorted(set(stems)) == [nb.stem for nb in study.notebooks()]
    assert stems.count("04_train") == 2 and len(stems) == len(study.notebooks()) + 1  # 09 compares two coresets
    assert stems.index("07_ablation") < stems.index("06_evaluation") < stems.index("08_mapping")
    p = dict(plan[::-1])  # the first run of each notebook
    assert p["01_data"]["dataset"] == "eurosat_ms" and p["04_train"]["coreset"] == "random"
    assert p["09_paper_a_tables"] == {"profile": "demo"}
    # what 09 and 05 look up is what the demo ran: one 04 run, one 05 run
    nb04, nb05 = (study.notebooks()[i] for i in (3, 4))
    assert study.profile_runs(nb04, "demo") == [q for s, q in plan if s == "04_train"]
    assert study.profile_runs(nb05, "demo") == [p["05_compression"]]
    assert p["05_compression"]["train_run"].items() <= p["04_train"].items()


def test_demo_summary_fits_120_columns_and_names_every_run(tmp_path):
    smoke = {"01": "data/eurosat-ms-*", "02": "sentinel2/*", "03": "coresets/*", "04": "train/*random*",
             "05": "compression/*", "06": "evaluation/binary-*", "07": "ablation/*", "08": "mapping/*",
             "09": "paper_a_tables/*"}  # the committed smoke runs stand in for a demo's
    rows = [{"notebook": nb.stem, "run_dir": str(next((ROOT / "runs" / "smoke").glob(smoke[nb.stem[:2]]))),
             "executed": True, "seconds": 12.3} for nb in study.notebooks()]
    rows.append({"notebook": "99_broken", "run_dir": "", "seconds": 1.0, "error": "RuntimeError: " + "x" * 400})
    text = demo.summary(rows)
    assert max(len(line) for line in text.splitlines()) <= 120, text
    for nb in study.notebooks():
        assert nb.stem in text
    assert "(no headline" not in text and "test accuracy" in text and "OA: CNN" in text
    assert "FAILED: RuntimeError" in text
    assert "quick study:" in text and "make study" in text


def test_headline_of_a_missing_metric_says_so():
    assert demo.headline("04", {}).startswith("(no headline: KeyError")


def test_lcc_help_lists_the_subcommands():
    r = subprocess.run([sys.executable, "-m", "lcc_utils.cli", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0
    for name in ("demo", "study", "reproduce", "verify-data"):
        assert name in r.stdout
    bad = subprocess.run([sys.executable, "-m", "lcc_utils.cli", "sutdy"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "invalid choice: 'sutdy'" in bad.stderr


def test_lcc_passes_options_to_the_module(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["study", "--help"])
    assert e.value.code == 0 and "--profile" in capsys.readouterr().out
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'lcc = "lcc_utils.cli:main"' in pyproject
    makefile = (ROOT / "Makefile").read_text()
    for name in ("demo", "study", "reproduce", "verify-data"):
        assert f"$(LCC) {name}" in makefile, name


def test_outside_a_checkout_the_cache_is_the_users_and_profiles_are_required(tmp_path, monkeypatch):
    monkeypatch.delenv("LCC_CACHE_DIR", raising=False)
    monkeypatch.setenv("LCC_PROJECT_ROOT", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    (tmp_path / "elsewhere").mkdir()
    assert not paths.in_checkout()
    d = paths.cache_dir()
    assert d.name == "lcc" and not d.is_relative_to(tmp_path / "elsewhere")
    monkeypatch.setenv("LCC_CACHE_DIR", str(tmp_path / "mine"))
    assert paths.cache_dir() == tmp_path / "mine"
    with pytest.raises(FileNotFoundError, match="elsewhere/profiles: no profiles folder"):
        study.profile_runs(ROOT / "notebooks" / "04_train.ipynb", "quick")
    with pytest.raises(FileNotFoundError, match="elsewhere/notebooks: no notebooks folder"):
        study.notebooks()


def test_pyproject_lists_every_third_party_import():
    """Every top-level module lcc_utils imports is a declared dependency (or the standard library)."""
    import ast

    mods = set()
    for p in (ROOT / "lcc_utils").rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                mods |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                mods.add(node.module.split(".")[0])
    third = sorted(m for m in mods - set(sys.stdlib_module_names) - {"lcc_utils", "__future__"})
    text = (ROOT / "pyproject.toml").read_text().lower()
    dist = {"PIL": "pillow", "sklearn": "scikit-learn", "IPython": "ipython", "jupyter_client": "jupyter-client",
            "jupyter_core": "jupyter-core", "dask_jobqueue": "dask-jobqueue"}
    missing = [m for m in third if f'"{dist.get(m, m).lower()}' not in text]
    assert not missing, f"imported by lcc_utils but not in pyproject.toml: {missing}"


def test_table1_figure_shares_x_and_says_when_there_is_nothing_to_compare():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from lcc_utils import paper_a

    rows = [{"model": "plain_cnn", "dataset": "eurosat", "fraction": f, "coreset": c, "diff_vs_random": d,
             "ci_low": d - 1, "ci_high": d + 1} for f, c, d in ((0.05, "random", 0.0), (0.05, "margin", -8.0),
                                                               (0.1, "random", 0.0), (0.1, "margin", 1.0))]
    fig = paper_a.plot_table1(pd.DataFrame(rows))
    a, b = fig.axes[:2]
    assert a.get_xlim() == b.get_xlim() and "(points)" in a.get_xlabel()
    only_random = paper_a.plot_table1(pd.DataFrame([r for r in rows if r["coreset"] == "random"]))
    assert "nothing to compare" in only_random.axes[0].texts[0].get_text()
    plt.close("all")
