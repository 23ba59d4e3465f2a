"""Paper A's model compression: pruning, quantization, LAP / LAQ, P->Q and a real artefact.

Paper A compresses its trained backbones with

* **fixed magnitude pruning** at "levels" k: a weight is removed when ``|w| < k * sigma``
  (:func:`prune_by_level`); and by target sparsity (:func:`prune_by_sparsity`);
* **fixed-bit post-training quantization** (PTQ) at 1-8 bits (:func:`quantize`);
* **layer-wise adaptive pruning (LAP) and quantization (LAQ)** driven by a layer importance
  (:func:`layer_importance`, :func:`adaptive_prune`, :func:`adaptive_quantize`);
* **adaptive prune-then-quantize (P->Q)** (:func:`prune_then_quantize`).

Every function works on a deep copy and returns ``(model, report)``: the model is the
*simulated* compressed model (pruned weights are exact zeros, quantized weights hold their
de-quantized fp32 values) and the :class:`CompressionReport` lists per-layer sparsity,
bit-width and quantization scales. :func:`compression_ratio` computes the paper's ratio
(original size / compressed size, counting sparsity, bit-width and the index and scale
overhead), and :func:`save_compressed` writes a real file whose size proves it;
:func:`load_compressed` rebuilds a model whose weights are bit-identical to the simulated
model's.

One concept per module, all re-exported here:

* :mod:`~lcc_utils.compression.size`: reports, prunable layers, the size model and the ratio;
* :mod:`~lcc_utils.compression.pruning`: fixed magnitude pruning and the level table;
* :mod:`~lcc_utils.compression.quantization`: fixed-bit quantization;
* :mod:`~lcc_utils.compression.importance`: the layer-importance registry;
* :mod:`~lcc_utils.compression.adaptive`: LAP, LAQ and P->Q;
* :mod:`~lcc_utils.compression.artefact`: the ``.lcc`` file format;
* :mod:`~lcc_utils.compression.variants`: the method registry, variant grid and evaluation;
* :mod:`~lcc_utils.compression.explorer`: the accuracy-vs-ratio plot and the slider explorer.

The choices the paper leaves open are documented in the module that makes them (and listed
in docs/paper_a.md). The engine knows nothing of training runs or datasets: paper A's study glue
(loading a trained run, Tables 2 and 3, run metrics) lives in :mod:`lcc_utils.paper_a`.
"""

from lcc_utils.compression.adaptive import adaptive_prune, adaptive_quantize, prune_then_quantize
from lcc_utils.compression.artefact import ARTEFACT_SUFFIX, load_compressed, save_compressed
from lcc_utils.compression.deploy import INT8_BACKEND, export_int8, load_int8, save_int8
from lcc_utils.compression.explorer import (
    compression_explorer,
    display_explorer,
    explorer_table,
    pareto_frontier,
    plot_accuracy_vs_cr,
    plot_accuracy_vs_size,
)
from lcc_utils.compression.finetune import finetune_compressed
from lcc_utils.compression.importance import (
    IMPORTANCE_METRICS,
    get_importance_metric,
    importance_table,
    layer_importance,
)
from lcc_utils.compression.pruning import (
    gaussian_level_sparsity,
    prune_by_level,
    prune_by_sparsity,
    pruning_level_table,
)
from lcc_utils.compression.quantization import (
    DEFAULT_GRANULARITY,
    DEFAULT_LEVELS,
    GRANULARITIES,
    LEVELS,
    fake_quantize,
    quantize,
)
from lcc_utils.compression.size import (
    CompressionReport,
    LayerReport,
    analyze,
    arch_hash,
    compression_ratio,
    paper_compression_ratio,
    prunable_layers,
    size_breakdown,
    state_dict_file_size,
)
from lcc_utils.compression.variants import (
    ADAPTIVE_METHODS,
    METHODS,
    apply_variant,
    check_variant_params,
    evaluate_variants,
    get_method,
    make_variants,
    paper_budgets,
    variant_name,
)

__all__ = [
    "ADAPTIVE_METHODS",
    "ARTEFACT_SUFFIX",
    "DEFAULT_GRANULARITY",
    "DEFAULT_LEVELS",
    "GRANULARITIES",
    "IMPORTANCE_METRICS",
    "INT8_BACKEND",
    "LEVELS",
    "METHODS",
    "CompressionReport",
    "LayerReport",
    "adaptive_prune",
    "adaptive_quantize",
    "analyze",
    "apply_variant",
    "arch_hash",
    "compression_explorer",
    "compression_ratio",
    "display_explorer",
    "evaluate_variants",
    "explorer_table",
    "export_int8",
    "fake_quantize",
    "finetune_compressed",
    "gaussian_level_sparsity",
    "get_importance_metric",
    "get_method",
    "importance_table",
    "layer_importance",
    "load_compressed",
    "load_int8",
    "check_variant_params",
    "make_variants",
    "paper_budgets",
    "pareto_frontier",
    "paper_compression_ratio",
    "plot_accuracy_vs_cr",
    "plot_accuracy_vs_size",
    "prunable_layers",
    "prune_by_level",
    "prune_by_sparsity",
    "prune_then_quantize",
    "pruning_level_table",
    "quantize",
    "save_compressed",
    "save_int8",
    "size_breakdown",
    "state_dict_file_size",
    "variant_name",
]
