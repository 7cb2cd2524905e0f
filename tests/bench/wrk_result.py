#!/usr/bin/env python3
"""Reads wrk --latency output (a file) and prints "REQS_PER_S P50_MS P99_MS ERRORS" on one
line ("nan" for a figure wrk did not print); errors are socket errors plus non-2xx/3xx
answers. Used by tests/bench/run.sh and tests/bench/transparent.sh.

Usage: wrk_result.py WRK_OUTPUT_FILE
"""
import re
import sys


def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v)
    return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)] if m else float("nan")


def main():
    t = open(sys.argv[1]).read()
    rps = re.search(r"Requests/sec:\s+([\d.]+)", t)
    p50 = re.search(r"^\s+50%\s+(\S+)", t, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", t, re.M)
    err = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
    if m:
        err += sum(map(int, m.groups()))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
    if m:
        err += int(m.group(1))
    print(rps.group(1) if rps else "nan", ms(p50.group(1)) if p50 else "nan",
          ms(p99.group(1)) if p99 else "nan", err)


if __name__ == "__main__":
    main()
