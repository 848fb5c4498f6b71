"""Memory of this process, for the bench's Python helpers (imported by them;
`lungseg bench` writes every helper into one folder)."""

from __future__ import annotations

import resource


def peak_mb() -> float:
    """High-water RSS of this process (VmHWM). Not ru_maxrss, which Linux
    carries over exec from the parent: a helper started by a Go process
    holding models would report the Go process's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux 4.0+), so that the peak of the
    first read is not the peak of the imports."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / (1 << 20)
