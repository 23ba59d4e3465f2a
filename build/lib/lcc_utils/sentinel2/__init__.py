"""Paper B preprocessing: Sentinel-2 L2A bands on one 10 m grid, SCL cloud mask, reflectance, patches.

Paper B uses Sentinel-2 L2A bands B2, B3, B4, B8 (10 m) and B11, B12 (20 m, resampled
to 10 m bilinearly), masks clouds with the Scene Classification Layer (SCL), works in
normalised reflectance and classifies 32x32 patches split 70/15/15 into spatially
disjoint train/val/test sets.

Where normalisation happens (two steps, on purpose):

1. Here: digital numbers -> surface reflectance,
   ``(DN + BOA_ADD_OFFSET) / QUANTIFICATION_VALUE`` (offset -1000 since processing
   baseline 04.00, 2022-01-25; 0 before). Patch sets and aligned GeoTIFFs hold reflectance.
2. At training time: per-band standardisation with the statistics of the *train* split
   only (``lcc_utils.data.BatchLoader(mean=..., std=...)``; :func:`band_stats`), so no
   information from val/test leaks into the model; mapping uses the same statistics.

Every product is read through windows (:func:`iter_windows`), so a full 10980 x 10980
tile is never held whole in memory.

One module per step, all re-exported here (``from lcc_utils import sentinel2 as s2``):

* :mod:`.product`: open a product in any of four layouts, reflectance offsets, provenance
  (:func:`open_l2a`, :class:`L2AProduct`, :func:`product_hash`).
* :mod:`.windows`: windowed, aligned reads (:class:`ProductReader`, :func:`iter_windows`,
  :func:`read_window`, :func:`read_overview`).
* :mod:`.align`: the aligned, cloud-masked GeoTIFF and its masked share (:func:`write_aligned`,
  the self-check :func:`check_aligned_mask`).
* :mod:`.patches`: labelled patch sets and sampling them from a scene
  (:class:`PatchSet`, :func:`extract_patches`, :func:`save_patchset`).
* :mod:`.adapters`: EuroSAT MS and BigEarthNet (:func:`eurosat_ms_patchset`).
* :mod:`.labels`: which EuroSAT classes are vegetation in the binary task (``BINARY_LABELS``).
* :mod:`.plots`: composites, SCL and patch figures.

Band names and NDVI live in :mod:`lcc_utils.spectral`, the spatial block split in
:mod:`lcc_utils.splits`; both are re-exported here as before.
"""

from lcc_utils.constants import (
    EUROSAT_VEGETATION_CLASSES,
    PAPER_B_BANDS,
    PAPER_B_SPLIT_FRACTIONS,
    S2_BAND_RESOLUTION,
    S2_BASELINE_0400_DATE,
    S2_BOA_OFFSET_SINCE_BASELINE_0400,
    S2_ESA_BAND_ORDER,
    S2_QUANTIFICATION_VALUE,
    SCL_CLASSES,
    SCL_MASK_CLASSES,
    SCL_VEGETATION_LABELS,
)
from lcc_utils.sentinel2 import labels
from lcc_utils.sentinel2.adapters import (
    BINARY_CLASSES,
    bigearthnet_example_dir,
    bigearthnet_patches,
    eurosat_ms_patchset,
)
from lcc_utils.sentinel2.align import (
    ALIGNED_NODATA,
    MaskCheckError,
    check_aligned_mask,
    raster_masked_fraction,
    scl_mask_share,
    write_aligned,
)
from lcc_utils.sentinel2.patches import (
    PatchSet,
    band_stats,
    check_label_source,
    extract_patches,
    load_patchset,
    save_patchset,
)
from lcc_utils.sentinel2.plots import plot_composites, plot_patches, plot_scl
from lcc_utils.sentinel2.product import (
    BAND_SUBSTITUTES,
    BASELINE_0400_DATE,
    LAYOUTS,
    L2AProduct,
    MissingBandError,
    open_l2a,
    preprocessing_data_hash,
    product_hash,
    resolve_bands,
)
from lcc_utils.sentinel2.windows import (
    ProductReader,
    WindowData,
    grid_windows,
    iter_windows,
    read_overview,
    read_window,
)
from lcc_utils.spectral import ndvi, normalize_band_name
from lcc_utils.splits import SPLIT_FRACTIONS, SPLITS, spatial_split

__all__ = [
    # product
    "BAND_SUBSTITUTES", "BASELINE_0400_DATE", "LAYOUTS", "L2AProduct", "MissingBandError", "open_l2a",
    "preprocessing_data_hash", "product_hash", "resolve_bands",
    # windows
    "ProductReader", "WindowData", "grid_windows", "iter_windows", "read_overview", "read_window",
    # aligned GeoTIFF
    "ALIGNED_NODATA", "MaskCheckError", "check_aligned_mask", "raster_masked_fraction", "scl_mask_share",
    "write_aligned",
    # patch sets
    "PatchSet", "band_stats", "check_label_source", "extract_patches", "load_patchset", "save_patchset",
    # adapters
    "BINARY_CLASSES", "bigearthnet_example_dir", "bigearthnet_patches", "eurosat_ms_patchset",
    # binary labels of EuroSAT MS (module)
    "labels",
    # figures
    "plot_composites", "plot_patches", "plot_scl",
    # from lcc_utils.spectral and lcc_utils.splits
    "ndvi", "normalize_band_name", "SPLITS", "SPLIT_FRACTIONS", "spatial_split",
    # domain constants (lcc_utils.constants), re-exported as before
    "EUROSAT_VEGETATION_CLASSES", "PAPER_B_BANDS", "PAPER_B_SPLIT_FRACTIONS", "S2_BAND_RESOLUTION",
    "S2_BASELINE_0400_DATE", "S2_BOA_OFFSET_SINCE_BASELINE_0400", "S2_ESA_BAND_ORDER",
    "S2_QUANTIFICATION_VALUE", "SCL_CLASSES", "SCL_MASK_CLASSES", "SCL_VEGETATION_LABELS",
]
