"""Summarize a py-spy speedscope profile: the functions with the most samples.

    python bench/spysummary.py PROFILE.speedscope.json [--top 25]

Prints, per function, the share of samples in which it was running (self) and in which it
was on the stack (total), largest total first.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    with open(args.profile) as stream:
        data = json.load(stream)
    frames = data["shared"]["frames"]
    own: Counter[int] = Counter()
    total: Counter[int] = Counter()
    samples = 0
    for profile in data["profiles"]:
        for stack, weight in zip(profile["samples"], profile["weights"], strict=True):
            samples += weight
            if stack:
                own[stack[-1]] += weight
            for frame in set(stack):
                total[frame] += weight
    print(f"{samples:.2f} s sampled")
    print(f"{'total':>6} {'self':>6}  function")
    for frame, count in total.most_common(args.top):
        f = frames[frame]
        where = f"{f.get('file', '').rsplit('/', 2)[-1]}:{f.get('line', '')}"
        print(f"{100 * count / samples:5.1f}% {100 * own[frame] / samples:5.1f}%  "
              f"{f['name']} ({where})")


if __name__ == "__main__":
    main()
