#!/usr/bin/env bash
# Installs what sbx needs on a Debian 12 host: gVisor's runsc from
# bookworm-backports (the 2024 build; bookworm's own 2022 build lacks what
# sbx needs), debootstrap for the default image, and the network tools.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive

# Read whole outputs before matching: with pipefail, `runsc --version | head`
# fails with SIGPIPE whenever runsc writes after head has exited.
version=$(runsc --version 2>/dev/null || true)
if [[ "$version" != *'0.0~2024'* ]]; then
  # The backports suite on the same mirror apt already uses.
  mirror=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list.d/* /etc/apt/sources.list \
    | grep -v security | grep -o 'https\?://[^ ]*debian[^ ]*' | sed -n 1p)
  mirror=${mirror:-http://deb.debian.org/debian}
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list.d/ /etc/apt/sources.list; then
    cat > /etc/apt/sources.list.d/sbx-backports.sources <<EOT
Types: deb
URIs: $mirror
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOT
  fi
  apt-get update -q
  apt-get install -y -q -t bookworm-backports runsc
fi
need=()
for p in debootstrap:debootstrap ip:iproute2 iptables:iptables mkfs.ext4:e2fsprogs unshare:util-linux curl:curl tmux:tmux; do
  command -v "${p%%:*}" >/dev/null || need+=("${p#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -q
  apt-get install -y -q "${need[@]}"
fi
version=$(runsc --version)
echo "${version%%$'\n'*}"
