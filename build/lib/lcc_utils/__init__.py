"""lcc_utils: shared code for the lcc land-cover classification notebooks."""

__version__ = "0.1.0"
