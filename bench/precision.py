"""bf16 vs fp32 loss and accuracy curves of one run; see ckd_search.perf.precision.

python bench/precision.py --device cuda --epochs 6      # the check that counts (GPU)
python bench/precision.py --smoke                       # CI: fp32 only on a CPU, bf16 skipped with a note
"""

import sys
from pathlib import Path

# Run from a checkout: put the repository root first so this tree's ckd_search is imported even
# where the installed (editable) copy is stale or absent.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ckd_search.perf.precision import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
