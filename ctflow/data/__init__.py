"""Data: irregular series as padded tensors, DataFrame conversion, built-in datasets, 2-D toys.

This floor and the estimator are the only ones that speak pandas.
"""

from .datasets import (
    PBCSEQ_LABS,
    PBCSEQ_LOG_LABS,
    PBCSEQ_STATIC,
    OULatent,
    data_path,
    load_double_ou,
    load_pbcseq,
)
from .irregular import (
    IrregularBatch,
    collate,
    from_dataframe,
    holdout_last,
    iterate_batches,
    split_series,
    to_dataframe,
    truncate,
)
from .physionet import PHYSIONET2012_DESCRIPTORS, PHYSIONET2012_VARIABLES, load_physionet2012
from .pk import PKData, PKTruth, simulate_pk
from .toy2d import TOY2D, checkerboard, eight_gaussians, load_toy2d, rings, true_log_density, two_moons

__all__ = [
    "PBCSEQ_LABS",
    "PBCSEQ_LOG_LABS",
    "PBCSEQ_STATIC",
    "PHYSIONET2012_DESCRIPTORS",
    "PHYSIONET2012_VARIABLES",
    "TOY2D",
    "IrregularBatch",
    "OULatent",
    "PKData",
    "PKTruth",
    "checkerboard",
    "collate",
    "data_path",
    "eight_gaussians",
    "from_dataframe",
    "holdout_last",
    "iterate_batches",
    "load_double_ou",
    "load_pbcseq",
    "load_physionet2012",
    "load_toy2d",
    "rings",
    "simulate_pk",
    "split_series",
    "to_dataframe",
    "true_log_density",
    "truncate",
    "two_moons",
]
