"""A compression study's variants: the method registry, the variant grid and its evaluation.

:func:`make_variants` expands a few settings into one spec per (method, setting);
:func:`evaluate_variants` compresses, saves, reloads and evaluates each one into the
study's results table.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from lcc_utils.compression.adaptive import (
    _check_budget,
    adaptive_prune,
    adaptive_quantize,
    prune_then_quantize,
)
from lcc_utils.compression.artefact import ARTEFACT_SUFFIX, load_compressed, save_compressed
from lcc_utils.compression.finetune import finetune_compressed
from lcc_utils.compression.importance import get_importance_metric
from lcc_utils.compression.pruning import _check_level, prune_by_level
from lcc_utils.compression.quantization import (
    DEFAULT_GRANULARITY,
    DEFAULT_LEVELS,
    _check_bits,
    _check_granularity,
    _check_levels,
    quantize,
)
from lcc_utils.compression.size import (
    CompressionReport,
    analyze,
    compression_ratio,
    paper_compression_ratio,
    state_dict_file_size,
)
from lcc_utils.inference import predict
from lcc_utils.stats import holm, mcnemar, paired_difference

from ..progress import tqdm


def _fixed_prune(model: nn.Module, spec: Mapping[str, Any], **_: Any):
    return prune_by_level(model, spec["level"], scope=spec.get("scope", "global"))


def _quantizer(spec: Mapping[str, Any]) -> dict[str, str]:
    return {"granularity": spec.get("granularity", DEFAULT_GRANULARITY),
            "levels": spec.get("levels", DEFAULT_LEVELS)}


def _fixed_quant(model: nn.Module, spec: Mapping[str, Any], **_: Any):
    return quantize(model, spec["bits"], **_quantizer(spec))


def _lap(model: nn.Module, spec: Mapping[str, Any], importance: Mapping[str, float], **_: Any):
    return adaptive_prune(model, importance, spec["budget"],
                          budget_cr=spec.get("budget_cr", "paper"))


def _laq(model: nn.Module, spec: Mapping[str, Any], importance: Mapping[str, float], **_: Any):
    return adaptive_quantize(model, importance, spec["budget"],
                             budget_cr=spec.get("budget_cr", "paper"), **_quantizer(spec))


def _pq(model: nn.Module, spec: Mapping[str, Any], importance: Mapping[str, float], **_: Any):
    return prune_then_quantize(model, importance, spec["budget"],
                               sparsity=spec.get("sparsity", 0.5),
                               budget_cr=spec.get("budget_cr", "paper"), **_quantizer(spec))


#: Paper A's compression methods, by the names the notebook's ``methods`` parameter uses.
METHODS: dict[str, Callable[..., tuple[nn.Module, CompressionReport]]] = {
    "fixed_prune": _fixed_prune,
    "fixed_quant": _fixed_quant,
    "lap": _lap,
    "laq": _laq,
    "pq": _pq,
}
#: The methods driven by a layer importance: their specs name a metric and a budget.
ADAPTIVE_METHODS = ("lap", "laq", "pq")


def get_method(name: str) -> Callable[..., tuple[nn.Module, CompressionReport]]:
    """The compression method registered under ``name``."""
    if name not in METHODS:
        raise ValueError(f"unknown compression method {name!r}; choose one of: "
                         f"{', '.join(sorted(METHODS))}")
    return METHODS[name]


def _as_list(value: Any) -> list:
    return [value] if isinstance(value, (str, int, float)) else list(value)


def make_variants(methods: Iterable[str], levels: Iterable[float] = (), bits: Iterable[int] = (),
                  importance: Iterable[str] = ("magnitude",),
                  budget: float | Iterable[float] | Mapping[str, Iterable[float]] = 9.0,
                  scope: str = "global", pq_sparsity: float = 0.5,
                  granularity: str | Iterable[str] = DEFAULT_GRANULARITY,
                  quant_levels: str | Iterable[str] = DEFAULT_LEVELS,
                  budget_cr: str = "paper") -> list[dict[str, Any]]:
    """Every compression variant of a study: one dict per (method, setting).

    ``fixed_prune`` gets one variant per level, ``fixed_quant`` one per (bit-width,
    granularity, quantizer levels), and the adaptive methods (``lap``, ``laq``, ``pq``) one
    per (importance metric, budget). ``budget`` is one CR, a list for every adaptive method,
    or a dict ``{method: [CRs]}`` (paper A's budgets differ by method: :func:`paper_budgets`);
    the adaptive methods quantize with the first granularity and levels given.
    """
    methods = list(methods)
    for m in methods:
        get_method(m)
    grans, qlevels = _as_list(granularity), _as_list(quant_levels)
    for g in grans:
        _check_granularity(g)
    for lv in qlevels:
        _check_levels(lv)
    if budget_cr not in ("paper", "ours"):
        raise ValueError(f"unknown budget_cr {budget_cr!r}; choose one of: paper, ours")
    if isinstance(budget, Mapping):
        unknown = set(budget) - set(ADAPTIVE_METHODS)
        if unknown:
            raise ValueError(f"budget names unknown adaptive method(s) {sorted(unknown)}; "
                             f"choose from: {', '.join(ADAPTIVE_METHODS)}")
        budgets_of = {m: _as_list(budget.get(m, ())) for m in ADAPTIVE_METHODS}
    else:
        budgets_of = dict.fromkeys(ADAPTIVE_METHODS, _as_list(budget))
    for m in methods:
        if m in ADAPTIVE_METHODS and not budgets_of[m]:
            raise ValueError(f"method {m!r} has no budget; give budget={{{m!r}: [CR, ...]}}")
    for bl in budgets_of.values():
        for b in bl:
            _check_budget(b)
    for lvl in levels:
        _check_level(lvl)
    for b in bits:
        _check_bits(b)
    for imp in importance:
        get_importance_metric(imp)
    out: list[dict[str, Any]] = []
    for m in methods:
        if m == "fixed_prune":
            out += [{"method": m, "level": float(lv), "scope": scope} for lv in levels]
        elif m == "fixed_quant":
            out += [{"method": m, "bits": int(b), "granularity": g, "levels": lv}
                    for g in grans for lv in qlevels for b in bits]
        else:
            quant = {} if m == "lap" else {"granularity": grans[0], "levels": qlevels[0]}
            out += [{"method": m, "importance": imp, "budget": float(b), "budget_cr": budget_cr,
                     **quant, **({"sparsity": pq_sparsity} if m == "pq" else {})}
                    for imp in importance for b in budgets_of[m]]
    return out


def check_variant_params(methods: Iterable[str], budget: Any = "paper", **settings: Any) -> None:
    """Check notebook 05's variant parameters before any upstream work.

    05 finds and reopens its 04 run first (retraining its checkpoint when the clone has none, minutes of
    CPU); an unknown method, level, bit-width, importance metric, quantizer or budget must stop the run
    before that, not after. ``budget="paper"`` stands for the budgets read later from paper A's Table 2
    (:func:`paper_budgets`); ``settings`` are :func:`make_variants`' other arguments.

    Raises:
        ValueError: what :func:`make_variants` would raise, naming the value and the choices.

    """
    make_variants(methods, budget=9.0 if isinstance(budget, str) and budget == "paper" else budget, **settings)


def paper_budgets(table2: pd.DataFrame, stat: str = "range") -> dict[str, list[float]]:
    """Budgets (target CRs) of LAP, LAQ and P->Q read from paper A's Table 2.

    ``table2`` is ``paper_a_table2.csv`` (columns ``method`` and ``cr``). ``stat="range"``
    gives each method's smallest, median and largest published CR (e.g. LAP 1.2 / 1.6 /
    2.0), ``"all"`` every distinct one. The paper's adaptive methods reached different
    CRs, so one budget for all (the old CR 9) forced pruning alone to ~90 % sparsity.
    """
    names = {"adaptive_pruning": "lap", "adaptive_q": "laq", "adaptive_p_to_q": "pq"}
    if not {"method", "cr"} <= set(table2.columns):
        raise ValueError(f"paper Table 2 needs columns method and cr, has {list(table2.columns)}")
    out = {}
    for paper_name, ours in names.items():
        crs = np.sort(table2.loc[table2["method"] == paper_name, "cr"].astype(float).unique())
        if len(crs) == 0:
            raise ValueError(f"paper Table 2 has no {paper_name!r} row")
        if stat == "all":
            out[ours] = [float(c) for c in crs]
        elif stat == "range":
            out[ours] = sorted({float(crs[0]), float(np.median(crs).round(1)), float(crs[-1])})
        else:
            raise ValueError(f"unknown stat {stat!r}; choose one of: all, range")
    return out


def variant_name(spec: Mapping[str, Any]) -> str:
    """Readable, file-safe name of a variant (``fixed_prune-level1.0``, ``laq-entropy-cr9``)."""
    m = spec["method"]
    if m == "fixed_prune":
        return f"{m}-level{spec['level']:g}-{spec.get('scope', 'global')}"
    grid = f"-{spec.get('granularity', DEFAULT_GRANULARITY)}-" \
           f"{spec.get('levels', DEFAULT_LEVELS).replace('^', '')}"
    if m == "fixed_quant":
        return f"{m}-{spec['bits']}bit{grid}"
    cr = "cr" if spec.get("budget_cr", "paper") == "paper" else "ourcr"
    return f"{m}-{spec['importance']}-{cr}{spec['budget']:g}{'' if m == 'lap' else grid}"


def apply_variant(model: nn.Module, spec: Mapping[str, Any],
                  importance: Mapping[str, Mapping[str, float]] | None = None
                  ) -> tuple[nn.Module, CompressionReport]:
    """Run one :func:`make_variants` spec; ``importance`` maps metric name -> layer scores."""
    fn = get_method(spec["method"])
    imp = None
    if spec["method"] in ADAPTIVE_METHODS:
        if not importance or spec["importance"] not in importance:
            raise ValueError(f"variant {variant_name(spec)} needs importance scores for "
                             f"{spec['importance']!r}; pass importance={{metric: scores}}")
        imp = importance[spec["importance"]]
    return fn(model, spec, importance=imp)


def _predicted_labels(model: nn.Module, loader: Iterable, max_images: int = 0,
                      desc: str = "predict", progress: bool = True,
                      device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Argmax predictions and true labels of the first ``max_images`` images (0: all).

    The argmax is taken over the logits in the model's own precision (no autocast): softmax
    can round two nearly equal logits to one probability, and a variant's accuracy must be
    that of its weights.
    """
    logits, labels, _ = predict(model, loader, device, max_images=max_images, progress=progress,
                                desc=desc, amp=False, output="logits")
    return logits.argmax(1), labels


