"""Fault probes (issue 23): a broken project file, a second writer, a bad parameter, a read-only root.

Each test breaks one thing the way it breaks in practice (a file cut short by a full disk, a
zero-byte file, two copies of one run) and asserts what the user then reads: the file named,
what is wrong and what to do -- or, where the project can do the right thing itself, that it does.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from lcc_utils import data, runs, training
from lcc_utils.files import BrokenFileError

ROOT = Path(__file__).resolve().parents[1]


def _truncate(path: Path, keep: float = 0.5) -> None:
    """Cut ``path`` to ``keep`` of its bytes, as a full disk or an interrupted copy leaves it."""
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])


def _finished_run(**metrics) -> runs.Run:
    run = runs.start_run({"dataset": "eurosat", "seed": 0}, data_hash="abc", stage="train")
    run.save_table(pd.DataFrame({"a": [1]}), "t")
    run.log_metrics(metrics or {"acc": 0.5})
    return run


# ----------------------------------------------------------------------------- run JSON
@pytest.mark.parametrize("name", ["metrics.json", "params.json"])
def test_a_truncated_run_json_names_the_file_and_how_to_rerun(name):
    run = _finished_run()
    _truncate(run.dir / name)
    with pytest.raises(BrokenFileError, match=rf"{name}: not valid JSON .*truncated") as err:
        runs.collect_runs("train")
    assert str(run.dir / name) in str(err.value)
    assert "Delete the run folder runs/train/" in str(err.value) and "`make study` reruns" in str(err.value)
    assert "papermill notebooks/04_train.ipynb" in str(err.value)


def test_a_truncated_params_json_is_named_by_find_run_and_execute_notebook(tmp_path, tmp_cache):
    """The other readers of that raw traceback (``JSONDecodeError`` from execute_notebook and find_run)."""
    nb = _toy_notebook(tmp_path / "09_toy.ipynb")
    d, _ = runs.execute_notebook(nb, {"value": 4})
    _truncate(d / "params.json")
    with pytest.raises(BrokenFileError, match=r"params\.json: not valid JSON .*truncated.*Delete the run folder") as e:
        runs.execute_notebook(nb, {"value": 4})
    assert str(e.value).startswith(str(d / "params.json"))

    data_nb = runs.notebook_path("01")  # find_run: a later stage naming this run by its parameters
    run = runs.start_run(runs.resolve_params(data_nb, {"dataset": "eurosat"}), data_hash="abc",
                         stage=runs.notebook_stage(data_nb))
    run.log_metrics({"images": 1})
    _truncate(run.dir / "params.json")
    with pytest.raises(BrokenFileError, match=r"params\.json: not valid JSON .*truncated.*papermill notebooks/01_data"):
        runs.find_run("01", {"dataset": "eurosat"}, data_hash="abc")


def test_a_metrics_json_that_does_not_parse_is_no_finished_run():
    run = _finished_run()
    (run.dir / "metrics.json").write_bytes(b"")
    assert not run.finished and not runs.run_finished(run.dir) and run.metrics() == {}
    again = runs.start_run({"dataset": "eurosat", "seed": 0}, data_hash="abc", stage="train")
    assert not again.staged, "an unparsable metrics.json must be rerun in place, not reopened read-only"
    again.log_metrics({"acc": 0.5})
    assert json.loads((run.dir / "metrics.json").read_text()) == {"acc": 0.5}


def _toy_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("from lcc_utils import runs"),
        nbformat.v4.new_code_cell("value = 2  # a number", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("run = runs.start_run(runs.notebook_params(globals()))\n"
                                  "run.log_metrics({'double': value * 2})"),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


def test_the_study_reruns_a_run_whose_metrics_json_is_truncated(tmp_path, tmp_cache):
    nb = _toy_notebook(tmp_path / "09_toy.ipynb")
    d, executed = runs.execute_notebook(nb, {"value": 5})
    assert executed
    _truncate(d / "metrics.json")
    d2, executed2 = runs.execute_notebook(nb, {"value": 5})
    assert d2 == d and executed2, "a truncated metrics.json was taken for a finished run"
    assert json.loads((d / "metrics.json").read_text()) == {"double": 10}
    assert runs.execute_notebook(nb, {"value": 5}) == (d, False)  # now finished: skipped


# ----------------------------------------------------------------------------- checkpoints
def _trained(tmp_path: Path) -> Path:
    from test_training import TINY, make_loaders, tiny_model

    training.train(tiny_model(), make_loaders(), TINY, epochs=1, device="cpu", run_dir=tmp_path)
    return tmp_path / training.CHECKPOINT_DIR


def test_a_truncated_last_checkpoint_names_the_file_and_the_remedy(tmp_path):
    from test_training import TINY, make_loaders, tiny_model

    ckpt = _trained(tmp_path)
    _truncate(ckpt / "last.pt")
    with pytest.raises(BrokenFileError, match=r"last\.pt: unreadable .*truncated") as err:
        training.train(tiny_model(), make_loaders(), TINY, epochs=1, device="cpu", run_dir=tmp_path)
    assert f"Delete the folder {ckpt}" in str(err.value) and "from the first epoch" in str(err.value)


def test_a_zero_byte_best_checkpoint_names_the_file(tmp_path):
    ckpt = _trained(tmp_path)
    (ckpt / "best.pt").write_bytes(b"")
    (tmp_path / "params.json").write_text(json.dumps({"params": {"model": "lightweight_cnn"}}))
    with pytest.raises(BrokenFileError, match=r"best\.pt: empty file \(0 bytes\): not a checkpoint\. Delete"):
        training.load_checkpoint(tmp_path)


def test_a_full_disk_while_saving_a_checkpoint_names_the_file(tmp_path, monkeypatch):
    """torch's zip writer on a full disk says only ``[enforce fail at inline_container.cc:672] . unexpected pos``."""
    import errno

    import torch
    from test_training import TINY, make_loaders, tiny_model

    def full_disk(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04")  # the start of a zip, then no room
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1088 vs 1000")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match=r"checkpoints/(best|last)\.pt: could not be written, the disk is probably full "
                                      r"\(.* MB free there now; RuntimeError: \[enforce fail at inline_container"
                                      r"\.cc:672\] \. unexpected pos 1088 vs 1000\)\. Nothing was replaced") as err:
        training.train(tiny_model(), make_loaders(), TINY, epochs=1, device="cpu", run_dir=tmp_path)
    assert err.value.errno == errno.ENOSPC and "run again; a training run resumes" in str(err.value)
    assert not list(tmp_path.rglob("*.partial*")), "a half-written checkpoint was left behind"
    # a plain write that meets a full disk: the same, naming the file
    from lcc_utils import paths

    def no_room(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", no_room)
    with pytest.raises(OSError, match=r"metrics\.json: could not be written, the disk is probably full"):
        paths.atomic_write(tmp_path / "metrics.json", "{}")


# ----------------------------------------------------------------------------- decoded-array cache
@pytest.mark.parametrize("fault", ["truncated raw", "zero-byte raw", "truncated json"])
def test_a_broken_decoded_array_cache_names_the_file_and_clean_cache(synthetic_root, tmp_cache, fault):
    data.load_dataset("eurosat", synthetic_root)
    raw = next((tmp_cache / "decoded").glob("eurosat-*.raw"))
    meta = raw.with_suffix(".json")
    if fault == "truncated raw":
        _truncate(raw)
    elif fault == "zero-byte raw":
        raw.write_bytes(b"")
    else:
        _truncate(meta)
    broken = meta if fault == "truncated json" else raw
    with pytest.raises(BrokenFileError) as err:
        data.load_dataset("eurosat", synthetic_root)
    msg = str(err.value)
    assert msg.startswith(f"{broken}: ") and "make clean-cache" in msg
    assert f"delete {meta.name} and {raw.name}" in msg and "decodes the images again" in msg
    for f in (raw, meta):  # the remedy works
        f.unlink()
    assert len(data.load_dataset("eurosat", synthetic_root)) > 0


def test_a_decoded_array_overwritten_in_place_is_caught(synthetic_root, tmp_cache, monkeypatch):
    """Same size, other bytes: the loader's sampled check names the file; verify-data finds any block."""
    ds = data.load_dataset("eurosat", synthetic_root)
    raw = next((tmp_cache / "decoded").glob("eurosat-*.raw"))
    n_blocks = len(data._blocks(len(ds)))
    # a block the loader does not sample: only the full check of make verify-data sees it
    monkeypatch.setattr(data.time, "time", lambda: 0.0)  # day 0: samples blocks 0, 3 and the last
    middle = next(i for i in range(1, n_blocks - 1) if i not in {0, 3, n_blocks - 1})
    a, b = data._blocks(len(ds))[middle]
    arr = np.load(raw, mmap_mode="r+")
    arr[a] = 255 - arr[a]
    arr.flush()
    del arr
    assert len(data.load_dataset("eurosat", synthetic_root)) == len(ds)  # not in the sample
    table = data.verify_data(["eurosat"], synthetic_root)
    row = table[table["data"].str.startswith("cache/decoded/eurosat-")].iloc[0]
    assert row["changed"] == 1 and row["changed_files"] == [f"block {middle}"]
    assert data.main(["--verify", "eurosat", "--data-dir", str(synthetic_root)]) == 1
    # the first block is always sampled: the loader names the file and the remedy
    arr = np.load(raw, mmap_mode="r+")
    arr[0] = 255 - arr[0]
    arr.flush()
    del arr
    with pytest.raises(BrokenFileError, match=r"images 0-\d+ differ from the checksum recorded when they "
                                              r"were decoded.*make clean-cache"):
        data.load_dataset("eurosat", synthetic_root)


def test_a_truncated_split_file_names_the_file(synthetic_root, tmp_cache):
    ds = data.load_dataset("eurosat", synthetic_root)
    data.get_split(ds, seed=0)
    f = next((tmp_cache / "splits").glob("*.json"))
    _truncate(f)
    with pytest.raises(BrokenFileError, match=r"not valid JSON .* Delete it .*same split again") as err:
        data.get_split(ds, seed=0)
    assert str(err.value).startswith(str(f))


# ----------------------------------------------------------------------------- one writer per folder
_SECOND_COPY = """
from lcc_utils import runs
try:
    run = runs.start_run({"dataset": "eurosat", "seed": 0}, data_hash="abc", stage="train")
    print("STAGED" if run.staged else "WRITER")
except runs.RunLockedError as err:
    print("LOCKED", err)
"""


def _second_copy() -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", _SECOND_COPY], env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    return out.stdout.strip()


def test_a_second_copy_of_a_running_run_stops_naming_the_folder_and_the_holder(tmp_cache):
    run = runs.start_run({"dataset": "eurosat", "seed": 0}, data_hash="abc", stage="train")
    assert runs.lock_path(run.dir).is_relative_to(tmp_cache / "locks"), "the lock is outside the tracked tree"
    before = sorted(p.name for p in run.dir.iterdir())
    out = _second_copy()
    assert out.startswith("LOCKED run folder runs/train/eurosat-0-"), out
    assert f"pid {os.getpid()} on host" in out and "one writer per run folder" in out
    assert sorted(p.name for p in run.dir.iterdir()) == before, "the second copy wrote into the folder"
    run.log_metrics({"acc": 0.5})  # releases the lock: a later copy reopens the finished run read-only
    assert _second_copy() == "STAGED"


@pytest.mark.notebooks
def test_the_same_papermill_04_command_twice_one_finishes_the_other_refuses(synthetic_root, tmp_path, tmp_cache):
    """Issue 23's probe: the same `papermill notebooks/04_train.ipynb ...` started twice, the second
    while the first trains. The second stops naming the folder and its holder before writing; the
    first finishes, and no file of the run folder is newer than its metrics.json.

    The first copy's kernel (it holds the folder's lock) is frozen with SIGSTOP in the middle of its
    training cell until the second has given up, so it holds the lock however long the second takes
    to start on a loaded machine; it then trains on. Only the kernel is frozen, and only mid-cell:
    papermill itself waits for a cell's reply without a time limit, but once the reply has come it
    allows the kernel 4 s (nbclient's iopub_timeout) for the cell's last output. Freezing papermill
    (its process group; the kernel runs in a session of its own) inside that window made the first
    copy fail on resume (CI, stop 36). Without any freeze the first had to train ~400 epochs (about
    100 s of a CI core) to outlive the second.
    """
    import signal
    import time

    import psutil  # installed with distributed (a declared dependency)

    nb = runs.notebook_path("04")
    args = ["-p", "dataset", "eurosat", "-p", "data_dir", str(synthetic_root), "-p", "model", "lightweight_cnn",
            "-p", "fraction", "1.0", "-p", "epochs", "30", "-p", "steps", "0", "-p", "image_size", "16",
            "-p", "batch_size", "16", "-p", "device", "cpu", "-p", "recipe", "fair_cpu"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "IPYTHONDIR": str(tmp_path / "ipython")}

    def start(out: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "papermill", str(nb), str(tmp_path / out), "-k", "python3",
                                 "--cwd", str(ROOT), *args], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)

    first = start("first.ipynb")
    train = tmp_path / "runs" / "train"
    deadline = time.monotonic() + 120
    kernel = None
    try:
        # history.csv is written after every epoch of the training cell: once it exists the kernel is inside
        # that cell, with the run folder locked
        while not list(train.glob("*/history.csv")) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if first.poll() is not None:  # ended (an error) before it trained: show why
            pytest.fail(f"the first copy exited {first.returncode} before it trained:\n"
                        f"{first.communicate()[0][-2000:]}")
        if not list(train.glob("*/history.csv")):
            pytest.fail("after 120 s the first copy has not finished an epoch (no history.csv in its run folder)")
        (kernel,) = [c for c in psutil.Process(first.pid).children() if "ipykernel" in " ".join(c.cmdline())]
        os.killpg(kernel.pid, signal.SIGSTOP)  # the kernel leads a session of its own (jupyter_client)
        folders = [p.parent for p in train.glob("*/params.json")]
        assert len(folders) == 1, f"after 120 s the first copy has {len(folders)} run folders, not 1: {folders}"
        (d,) = folders
        epochs_done = len(pd.read_csv(d / "history.csv"))
        assert epochs_done < 29, f"the first copy had trained {epochs_done} of 30 epochs when frozen: train longer"
        second = start("second.ipynb")
        out2, _ = second.communicate(timeout=300)
    finally:
        if kernel is not None:
            with contextlib.suppress(ProcessLookupError):  # already gone: the failure above says why
                os.killpg(kernel.pid, signal.SIGCONT)
    assert first.poll() is None, "the first copy ended before the second reached its run folder"
    assert second.returncode != 0
    assert "is being written by pid" in out2 and f"runs/train/{d.name}" in out2, out2[-2000:]
    out1, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out1[-2000:]
    done = (d / "metrics.json").stat().st_mtime
    newer = [str(p.relative_to(d)) for p in d.rglob("*") if p.is_file() and p.stat().st_mtime > done]
    assert not newer, f"written after metrics.json: {newer}"


