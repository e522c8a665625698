# syntax=docker/dockerfile:1
# Gorgon's image: `docker build -t gorgon .` (or `podman build -t gorgon .`; both read a file
# named Dockerfile without -f). Not built in CI: these machines have no container engine.
# deploy/README.md says how compose.yaml and deploy/k8s/ use it.

# --- build: the release binary, with the dependencies pinned by Cargo.lock ---------------------
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep crates and compiled dependencies between builds (BuildKit, Buildah).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin gorgon \
 && install -m 0755 target/release/gorgon /usr/local/bin/gorgon

# --- run: a slim Debian, one binary, a user without privileges -----------------------------------
FROM debian:bookworm-slim
# ca-certificates: rediss:// and webhooks over https; curl: the health check below.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/gorgon --shell /usr/sbin/nologin gorgon \
 && install -d -o gorgon -g gorgon -m 0750 /var/lib/gorgon
COPY --from=build /usr/local/bin/gorgon /usr/local/bin/gorgon

USER gorgon:gorgon
WORKDIR /var/lib/gorgon
# The embedded store lives in the volume; every other setting is a GORGON_* variable
# (gorgon run --help lists them).
ENV GORGON_DATA=/var/lib/gorgon \
    GORGON_LISTEN=0.0.0.0:8080
VOLUME ["/var/lib/gorgon"]
EXPOSE 8080
# /healthz answers while the process serves HTTP (nodes with the web role); the port is the one
# of GORGON_LISTEN.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD curl -fsS -o /dev/null "http://127.0.0.1:${GORGON_LISTEN##*:}/healthz" || exit 1
# SIGTERM starts the graceful drain (stop accepting, finish in-flight work, commit, exit). The
# exec form makes gorgon PID 1, so the signal reaches it; give it --shutdown-timeout plus a few
# seconds (compose.yaml: stop_grace_period; Kubernetes: terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/gorgon"]
CMD ["run"]
