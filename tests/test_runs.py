import json
import os
from pathlib import Path

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
    run = runs.start_run({"dataset": "eurosat", "seed": 0}, data_hash="abc", stage="train", split_hash="s1")
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
    # the same parameters on other data: a run of its own beside it, never a conflict
    other = runs.start_run({"dataset": "eurosat", "seed": 0}, data_hash="xyz12345678", stage="train")
    assert other.dir == runs.data_variant_dir(run.dir, "xyz12345678") and other.dir.name.endswith("-data-xyz12345")
    assert not other.finished and not other.staged and runs.recorded_data_hash(other.dir) == "xyz12345678"
    assert json.loads((run.dir / "params.json").read_text())["data_hash"] == "abc"
    with pytest.raises(ValueError, match="needs the stage"):
        runs.start_run({"dataset": "eurosat"})


def _snapshot(folder):
    """Every file of ``folder``: its bytes and modification time (what 'untouched' means)."""
    return {p.relative_to(folder): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_reopened_finished_run_writes_only_into_its_staging_folder(tmp_cache):
    params = {"dataset": "eurosat", "seed": 0}
    run = runs.start_run(params, data_hash="abc", stage="train")
    run.save_table(pd.DataFrame({"a": [1]}), "t")
    run.log_metrics({"acc": 0.5, "n": 3, "train_seconds": 12.0})
    assert run.out == run.dir and not run.staged
    before = _snapshot(run.dir)

    again = runs.start_run(params, data_hash="abc", stage="train")
    assert again.dir == run.dir and again.staged
    assert again.out == runs.rerun_dir(run.dir) == tmp_cache / "rerun" / "train" / run.dir.name
    assert again.save_table(pd.DataFrame({"a": [2]}), "t").parent == again.out
    assert again.path("checkpoints/best.pt").parent == again.out / "checkpoints"
    assert (again.out / "params.json").is_file()
    # the same within the tolerance, a timing aside (a measurement, not a result): a no-op
    again.log_metrics({"acc": 0.5 * (1 + 1e-9), "n": 3, "train_seconds": 15.0})
    with pytest.raises(runs.RunConflictError, match=r"different metrics \(acc\); it is never overwritten") as err:
        again.log_metrics({"acc": 0.6, "n": 3, "train_seconds": 12.0})
    assert "0.5 -> 0.6" in str(err.value) and str(again.out) in str(err.value)
    assert _snapshot(run.dir) == before


def test_a_rerun_skips_the_metrics_that_make_reproduce_skips():
    from lcc_utils import reproduce

    names = {"train_seconds": True, "scores_file": True, "cost_ratio": True, "throughput_img_s": True,
             "test_accuracy": False, "n_test": False, "best_epoch": False, "split_hash": False,
             "model_source": True}
    for name, skipped in names.items():
        assert bool(runs.NOT_COMPARED.search(name)) is skipped, name
        assert (reproduce.metric_kind(name, 1.0)[1] is None) is skipped, name


def test_bad_stage_name():
    with pytest.raises(ValueError, match="stage='Train!'"):
        runs.run_dir("Train!", {})


def _tiny_notebook(path, body="x = 1"):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("from lcc_utils import runs"),
        nbformat.v4.new_code_cell("value = 2  # a number\ndata_dir = ''  # where", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("run = runs.start_run(runs.notebook_params(globals()))\n"
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


def test_kernels_start_with_lccs_allocator_settings(tmp_path, monkeypatch):
    """KERNEL_ENV reaches the kernel's environment (glibc reads it at start); the caller's is restored.

    Under any kernel: execute_notebook sets the variables a caller has not set, and the ``lcc``
    kernel's kernel.json (``make test`` runs with LCC_KERNEL=lcc) sets them itself.
    """
    body = "import os\nvalue = int(os.environ['MALLOC_MMAP_THRESHOLD_']) + int(os.environ['MALLOC_TRIM_THRESHOLD_'])"
    nb = _tiny_notebook(tmp_path / "09_envtoy.ipynb", body)
    for k in runs.KERNEL_ENV:
        monkeypatch.delenv(k, raising=False)
    d, _ = runs.execute_notebook(nb, {"value": 1})
    assert json.loads((d / "metrics.json").read_text()) == {"double": 2 * (256 * 2**20 + 2**30)}
    assert not any(k in os.environ for k in runs.KERNEL_ENV)


def test_notebook_without_metrics_is_an_error(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("a = 1", metadata={"tags": ["parameters"]})]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(tmp_path / "10_nometrics.ipynb"))
    with pytest.raises(RuntimeError, match="wrote no metrics.json"):
        runs.execute_notebook(tmp_path / "10_nometrics.ipynb", {})
    assert not any(runs.runs_root().glob("nometrics/*")), "an unfinished run must leave no folder"


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


def _namespace(*cells, **values):
    """What a kernel holds after executing ``cells``: IPython's history ``In`` and the variables."""
    return {"In": ["", *cells], **values}


def test_notebook_params_come_from_the_executed_parameters_cell(monkeypatch):
    monkeypatch.setenv(runs.NOTEBOOK_ENV, "04_train.ipynb")
    ns = _namespace("from lcc_utils import runs", "fraction = 0.1  # share\nseed = 0",
                    "# Parameters\nfraction = 0.05\n", "params = runs.notebook_params(globals())",
                    fraction=0.05, seed=0, runs=runs)
    p = runs.notebook_params(ns)
    assert p == {"fraction": 0.05, "seed": 0} and p.stage == "train" and p.notebook == "04_train.ipynb"
    bad = _namespace("fraction = 0.1\nseed = 0", "# Parameters\nfracton = 0.05\n", fraction=0.1, seed=0, fracton=0.05)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['fracton'\] \(did you mean 'fracton' -> "
                                         r"'fraction'\?\) for 04_train.ipynb"):
        runs.notebook_params(bad)
    # a kernel without history (nbval): the cell of the notebook file the environment names
    defaults = runs.notebook_defaults(runs.notebook_path("04"))
    assert runs.notebook_params({"In": [], **defaults}) == defaults
    monkeypatch.delenv(runs.NOTEBOOK_ENV)
    with pytest.raises(ValueError, match="no executed parameters cell"):
        runs.notebook_params(_namespace("import os"))


def test_notebook_is_found_by_its_parameter_names_under_bare_papermill(monkeypatch):
    """No JupyterLab session and no LCC_NOTEBOOK: the notebook declaring the executed names."""
    monkeypatch.delenv(runs.NOTEBOOK_ENV, raising=False)
    defaults = runs.notebook_defaults(runs.notebook_path("04"))
    cell = "\n".join(f"{k} = {v!r}" for k, v in defaults.items()) + "\ndummy = 1"
    p = runs.notebook_params(_namespace(cell, **defaults, dummy=1))
    assert p.stage == "train" and p["dummy"] == 1
    assert runs.notebook_stage("02_sentinel2_preprocessing.ipynb") == "sentinel2"
    assert runs.notebook_stage("04_train-Copy1.ipynb") == "train"


def test_grids_expand_and_refer_to_runs_by_parameters(tmp_path):
    from lcc_utils import study

    nb4, nb5 = runs.notebook_path("04_train"), runs.notebook_path("05")
    grid = {"dataset": "eurosat", "coreset": ["random", "margin"], "fraction": [0.05, 0.1], "seed": [0, 1, 2]}
    rows = study.expand_grid(nb4, grid)
    assert len(rows) == 12 and rows[0] == {"dataset": "eurosat", "coreset": "random", "fraction": 0.05, "seed": 0}
    # a list-valued parameter is one value; a list of lists (or of dicts) sweeps it
    assert study.expand_grid(nb5, {"bits": [2, 4]}) == [{"bits": [2, 4]}]
    assert len(study.expand_grid(nb5, {"bits": [[2], [4]], "train_run": [{"seed": 0}, {"seed": 1}]})) == 4
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['fracton'\]"):
        study.expand_grid(nb4, {"fracton": [0.1]})
    with pytest.raises(FileNotFoundError, match="papermill notebooks/04_train.ipynb out.ipynb -p fraction 0.05"):
        runs.find_run("04", {"fraction": 0.05})
    d = runs.find_run("04", {"fraction": 0.05}, finished=False)
    assert d == runs.run_dir("train", runs.resolve_params(nb4, {"fraction": 0.05}))


def test_tidy_executed_notebook_keeps_what_a_reader_sees_without_escapes(tmp_path):
    """Progress bars on stderr: merged per stream, ANSI escapes gone, each line in its final state."""
    import nbformat

    from lcc_utils.runs import tidy_executed_notebook

    cell = nbformat.v4.new_code_cell("train()")
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stderr", text="train:   0%|   | 0/3\x1b[A\r"),
        nbformat.v4.new_output("stream", name="stderr", text="train:  67%|## | 2/3\rtrain: 100%|###| 3/3\n"),
        nbformat.v4.new_output("stream", name="stdout", text="test accuracy 0.97\n"),
        nbformat.v4.new_output("stream", name="stderr", text="\x1b[A\r\n"),
    ]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), str(path))
    tidy_executed_notebook(path)
    outs = nbformat.read(str(path), as_version=4).cells[0].outputs
    assert [(o.name, o.text) for o in outs] == [("stderr", "train: 100%|###| 3/3\n"),
                                               ("stdout", "test accuracy 0.97\n")]
    assert "\x1b" not in path.read_text()


