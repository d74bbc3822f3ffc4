// batv-relay: the daemon's entry point.
//
//   batv-relay --check-config FILE   load the config, the key file and the keyring; print
//                                    "configuration OK" or every error; exit 0 or 78
//   batv-relay --config FILE         run the relay (foreground, logs to stderr by default)
//   batv-relay --version
#include <csignal>
#include <iostream>
#include <string>
#include <vector>

#include "crypto/no_dump.hpp"
#include "relay/log.hpp"
#include "relay/runtime.hpp"
#include "relay/server.hpp"

namespace {

using namespace batv;

constexpr int ex_usage = 64;
constexpr int ex_config = 78;  // sysexits EX_CONFIG

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
    if (!load(args[1])) return ex_config;
    std::cout << "configuration OK\n";
    return 0;
  }
  if (args.size() == 2 && args[0] == "--config") {
    auto rt = load(args[1]);
    if (!rt) return ex_config;
    relay::configure_logging(rt->config.logging);
    std::signal(SIGPIPE, SIG_IGN);  // a vanished peer is an error code, not a signal
    relay::RuntimeHolder holder(std::move(rt));
    relay::Server server(holder, args[1]);
    return server.run();
  }
  std::cerr << usage_text;
  return ex_usage;
}
