"""Paired RGB/DVS data: the embedded Digits-DVS set, real loaders, frame cache, batches.

``load_paired(cfg.data, image_size)`` builds a data set into the cache on first use and
memory-maps it afterwards; ``BatchSource`` serves augmented batches from one on-device tensor.
"""

from ckd_search.data.base import PairedData
from ckd_search.data.base import Split
from ckd_search.data.batches import Batch
from ckd_search.data.batches import BatchSource
from ckd_search.data.paired import load_paired

__all__ = ["Batch", "BatchSource", "PairedData", "Split", "load_paired"]
