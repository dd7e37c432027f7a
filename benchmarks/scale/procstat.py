"""CPU time and peak memory of a process, from /proc (Linux)."""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds_from_stat(stat: str, ticks: int = CLOCK_TICKS) -> float:
    """utime + stime of /proc/<pid>/stat's text (all threads; children not counted)."""
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of the whole line
    return (utime + stime) / ticks


def kib_field(status: str, key: str) -> int:
    """A "Key:   123 kB" line of /proc/<pid>/status, in KiB."""
    for line in status.splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise KeyError(key)


def cpu_seconds(pid: int) -> float:
    return cpu_seconds_from_stat(Path(f"/proc/{pid}/stat").read_text())


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the largest resident set the process has had, in MB (10^6 bytes)."""
    return kib_field(Path(f"/proc/{pid}/status").read_text(), "VmHWM") * 1024 / 1e6