def test_the_same_run_in_two_runs_roots_sharing_a_cache_are_two_writers(tmp_path, tmp_cache, monkeypatch):
    """The lock guards one folder: the same run in another runs root (the demo's scratch root beside
    runs/, a second test worker) that shares the cache is another folder, written at the same time."""
    monkeypatch.setenv("LCC_RUNS_DIR", str(tmp_path / "runs_a"))
    run = runs.start_run({"dataset": "eurosat", "seed": 0}, data_hash="abc", stage="train")
    monkeypatch.setenv("LCC_RUNS_DIR", str(tmp_path / "runs_b"))
    assert _second_copy() == "WRITER"  # another process, the same run name, the other root
    assert (tmp_path / "runs_b" / "train" / run.dir.name).is_dir()
    monkeypatch.setenv("LCC_RUNS_DIR", str(tmp_path / "runs_a"))
    assert _second_copy().startswith("LOCKED run folder"), "the same folder stays one writer's"
    run.log_metrics({"acc": 0.5})


def test_nothing_is_written_into_a_folder_after_its_metrics_json():
    run = _finished_run()
    with pytest.raises(runs.RunConflictError, match=r"finished .* save confusion\.csv before run\.log_metrics"):
        run.save_table(pd.DataFrame({"a": [1]}), "confusion")
    assert not (run.dir / "confusion.csv").exists()


