# Shared by tools/test, tools/demo and tools/bench: package installation and the CMake build.
# Sourced, not run.

# Debian 12 packages the build and the tests need. postfix (smtp-source/smtp-sink) and swaks come
# with the relay's end-to-end tests, valgrind runs them under memcheck (ctest label valgrind); exim
# is fetched separately (tests/interop/fetch-exim.sh).
BATV_PACKAGES=(g++ cmake make pkg-config libboost1.81-dev libssl-dev openssl libtomlplusplus-dev
  doctest-dev libcli11-dev python3 faketime libnss-wrapper postfix swaks libnet-ssleay-perl valgrind
  scdoc dpkg-dev lintian prometheus man-db gzip systemd miltertest haproxy)

install_packages() {
  local missing=()
  local p
  for p in "${BATV_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    echo "installing: ${missing[*]}" >&2
    local sudo=()
    [[ $(id -u) -ne 0 ]] && sudo=(sudo)
    # Postfix is wanted for its smtp-sink/smtp-source tools only: no system mail configuration.
    echo "postfix postfix/main_mailer_type select No configuration" | "${sudo[@]}" debconf-set-selections
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# configure_and_build BUILD_DIR [cmake args...]
configure_and_build() {
  local dir=$1
  shift
  cmake -S . -B "$dir" "$@" >/dev/null || return 1
  cmake --build "$dir" -j "$(nproc)"
}
