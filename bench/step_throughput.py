"""CKD training-step throughput vs the plain spikingjelly baseline; see ckd_search.perf.step_bench.

python bench/step_throughput.py --smoke            # tiny CPU run (CI)
python bench/step_throughput.py --scaling          # full size on a GPU, plus the T x size grid
"""

import sys
from pathlib import Path

# Run from a checkout: put the repository root first so this tree's ckd_search is imported even
# where the installed (editable) copy is stale or absent.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ckd_search.errors import exit_code  # noqa: E402
from ckd_search.perf.step_bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(exit_code(main, "step_throughput"))