def test_tidy_executed_notebook_names_no_machine_path(tmp_path):
    import nbformat

    from lcc_utils.paths import project_root
    from lcc_utils.runs import tidy_executed_notebook

    root = project_root().resolve()
    cell = nbformat.v4.new_code_cell(f'data_dir = "{root.parent}/shared/data"\n')
    book = nbformat.v4.new_notebook(cells=[cell])
    book.metadata["papermill"] = {"input_path": f"{root}/notebooks/04_train.ipynb"}
    path = tmp_path / "nb.ipynb"
    nbformat.write(book, str(path))
    tidy_executed_notebook(path)
    back = nbformat.read(str(path), as_version=4)
    assert back.cells[0].source == 'data_dir = "../shared/data"\n'
    assert back.metadata["papermill"]["input_path"] == "notebooks/04_train.ipynb"
    assert str(root) not in path.read_text()


def test_tidy_shows_a_runs_folder_elsewhere_as_runs(tmp_path, monkeypatch):
    """The tests' runs root (a temporary folder) is written runs/..., as the project's would be."""
    import nbformat

    from lcc_utils.runs import runs_root, tidy_executed_notebook

    elsewhere = runs_root().resolve()
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"model {elsewhere}/evaluation/b-1/m\n"
                                                                         f"root {elsewhere}\nother {elsewhere}2/z\n")]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), str(path))
    tidy_executed_notebook(path)
    text = nbformat.read(str(path), as_version=4).cells[0].outputs[0]["text"]
    assert text == f"model runs/evaluation/b-1/m\nroot runs\nother {elsewhere}2/z\n"


