r"""One progress-bar policy for the package: live bars for a person, one final line for a record.

Every module imports ``tqdm`` from here (``from .progress import tqdm``), never from ``tqdm``
itself. What a bar does depends on who is watching (:func:`progress_mode`):

* ``bar``: a live bar. In JupyterLab (or VS Code) the notebook widget of ``tqdm.auto``; in a
  terminal the text bar.
* ``final``: nothing while it runs, then one plain line on stdout when a bar that is kept
  (``leave=True``) closes, e.g. ``train paper_a: 100% 15/15 [09:41, 38.7s/epoch, val_acc=0.912, best=12]``
  (an early stop: ``100% 7/7 [..., stopped=early at 7/30 (patience 5)]``). Bars
  nested inside another (``leave=False``: batches of an epoch, windows of a scene) print
  nothing. This is the mode of a notebook kernel that no person watches -- papermill, nbval,
  ``make study`` -- so an executed copy under ``runs/`` holds a few readable lines instead of
  thousands of ``\r`` updates, ANSI escapes, or widget bars frozen at 0 % whose model is gone
  once the notebook is reopened.
* ``off``: nothing at all.

The environment variable ``LCC_PROGRESS`` (``bar`` | ``final`` | ``off``) overrides the choice.
"""

from __future__ import annotations

import io
import os
import sys
from typing import Any

from tqdm import std

#: Environment variable overriding :func:`progress_mode`.
PROGRESS_ENV = "LCC_PROGRESS"
MODES = ("bar", "final", "off")


def _watched_kernel() -> bool | None:
    """True in a kernel a person watches, False in an unwatched kernel, None outside IPython.

    A kernel started by JupyterLab or Jupyter Server gets ``__session__`` (the notebook's
    path) in its namespace, VS Code's gets ``__vsc_ipynb_file__``; papermill's and nbval's get
    neither.
    """
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or type(shell).__name__ != "ZMQInteractiveShell":
        return None
    ns = shell.user_ns
    return bool(ns.get("__session__") or ns.get("__vsc_ipynb_file__"))


def progress_mode() -> str:
    """``bar``, ``final`` or ``off`` for the current process (see the module docstring).

    Raises:
        ValueError: ``LCC_PROGRESS`` is set to something else.

    """
    env = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if env:
        if env not in MODES:
            raise ValueError(f"{PROGRESS_ENV}={os.environ[PROGRESS_ENV]!r}: choose one of {', '.join(MODES)}")
        return env
    return "final" if _watched_kernel() is False else "bar"


class FinalLine(std.tqdm):
    """A tqdm that draws nothing and prints its final state as one line when it closes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["file"] = io.StringIO()  # the drawn frames go nowhere
        kwargs["mininterval"] = kwargs["maxinterval"] = float("inf")
        kwargs.setdefault("leave", True)
        super().__init__(*args, **kwargs)

    def close(self) -> None:
        """Print ``desc: 100% n/total [elapsed, rate]`` once, for a bar that is kept."""
        if self.disable:
            return
        keep = self.leave
        fmt = dict(self.format_dict)
        super().close()
        if keep:
            # the postfix too (validation accuracy, best epoch, an early stop): what the run ended with
            fmt["bar_format"] = "{desc}{percentage:.0f}% {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}{postfix}]" \
                if fmt.get("total") else "{desc}{n_fmt} [{elapsed}, {rate_fmt}{postfix}]"
            fmt["prefix"] = f"{fmt['prefix']}: " if fmt.get("prefix") else ""
            print(self.format_meter(**fmt).strip(), file=sys.stdout, flush=True)


def tqdm(*args: Any, **kwargs: Any) -> std.tqdm:
    """A progress bar following :func:`progress_mode` (the arguments are tqdm's)."""
    mode = progress_mode()
    if mode == "bar":
        from tqdm.auto import tqdm as auto

        return auto(*args, **kwargs)
    if mode == "off":
        kwargs["disable"] = True
        return std.tqdm(*args, **kwargs)
    return FinalLine(*args, **kwargs)
