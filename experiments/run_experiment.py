"""The original framework's launcher: `python experiments/run_experiment.py --mode ... `.

A thin entry point over `dmlt-train` (same flags, same code), kept so existing commands work.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "trainer_image"), str(ROOT / "contract")]  # the trainer and its contract

from dmlt_trainer.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