def test_papermill_with_a_misspelled_parameter_fails_naming_it(tmp_path):
    """``papermill 04_train.ipynb o.ipynb -p epoch 5`` stops at the parameters, suggesting ``epochs``."""
    import papermill as pm

    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(runs.notebook_path("04")), str(tmp_path / "o.ipynb"), parameters={"epoch": 5},
                            kernel_name=os.environ.get("LCC_KERNEL") or None, progress_bar=False,
                            cwd=str(runs.notebooks_dir().parent))
    assert "unknown parameter(s) ['epoch'] (did you mean 'epoch' -> 'epochs'?)" in str(err.value)
    assert not any(runs.runs_root().glob("train/*")), "a refused run must leave no folder"


def _finished_shifting_toy(tmp_path, extra: str):
    """A finished toy run (value 5) whose table moves by ``$LCC_TOY_SHIFT``; ``extra``: one more line."""
    body = ("import os\nimport pandas as pd\nvalue += int(os.environ.get('LCC_TOY_SHIFT', '0'))\n"
            f"run.save_table(pd.DataFrame({{'v': [value]}}), 'table')\n{extra}")
    nb = _tiny_notebook(tmp_path / "09_toy.ipynb", body)
    d, _ = runs.execute_notebook(nb, {"value": 5})
    return nb, d, _snapshot(d)


def test_reexecuting_a_finished_run_changes_no_file_of_its_folder(tmp_path, tmp_cache, monkeypatch):
    """``execute_notebook(force=True)`` reruns into the staging folder; the same metrics are a no-op."""
    nb, d, before = _finished_shifting_toy(tmp_path, "run.path('sub/note.txt').write_text(str(value))")
    assert {str(p) for p in before} >= {"09_toy.ipynb", "metrics.json", "params.json", "table.csv", "sub/note.txt"}

    d2, executed = runs.execute_notebook(nb, {"value": 5}, force=True)
    assert d2 == d and executed
    assert _snapshot(d) == before
    staged = runs.rerun_dir(d)
    assert (staged / "09_toy.ipynb").is_file() and (staged / "sub" / "note.txt").read_text() == "5"

    monkeypatch.setenv("LCC_TOY_SHIFT", "1")  # the rerun now gives other numbers
    with pytest.raises(Exception, match=r"RunConflictError.*different metrics \(double\)"):
        runs.execute_notebook(nb, {"value": 5}, force=True)
    assert _snapshot(d) == before
    assert (staged / "sub" / "note.txt").read_text() == "6"  # the differing rerun, kept for a look


