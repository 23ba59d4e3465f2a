"""The progress-bar policy: live bars for a person, one final line in an executed notebook."""

from __future__ import annotations

import io
import os

import nbformat
import pytest

from lcc_utils import progress, runs


def test_final_mode_prints_one_line_per_kept_bar(monkeypatch, capsys):
    monkeypatch.setenv(progress.PROGRESS_ENV, "final")
    bar = progress.tqdm(range(4), desc="train toy", unit="epoch")
    for _ in bar:
        for _ in progress.tqdm(range(50), desc="batches", leave=False):  # nested: prints nothing
            pass
        bar.set_postfix(loss=0.1)
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train toy: 100% 4/4 [") and "epoch" in lines[0]
    assert "\r" not in out.out and "\x1b" not in out.out and out.err == ""


def test_off_and_bad_modes(monkeypatch, capsys):
    monkeypatch.setenv(progress.PROGRESS_ENV, "off")
    assert sum(progress.tqdm(range(3))) == 3
    assert capsys.readouterr() == ("", "")
    monkeypatch.setenv(progress.PROGRESS_ENV, "fancy")
    with pytest.raises(ValueError, match="LCC_PROGRESS='fancy': choose one of bar, final, off"):
        progress.tqdm(range(3))


def test_outside_a_kernel_the_bar_is_a_live_terminal_bar(monkeypatch):
    monkeypatch.delenv(progress.PROGRESS_ENV, raising=False)
    assert progress.progress_mode() == "bar"
    buf = io.StringIO()
    for _ in progress.tqdm(range(3), file=buf, mininterval=0):
        pass
    assert "3/3" in buf.getvalue()


def test_a_papermill_run_keeps_one_line_per_bar_and_no_widget(tmp_path):
    """The package's bars in a notebook nobody watches: a plain line, no stderr, no widget output."""
    import papermill as pm

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "from lcc_utils.progress import tqdm, progress_mode\nprint(progress_mode())\n"
        "for _ in tqdm(range(3), desc='outer'):\n    for _ in tqdm(range(100), leave=False):\n        pass")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src, out = tmp_path / "p.ipynb", tmp_path / "o.ipynb"
    nbformat.write(nb, str(src))
    env = {k: v for k, v in os.environ.items() if k != progress.PROGRESS_ENV}
    os.environ.pop(progress.PROGRESS_ENV, None)
    try:
        pm.execute_notebook(str(src), str(out), progress_bar=False, kernel_name=os.environ.get("LCC_KERNEL"),
                            kernel_manager_class=runs.ipc_kernel_manager())
    finally:
        os.environ.clear()
        os.environ.update(env)
    outputs = nbformat.read(str(out), as_version=4).cells[0].outputs
    assert [o.output_type for o in outputs] == ["stream"] and outputs[0].name == "stdout", outputs
    lines = outputs[0].text.strip().splitlines()
    assert lines[0] == "final" and len(lines) == 2 and lines[1].startswith("outer: 100% 3/3 [")
