"""Domain constants in one place: class lists, band names, SCL codes, published numbers.

Every other module imports from here, so a band order or a class list is
written exactly once.
"""

from __future__ import annotations

# --------------------------------------------------------------------------- datasets
#: EuroSAT classes, in the alphabetical order of the official archive's folders.
EUROSAT_CLASSES: tuple[str, ...] = (
    "AnnualCrop",
    "Forest",
    "HerbaceousVegetation",
    "Highway",
    "Industrial",
    "Pasture",
    "PermanentCrop",
    "Residential",
    "River",
    "SeaLake",
)

#: UC Merced Land Use classes (folder names of the official archive).
UCMERCED_CLASSES: tuple[str, ...] = (
    "agricultural",
    "airplane",
    "baseballdiamond",
    "beach",
    "buildings",
    "chaparral",
    "denseresidential",
    "forest",
    "freeway",
    "golfcourse",
    "harbor",
    "intersection",
    "mediumresidential",
    "mobilehomepark",
    "overpass",
    "parkinglot",
    "river",
    "runway",
    "sparseresidential",
    "storagetanks",
    "tenniscourt",
)

#: Relative location of each dataset below the data root: the official archives' own layouts.
DATASET_SUBDIRS: dict[str, str] = {
    "eurosat": "eurosat/2750",
    "eurosat_ms": "eurosat-ms/ds/images/remote_sensing/otherDatasets/sentinel_2/tif",
    "ucmerced": "ucmerced/UCMerced_LandUse/Images",
}

#: Official archives and documented mirrors (torchgeo's Hugging Face copies of the same zips).
#: Checksums are the publicly documented ones: md5 from torchvision/torchgeo, sha256 where a
#: public source states it (EuroSAT.zip has no published sha256: md5 is checked instead).
#: ``fetch_dataset`` verifies every checksum listed and refuses a file that fails any.
DATASET_ARCHIVES: dict[str, dict[str, str | list[str] | None]] = {
    "eurosat": {
        "urls": [
            "https://madm.dfki.de/files/sentinel/EuroSAT.zip",
            "https://hf.co/datasets/torchgeo/eurosat/resolve/main/EuroSAT.zip",
        ],
        "filename": "EuroSAT.zip",
        "md5": "c8fa014336c82ac7804f0398fcb19387",
        "sha256": None,
        "extract_to": "eurosat",
    },
    "eurosat_ms": {
        "urls": [
            "https://madm.dfki.de/files/sentinel/EuroSATallBands.zip",
            "https://hf.co/datasets/torchgeo/eurosat/resolve/main/EuroSATallBands.zip",
        ],
        "filename": "EuroSATallBands.zip",
        "md5": "5ac12b3b2557aa56e1826e981e8e200e",
        "sha256": "751f070f9bffa2eed48b24ca2dd0b02959280c08837e8c9a5532a67ba611df59",
        "extract_to": "eurosat-ms",
    },
    "ucmerced": {
        "urls": [
            "http://weegee.vision.ucmerced.edu/datasets/UCMerced_LandUse.zip",
            "https://hf.co/datasets/torchgeo/ucmerced/resolve/main/UCMerced_LandUse.zip",
        ],
        "filename": "UCMerced_LandUse.zip",
        "md5": "5b7ec56793786b6dc8a908e8854ac0e4",
        "sha256": "06c539ef28703a58fb07bd2837991ac7c48b813b00bb12ac197efd813a18daeb",
        "extract_to": "ucmerced",
    },
}

#: Native image size and band count of each dataset (a file that differs is bad input).
DATASET_SHAPES: dict[str, tuple[int | None, int]] = {
    "eurosat": (64, 3),
    "eurosat_ms": (64, 13),
    # UC Merced is nominally 256x256 but a few official images are 247-256 px:
    # they are resized to 256 on decode (documented in data.py), so no fixed size here.
    "ucmerced": (None, 3),
}
UCMERCED_SIZE = 256

# --------------------------------------------------------------------------- Sentinel-2
#: EuroSAT MS band order *as stored in the GeoTIFFs*: B8A is the LAST band, not the 9th.
#: The EuroSAT paper (and the shared data README) list B8A 9th, but the files follow the
#: Sentinel Hub order B01..B12, B8A (phelber/EuroSAT#7; torchgeo fixed the same bug in
#: torchgeo#2458/#2480). Our own check on the real sample agrees: band 10 (B10, cirrus) has a
#: mean reflectance of 0.001 and band 13 (B8A) tracks B08 (0.26 vs 0.23) -- see
#: tests/test_data.py::test_eurosat_ms_band_order_real.
EUROSAT_MS_BANDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A",
)
#: Paper B's six bands: blue, green, red, NIR (10 m) and the two SWIR bands (20 m).
PAPER_B_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B08", "B11", "B12")
#: Native ground sampling distance of each Sentinel-2 band, in metres.
S2_BAND_RESOLUTION: dict[str, int] = {
    "B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20,
    "B08": 10, "B8A": 20, "B09": 60, "B10": 60, "B11": 20, "B12": 20, "SCL": 20,
}
#: Scene Classification Layer (SCL) of Sen2Cor L2A products.
SCL_CLASSES: dict[int, str] = {
    0: "no data",
    1: "saturated or defective",
    2: "dark area pixels",
    3: "cloud shadows",
    4: "vegetation",
    5: "not vegetated",
    6: "water",
    7: "unclassified",
    8: "cloud medium probability",
    9: "cloud high probability",
    10: "thin cirrus",
    11: "snow",
}
#: SCL classes masked out before patches are extracted (paper B: clouds; we add the rest).
SCL_MASK_CLASSES: tuple[int, ...] = (0, 1, 3, 8, 9, 10, 11)
#: Reflectance = (DN + BOA_ADD_OFFSET) / QUANTIFICATION_VALUE; offset -1000 since baseline 04.00.
S2_QUANTIFICATION_VALUE = 10000.0
S2_BOA_OFFSET_SINCE_BASELINE_0400 = -1000.0

