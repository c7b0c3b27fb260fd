# FleetMQ, multi-stage: build the release binary with the pinned Rust toolchain, then
# run it on a slim Debian as an unprivileged user.
#
#   docker build -t fleetmq .
#   docker run -p 1883:1883 -p 8080:8080 -v fleetmq-data:/var/lib/fleetmq fleetmq
#
# Flags and FLEETMQ_* variables configure it (docs/configuration.md); a file can be
# mounted and named with FLEETMQ_CONFIG.

FROM rust:1.95.0-bookworm AS build
WORKDIR /src
# librdkafka is built from the rdkafka crate's bundled source: it needs these.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential perl python3 \
 && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --locked -p fleetmq \
 && install -m 0755 target/release/fleetmq /usr/local/bin/fleetmq

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/fleetmq --create-home fleetmq
COPY --from=build /usr/local/bin/fleetmq /usr/local/bin/fleetmq
USER 10001
WORKDIR /var/lib/fleetmq
ENV FLEETMQ_DATA_DIR=/var/lib/fleetmq \
    FLEETMQ_MQTT_LISTEN=0.0.0.0:1883 \
    FLEETMQ_ADMIN_LISTEN=0.0.0.0:8080 \
    FLEETMQ_GRPC_LISTEN=0.0.0.0:7070
# MQTT, MQTT over TLS and WebSocket (when configured), admin HTTP, cluster gRPC.
EXPOSE 1883 8883 8083 8080 7070
VOLUME ["/var/lib/fleetmq"]
ENTRYPOINT ["fleetmq"]
CMD ["serve"]