_CACHE_BYTES = 2 * 1024**3  # test batches up to this size are prepared once, not per variant


def _cached_batches(loader: Iterable, max_images: int = 0) -> Iterable:
    """The loader's batches as a list when they fit in memory, else the loader itself.

    Decoding, resizing and normalising then happen once instead of once per variant.
    """
    batches, nbytes, seen = [], 0, 0
    for batch in loader:
        x, y = batch[0], batch[1]
        batches.append((x, y))
        nbytes += x.element_size() * x.nelement()
        seen += len(x)
        if nbytes > _CACHE_BYTES:
            return loader
        if max_images and seen >= max_images:
            break
    return batches


def evaluate_variants(model: nn.Module, variants: list[dict[str, Any]], test_loader: Iterable,
                      artefact_dir: str | os.PathLike,
                      importance: Mapping[str, Mapping[str, float]] | None = None,
                      max_images: int = 0, model_name: str = "",
                      device: str = "cpu", check_images: int = 0,
                      finetune: Mapping[str, tuple[int, float]] | None = None,
                      train_loader: Iterable | None = None) -> pd.DataFrame:
    """Compress, save, reload and evaluate every variant: the study's results table.

    For the fp32 baseline and each variant: top-1 accuracy (%) of the simulated model,
    computed CR (with and without index/scale overhead), on-disk CR (``torch.save`` fp32
    state-dict size / artefact size), their relative gap, global sparsity, mean bits, save
    and load time, and ``artefact_match``: True when the reloaded artefact has bit-identical
    weights and predicts exactly the same labels as the simulated model on the first
    ``check_images`` evaluated test images (0: all of them; ``n_checked`` records how many).
    Both CRs are on every row: ``cr_paper`` (paper A's 32/b, 1/(1-s), their product) and
    ``cr`` (ours: every mask, scale and fp32 tensor counted), beside the measured ``cr_disk``.
    ``finetune`` maps variant names to ``(steps, lr)``: those variants are also fine-tuned
    (:func:`~lcc_utils.compression.finetune_compressed`, on ``train_loader``) and get a row
    of their own, ``<variant>+ft`` with method ``<method>+ft`` (beyond the paper).
    Every row is also compared with fp32 on the same images (:func:`_paired_vs_fp32`:
    ``diff_vs_fp32`` with its 95 % CI, ``mcnemar_p``), and ``mcnemar_p_holm`` adjusts those
    p-values for the run's variants (Holm).
    Compression runs on the CPU; predictions on ``device``.
    """
    if not isinstance(check_images, int) or check_images < 0:
        raise ValueError(f"check_images must be an integer >= 0, got {check_images!r}")
    artefact_dir = Path(artefact_dir)
    model = model.cpu().eval()
    test_loader = _cached_batches(test_loader, max_images)
    fp32_bytes = state_dict_file_size(model)
    n_params = sum(p.numel() for p in model.parameters())
    rows = []
    base_pred, y = _predicted_labels(copy.deepcopy(model), test_loader, max_images,
                                     desc="fp32", device=device)
    rows.append({"variant": "fp32", "method": "none", "accuracy": 100 * float((base_pred == y)
                 .mean()), "cr_paper": 1.0, "cr": 1.0, "cr_sparsity_bits_only": 1.0,
                 "cr_disk": 1.0,
                 "size_bytes": fp32_bytes, "params": n_params,
                 "nonzero_params": n_params, "sparsity": analyze(model).sparsity,
                 "mean_bits": 32.0, "artefact_match": True, "n_checked": 0, "n_test": len(y),
                 "diff_vs_fp32": 0.0, "diff_ci_low": 0.0, "diff_ci_high": 0.0,
                 "mcnemar_p": float("nan"), "discordant": 0})
    finetune = dict(finetune or {})
    unknown = set(finetune) - {variant_name(v) for v in variants}
    if unknown:
        raise ValueError(f"finetune names no variant of this study: {sorted(unknown)}")
    if finetune and train_loader is None:
        raise ValueError("finetune needs train_loader (batches of the training split)")

    def row(name: str, spec: Mapping[str, Any], cmodel: nn.Module,
            report: CompressionReport) -> dict[str, Any]:
        t0 = time.perf_counter()
        path = save_compressed(cmodel, report, artefact_dir / f"{name}{ARTEFACT_SUFFIX}",
                               model_name=model_name)
        t1 = time.perf_counter()
        reloaded = load_compressed(path, model)
        t2 = time.perf_counter()
        pred, _ = _predicted_labels(cmodel, test_loader, max_images, progress=False,
                                    device=device)
        n_check = min(check_images, len(y)) if check_images else len(y)
        pred_r, _ = _predicted_labels(reloaded, test_loader, n_check, progress=False,
                                      device=device)
        cmodel, reloaded = cmodel.cpu(), reloaded.cpu()
        same_w = all(torch.equal(a, b) for a, b in
                     zip(cmodel.state_dict().values(), reloaded.state_dict().values(),
                         strict=True))
        size = path.stat().st_size
        nnz = sum(int(torch.count_nonzero(p)) for p in cmodel.parameters())
        return {"variant": name, **spec, "accuracy": 100 * float((pred == y).mean()),
                "cr_paper": paper_compression_ratio(report), "cr": compression_ratio(report),
                "cr_sparsity_bits_only": compression_ratio(report, overhead=False),
                "cr_disk": fp32_bytes / size, "size_bytes": size, "params": n_params,
                "nonzero_params": nnz, "sparsity": report.sparsity,
                "mean_bits": report.mean_bits,
                "artefact_match": bool(same_w and np.array_equal(pred[:n_check], pred_r)),
                "n_checked": n_check, "save_s": t1 - t0, "load_s": t2 - t1, "n_test": len(y),
                **_paired_vs_fp32(y, base_pred, pred)}

    for spec in tqdm(variants, desc="variants"):
        name = variant_name(spec)
        cmodel, report = apply_variant(model, spec, importance)
        rows.append({**row(name, spec, cmodel, report), "finetuned": False})
        if name in finetune:
            steps, lr = finetune[name]
            t0 = time.perf_counter()
            fmodel, freport = finetune_compressed(cmodel, report, train_loader, steps=steps,
                                                  lr=lr)
            ft_s = time.perf_counter() - t0
            ft_spec = {**spec, "method": f"{spec['method']}+ft"}
            rows.append({**row(f"{name}+ft", ft_spec, fmodel, freport), "finetuned": True,
                         "finetune_steps": steps, "finetune_lr": lr, "finetune_s": ft_s})
    df = with_spec_ratios(pd.DataFrame(rows))
    df["cr_gap"] = df["cr_disk"] / df["cr"] - 1.0
    # One family per run: every variant against the same fp32 model on the same images.
    df["mcnemar_p_holm"] = holm(df["mcnemar_p"].to_numpy(dtype=float))
    return df


