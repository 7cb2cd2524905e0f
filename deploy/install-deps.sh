#!/usr/bin/env bash
# Installs everything Tether builds with, tests with and benchmarks against, from
# Debian's archive (see ../shared/DEPS.md). Idempotent; needs root.
set -euo pipefail

packages=(
  # build
  android-libboringssl-dev libuv1-dev libnghttp2-dev libjansson-dev libgrpc-dev
  libcmocka-dev libprotobuf-c-dev protobuf-c-compiler libhttp-parser-dev
  libyaml-dev
  # llhttp's C sources (no library in Debian 12): the response reader, sidecar/src/http/h1resp.c
  node-llhttp
  # tether-sidecar's allocator (meson option allocator, default mimalloc)
  libmimalloc-dev
  meson ninja-build pkg-config gcc
  # run and test
  openssl ca-certificates curl python3 iproute2 procps haproxy nginx libnginx-mod-stream
  # a standard gRPC client for the control plane's interop test (DEPS.md)
  python3-grpcio python3-grpc-tools
  # YAML reader for the injection test's independent check of tetherctl's output
  python3-yaml
  # keys and signed service-account tokens (JWTs) for the control plane's JWT test
  python3-cryptography
  # an HTTP/2 client nobody here wrote, attacking the pool's inbound (integ-pool-attacks)
  python3-h2
  # HTTP/2 clients and a server nobody here wrote, through a pooled pair (integ-app-protocols):
  # nghttp and h2load (h2c with prior knowledge), nghttpd --no-tls as the backend
  nghttp2-client nghttp2-server
  # capture rules (iptables-nft and iptables-legacy both) and captures of pod traffic
  iptables tcpdump
)
if [ "${1:-}" = "--bench" ]; then
  # tests/bench/run.sh: wrk for HTTP/1.1; h2load (nghttp2-client), an nghttpx pair
  # (nghttp2-proxy) and an nghttpd h2c backend (nghttp2-server) for its h2c table
  packages+=(wrk nghttp2-client nghttp2-proxy nghttp2-server)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The Kubernetes schema check (tests/tools/k8s-validate.js, npm's kubernetes-models) needs
# node and npm: Debian's only where none is installed (a NodeSource nodejs bundles its own
# npm and conflicts with Debian's npm package).
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
# kubectl (for kustomize) likewise: Debian's kubectl 1.20 only where there is none.
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
