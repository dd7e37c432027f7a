"""Progress for people (a bar on a terminal) and for the operator (JSON lines on stdout)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import Any

from dmlt_contract import (
    EVENT_EPOCH,
    TERMINATION_LOG,
    TERMINATION_LOG_ENV,
    TERMINATION_LOG_LIMIT,
    format_event,
)


def emit_event(event: str, **fields: Any) -> None:
    """One JSON object per line on stdout: the channel the operator reads from Pod logs."""
    sys.stdout.write(format_event(event, **fields) + "\n")
    sys.stdout.flush()


def termination_log_path(environ: Mapping[str, str] | None = None) -> str | None:
    """Where to leave the `finished` event: DMLT_TERMINATION_LOG when its directory exists,
    else /dev/termination-log when the kubelet made it; None outside a cluster."""
    env = os.environ if environ is None else environ
    explicit = env.get(TERMINATION_LOG_ENV, "").strip()
    if explicit:
        return explicit if os.path.isdir(os.path.dirname(os.path.abspath(explicit))) else None
    return TERMINATION_LOG if os.path.isfile(TERMINATION_LOG) else None


def termination_message(event: str, **fields: Any) -> str:
    """The event as it fits a termination message: without its bulky extras when too long."""
    line = format_event(event, **fields)
    if len(line.encode()) <= TERMINATION_LOG_LIMIT:
        return line
    keep = ("rank", "world_size", "status", "weights_sha256", "mlflow_run_id")
    return format_event(event, **{k: v for k, v in fields.items() if k in keep})


def write_termination_message(event: str, environ: Mapping[str, str] | None = None, **fields: Any) -> bool:
    """Leave the event in the container's termination message (the Pod's status carries it to
    the operator); best effort: False when there is nowhere to write or writing fails."""
    path = termination_log_path(environ)
    if path is None:
        return False
    try:
        with open(path, "w", encoding="utf-8") as out:
            out.write(termination_message(event, **fields))
    except OSError:
        return False
    return True


class EpochProgress:
    """A tqdm bar over epochs when stdout is a terminal; JSON lines otherwise."""

    def __init__(
        self, epochs: int, start_epoch: int, enabled: bool, run_id: str | None, pusher: Any = None
    ) -> None:
        self.enabled = enabled
        self.pusher = pusher
        """A ProgressPusher (rank 0 in a Pod the operator gave a progress URL): each epoch's
        event also goes to the operator."""
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
        fields = {"epoch": epoch + 1, "epochs": self.epochs, "metrics": metrics, "mlflow_run_id": self.run_id}
        if self.pusher is not None:
            self.pusher.submit(json.loads(format_event(EVENT_EPOCH, **fields)))
        if self.bar is not None:
            shown = {k: metrics[k] for k in ("train_loss", "val_loss", "val_auc") if k in metrics}
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in shown.items()})
            self.bar.update(1)
        else:
            emit_event(EVENT_EPOCH, **fields)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.pusher is not None:
            self.pusher.close()
