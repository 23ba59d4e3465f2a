import json

import nbformat
import pandas as pd
import pytest

from lcc_utils import runs


def test_same_params_same_folder_and_data_dir_excluded():
    a = runs.run_dir("train", {"dataset": "eurosat", "seed": 1, "data_dir": "/a"})
    b = runs.run_dir("train", {"dataset": "eurosat", "seed": 1, "data_dir": "/elsewhere"})
    c = runs.run_dir("train", {"dataset": "eurosat", "seed": 2, "data_dir": "/a"})
    assert a == b and a != c
    assert a.parent.name == "train" and a.name.startswith("eurosat-1-")


def test_start_run_writes_params_and_metrics_are_never_overwritten():
    run = runs.start_run("train", {"dataset": "eurosat", "seed": 0}, data_hash="abc", split_hash="s1")
    info = json.loads((run.dir / "params.json").read_text())
    assert info["params"] == {"dataset": "eurosat", "seed": 0} and info["data_hash"] == "abc"
    assert info["split_hash"] == "s1" and info["code_version"]
    assert not run.finished
    run.save_table(pd.DataFrame({"a": [1]}), "t")
    run.log_metrics({"acc": 0.5, "n": 3})
    assert run.finished
    run.log_metrics({"acc": 0.5, "n": 3})  # a deterministic rerun: no-op
    with pytest.raises(runs.RunConflictError, match="never overwritten"):
        run.log_metrics({"acc": 0.6, "n": 3})
    assert json.loads((run.dir / "metrics.json").read_text())["acc"] == 0.5
    with pytest.raises(runs.RunConflictError, match="other data"):
        runs.start_run("train", {"dataset": "eurosat", "seed": 0}, data_hash="xyz")


def test_bad_stage_name():
    with pytest.raises(ValueError, match="stage='Train!'"):
        runs.run_dir("Train!", {})


def _tiny_notebook(path, body="x = 1"):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("from lcc_utils import runs"),
        nbformat.v4.new_code_cell("value = 2  # a number\ndata_dir = ''  # where", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("run = runs.start_run('toy', dict(value=value, data_dir=data_dir))\n"
                                  f"{body}\nrun.log_metrics({{'double': value * 2}})"),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


def test_execute_notebook_lands_in_run_folder_and_skips_finished(tmp_path):
    nb = _tiny_notebook(tmp_path / "09_toy.ipynb")
    assert runs.notebook_defaults(nb) == {"value": 2, "data_dir": ""}
    d, executed = runs.execute_notebook(nb, {"value": 5, "data_dir": "/x"})
    assert executed and (d / "09_toy.ipynb").exists() and d.parent.name == "toy"
    assert json.loads((d / "metrics.json").read_text()) == {"double": 10}
    d2, executed2 = runs.execute_notebook(nb, {"value": 5})
    assert d2 == d and not executed2
    df = runs.collect_runs("toy")
    assert df.loc[0, "double"] == 10 and df.loc[0, "value"] == 5 and "data_dir" not in df
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['valu'\]"):
        runs.execute_notebook(nb, {"valu": 1})


def test_notebook_without_metrics_is_an_error(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("a = 1", metadata={"tags": ["parameters"]})]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(tmp_path / "10_nometrics.ipynb"))
    with pytest.raises(RuntimeError, match="wrote no metrics.json"):
        runs.execute_notebook(tmp_path / "10_nometrics.ipynb", {})


def test_smoke_profile_figures_do_not_overwrite_the_study_figures(monkeypatch, tmp_path):
    import os

    from lcc_utils import study

    monkeypatch.delenv("LCC_FIGURES_DIR", raising=False)
    monkeypatch.setattr(study, "notebooks", lambda: [])
    monkeypatch.setattr(study, "prepare_data", lambda *a, **k: None)
    study.run_study("smoke", str(tmp_path))
    assert os.environ["LCC_FIGURES_DIR"].endswith(os.path.join("figures", "smoke"))
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        study.profile_runs(tmp_path / "01_x.ipynb", "fast")