# ----------------------------------------------------------------------------- data root
def test_a_read_only_data_root_lacking_a_dataset_gives_the_download_instructions(tmp_path, monkeypatch):
    root = tmp_path / "readonly"
    root.mkdir()
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self.is_relative_to(root):
            raise OSError(30, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.fetch_dataset("eurosat", root)
    msg = str(err.value)
    assert f"the data root {root} is not writable (Read-only file system)" in msg
    assert "Download EuroSAT.zip from one of:" in msg and "LCC_DATA_DIR" in msg
    assert not np.any([p.name == "archives" for p in root.iterdir()])


# ----------------------------------------------------------------------------- parameters
def test_a_zero_batch_size_stops_before_any_run_folder(monkeypatch):
    """04 under papermill ``-p batch_size 0``: once trained with 64 while params.json said 0."""
    monkeypatch.setenv(runs.NOTEBOOK_ENV, "04_train.ipynb")
    cell = "batch_size: int = 64  # images per step\nseed: int = 0  # seed"
    ns = {"In": ["from lcc_utils import runs", cell, "# Parameters\nbatch_size = 0\n"],
          "batch_size": 0, "seed": 0}
    with pytest.raises(ValueError, match=r"invalid parameter\(s\) for 04_train.ipynb: batch_size=0 must be at least 1"):
        runs.notebook_params(ns)
    with pytest.raises(ValueError, match="batch_size=0 must be at least 1"):
        runs.execute_notebook(runs.notebook_path("04"), {"batch_size": 0})
    assert not runs.runs_root().exists(), "a refused parameter made a run folder"


@pytest.mark.parametrize(("notebook", "name"), [("01", "samples_per_class"), ("02", "n_per_class"),
                                               ("06", "n_boot")])
def test_a_count_parameter_of_zero_stops_before_any_run_folder(notebook, name):
    """``samples_per_class 0`` once left an empty run folder behind; no kernel starts for it now."""
    nb = runs.notebook_path(notebook)
    with pytest.raises(ValueError, match=rf"invalid parameter\(s\) for {nb.name}: {name}=0 must be at least 1"):
        runs.execute_notebook(nb, {name: 0})
    assert not runs.runs_root().exists(), "a refused parameter made a run folder"


@pytest.mark.parametrize(("notebook", "name", "text"), [
    ("05", "train_run", "runs/train/eurosat-plain_cnn-random-0.05-0-1a2b3c4d"),
    ("05", "methods", "lap"),
])
def test_a_list_or_dict_parameter_given_as_text_says_to_use_yaml(notebook, name, text):
    nb = runs.notebook_path(notebook)
    kind = type(runs.notebook_defaults(nb)[name]).__name__
    with pytest.raises(ValueError, match=rf"{name} is a {kind} but was given the text '{text}': papermill's -p "
                                         rf"passes text; give a {kind} as YAML/JSON with -y, e\.g\. -y '") as err:
        runs.execute_notebook(nb, {name: text})
    example = str(err.value).split("-y '")[1].rstrip("'")
    assert isinstance(json.loads(example)[name], (list, dict))  # the example itself is valid
    assert not runs.runs_root().exists()


def test_05_refuses_an_unknown_method_before_any_upstream_work(tmp_cache):
    """``-y '{"methods": ["prune"]}'``: once refused after 122 s of retraining the 04 checkpoint.

    No 04 run exists here: an error about the method, not about the missing 04 run, shows the check comes
    first; and no run folder of any stage is made.
    """
    with pytest.raises(RuntimeError, match=r"(?s)failed and left no run folder.*unknown compression method 'prune'; "
                                           r"choose one of: fixed_prune, fixed_quant, lap, laq, pq") as err:
        runs.execute_notebook(runs.notebook_path("05"), {"methods": ["prune"]})
    assert "no finished 04_train run" not in str(err.value)
    assert not list(runs.runs_root().glob("*/*")), "a refused 05 made or reopened a run folder"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="tests the refusal on a machine without CUDA")
