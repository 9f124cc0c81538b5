#!/usr/bin/env python3
"""Memory of `exthost run` under a flood its client never reads.

2,000 lines of 100 kB `a_echo` arguments (FLOOD_LINES, FLOOD_ARG_BYTES) to an extension with
max_in_flight = 32; stdout is never read. Prints exthost's resident memory
(VmRSS, KiB) sampled every second for 16 s.

    cargo build --bin exthost --examples
    python3 scripts/flood.py target/debug/exthost target/debug/examples/mock_extension [--max-pending N]
"""
import os, signal, subprocess, sys, tempfile, threading, time

exe, mock, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
size = int(os.environ.get("FLOOD_ARG_BYTES", "100000"))
count = int(os.environ.get("FLOOD_LINES", "2000"))
with tempfile.TemporaryDirectory(prefix="exthost-flood-") as d:
    cfg = os.path.join(d, "cfg.toml")
    with open(cfg, "w") as f:
        f.write(f'services_dir = "{d}/services"\nlogs_dir = "{d}/logs"\n'
                f'[services.alpha]\ncommand = "{os.path.abspath(mock)}"\n'
                f'max_in_flight = 32\nenv = {{ MOCK_PREFIX = "a_" }}\n')
    p = subprocess.Popen([exe, "run", "--config", cfg, *extra], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    arg = "x" * size

    def feed():
        try:
            for i in range(count):
                p.stdin.write(f'{{"id": {i}, "tool": "a_echo", "args": "{arg}"}}\n'.encode())
            p.stdin.flush()
        except BrokenPipeError:
            pass

    threading.Thread(target=feed, daemon=True).start()

    def rss():
        with open(f"/proc/{p.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS"):
                    return int(line.split()[1])

    samples = []
    for _ in range(16):
        samples.append(rss())
        time.sleep(1)
    print(f"VmRSS KiB: start {samples[0]}, peak {max(samples)}, end {samples[-1]}")
    # The client never read stdout, so exthost cannot finish its answers:
    # stop it hard (its extensions go with it).
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
