// Shared by the policy_request and netstring fuzz targets: the config and keyring the no-hop
// decisions run against (domains example.com / example.org, the spec's secret as key 3, a fixed
// clock), and the oracle of "would the inbound proxy let this recipient through".
#pragma once

#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "conf/config.hpp"
#include "crypto/keyring.hpp"
#include "crypto/prvs.hpp"
#include "relay/policy.hpp"

namespace fuzz {

inline constexpr std::int64_t kNow = 1700000000;  // DDD 682: "prvs=368291fcbb=user@example.com" is valid

inline const batv::crypto::Keyring& maps_ring() {
  static const batv::crypto::Keyring r = [] {
    std::vector<batv::crypto::KeyMaterial> m;
    m.push_back({3, true, batv::crypto::Secret(std::string_view("secretkey"))});
    std::string err;
    auto k = batv::crypto::Keyring::build(m, err);
    if (!k) std::abort();
    return std::move(*k);
  }();
  return r;
}

// enforce mode, default exemptions (postmaster, abuse), bad_signature = "strip".
inline const batv::conf::Config& maps_config() {
  static const batv::conf::Config c = [] {
    batv::conf::Config cfg;
    cfg.domains.sign = {"example.com", "example.org"};
    cfg.domains.verify = cfg.domains.sign;
    return cfg;
  }();
  return c;
}

inline bool has_control(std::string_view s) {
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c == 0x7f) return true;
  }
  return false;
}

}  // namespace fuzz