def test_04_on_cuda_without_a_gpu_names_the_parameter_before_any_folder(tmp_cache):
    """``-p device cuda`` on a CPU machine once failed with torch's "Found no NVIDIA driver on your system"."""
    with pytest.raises(RuntimeError, match=r"(?s)failed and left no run folder.*device='cuda' requested but CUDA "
                                           r"is not available here; use 'auto'"):
        runs.execute_notebook(runs.notebook_path("04"), {"device": "cuda", "fraction": 0.05})
    assert not list(runs.runs_root().glob("*/*")), "a refused device made a run folder"


def test_02_with_a_missing_label_file_names_it_before_any_folder(shared_data, tmp_cache, tmp_path):
    """A wrong ``label_source`` was found only after the aligned GeoTIFF had been written, the folder made."""
    missing = tmp_path / "fields.geojson"
    with pytest.raises(RuntimeError, match=r"(?s)failed and left no run folder.*labels: reference file "
                                           r".*fields\.geojson does not exist"):
        runs.execute_notebook(runs.notebook_path("02"), {"label_source": str(missing), "n_per_class": 5})
    assert not list(runs.runs_root().glob("*/*")), "a refused label file made a run folder"


def test_05s_variant_checks_pass_every_default_profile_and_ci_run():
    from lcc_utils import compression, study

    nb = runs.notebook_path("05")
    names = ("methods", "levels", "bits", "importance", "budget", "scope", "pq_sparsity", "granularity",
             "quant_levels", "budget_cr")
    grids = [p for profile in study.PROFILES for p in study.profile_runs(nb, profile)]
    ci = json.loads((ROOT / "tests" / "notebook_params" / "05_compression.json").read_text())
    for params in [{}, ci, *grids]:
        full = runs.resolve_params(nb, params)
        compression.check_variant_params(**{k: full[k] for k in names})
    with pytest.raises(ValueError, match=r"unknown compression method 'prune'"):
        compression.check_variant_params(["prune"])
    with pytest.raises(ValueError, match=r"bits"):
        compression.check_variant_params(["fixed_quant"], bits=[0])


