// batv-relay: the daemon's entry point.
//
//   batv-relay --check-config FILE   load the config, the key file and the keyring; print
//                                    "configuration OK" or every error; exit 0 or 1
//   batv-relay --config FILE         run the relay (foreground, logs to stderr)
//   batv-relay --version
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "conf/config.hpp"
#include "conf/keyfile.hpp"
#include "crypto/keyring.hpp"

namespace {

using namespace batv;

constexpr int ex_config = 78;  // sysexits EX_CONFIG

constexpr std::string_view usage_text =
    "usage: batv-relay --config FILE          run the relay in the foreground\n"
    "       batv-relay --check-config FILE    validate the config and its key file\n"
    "       batv-relay --version\n";

// Everything a running relay needs, validated: config, key file and keyring.
// Returns false after printing each error (file:line:col: key: message) to stderr.
bool check(const std::string& path) {
  auto loaded = conf::load_config_file(path);
  if (!loaded.config) {
    for (const auto& e : loaded.errors) std::cerr << conf::format(e) << "\n";
    return false;
  }
  const conf::Config& cfg = *loaded.config;
  auto keys = conf::load_keyfile(cfg.key_file);
  if (!keys.file) {
    for (const auto& e : keys.errors)
      std::cerr << conf::format(e) << " (key_file, set in " << path << ")\n";
    return false;
  }
  std::vector<crypto::KeyMaterial> mats;
  for (const auto& k : keys.file->keys)
    mats.push_back({k.id, k.state == conf::KeyState::signing, k.secret.clone()});
  std::string err;
  if (!crypto::Keyring::build(mats, err)) {
    std::cerr << cfg.key_file << ": " << err << "\n";
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
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
    if (!check(args[1])) return ex_config;
    std::cout << "configuration OK\n";
    return 0;
  }
  if (args.size() == 2 && args[0] == "--config") {
    if (!check(args[1])) return ex_config;
    std::cerr << "batv-relay: configuration OK, but relaying is not built yet (issue 3)\n";
    return 69;  // EX_UNAVAILABLE
  }
  std::cerr << usage_text;
  return 64;
}
