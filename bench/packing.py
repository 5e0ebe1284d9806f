"""1, 2, 3 CKD trials packed on one GPU as processes; see ckd_search.perf.packing.

python bench/packing.py --smoke                    # CPU, 1 thread per trial (CI)
python bench/packing.py --batch 32 --compile       # on a GPU
"""

import sys
from pathlib import Path

# Run from a checkout: put the repository root first so this tree's ckd_search is imported even
# where the installed (editable) copy is stale or absent.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ckd_search.errors import exit_code  # noqa: E402
from ckd_search.perf.packing import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(exit_code(main, "packing"))
