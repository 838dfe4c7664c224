# syntax=docker/dockerfile:1.23.0@sha256:2780b5c3bab67f1f76c781860de469442999ed1a0d7992a5efdf2cffc0e3d769
#
# The ghostbuster image: the agent's release binary on a distroless base — glibc, libgcc, CA
# certificates, nothing else: no shell, no package manager, no lab code.
#
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/ghostbuster:0.1.0 --push .
#
# Multi-arch: buildx runs both stages once per --platform (TARGETPLATFORM); the arm64 build runs
# natively on an arm64 builder or under QEMU emulation (slow but simple: no cross toolchain). The
# only C code compiled is `ring`'s (rustls), which the rust image's gcc handles on either arch.
#
# Every base (and the syntax frontend above) is pinned by the digest of its multi-arch index, next
# to the tag it was taken from, so a rebuild cannot silently pull a re-pushed tag. The digests were
# taken from public Dockerfiles and build logs that pin or resolve these tags (this project's CI
# has no container engine to resolve them itself). They go stale: refresh them deliberately, e.g.
# `docker buildx imagetools inspect rust:1.95-bookworm` (or let Renovate/Dependabot's docker
# ecosystem move them), and keep the build and runtime on the same Debian release (bookworm =
# debian12) so the binary's glibc matches. crates/ghostbuster/tests/build_features.rs checks that
# every FROM carries a digest.
#
# Not built in this project's CI (its machines reach no registry): CI builds the amd64 image from
# scratch with scripts/image.sh (umoci, an OCI archive) and runs it with podman
# (crates/ghostbuster/tests/image_runtime.rs). This file is for multi-arch builds with buildx.

# rust:1.95-bookworm (rustc 1.95.0, the toolchain the project is tested with).
FROM rust:1.95-bookworm@sha256:6258907abe69656e41cd992e0b705cdcfabcbbe3db374f92ed2d47121282d4a1 AS build
# One target cache per platform: both arches build into target/release.
ARG TARGETPLATFORM
WORKDIR /src
COPY . .
# --no-default-features: without the `demo` feature, so neither `ghostbuster demo` nor netlab
# (the lab that builds namespaces and traffic) is in the production binary.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=ghostbuster-target-${TARGETPLATFORM},sharing=locked \
    cargo build --release -p ghostbuster --locked --no-default-features \
 && cp target/release/ghostbuster /ghostbuster

# gcr.io/distroless/cc-debian12:latest (root; not :nonroot — the agent runs as uid 0 with only
# CAP_NET_ADMIN, see deploy/daemonset.yaml's securityContext). No shell: diagnose with
# `kubectl exec POD -- ghostbuster ...`, which needs none.
FROM gcr.io/distroless/cc-debian12:latest@sha256:e5d81ddde149641e2a9ba55be4545bc125c67de07508b03ba4c22e6eb0ded5aa
COPY --from=build /ghostbuster /usr/local/bin/ghostbuster
ENTRYPOINT ["/usr/local/bin/ghostbuster"]
CMD ["--help"]
