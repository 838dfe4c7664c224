#!/usr/bin/env bash
# Installs the system tools ghostbuster's tests, lab and benchmarks need, when they are missing.
# Debian/Ubuntu, as root. Safe to run again: it installs only what is absent.
set -euo pipefail
need=()
command -v conntrack >/dev/null 2>&1 || need+=(conntrack)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v iptables-restore >/dev/null 2>&1 || need+=(iptables)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v sysctl >/dev/null 2>&1 || need+=(procps)
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
command -v kmod >/dev/null 2>&1 || need+=(kmod)
[ -x /usr/bin/time ] || need+=(time)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# The image: built with umoci (scripts/image.sh), run with podman on runc (tests/image_runtime.rs).
command -v umoci >/dev/null 2>&1 || need+=(umoci)
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v runc >/dev/null 2>&1 || need+=(runc)
[ -s /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
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
# Conntrack and NAT must be loadable; in a container they may be built in (then modprobe fails
# harmlessly).
if [ "$(id -u)" = 0 ]; then
  for m in nf_conntrack nf_conntrack_netlink nf_nat nf_tables nft_nat nft_ct veth sctp; do
    modprobe -q "$m" 2>/dev/null || true
  done
fi
