# syntax=docker/dockerfile:1
#
# The ghostbuster image: the release binary on a slim Debian base, nothing else.
#
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/ghostbuster:0.1.0 --push .
#
# Multi-arch: buildx runs both stages once per --platform (TARGETPLATFORM); the arm64 build runs
# natively on an arm64 builder or under QEMU emulation (slow but simple: no cross toolchain). The
# only C code compiled is `ring`'s (rustls), which the rust image's gcc handles on either arch.
#
# Not built in this project's CI: its machines have no container engine (docs/install.md).

FROM rust:1-bookworm AS build
# One target cache per platform: both arches build into target/release.
ARG TARGETPLATFORM
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=ghostbuster-target-${TARGETPLATFORM},sharing=locked \
    cargo build --release -p ghostbuster --locked \
 && cp target/release/ghostbuster /ghostbuster

# Same Debian release as the build stage, so the binary's glibc matches. No shell tools are needed
# at run time; `kubectl exec POD -- ghostbuster ...` runs the CLI for diagnosis.
FROM debian:bookworm-slim
COPY --from=build /ghostbuster /usr/local/bin/ghostbuster
# Runs as root with only CAP_NET_ADMIN (see deploy/daemonset.yaml's securityContext).
ENTRYPOINT ["/usr/local/bin/ghostbuster"]
CMD ["--help"]
