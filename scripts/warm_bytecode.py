"""``make setup``'s bytecode pass: import what lcc's processes import, writing their bytecode.

pip's own pass (``pip install`` without ``--no-compile``) compiles every module of every wheel,
one after another: about 50 s of a 145 s ``make setup`` on 2 cores, mostly modules nothing here
imports (torch's test suites, its compiler back ends, CUDA tooling). ``make setup`` installs with
``--no-compile`` and runs this instead: one process imports the package, the tools that run the
notebooks and the tests, and the modules the package imports inside functions, with bytecode
writing switched on (about 20 s). Where ``PYTHONDONTWRITEBYTECODE=1`` is set (the CI machines)
nothing else writes bytecode, so a module left out of this list is compiled in memory by every
process that imports it, as it would have been anyway: slower, never wrong.

Usage: ``python scripts/warm_bytecode.py`` (``make setup`` runs it).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import warnings

sys.dont_write_bytecode = False  # this process writes the bytecode whatever PYTHONDONTWRITEBYTECODE says

#: Imported inside functions by lcc_utils, or by the processes that run it (kernels, papermill,
#: pytest and its plugins, Dask): not reached by importing the package's modules.
LATER = (
    "torchvision.transforms", "torchvision.transforms.functional", "timm", "timm.models",
    "torch.ao.quantization", "torch.ao.quantization.quantize_fx", "torch.utils.flop_counter",
    "safetensors.torch", "sklearn.ensemble", "sklearn.linear_model", "sklearn.metrics",
    "sklearn.model_selection", "sklearn.pipeline", "sklearn.preprocessing", "sklearn.svm",
    "scipy.stats", "scipy.spatial", "statsmodels.stats.contingency_tables", "statsmodels.stats.multitest",
    "statsmodels.stats.weightstats",
    "seaborn", "matplotlib.pyplot", "matplotlib_inline.backend_inline", "rasterio", "rasterio.warp",
    "rasterio.features", "rasterio.vrt", "rasterio.shutil", "ipywidgets", "tqdm.auto",
    "papermill", "nbclient", "nbformat", "ipykernel.kernelapp", "ipykernel.ipkernel", "IPython",
    "jupyter_client.manager", "jupyter_client.kernelspec", "dask", "dask.distributed", "distributed",
    "distributed.nanny", "filelock", "platformdirs", "pytest", "xdist", "xdist.plugin", "nbval.plugin",
)


def main() -> int:
    import lcc_utils

    names = [m.name for m in pkgutil.walk_packages(lcc_utils.__path__, "lcc_utils.")]
    missing = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in (*names, *LATER):
            try:
                importlib.import_module(name)
            except ImportError as e:  # an optional tool not installed here: nothing to warm
                missing.append(f"{name} ({e.__class__.__name__})")
    print(f"bytecode written for {len(sys.modules)} modules" + (f"; not installed: {', '.join(missing)}" if missing else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