#: Binary vegetation task on EuroSAT MS: the grouping is ours (paper B's labels are private).
#: Vegetated: land covered by living plants most of the year. River/SeaLake/Highway/
#: Industrial/Residential are non-vegetated; AnnualCrop is counted as vegetation
#: (cropland under crop), a choice documented in docs/data.md.
EUROSAT_VEGETATION_CLASSES: tuple[str, ...] = (
    "AnnualCrop", "Forest", "HerbaceousVegetation", "Pasture", "PermanentCrop",
)

# --------------------------------------------------------------------------- paper A
#: Paper A backbones: our key -> timm model name.
PAPER_A_BACKBONES: dict[str, str] = {
    "convnext_tiny": "convnext_tiny",
    "swin_tiny": "swin_tiny_patch4_window7_224",
    "efficientnetv2_s": "tf_efficientnetv2_s",
    "regnety_032": "regnety_032",
}
#: Paper A's pruning levels and the compression ratios it reports for them.
PAPER_A_PRUNING_LEVEL_CR: dict[float, float] = {0.25: 1.3, 0.5: 1.7, 1.0: 3.4, 1.5: 7.9}
#: Paper A's best adaptive prune-then-quantize result (CR, top-1 accuracy %).
PAPER_A_PQ_BEST: dict[str, float] = {"cr": 9.0, "accuracy": 98.10}

# --------------------------------------------------------------------------- paper B
#: Paper B's published results (its results table, Dolj County test set).
PAPER_B_RESULTS: dict[str, dict[str, float]] = {
    "LightweightCNN": {"oa": 91.2, "kappa": 0.82},
    "ResNet-18": {"oa": 92.5},
    "NDVI threshold": {"oa": 78.0},
}

# ------------------------------------------------------------------- paper B evaluation (06/07)
#: NDVI bin edges for paper B's NDVI-binned error analysis. Paper B does not publish its
#: edges, only that errors concentrate at NDVI 0.15-0.25 (paper_b_results.csv,
#: error_ndvi_range). Our edges put 0.15 and 0.25 on bin edges, 0.05 wide over the
#: transitional range 0.1-0.3, coarser outside (water/bare < 0, dense vegetation > 0.6),
#: so the paper's range is exactly two bins and can be compared with its neighbours.
PAPER_B_NDVI_BINS: tuple[float, ...] = (-1.0, 0.0, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.6, 1.0)
#: Paper B's architecture ablation: variant -> LightweightCNN keyword arguments.
#: A4's fourth block width (256) is our choice: paper B only says "four blocks".
PAPER_B_ABLATION: dict[str, dict[str, object]] = {
    "A1": {"depth": 2, "filters": (32, 64), "kernel_size": 3},
    "A2": {"depth": 3, "filters": (32, 64, 128), "kernel_size": 3},
    "A3": {"depth": 3, "filters": (32, 64, 128), "kernel_size": 5},
    "A4": {"depth": 4, "filters": (32, 64, 128, 256), "kernel_size": 3},
}

# ------------------------------------------------------- Sentinel-2 L2A preprocessing (02/08)
#: ESA's ``band_id`` order in L2A metadata (``MTD_MSIL2A.xml`` BOA_ADD_OFFSET): B8A is 9th.
#: Not the EuroSAT MS file order above (B8A last).
S2_ESA_BAND_ORDER: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12",
)
#: First day of processing baseline 04.00 (BOA_ADD_OFFSET -1000), used when a product's
#: metadata gives neither the offset nor the baseline.
S2_BASELINE_0400_DATE = "2022-01-25"
#: Default SCL -> label mapping for paper B's task (vegetation vs not vegetated).
SCL_VEGETATION_LABELS: dict[int, str] = {4: "vegetation", 5: "not_vegetated"}
#: Paper B's patch side (pixels of the 10 m grid) and train/val/test fractions.
PAPER_B_PATCH_SIZE = 32
PAPER_B_SPLIT_FRACTIONS: tuple[float, float, float] = (0.70, 0.15, 0.15)