def test_a_failing_notebook_leaves_no_run_folder(tmp_path, tmp_cache):
    nb = _tiny_notebook(tmp_path / "09_toy.ipynb", "raise ValueError('the toy broke')")
    d = runs.run_dir("toy", runs.resolve_params(nb, {"value": 3}))
    with pytest.raises(RuntimeError, match=r"failed and left no run folder; .* is in .*failed/toy/") as err:
        runs.execute_notebook(nb, {"value": 3})
    assert not d.exists() and not any(runs.runs_root().glob("toy/*"))
    kept = tmp_cache / "failed" / "toy" / d.name
    assert str(kept) in str(err.value)
    assert "the toy broke" in (kept / "09_toy.ipynb").read_text() and (kept / "params.json").is_file()


def test_two_writers_of_one_cache_file_at_once_both_finish(tmp_path):
    # two pytest-xdist workers wrote notebook 02's aligned raster into the shared cache at the same
    # time: with one fixed temporary name the first rename took the second writer's file away
    # (FileNotFoundError in CI). Overlapping writers, the second starting while the first writes.
    from lcc_utils.paths import atomic_path

    target = tmp_path / "scene-aligned.tif"
    with atomic_path(target) as first:
        first.write_text("first writer")
        with atomic_path(target) as second:
            assert second != first
            second.write_text("second writer")
        assert target.read_text() == "second writer" and first.read_text() == "first writer"
    assert target.read_text() == "first writer"  # the last rename wins, each copy is complete
    assert [p.name for p in tmp_path.iterdir()] == ["scene-aligned.tif"]  # no temporary file left


def _trained_run(synthetic_root):
    """A finished notebook-04 run folder made on the synthetic data, as a fresh clone has it (no checkpoints)."""
    import shutil

    from lcc_utils import paper_a, training

    params = dict(dataset="eurosat", model="lightweight_cnn", coreset="random", fraction=1.0, seed=0,
                  image_size=16, batch_size=16, device="cpu", recipe="paper_a", epochs=1,
                  data_dir=str(synthetic_root), pretrained=False, weights="",
                  scoring_model="lightweight_cnn", scoring_epochs=2, steps=0, scoring_image_size=16, backbone_run={})
    setup = paper_a.prepare_training(**params)
    run = runs.start_run(params, data_hash=setup.ds.hash, stage="train")
    res = training.train(setup.model, setup.loaders, setup.recipe, epochs=1, device="cpu",
                         run_dir=run.out, seed=0, params=params)
    run.log_metrics({"best_epoch": res.best_epoch})
    shutil.rmtree(run.dir / training.CHECKPOINT_DIR)
    return run.dir, res


def test_rebuilding_a_checkpoint_writes_into_the_staging_folder(synthetic_root, tmp_cache, monkeypatch):
    import torch

    from lcc_utils import paper_a, trained

    d, res = _trained_run(synthetic_root)
    before = _snapshot(d)
    model, info = trained.reopen_trained(d)
    for k, v in model.state_dict().items():
        assert torch.equal(v, res.best_state[k]), k
    assert _snapshot(d) == before, "rebuilding wrote into the run folder"
    staged = trained.staged_folder(d)
    assert staged == tmp_cache / "rerun" / "train" / d.name
    assert (staged / "checkpoints" / "best.pt").is_file() and (staged / "history.csv").is_file()
    # the next reopening finds the rebuilt checkpoint: no second training
    monkeypatch.setattr(paper_a, "retrain_run", lambda *a, **k: pytest.fail("retrained twice"))
    again, _ = trained.reopen_trained(d, rebuild=False)
    assert all(torch.equal(v, res.best_state[k]) for k, v in again.state_dict().items())


