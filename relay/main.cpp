// batv-relay: the daemon's entry point.
//
//   batv-relay --check-config FILE   load the config, every key file and keyring; print
//                                    "configuration OK" (with [[domain_keys]], then one line
//                                    per ring) or every error; exit 0 or 78
//   batv-relay --config FILE         run the relay (foreground, logs to stderr by default)
//   batv-relay --version
#include <sysexits.h>

#include <csignal>
#include <ctime>
#include <iostream>
#include <string>
#include <vector>

#include "conf/timefmt.hpp"
#include "crypto/no_dump.hpp"
#include "relay/log.hpp"
#include "relay/runtime.hpp"
#include "relay/server.hpp"

namespace {

using namespace batv;

constexpr std::string_view usage_text =
    "usage: batv-relay --config FILE          run the relay in the foreground\n"
    "       batv-relay --check-config FILE    validate the config and its key file\n"
    "       batv-relay --version\n";

// Loads config, key file and keyring; prints every error (file:line:col: key: message).
std::shared_ptr<const relay::Runtime> load(const std::string& path) {
  std::vector<std::string> errors;
  auto rt = relay::load_runtime(path, errors);
  for (const auto& e : errors) std::cerr << e << "\n";
  return rt;
}

}  // namespace

int main(int argc, char** argv) {
  // Before any key is read: no core dump and no same-user ptrace of the key material.
  if (const std::string err = crypto::forbid_core_dumps(); !err.empty())
    relay::log(relay::Level::warning, "core_dumps").kv("result", "failed").kv("error", err);
  const std::vector<std::string> args(argv + 1, argv + argc);
  if (args.size() == 1 && args[0] == "--version") {
    std::cout << "batv-relay " << BATV_VERSION << "\n";
    return 0;
  }
  if (args.size() == 1 && (args[0] == "--help" || args[0] == "-h")) {
    std::cout << usage_text;
    return 0;
  }
  if (args.size() == 2 && args[0] == "--check-config") {
    const auto rt = load(args[1]);
    if (!rt) return EX_CONFIG;
    std::cout << "configuration OK\n";
    // With [[domain_keys]], which file signs for which domains, so a typo in a path or a domain
    // shows here rather than in the first bounce.
    const auto& rings = rt->keys.rings();
    if (rings.size() > 1) {
      const std::int64_t now = rt->clock.now();
      for (const auto& r : rings) {
        std::cout << "ring " << r.name << ": " << r.key_file << ": " << r.key_count
                  << (r.key_count == 1 ? " key" : " keys") << ", signing key " << r.keyring.signing_id(now);
        if (const auto next = r.keyring.next_switch(now))
          std::cout << ", key " << r.keyring.staged_id() << " signs from " << conf::format_utc(*next);
        std::cout << ", domains: ";
        if (r.domains.empty()) std::cout << "(every other domain)";
        for (std::size_t i = 0; i < r.domains.size(); ++i) std::cout << (i ? " " : "") << r.domains[i];
        std::cout << "\n";
      }
    }
    return 0;
  }
  if (args.size() == 2 && args[0] == "--config") {
    auto rt = load(args[1]);
    if (!rt) return EX_CONFIG;
    relay::configure_logging(rt->config.logging);
    std::signal(SIGPIPE, SIG_IGN);  // a vanished peer is an error code, not a signal
    relay::RuntimeHolder holder(std::move(rt));
    relay::Server server(holder, args[1]);
    return server.run();
  }
  std::cerr << usage_text;
  return EX_USAGE;
}
