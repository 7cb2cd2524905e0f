#!/usr/bin/env python3
"""No built binary may pull OpenSSL 3 (DEPS.md: gRPC's libgrpc and BoringSSL crash
together). Usage: test_no_openssl3.py BUILD_ROOT. Every ELF executable and shared object
under BUILD_ROOT is checked with ldd: libssl.so.3 or libcrypto.so.3 fails the test.
The tether-sidecar binary, when it was built, must be among those checked and must
resolve BoringSSL's libssl."""

import os
import subprocess
import sys


def is_elf_binary(path):
    try:
        with open(path, "rb") as f:
            head = f.read(18)
    except OSError:
        return False
    if head[:4] != b"\x7fELF" or len(head) < 18:
        return False
    e_type = int.from_bytes(head[16:18], "little")
    return e_type in (2, 3)  # ET_EXEC, ET_DYN (PIE executables and .so)


def main():
    if len(sys.argv) != 2 or not os.path.isdir(sys.argv[1]):
        print("usage: test_no_openssl3.py BUILD_ROOT")
        return 1
    root = sys.argv[1]
    checked, bad = [], []
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if x not in ("meson-private", "meson-logs", "meson-info")]
        for f in files:
            p = os.path.join(d, f)
            if f.endswith((".o", ".a")) or os.path.islink(p) or not is_elf_binary(p):
                continue
            r = subprocess.run(["ldd", p], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               timeout=30)
            out = r.stdout.decode(errors="replace")
            checked.append(p)
            hits = [ln.strip() for ln in out.splitlines()
                    if "libssl.so.3" in ln or "libcrypto.so.3" in ln]
            if hits:
                bad.append((p, hits))
            if os.path.basename(p) == "tether-sidecar":
                if "android/libssl.so" not in out and "libssl.so.0" not in out:
                    bad.append((p, ["does not resolve BoringSSL's libssl: " + out.strip()]))
    for p in checked:
        print("checked", os.path.relpath(p, root))
    if not checked:
        print("FAIL: no ELF binaries found under", root)
        return 1
    if bad:
        for p, hits in bad:
            print("FAIL:", os.path.relpath(p, root), ";".join(hits))
        return 1
    print("PASS: %d binaries, none links OpenSSL 3" % len(checked))
    return 0


if __name__ == "__main__":
    sys.exit(main())
