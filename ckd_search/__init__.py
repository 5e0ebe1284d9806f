"""ckd_search: distributed hyperparameter search for Cross Knowledge Distillation (arXiv 2507.09269).

The training engine (``ckd_search.engine``) knows nothing of Ray or MLflow; ``ckd_search.search``
wraps it.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
