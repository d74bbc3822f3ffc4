#!/usr/bin/env bash
# fetch-exim.sh DIR — make a private, non-installed copy of Debian 12's Exim for the prvs interop
# tests (tests/interop/exim_interop.py, tests/interop/make-exim-vectors.py).
#
# Idempotent. Needs root on Debian 12 (apt-get). It never installs Exim: the .debs are fetched with
# `apt-get download` and unpacked with `dpkg-deb -x` into DIR/root, so the system MTA (Postfix)
# stays. It does install, when missing, the two helpers the tests use: libnss-wrapper (Exim refuses
# to run when its Debian-exim user is unknown or uid 0) and faketime (to pin the clock).
#
# Produces:
#   DIR/root/...      the unpacked packages (exim binary: DIR/root/usr/sbin/exim4)
#   DIR/exim.conf     a minimal configuration (enough for `exim -be`)
#   DIR/passwd, DIR/group   nss_wrapper databases that add the Debian-exim user/group
#   DIR/run-exim      wrapper: `DIR/run-exim -be '${prvs{a@b}{secret}{0}}'` runs Exim with all of the
#                     above; works under faketime (LD_PRELOAD is appended to, not replaced), e.g.
#                     TZ=UTC faketime -f '2023-11-14 22:13:20' DIR/run-exim -be ...   (a frozen clock)
# Exit status 0 when DIR/run-exim works afterwards.
set -euo pipefail