def test_rerunning_a_finished_04_run_in_a_fresh_clone_changes_nothing_in_its_folder(synthetic_root, tmp_cache):
    """Notebook 04 on a finished run without checkpoints retrains into the staging folder only."""
    import shutil

    tiny = {"dataset": "eurosat", "data_dir": str(synthetic_root), "model": "lightweight_cnn", "fraction": 1.0,
            "epochs": 1, "steps": 0, "image_size": 16, "batch_size": 16, "device": "cpu", "recipe": "paper_a"}
    nb = runs.notebook_path("04")
    d, _ = runs.execute_notebook(nb, tiny)
    shutil.rmtree(d / "checkpoints")  # a fresh clone: checkpoints are not committed
    before = _snapshot(d)
    assert {"history.csv", "confusion.csv", "per_class.csv", "metrics.json"} <= {str(p) for p in before}
    d2, executed = runs.execute_notebook(nb, tiny, force=True)  # the same metrics (timings aside): a no-op
    assert d2 == d and executed and _snapshot(d) == before
    staged = runs.rerun_dir(d)
    assert (staged / "checkpoints" / "best.pt").is_file()
    assert (staged / "history.csv").is_file() and (staged / "per_class.csv").read_bytes() == before[
        Path("per_class.csv")][0]


def test_01_on_another_copy_of_a_dataset_makes_a_run_of_its_own(synthetic_root, tmp_path, tmp_cache):
    """Other data under the same parameters: its own run folder beside the first, which stays as it was."""
    import shutil

    params = {"dataset": "eurosat", "samples_per_class": 2}
    nb = runs.notebook_path("01")
    d, executed = runs.execute_notebook(nb, {**params, "data_dir": str(synthetic_root)})
    assert executed and (d / "metrics.json").is_file()
    before = _snapshot(d)

    copy = tmp_path / "other_data"  # another copy of EuroSAT: one image differs
    shutil.copytree(synthetic_root / "eurosat", copy / "eurosat", symlinks=True)
    first = sorted((copy / "eurosat").rglob("*.jpg"))[0]
    from PIL import Image

    im = Image.open(first)
    im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(first)
    d2, executed2 = runs.execute_notebook(nb, {**params, "data_dir": str(copy)})
    assert executed2 and d2 != d and d2.parent == d.parent and d2.name.startswith(d.name + "-data-")
    assert (d2 / "metrics.json").is_file()
    info, info2 = (json.loads((x / "params.json").read_text()) for x in (d, d2))
    assert info["params_hash"] == info2["params_hash"] and info["data_hash"] != info2["data_hash"]
    assert _snapshot(d) == before, "the first run's folder changed"
    # each data finds its own run again: skipped, not recomputed
    assert runs.execute_notebook(nb, {**params, "data_dir": str(copy)}) == (d2, False)
    assert runs.execute_notebook(nb, {**params, "data_dir": str(synthetic_root)}) == (d, False)
    assert runs.find_run("01", {**params, "data_dir": str(copy)}) == d2


def test_run_files_show_without_a_machine_path(tmp_path):
    from IPython.lib.pretty import pretty

    run = runs.start_run({"x": 1}, stage="toy")
    p = run.save_table(pd.DataFrame({"a": [1]}), "t")
    assert isinstance(p, Path) and p.is_file()
    assert pretty(p) == f"saved runs/toy/{run.dir.name}/t.csv"
    assert pretty(run.log_metrics({"a": 1})) == f"saved runs/toy/{run.dir.name}/metrics.json"
    assert str(tmp_path) not in pretty(p) and "PosixPath" not in pretty(p)


def test_reopening_a_finished_run_continues_its_checkpoints_in_the_staging_folder(tmp_cache):
    """With its checkpoints at hand a reopened run does not train again: they are copied, never moved."""
    run = runs.start_run({"x": 1}, data_hash="abc", stage="toy")
    for rel in ("checkpoints/last.pt", "checkpoints/best.pt", "models/cnn/checkpoints/best.pt"):
        run.path(rel).write_bytes(rel.encode())
    run.log_metrics({"acc": 0.5})
    before = _snapshot(run.dir)
    again = runs.start_run({"x": 1}, data_hash="abc", stage="toy")
    assert again.staged and _snapshot(run.dir) == before
    for rel in ("checkpoints/last.pt", "checkpoints/best.pt", "models/cnn/checkpoints/best.pt"):
        assert (again.out / rel).read_bytes() == rel.encode(), rel
    (again.out / "checkpoints" / "last.pt").write_bytes(b"newer")  # the staging folder's own are kept
    runs.start_run({"x": 1}, data_hash="abc", stage="toy")
    assert (again.out / "checkpoints" / "last.pt").read_bytes() == b"newer"


