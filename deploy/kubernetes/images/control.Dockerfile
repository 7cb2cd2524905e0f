# The control-plane image: tether-control and tetherctl (for `kubectl exec`), on Debian 12.
# Build from the repository's top directory:
#   docker build -f deploy/kubernetes/images/control.Dockerfile -t REGISTRY/tether/control:TAG .
# CI does not build it: the base image comes from a registry the CI machine cannot reach.
FROM debian:12 AS build
COPY deploy/install-deps.sh /src/deploy/install-deps.sh
RUN /src/deploy/install-deps.sh
COPY . /src
RUN meson setup /build /src --buildtype=release -Dtests=false \
    && ninja -C /build control/tether-control control/tetherctl

FROM debian:12-slim
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       android-libboringssl libuv1 libjansson4 libnghttp2-14 libhttp-parser2.9 \
       libprotobuf-c1 libgrpc29 libyaml-0-2 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /build/control/tether-control /usr/local/bin/tether-control
COPY --from=build /build/control/tetherctl /usr/local/bin/tetherctl
RUN groupadd -g 10001 tether && useradd -u 10001 -g 10001 -M -s /usr/sbin/nologin tether
USER 10001:10001
# tetherctl inside the pod finds the operator credential here (kubectl exec).
ENV TETHER_STATE_DIR=/var/lib/tether
ENTRYPOINT ["/usr/local/bin/tether-control"]
