"""One Digits-DVS epoch on the CPU with the default config; see ckd_search.perf.cpu_epoch.

python bench/cpu_epoch.py                 # Config() defaults, temp cache
python bench/cpu_epoch.py --epochs 2 --set optim.batch_size=32
"""

import sys
from pathlib import Path

# Run from a checkout: put the repository root first so this tree's ckd_search is imported even
# where the installed (editable) copy is stale or absent.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ckd_search.errors import exit_code  # noqa: E402
from ckd_search.perf.cpu_epoch import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(exit_code(main, "cpu_epoch"))
