#!/bin/sh
# Three runs each of the roundtrip, throughput and growth benches, pinned to
# one core (`taskset -c 0`) and not, alternating, with the load average
# before each and the per-iteration medians and percentiles after each
# (benches/summary.py). Run from the crate root after
# `cargo bench --no-run --bench roundtrip --bench throughput --bench growth`.
set -eu
bin() { ls -t target/release/deps/"$1"-* | grep -v '\.d$' | head -1; }
for run in 1 2 3; do
    for mode in pinned unpinned; do
        for bench in roundtrip throughput growth; do
            echo "== $bench run $run $mode; $(uptime)"
            if [ "$mode" = pinned ]; then
                taskset -c 0 "$(bin "$bench")" --bench >/dev/null 2>&1
            else
                "$(bin "$bench")" --bench >/dev/null 2>&1
            fi
            case "$bench" in
                growth) python3 benches/summary.py growth routing ;;
                *) python3 benches/summary.py "$bench" ;;
            esac
        done
    done
done