if [ $# -ne 1 ] || [ -z "$1" ]; then
  echo "usage: $0 DIR   (e.g. build/exim)" >&2
  exit 2
fi

mkdir -p "$1"
DIR=$(cd "$1" && pwd)
ROOT="$DIR/root"
DEBS="$DIR/debs"
PKGS=(exim4-daemon-light exim4-base libidn12)
export DEBIAN_FRONTEND=noninteractive

log() { echo "fetch-exim: $*" >&2; }

# --- helpers from the archive (installed for real; they are harmless) ----------------------------
need_install=()
for p in libnss-wrapper faketime; do
  if ! dpkg -s "$p" >/dev/null 2>&1 || ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    need_install+=("$p")
  fi
done
if [ ${#need_install[@]} -gt 0 ]; then
  log "installing ${need_install[*]}"
  if ! apt-get install -y -qq "${need_install[@]}" >/dev/null; then
    apt-get update -qq
    apt-get install -y -qq "${need_install[@]}" >/dev/null
  fi
fi

# --- download and unpack (skipped when already done) ---------------------------------------------
download() {
  # apt-get download writes into the current directory; try without `apt-get update` first.
  (cd "$DEBS" && apt-get download -qq "$@" >/dev/null 2>&1) && return 0
  log "apt-get download failed; running apt-get update and retrying"
  apt-get update -qq
  (cd "$DEBS" && apt-get download -qq "$@")
}

have_debs() {
  local p
  for p in "${PKGS[@]}"; do
    compgen -G "$DEBS/${p}_*.deb" >/dev/null || return 1
  done
}

mkdir -p "$DEBS"
if ! have_debs; then
  missing=()
  for p in "${PKGS[@]}"; do
    compgen -G "$DEBS/${p}_*.deb" >/dev/null || missing+=("$p")
  done
  log "downloading ${missing[*]}"
  download "${missing[@]}"
fi

stamp="$ROOT/.unpacked"
if [ ! -f "$stamp" ] || [ -n "$(find "$DEBS" -name '*.deb' -newer "$stamp" -print -quit)" ]; then
  log "unpacking into $ROOT"
  rm -rf "$ROOT"
  mkdir -p "$ROOT"
  for f in "$DEBS"/*.deb; do
    dpkg-deb -x "$f" "$ROOT"
  done
  touch "$stamp"
fi

EXIM="$ROOT/usr/sbin/exim4"
if [ ! -x "$EXIM" ]; then
  log "no exim binary at $EXIM after unpacking"
  exit 1
fi

LIBDIR="$ROOT/usr/lib/x86_64-linux-gnu"
[ -d "$LIBDIR" ] || LIBDIR="$ROOT/usr/lib/$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch)"

# Shared libraries Exim needs that are neither on the system nor unpacked yet: fetch their packages
# (only the runtime libraries of exim4-daemon-light's Depends are candidates).
if LD_LIBRARY_PATH="$LIBDIR" ldd "$EXIM" | grep -q 'not found'; then
  extra=()
  for p in libcrypt1 libdb5.3 libgnutls-dane0 libgnutls30 libidn2-0 libnsl2 libpcre2-8-0; do
    dpkg -s "$p" >/dev/null 2>&1 || compgen -G "$DEBS/${p}_*.deb" >/dev/null || extra+=("$p")
  done
  if [ ${#extra[@]} -gt 0 ]; then
    log "exim needs missing libraries; downloading ${extra[*]}"
    download "${extra[@]}"
    for p in "${extra[@]}"; do
      for f in "$DEBS/${p}"_*.deb; do dpkg-deb -x "$f" "$ROOT"; done
    done
  fi
fi

# --- configuration and user databases ------------------------------------------------------------
# Exim checks its compiled-in user (Debian-exim) and refuses uid 0 for it, so nss_wrapper adds the
# user with uid/gid 65534. exim_user/exim_group = root keep Exim from switching ids for -be.
cat >"$DIR/exim.conf.tmp" <<'EOF'
# Minimal configuration for expansion tests (exim -be); written by tests/interop/fetch-exim.sh.
primary_hostname = test
exim_user = root
exim_group = root
EOF
mv "$DIR/exim.conf.tmp" "$DIR/exim.conf"

{ grep -v '^Debian-exim:' /etc/passwd; echo "Debian-exim:x:65534:65534::/tmp:/bin/false"; } >"$DIR/passwd.tmp"
{ grep -v '^Debian-exim:' /etc/group; echo "Debian-exim:x:65534:"; } >"$DIR/group.tmp"
mv "$DIR/passwd.tmp" "$DIR/passwd"
mv "$DIR/group.tmp" "$DIR/group"

NSSW=$(ls /usr/lib/*/libnss_wrapper.so /usr/lib/libnss_wrapper.so 2>/dev/null | head -n1 || true)
[ -n "$NSSW" ] || NSSW=libnss_wrapper.so

# The wrapper resolves its own directory, so DIR may be moved; paths are not baked in except the
# nss_wrapper library. LD_PRELOAD is appended to, so `faketime ... run-exim` keeps libfaketime.
cat >"$DIR/run-exim.tmp" <<EOF
#!/bin/sh
# Runs the unpacked Exim with the private config; written by tests/interop/fetch-exim.sh.
here=\$(cd "\$(dirname "\$0")" && pwd)
LD_LIBRARY_PATH="\$here/root/usr/lib/x86_64-linux-gnu:\$here/root/lib/x86_64-linux-gnu\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
LD_PRELOAD="\${LD_PRELOAD:+\$LD_PRELOAD:}$NSSW"
NSS_WRAPPER_PASSWD="\$here/passwd"
NSS_WRAPPER_GROUP="\$here/group"
TZ=UTC
export LD_LIBRARY_PATH LD_PRELOAD NSS_WRAPPER_PASSWD NSS_WRAPPER_GROUP TZ
exec "\$here/root/usr/sbin/exim4" -C "\$here/exim.conf" "\$@"
EOF
chmod 755 "$DIR/run-exim.tmp"
mv "$DIR/run-exim.tmp" "$DIR/run-exim"

# --- smoke test: the spec's first vector --------------------------------------------------------
want='prvs=368291fcbb=user@example.com'
got=$(TZ=UTC faketime -f '2023-11-14 22:13:20' "$DIR/run-exim" -be '${prvs{user@example.com}{secretkey}{3}}' 2>&1 || true)
if [ "$got" != "$want" ]; then
  log "run-exim smoke test failed: expected '$want', got '$got'"
  exit 1
fi
version=$("$DIR/run-exim" -bV 2>/dev/null | head -n1 || true)
log "ok: $DIR/run-exim (${version:-unknown version})"
