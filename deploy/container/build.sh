#!/usr/bin/env bash
# Builds the tokend OCI image from the release binary without pulling any
# base image: FROM scratch plus what the binary needs at run time.
#
#   deploy/container/build.sh [TAG]     # default localhost/tokend:VERSION
#
# Needs Debian's buildah (or podman). Prints the tag it built.
set -euo pipefail
cd "$(dirname "$0")/../.."

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
tag=${1:-localhost/tokend:$version}

cargo build --release --locked >&2
binary=target/release/tokend

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/rootfs
install -D -m 0755 "$binary" "$root/usr/bin/tokend"
# The shared libraries the binary links, and the loader, from this machine
# (the image runs the same build on the same C library).
ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' |
  while read -r lib; do
    install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
  done
# The CA certificates tokend's TLS verifies IdPs against.
certs=/etc/ssl/certs/ca-certificates.crt
[ -s "$certs" ] || { echo "build.sh: $certs is missing (apt-get install ca-certificates)" >&2; exit 1; }
install -D -m 0644 "$certs" "$root$certs"
# The non-root user and the clients' group (docs/kubernetes.md); glibc
# reads them with its built-in files lookup.
install -d "$root/etc"
printf 'root:x:0:0:root:/:/nonexistent\ntokend:x:10001:10001:tokend:/nonexistent:/nonexistent\n' >"$root/etc/passwd"
printf 'root:x:0:\ntokend:x:10001:\ntokend-clients:x:10002:tokend\n' >"$root/etc/group"
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"
cp deploy/container/Containerfile "$stage/Containerfile"

if command -v buildah >/dev/null; then
  buildah bud --quiet --layers=false -f "$stage/Containerfile" -t "$tag" "$stage" >&2
elif command -v podman >/dev/null; then
  podman build --quiet -f "$stage/Containerfile" -t "$tag" "$stage" >&2
else
  echo "build.sh: needs buildah or podman (apt-get install buildah)" >&2
  exit 1
fi
echo "$tag"
