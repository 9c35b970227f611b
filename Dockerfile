# The eventline image: one binary, `eventline`, as the entrypoint; the compose service picks
# the role (`migrate`, `worker catalog`, `relay`, `demo --attach`).
#
# Two targets make the same runtime image and differ only in where the binary comes from:
#
#   docker build .                    # `runtime`: compiled here, in rust:1.95-bookworm
#   docker build --target prebuilt .  # `prebuilt`: target/release/eventline from the host
#
# `prebuilt` exists for CI machines that cannot pull the Rust image (scripts/container-tier):
# the host's `cargo build --release` makes the binary, and as the host is Debian bookworm
# too, it links against the same glibc as the runtime image. RUNTIME_IMAGE lets CI swap in
# a locally built bookworm base.
#
# Stage order matters: the classic builder (no BuildKit, as on Docker 20.10 without buildx)
# builds every stage above the target, so `runtime-base` and `prebuilt` come before the Rust
# stage and `--target prebuilt` never needs it. For the same reason there is no
# `RUN --mount` cache: the classic builder cannot parse it.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUNTIME_IMAGE} AS runtime-base
# ca-certificates: for amqps:// brokers and TLS to PostgreSQL. The user is non-root with a
# fixed, numeric uid/gid, which volume permissions can name and Kubernetes' runAsNonRoot
# can verify; the binary stays root-owned, so the process cannot rewrite it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 eventline \
 && useradd --system --uid 10001 --gid eventline --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin eventline \
 && install -d -o 10001 -g 10001 /definitions
# /definitions: where `broker-users --boot-file` writes the broker's users in compose (a fresh
# named volume mounted there takes this directory's owner).
USER 10001:10001
ENTRYPOINT ["eventline"]
CMD ["--help"]

FROM runtime-base AS prebuilt
COPY target/release/eventline /usr/local/bin/eventline

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY . .
# The context may hold a host-built target/release/eventline (for `prebuilt`); drop it so
# this stage's output is certainly its own. --locked: exactly the versions in Cargo.lock.
RUN rm -rf target && cargo build --release --locked --bin eventline

# The default target, last so that a plain `docker build .` produces it.
FROM runtime-base AS runtime
COPY --from=builder /src/target/release/eventline /usr/local/bin/eventline
