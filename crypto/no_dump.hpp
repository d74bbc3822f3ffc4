// no_dump: keeps the key material in a process's memory out of core dumps and away from other
// processes of the same user.
//
// Contract: call first thing in main(), before any key file is read, and again after switching
// users (a uid change makes the kernel reset the dumpable flag to fs.suid_dumpable, which may be
// 1). It sets RLIMIT_CORE to 0 (no core file; systemd-coredump and apport honour the limit too)
// and clears the dumpable flag with prctl(PR_SET_DUMPABLE, 0): no core dump, and no ptrace
// attach, /proc/PID/mem or /proc/PID/environ for other processes of the same user; root (with
// CAP_SYS_PTRACE) keeps access, so `gdb -p` as root still debugs a running relay. Returns "" or
// what failed. Header-only, no dependencies.
//
// Why not madvise(MADV_DONTDUMP) on the key pages: the key-equivalent state lives in OpenSSL's
// heap (the keyed HMAC contexts), in the key file text and its parse tree while loading, and on
// coroutine stacks; no allocation-level marking covers all of them, the process flag does.
#pragma once

#include <sys/prctl.h>
#include <sys/resource.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace batv::crypto {

inline std::string forbid_core_dumps() {
  const rlimit none{0, 0};
  if (::setrlimit(RLIMIT_CORE, &none) != 0)
    return std::string("setrlimit(RLIMIT_CORE, 0): ") + std::strerror(errno);
  if (::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
    return std::string("prctl(PR_SET_DUMPABLE, 0): ") + std::strerror(errno);
  return "";
}

}  // namespace batv::crypto