def test_every_notebook_default_and_profile_run_passes_the_parameter_checks():
    from lcc_utils import study

    for nb in study.notebooks():
        for profile in study.PROFILES:
            for params in study.profile_runs(nb, profile):
                runs.resolve_params(nb, params)
        ci = ROOT / "tests" / "notebook_params" / f"{nb.stem}.json"
        runs.resolve_params(nb, json.loads(ci.read_text()))  # the CI parameters of test_notebooks
        runs.check_params(runs.notebook_defaults(nb), runs._parameters_source(nb), nb.name)


# ----------------------------------------------------------------------------- traces left behind
def test_dask_scratch_space_goes_to_the_cache_not_the_system_temp_dir(tmp_cache):
    """Scheduler and workers alike: by default each makes dask-scratch-space/ in the system temp dir."""
    from lcc_utils import cluster

    with cluster.open_client("local", jobs=1) as client:
        dirs = client.run(lambda dask_worker: dask_worker.local_directory)
        dirs["scheduler"] = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.local_directory)
    assert len(dirs) == 2 and all(Path(d).is_relative_to(tmp_cache / "dask-scratch") for d in dirs.values()), dirs


def test_kernels_started_by_the_project_write_no_ipython_history(tmp_path, tmp_cache, monkeypatch):
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))  # the kernel's profile, inherited
    nb = _toy_notebook(tmp_path / "09_toy.ipynb")
    d, executed = runs.execute_notebook(nb, {"value": 3})
    assert executed and json.loads((d / "metrics.json").read_text()) == {"double": 6}  # `In` still read
    assert not list((tmp_path / "ipython").rglob("history.sqlite")), "the kernel wrote IPython history"


