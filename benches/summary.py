#!/usr/bin/env python3
"""Median and 10th/90th percentiles of criterion's per-iteration samples.

Usage: python3 benches/summary.py [GROUP...]

Reads target/criterion/<group>/<name>/new/sample.json (per-sample time =
times[i] / iters[i], in ns) and prints, per benchmark, the median and the
10th and 90th percentiles of those per-iteration times; when the bench set a
throughput (benchmark.json), also the rate at the median (elements/s or
MB/s).
"""

import json
import os
import sys


def percentile(sorted_xs, p):
    if not sorted_xs:
        return float("nan")
    k = (len(sorted_xs) - 1) * p
    lo = int(k)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (k - lo)


def fmt_time(ns):
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.0f} ns"


def main():
    root = os.path.join("target", "criterion")
    groups = sys.argv[1:] or sorted(os.listdir(root))
    for group in groups:
        gdir = os.path.join(root, group)
        if not os.path.isdir(gdir):
            continue
        for dirpath, _, files in sorted(os.walk(gdir)):
            if not dirpath.endswith(os.path.join("new")) or "sample.json" not in files:
                continue
            with open(os.path.join(dirpath, "sample.json")) as f:
                s = json.load(f)
            xs = sorted(t / i for t, i in zip(s["times"], s["iters"]))
            med, p10, p90 = (percentile(xs, p) for p in (0.5, 0.1, 0.9))
            name = os.path.relpath(os.path.dirname(dirpath), root)
            rate = ""
            try:
                with open(os.path.join(dirpath, "benchmark.json")) as f:
                    tp = json.load(f).get("throughput") or {}
                if "Elements" in tp:
                    per_s = tp["Elements"] / (med / 1e9)
                    rate = f"  {per_s / 1e3:.1f} k/s"
                elif "Bytes" in tp or "BytesDecimal" in tp:
                    n = tp.get("Bytes") or tp.get("BytesDecimal")
                    rate = f"  {n / (med / 1e9) / 1e6:.1f} MB/s"
            except OSError:
                pass
            print(f"{name}: {fmt_time(med)} [{fmt_time(p10)}, {fmt_time(p90)}]{rate}")


if __name__ == "__main__":
    main()
