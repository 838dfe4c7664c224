#!/usr/bin/env bash
# Builds the agent's OCI image from scratch, with Debian's tools and no registry, no base image:
# the release binary without the `demo` feature (no lab code), stripped, exactly the shared
# libraries `ldd` lists and the CA bundle — no shell, no package manager. The output is an OCI archive
# (`podman load -i`, `skopeo copy oci-archive:... docker://REGISTRY/...`), labelled with the
# version, the source and the commit. The manifest's digest is written into deploy/'s
# kustomization (its `digest:` placeholder), so the manifests reference exactly this image.
#
#   scripts/image.sh              # prints the archive's path as its last line
#
# Needs root for apt-get only when umoci is missing. Environment:
#   GB_IMAGE_OUT   where the archive goes (default target/image)
#   GB_IMAGE_SKIP_BUILD=1  use target/release/ghostbuster as it is (already built without `demo`)
#   GB_IMAGE_PIN=0 leave deploy/kustomization.yaml's digest alone (scripts/test.sh)
#   CARGO_PROFILE_RELEASE_LTO, CARGO_TARGET_DIR: passed to cargo as usual.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

ca_bundle=/etc/ssl/certs/ca-certificates.crt
need=()
command -v umoci >/dev/null 2>&1 || need+=(umoci)
[ -s "$ca_bundle" ] || need+=(ca-certificates)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing: ${need[*]} — install them as root: apt-get install -y ${need[*]}" >&2
    exit 3
  fi
  echo "installing: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
source_url=$(sed -n 's/^repository = "\(.*\)"/\1/p' Cargo.toml | head -1)
target_dir=${CARGO_TARGET_DIR:-$root/target}
out=${GB_IMAGE_OUT:-$root/target/image}

if [ "${GB_IMAGE_SKIP_BUILD:-0}" != 1 ]; then
  # Without the default `demo` feature: neither `ghostbuster demo` nor netlab is in the binary.
  cargo build --release -p ghostbuster --locked --no-default-features >&2
fi
bin=$target_dir/release/ghostbuster

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
layout=$work/layout
bundle=$work/bundle
umoci init --layout "$layout"
umoci new --image "$layout:$version"
umoci unpack --image "$layout:$version" "$bundle" >/dev/null
rootfs=$bundle/rootfs
install -d "$rootfs/usr/local/bin"
strip --strip-all -o "$rootfs/usr/local/bin/ghostbuster" "$bin"
# The dynamic loader and every library the binary links, at the paths the binary asks for.
for lib in $(ldd "$bin" | awk '/=>/ && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
  cp --parents -L "$lib" "$rootfs/"
done
# The CA bundle: kube-rs's TLS (rustls with the platform's roots) refuses to start without one,
# even when the kubeconfig brings its own CA (found by tests/image_runtime.rs).
install -D -m 0644 "$ca_bundle" "$rootfs/etc/ssl/certs/ca-certificates.crt"
# /tmp for the agent's scratch files; nothing else is writable (readOnlyRootFilesystem).
install -d -m 1777 "$rootfs/tmp"
umoci repack --image "$layout:$version" "$bundle" >/dev/null
umoci config --image "$layout:$version" \
  --os linux --architecture amd64 \
  --config.entrypoint /usr/local/bin/ghostbuster \
  --config.user 0:0 \
  --config.env PATH=/usr/local/bin \
  --config.label "org.opencontainers.image.title=ghostbuster" \
  --config.label "org.opencontainers.image.version=$version" \
  --config.label "org.opencontainers.image.revision=$revision" \
  --config.label "org.opencontainers.image.source=$source_url" \
  --config.label "org.opencontainers.image.description=Removes stale conntrack entries kube-proxy leaves behind"
umoci gc --layout "$layout"

mkdir -p "$out"
archive=$out/ghostbuster-$version.oci.tar
rm -f "$archive"
tar -C "$layout" -cf "$archive" .
# The image's digest: that of its manifest, as a registry will show it after a push.
digest=$(grep -o '"digest":"sha256:[0-9a-f]\{64\}"' "$layout/index.json" | head -1 | cut -d'"' -f4)
[ -n "$digest" ] || { echo "no manifest digest in $layout/index.json" >&2; exit 1; }
pinned="deploy/kustomization.yaml keeps its digest"
if [ "${GB_IMAGE_PIN:-1}" != 0 ]; then
  sed -i "s/^\(    digest: \)sha256:[0-9a-f]\{64\}/\1$digest/" deploy/kustomization.yaml
  pinned="deploy/kustomization.yaml now pins it"
fi
size=$(stat -c %s "$archive")
echo "image ghostbuster:$version $digest: $((size / 1024)) KiB archive ($(du -k "$rootfs/usr/local/bin/ghostbuster" | cut -f1) KiB binary); $pinned" >&2
echo "$archive"
