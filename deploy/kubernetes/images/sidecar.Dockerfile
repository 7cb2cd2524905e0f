# The sidecar image: tether-sidecar (the injected tether-proxy container) and
# tether-iptables (the tether-init container), on Debian 12. Build from the repository's
# top directory:
#   docker build -f deploy/kubernetes/images/sidecar.Dockerfile -t REGISTRY/tether/sidecar:TAG .
# CI does not build it: the base image comes from a registry the CI machine cannot reach.
FROM debian:12 AS build
COPY deploy/install-deps.sh /src/deploy/install-deps.sh
RUN /src/deploy/install-deps.sh
COPY . /src
RUN meson setup /build /src --buildtype=release -Dtests=false \
    && ninja -C /build sidecar/tether-sidecar

FROM debian:12-slim
# Runtime libraries only (DEPS.md); iptables for the init container (both backends:
# tether-iptables picks the one the node uses).
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       android-libboringssl libuv1 libjansson4 libnghttp2-14 libhttp-parser2.9 \
       libprotobuf-c1 libgrpc29 libmimalloc2.0 iptables iproute2 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /build/sidecar/tether-sidecar /usr/local/bin/tether-sidecar
COPY deploy/iptables/tether-iptables /usr/local/bin/tether-iptables
# The proxy's UID/GID: the capture rules exempt exactly this user's traffic.
RUN groupadd -g 1337 tether-proxy && useradd -u 1337 -g 1337 -M -s /usr/sbin/nologin tether-proxy
USER 1337:1337
ENTRYPOINT ["/usr/local/bin/tether-sidecar"]