#: The computed CRs a fine-tuned row takes from the variant it fine-tunes.
SPEC_RATIOS = ("cr_paper", "cr", "cr_sparsity_bits_only")


def with_spec_ratios(results: pd.DataFrame) -> pd.DataFrame:
    """Fine-tuned rows (``<variant>+ft``) get their variant's computed CRs.

    The fine-tune keeps the variant's pruning masks and bit-widths, so it is the same
    compression. Recomputed from the fine-tuned weights, a 4-bit model's weights that rounding
    put on zero would count as pruned (paper A's ``1/(1-s)``), e.g. 8.0 -> 13.4 for one 4-bit
    model: a CR the artefact does not have. ``cr_disk`` stays measured on the row's own file.
    Applied to every new result, and by :func:`lcc_utils.paper_a.collect_results` to results
    written before this rule (issue 21).
    """
    if "finetuned" not in results or not results["finetuned"].fillna(False).astype(bool).any():
        return results
    out = results.copy()
    base = out.set_index("variant")
    for i in out.index[out["finetuned"].fillna(False).astype(bool)]:
        variant = str(out.at[i, "variant"]).removesuffix("+ft")
        if variant in base.index:
            for col in SPEC_RATIOS:
                if col in out:
                    out.at[i, col] = base.at[variant, col]
    return out


def _paired_vs_fp32(y: np.ndarray, base_pred: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """A variant against fp32 on the same test images: the image is the unit.

    ``diff_vs_fp32`` is the paired accuracy difference in points (variant minus fp32) with
    its 95 % interval (``diff_ci_low``/``diff_ci_high``: t-interval of the per-image
    differences, n in the thousands, so the normal approximation holds); ``mcnemar_p`` is
    McNemar's test of equal error rates (exact binomial below 25 discordant images).
    EuroSAT's test split is a random split of images, so images are the independent unit;
    spatially correlated test sets would need a block-level test (notebook 06 does that).
    """
    diff = 100.0 * ((pred == y).astype(float) - (base_pred == y).astype(float))
    mean, low, high, _ = paired_difference(diff)
    test = mcnemar(y, base_pred, pred)
    return {"diff_vs_fp32": mean, "diff_ci_low": low, "diff_ci_high": high,
            "mcnemar_p": test["p_value"], "discordant": test["b"] + test["c"]}