# ----------------------------------------------------------------------------- bad images
def test_the_same_image_in_two_class_folders_is_named(synthetic_root, tmp_path, tmp_cache):
    import shutil

    from lcc_utils import constants as C

    root = tmp_path / "data"
    shutil.copytree(synthetic_root / "eurosat", root / "eurosat")
    folder = root / C.DATASET_SUBDIRS["eurosat"]
    shutil.copyfile(folder / "Forest" / "Forest_1.jpg", folder / "River" / "River_99.jpg")
    with pytest.raises(data.BadImageError, match=r"Forest/Forest_1\.jpg and .*River/River_99\.jpg: the same "
                                                 r"image \(identical bytes\) in two class folders, so it has "
                                                 r"two labels \(1 such pair\(s\)\); remove the copy"):
        data.load_dataset("eurosat", root)
    n = len(data.load_dataset("eurosat", synthetic_root))
    with pytest.warns(UserWarning, match="skipped 2 bad file"):
        ds = data.load_dataset("eurosat", root, on_bad="skip")
    assert len(ds) == n + 1 - 2 and "Forest/Forest_1.jpg" not in ds.files
    assert ("River/River_99.jpg", "the same image in two class folders") in ds.skipped


def test_an_all_nodata_multispectral_tile_is_named(synthetic_root, tmp_path, tmp_cache):
    import shutil

    import rasterio

    from lcc_utils import constants as C

    root = tmp_path / "data"
    shutil.copytree(synthetic_root / "eurosat-ms", root / "eurosat-ms")
    f = root / C.DATASET_SUBDIRS["eurosat_ms"] / "Forest" / "Forest_1.tif"
    with rasterio.open(f, "r+") as dst:
        dst.write(np.zeros((dst.count, dst.height, dst.width), dtype=np.uint16))
    with pytest.raises(data.BadImageError, match=r"Forest_1\.tif: every pixel is no data \(0 in every band\): "
                                                 r"an empty tile, not an image of its class"):
        data.load_dataset("eurosat_ms", root, download=False)


# ----------------------------------------------------------------------------- data identity of 02
def test_notebook_02s_data_hash_covers_the_eurosat_ms_files_it_cuts(synthetic_root, tmp_path, tmp_cache):
    """Other EuroSAT MS files must give another 02 run, not the committed patch sets."""
    import shutil

    import make_s2_fixtures as fx

    from lcc_utils import constants as C
    from lcc_utils import sentinel2 as s2

    product = s2.open_l2a(fx.make_cog_product(tmp_path / "cogs", 64))
    root = tmp_path / "data"
    shutil.copytree(synthetic_root / "eurosat-ms", root / "eurosat-ms")
    scene_only = s2.preprocessing_data_hash(product, "none", root)
    both = s2.preprocessing_data_hash(product, "both", root)
    assert scene_only == s2.product_hash(product) and both != scene_only
    assert s2.preprocessing_data_hash(product, "binary", root) == both  # the same files cut
    f = root / C.DATASET_SUBDIRS["eurosat_ms"] / "Forest" / "Forest_1.tif"
    f.write_bytes(f.read_bytes()[:-1] + bytes([f.read_bytes()[-1] ^ 1]))  # one bit of one file
    assert s2.preprocessing_data_hash(product, "both", root) != both
    assert s2.preprocessing_data_hash(product, "none", root) == scene_only


