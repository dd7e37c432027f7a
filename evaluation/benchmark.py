"""The original framework's report step: `python evaluation/benchmark.py` -> reports/benchmark_report.md.

Re-renders the report from reports/benchmark_results.json when a benchmark has run; otherwise
runs `dmlt-train --mode benchmark` (any extra flags are passed through) and writes it.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "trainer_image"), str(ROOT / "contract")]  # the trainer and its contract

from dmlt_trainer.cli import main  # noqa: E402
from dmlt_trainer.errors import ConfigError  # noqa: E402
from dmlt_trainer.report import report_from_results  # noqa: E402


def run(argv: list[str]) -> int:
    report_dir = "reports"
    if "--report-dir" in argv:
        report_dir = argv[argv.index("--report-dir") + 1]
    if "--rerun" not in argv:
        try:
            print(f"report: {report_from_results(report_dir)}")
            return 0
        except ConfigError:
            pass  # nothing measured yet: run the benchmark
    argv = [a for a in argv if a != "--rerun"]
    return main(["--mode", "benchmark", "--run-name", "benchmark", *argv])


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
