"""Summarize a ``py-spy record --format raw`` profile: self and inclusive share per function.

    py-spy record -p SERVER_PID -d 10 -r 200 --format raw -o profile.txt
    python bench/pyspy_summary.py profile.txt --top 25

Line numbers are dropped, so each function counts once whatever line was
running. Samples whose leaf is the event loop's wait for I/O count as idle.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter

_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_LOCATION = re.compile(r" \((?P<file>[^()]*?)(?::\d+)?\)$")
_IDLE = ("get_events", "epoll", "select (", "poll (")


def short(frame: str) -> str:
    """``name (path/to/pkg/module.py:12)`` -> ``name (pkg/module.py)``."""
    match = _LOCATION.search(frame)
    if match is None:
        return frame
    parts = match["file"].replace("\\", "/").split("/")
    return f"{frame[: match.start()]} ({'/'.join(parts[-2:])})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", help="output of py-spy record --format raw")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--match", help="only count stacks containing this text")
    args = parser.parse_args(argv)

    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = idle = 0
    with open(args.profile) as profile:
        for line in profile:
            parsed = _LINE.match(line.rstrip("\n"))
            if parsed is None:
                continue
            if args.match and args.match not in parsed["stack"]:
                continue
            count = int(parsed["count"])
            frames = [short(frame) for frame in parsed["stack"].split(";") if frame]
            total += count
            if frames and any(marker in frames[-1] for marker in _IDLE):
                idle += count
                continue
            if frames:
                own[frames[-1]] += count
            for frame in set(frames):
                inclusive[frame] += count
    if total == 0:
        print("no samples", file=sys.stderr)
        return 1
    busy = total - idle
    print(f"{total} samples, {idle / total:.1%} idle; shares below are of all samples")
    print(f"\nself (top {args.top}):")
    for frame, count in own.most_common(args.top):
        print(f"  {count / total:6.1%}  {frame}")
    print(f"\ninclusive (top {args.top}, busy {busy / total:.1%}):")
    for frame, count in inclusive.most_common(args.top):
        print(f"  {count / total:6.1%}  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