@pytest.mark.integration
def test_the_committed_02_run_records_the_hash_of_its_scene_and_eurosat_ms(shared_data, tmp_cache, monkeypatch):
    """scripts/migrate_preprocessing_hash.py moved it (its patch sets rebuilt with the same hashes): the
    study still finds it finished on the shared data and skips it (the check execute_notebook makes)."""
    monkeypatch.setenv("LCC_RUNS_DIR", str(ROOT / "runs"))
    full = runs.resolve_params(runs.notebook_path("02"), {"data_dir": str(shared_data)})
    folder = runs.run_dir("sentinel2", full)
    assert runs.run_finished(folder)
    assert runs.recorded_data_hash(folder) == runs._current_data_hash(full) != runs.recorded_data_hash(
        ROOT / "runs" / "mapping" / "binary-S2A-29RKH-20200219-0-L2A-baa3d32c")  # 08's: the product alone


# ----------------------------------------------------------------------------- bands and grid of 02
#: 02 on a small scene, without EuroSAT MS: the scene part of the notebook only
_SCENE_ONLY = {"n_per_class": 4, "patch_size": 8, "block_size": 16, "window_size": 256, "eurosat_task": "none"}


def _printed(executed: Path) -> str:
    book = nbformat.read(str(executed), as_version=4)
    return "".join(o.get("text", "") for c in book.cells if c.cell_type == "code" for o in c.outputs)


@pytest.mark.integration
def test_02_on_a_60m_only_safe_of_the_real_tile_reads_b8a_and_says_its_grid(shared_data, tmp_path, tmp_cache):
    """The held-out case: a 60 m-only SAFE (R60m: B8A, no B08) made from the real tile, under 02's default bands.

    Once refused naming B08; then it ran on a 60 m-class grid printing "SCL pixels on the 10 m grid".
    """
    import make_s2_fixtures as fx

    safe = fx.safe_60m_from_cogs(shared_data / "sentinel2-l2a" / "S2A_29RKH_20200219_0_L2A",
                                 tmp_path / "S2A_MSIL2A_20200219_T29RKH_60m.SAFE")
    params = {**_SCENE_ONLY, "scene": str(safe), "n_per_class": 40}  # one class (desert): enough blocks to split
    d, executed = runs.execute_notebook(runs.notebook_path("02"), params)
    m = json.loads((d / "metrics.json").read_text())
    # the tile is shrunk 10x: its 60 m bands are 600 m pixels
    assert executed and m["nir_band"] == "B8A" and m["grid_m"] == 600.0
    assert m["masked_fraction"] == m["scl_masked_share"] and 0.03 < m["masked_fraction"] < 0.05
    product = json.loads((d / "artefacts.json").read_text())["product"]
    assert product["band_substitutions"] == {"B08": "B8A"} and product["bands"] == ["B02", "B03", "B04", "B8A",
                                                                                     "B11", "B12"]
    assert product["resolution"] == 600.0 and product["width"] == 183
    text = _printed(d / "02_sentinel2_preprocessing.ipynb")
    assert "grid: 600 m pixels" in text and "bands read instead: {'B08': 'B8A'}" in text
    assert "NIR band (NDVI): B8A" in text and "SCL pixels on the 600 m grid" in text and "match: True" in text
    assert "10 m grid" not in text

    # the same product with its SCL at 200 m (the tile's own): nearest onto the 600 m grid keeps one SCL pixel in
    # nine, the masked share moves, and the self-check stops the run naming the product and the cause
    import rasterio

    from lcc_utils import sentinel2 as s2

    with rasterio.open(shared_data / "sentinel2-l2a" / "S2A_29RKH_20200219_0_L2A" / "SCL.tif") as src:
        scl, origin, crs = src.read(1), (src.transform.c, src.transform.f), src.crs.to_string()
    next(safe.rglob("*_SCL_60m.jp2")).unlink()
    r20 = next(safe.glob("GRANULE/*/IMG_DATA")) / "R20m"
    r20.mkdir()
    fx._write(r20 / "T00XXX_00000000T000000_SCL_20m.jp2", scl, 200.0, crs=crs, origin=origin, driver="JP2OpenJPEG")
    p = s2.open_l2a(safe)
    rep = s2.write_aligned(p, tmp_path / "aligned.tif", progress=False)
    with pytest.raises(s2.MaskCheckError, match=r"^S2A_MSIL2A_20200219_T29RKH_60m\.SAFE: the mask check .* failed "
                                                r"on the 600 m grid: .*the 200 m SCL's masked classes cover"):
        s2.check_aligned_mask(p, tmp_path / "aligned.tif", rep)


