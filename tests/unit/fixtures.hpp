// Shared unit-test fixtures for the relay's pure policy code: a config from TOML text and the
// spec's keyring (secret "secretkey" as signing key 3, spec clock T1).
#pragma once

#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "conf/config.hpp"
#include "crypto/keyring.hpp"

namespace batv::test {

// A valid config with one listener of `role` and [domains] sign = `sign_toml`, plus `extra` TOML.
inline conf::Config config_from(std::string_view role, std::string_view sign_toml, const std::string& extra) {
  const std::string text = "key_file = \"k\"\n[domains]\nsign = " + std::string(sign_toml) +
                           "\n[[listener]]\nrole = \"" + std::string(role) +
                           "\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:25\"\n" + extra;
  auto r = conf::load_config_string(text, "t.toml", "");
  REQUIRE_MESSAGE(r.config.has_value(), (r.errors.empty() ? "" : conf::format(r.errors[0])));
  return std::move(*r.config);
}

inline crypto::Keyring spec_ring() {
  std::vector<crypto::KeyMaterial> m;
  m.push_back({3, true, crypto::Secret(std::string_view("secretkey"))});
  std::string err;
  return std::move(*crypto::Keyring::build(m, err));
}

constexpr std::int64_t T1 = 1700000000;  // 2023-11-14T22:13:20Z, DDD 682

}  // namespace batv::test
