"""Paired RGB/DVS data: the embedded Digits-DVS set, real loaders, frame cache, batches."""

from ckd_search.data.base import PairedData
from ckd_search.data.base import Split

__all__ = ["PairedData", "Split"]
