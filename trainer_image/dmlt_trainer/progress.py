"""Progress for people (a bar on a terminal) and for the operator (JSON lines on stdout)."""

from __future__ import annotations

import sys
from typing import Any

from dmlt_contract import EVENT_EPOCH, format_event


def emit_event(event: str, **fields: Any) -> None:
    """One JSON object per line on stdout: the channel the operator reads from Pod logs."""
    sys.stdout.write(format_event(event, **fields) + "\n")
    sys.stdout.flush()


class EpochProgress:
    """A tqdm bar over epochs when stdout is a terminal; JSON lines otherwise."""

    def __init__(self, epochs: int, start_epoch: int, enabled: bool, run_id: str | None) -> None:
        self.enabled = enabled
        self.epochs = epochs
        self.run_id = run_id
        self.interactive = enabled and sys.stdout.isatty()
        self.bar = None
        if self.interactive:
            from tqdm import tqdm

            self.bar = tqdm(total=epochs, initial=start_epoch, unit="epoch", dynamic_ncols=True)

    def update(self, epoch: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            shown = {k: metrics[k] for k in ("train_loss", "val_loss", "val_auc") if k in metrics}
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in shown.items()})
            self.bar.update(1)
        else:
            emit_event(
                EVENT_EPOCH, epoch=epoch + 1, epochs=self.epochs, metrics=metrics, mlflow_run_id=self.run_id
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
