"""bf16 vs fp32 loss and accuracy curves of one run; see ckd_search.perf.precision.

python bench/precision.py --device cuda --epochs 6      # on a GPU: cuDNN's and Triton's bf16 kernels
python bench/precision.py --device cpu --epochs 15 --set data.timesteps=4 data.size=32 model.width=0.125 \
    optim.batch_size=64 teacher.epochs=3                # the demo's trial shape on a CPU (~8 min)
python bench/precision.py --smoke                       # CI: tiny shapes, 1 epoch
"""

import sys
from pathlib import Path

# Run from a checkout: put the repository root first so this tree's ckd_search is imported even
# where the installed (editable) copy is stale or absent.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ckd_search.errors import exit_code  # noqa: E402
from ckd_search.perf.precision import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(exit_code(main, "precision"))