def test_a_02_run_whose_mask_check_fails_stops_naming_the_product(tmp_path, tmp_cache):
    """Band nodata where SCL says clear: 02 once printed ``match: False`` and carried on; now the run fails."""
    import make_s2_fixtures as fx
    import rasterio

    safe = fx.make_safe_product_60m(tmp_path / "S2A_MSIL2A_60M.SAFE", 192)
    b02 = next(safe.rglob("*_B02_60m.jp2"))
    with rasterio.open(b02) as src:
        a = src.read(1)
    a[10:12, 4:6] = 0
    fx._write(b02, a, 60.0, driver="JP2OpenJPEG")
    params = {**_SCENE_ONLY, "scene": str(safe)}
    with pytest.raises(RuntimeError, match=r"(?s)failed and left no run folder.*MaskCheckError.*S2A_MSIL2A_60M\.SAFE: "
                                           r"the mask check of the aligned GeoTIFF .* failed on the 60 m grid: .*"
                                           r"4 pixel\(s\) hold band nodata where SCL says the pixel is usable"):
        runs.execute_notebook(runs.notebook_path("02"), params)
    assert not list(runs.runs_root().glob("sentinel2/*")), "a run whose self-check failed left a run folder"


# ----------------------------------------------------------------------------- data identity, 02 -> 06
def test_02_on_another_eurosat_ms_tree_is_a_run_of_its_own_and_06_reads_its_patches(synthetic_root, tmp_path,
                                                                                     tmp_cache):
    """02 with the same parameters on another EuroSAT MS tree: a new run folder; 06 (and 07) read that tree's patches.

    Once the second tree was skipped as finished, and 06 loaded the first tree's cached patch set. 02 runs at its
    defaults but for the scene (a synthetic one: the committed scene is the real tile) and its sampling.
    """
    import shutil

    import make_s2_fixtures as fx
    import rasterio

    from lcc_utils import constants as C
    from lcc_utils import paper_b, sentinel2

    other = tmp_path / "other"  # another EuroSAT MS tree: one tile's pixels differ
    shutil.copytree(synthetic_root / "eurosat-ms", other / "eurosat-ms")
    with rasterio.open(other / C.DATASET_SUBDIRS["eurosat_ms"] / "Forest" / "Forest_1.tif", "r+") as dst:
        dst.write(dst.read() + 1)
    ref = {"scene": str(fx.make_cog_product(tmp_path / "cogs", 256)), "n_per_class": 10, "block_size": 32}
    nb = runs.notebook_path("02")
    d1, _ = runs.execute_notebook(nb, {**ref, "data_dir": str(synthetic_root)})
    d2, executed = runs.execute_notebook(nb, {**ref, "data_dir": str(other)})
    info1, info2 = (json.loads((d / "params.json").read_text()) for d in (d1, d2))
    assert executed and d2 == runs.data_variant_dir(d1, info2["data_hash"]), "the other tree was skipped as finished"
    assert info1["params_hash"] == info2["params_hash"] and info1["data_hash"] != info2["data_hash"]
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (d1, d2))
    for task in ("binary", "multiclass"):
        assert m1[f"eurosat_ms_{task}_hash"] != m2[f"eurosat_ms_{task}_hash"]

    # 06 names the 02 run by its parameters and reads with its own data_dir: each tree's own patch set
    ps2 = paper_b.load_eurosat_patchset(ref, "binary", str(other))
    ps1 = paper_b.load_eurosat_patchset(ref, "binary", str(synthetic_root))
    assert (ps2.hash, ps1.hash) == (m2["eurosat_ms_binary_hash"], m1["eurosat_ms_binary_hash"])
    assert paper_b.load_eurosat_patchset({**ref, "data_dir": str(other)}, "binary").hash == ps2.hash

    # a cached patch set under the run's name whose hash is not the one the run recorded: refused, naming the file
    mine = paper_b.patchset_file("eurosat_ms-binary-p32-seed0", ps2.hash)
    theirs = paper_b.patchset_file("eurosat_ms-binary-p32-seed0", ps1.hash)
    for ext in (".npz", ".json"):
        shutil.copyfile(f"{theirs}{ext}", f"{mine}{ext}")
    with pytest.raises(ValueError) as err:
        paper_b.load_eurosat_patchset(ref, "binary", str(other))
    assert str(err.value) == (f"{mine}.npz: patch set of hash {ps1.hash}, but the 02 run {d2.name} recorded "
                              f"{ps2.hash}; it is not that run's patch set. Delete {mine.name}.npz and .json (it is "
                              "rebuilt from the data) or rerun 02")
    # the remedy: without the cached file (a fresh clone) it is rebuilt from the other tree, with the recorded hash
    for ext in (".npz", ".json"):
        Path(f"{mine}{ext}").unlink()
    again = paper_b.load_eurosat_patchset(ref, "binary", str(other))
    assert again.hash == ps2.hash and sentinel2.load_patchset(mine).hash == ps2.hash
