"""What the benchmarks read about a cluster's processes from /proc: the process tree and RSS."""

from __future__ import annotations

import os


def process_tree(root: int) -> dict[int, list[str]]:
    """pid -> argv of `root` and every process below it, in start (pid) order."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found: dict[int, list[str]] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        found[pid] = argv_of(pid)
        todo.extend(children.get(pid, []))
    return dict(sorted(found.items()))


def argv_of(pid: int) -> list[str]:
    """The command line of `pid` ([] once it has exited)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [part.decode(errors="replace") for part in f.read().split(b"\0") if part]
    except OSError:
        return []


def rss_mib(pid: int) -> float:
    """Resident memory of `pid` in MiB; NaN once it has exited."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")
