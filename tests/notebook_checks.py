"""What an executed notebook must not hold, and where its figures must show (shared by tests)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import nbformat

#: Things a reader must never meet in an executed notebook, by name.
UNREADABLE = {
    "ANSI escape": re.compile(r"\x1b\["),
    "PosixPath repr": re.compile(r"(Posix|Windows)Path\("),
    "widget repr": re.compile(r"\b(VBox|HBox|SelectionSlider|IntProgress|FloatProgress|Dropdown)\(children|"
                              r"\b(SelectionSlider|IntProgress|FloatProgress)\(value="),
    "machine path": re.compile(r"(?<![\w.~])/(work|tmp|home|root|Users|var/folders)/"),
    "bare Figure repr": re.compile(r"<Figure size \d+x\d+ with \d+ Axes>"),
    "progress bar": re.compile(r"\d+%\|"),
}


def problems(path: str | Path) -> list[str]:
    """Cells of an executed notebook that are unreadable (see :data:`UNREADABLE`) or hide a figure.

    A code cell that saves a figure (``save_figure(``) must show one: an ``image/png`` output.
    """
    nb = nbformat.read(str(path), as_version=4)
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        texts = [cell.source]
        for out in cell.get("outputs", []):
            texts.append(str(out.get("text", "")))
            data = out.get("data", {})
            # text/plain beside an image is the image's fallback (``<Figure size ...>``), not shown
            texts += [str(v) for k, v in data.items()
                      if not k.startswith("image/") and not (k == "text/plain" and "image/png" in data)]
            texts += [str(t) for t in out.get("traceback", [])]
        text = "\n".join(texts)
        found += [f"cell {i}: {name}: {m.group(0)!r}" for name, pat in UNREADABLE.items() if (m := pat.search(text))]
        if "save_figure(" in cell.source and not any(
                "image/png" in out.get("data", {}) for out in cell.get("outputs", [])):
            found.append(f"cell {i}: saves a figure but shows none (no image/png output)")
    return found


def committed_notebooks(root: Path) -> list[Path]:
    """Executed notebooks under ``runs/`` that git tracks (all of them when git is not there)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "runs"], cwd=root, capture_output=True, check=True)
        return [root / p for p in out.stdout.decode().split("\0") if p.endswith(".ipynb")]
    except (OSError, subprocess.CalledProcessError):
        return sorted(p for p in (root / "runs").rglob("*.ipynb") if "smoke" not in p.parts)