def test_refresh_rerenders_a_finished_notebook_only_when_its_results_are_unchanged(tmp_path, tmp_cache, monkeypatch):
    nb, d, before = _finished_shifting_toy(tmp_path, "print(os.environ.get('LCC_TOY_NOTE', 'first'))")
    monkeypatch.setenv("LCC_TOY_NOTE", "refreshed")  # the presentation changes, the results do not
    d2, executed = runs.execute_notebook(nb, {"value": 5}, refresh=True)
    after = _snapshot(d)
    assert d2 == d and executed and "refreshed" in (d / "09_toy.ipynb").read_text()
    assert {k: v for k, v in after.items() if str(k) != "09_toy.ipynb"} == {
        k: v for k, v in before.items() if str(k) != "09_toy.ipynb"}
    monkeypatch.setenv("LCC_TOY_SHIFT", "1")  # other results: refused, the folder untouched
    monkeypatch.setenv("LCC_TOY_NOTE", "shifted")
    with pytest.raises(Exception, match="different metrics"):
        runs.execute_notebook(nb, {"value": 5}, refresh=True)
    assert _snapshot(d) == after


def test_rounded_for_printing_and_machine_free_for_files(tmp_path, monkeypatch):
    import numpy as np

    from lcc_utils import paths

    assert runs.rounded({"lap": [1.5500000000000114, 4.6], "n": 3, "x": np.float32(0.123456)}) == {
        "lap": [1.55, 4.6], "n": 3, "x": 0.1235}
    monkeypatch.setenv("LCC_DATA_DIR", str(tmp_path / "data"))
    scene = tmp_path / "data" / "sentinel2-l2a" / "S2A_X"
    out = runs.machine_free({"path": str(runs.runs_root() / "mapping" / "m" / "map.tif"), "source": str(scene),
                             "other": "/somewhere/else/file.tif", "text": "not a path", "n": 1})
    assert out == {"path": "runs/mapping/m/map.tif", "source": "data:sentinel2-l2a/S2A_X", "other": "file.tif",
                   "text": "not a path", "n": 1}
    assert paths.resolve_data_path("data:sentinel2-l2a/S2A_X") == scene
    # a data: scene hashes as the ../shared/data/ default it replaced: committed 08 runs keep their folders
    assert runs.params_hash({"scene": "data:a/b", "stride": 16}) == runs.params_hash(
        {"scene": "../shared/data/a/b", "stride": 16})


def test_params_metrics_and_checkpoints_record_the_data_root_without_the_machine(tmp_path, monkeypatch):
    """Beside the project: relative; the default root (LCC_DATA_DIR): ""; an explicit root elsewhere: kept."""
    import numpy as np
    import torch

    from lcc_utils import training
    from lcc_utils.data import BatchLoader
    from lcc_utils.models import create_model
    from lcc_utils.paths import project_root

    beside = project_root().parent / "shared" / "data"
    assert runs.portable_data_dir(str(beside)) == "../shared/data"
    assert runs.portable_data_dir(str(project_root() / "data")) == "data"
    assert runs.portable_data_dir("../shared/data") == "../shared/data" and runs.portable_data_dir("") == ""
    elsewhere = tmp_path / "mnt" / "data"
    assert runs.portable_data_dir(str(elsewhere)) == str(elsewhere)  # the only way to find it again
    monkeypatch.setenv("LCC_DATA_DIR", str(elsewhere))
    assert runs.portable_data_dir(str(elsewhere)) == ""  # the default root, wherever it is

    run = runs.start_run({"x": 1, "data_dir": str(elsewhere)}, stage="toy")
    info = json.loads((run.dir / "params.json").read_text())
    assert info["params"]["data_dir"] == "" and info["params_hash"] == runs.params_hash({"x": 1})
    # the package's own outputs: a checkpoint's embedded params and a metric that is a path
    images, labels = np.zeros((8, 8, 8, 3), np.float32), np.arange(8) % 2
    loaders = {k: BatchLoader(images, labels, np.arange(8), batch_size=4) for k in ("train", "val")}
    model = create_model("lightweight_cnn", num_classes=2, in_chans=3, depth=2, filters=(4, 8))
    training.train(model, loaders, "paper_a", epochs=1, device="cpu",
                   run_dir=run.out, seed=0, params={"x": 1, "data_dir": str(elsewhere)})
    for name in ("best.pt", "last.pt"):
        ckpt = torch.load(run.out / "checkpoints" / name, weights_only=False)
        assert ckpt["params"]["data_dir"] == "", name
    run.log_metrics({"scores_file": str(runs.cache_dir() / "coreset_scores" / "s.npz")})
    text = (run.dir / "metrics.json").read_text()
    assert json.loads(text)["scores_file"] == "cache/coreset_scores/s.npz" and str(tmp_path) not in text
