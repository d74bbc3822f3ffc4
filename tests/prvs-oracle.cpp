// prvs-oracle: a line-oriented driver of the prvs library for interop scripts (Exim vs us).
// Reads lines from stdin, one answer line each:
//   sign   SECRET_HEX K NOW ADDRESS           -> the tagged address, or "not_signed REASON"
//   verify SECRET_HEX K NOW LIFETIME ADDRESS  -> "VERDICT ORIGINAL" (ORIGINAL "-" when none)
// The keyring holds exactly one key (id K, signing) built from SECRET_HEX.
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "crypto/keyring.hpp"
#include "crypto/prvs.hpp"

using namespace batv::crypto;

namespace {
std::optional<Keyring> ring_for(const std::string& hex, int id) {
  std::vector<std::uint8_t> bytes;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2)
    bytes.push_back(static_cast<std::uint8_t>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  std::vector<KeyMaterial> mats;
  mats.push_back({id, true, Secret(std::span<const std::uint8_t>(bytes))});
  std::string err;
  auto ring = Keyring::build(mats, err);
  if (!ring) std::cerr << "prvs-oracle: " << err << "\n";
  return ring;
}
}  // namespace

int main() {
  std::string line;
  while (std::getline(std::cin, line)) {
    std::istringstream in(line);
    std::string op, hex, addr;
    int k = 0, lifetime = 7;
    std::int64_t now = 0;
    in >> op >> hex >> k >> now;
    if (op == "verify") in >> lifetime;
    in >> addr;
    auto ring = ring_for(hex, k);
    if (!ring || addr.empty()) {
      std::cout << "error" << std::endl;
      continue;
    }
    PrvsParams p;
    p.lifetime_days = lifetime;
    if (op == "sign") {
      auto r = sign(*ring, addr, now, p);
      if (r.tagged) std::cout << *r.tagged << std::endl;
      else std::cout << "not_signed " << to_string(r.reason) << std::endl;
    } else if (op == "verify") {
      auto r = verify(*ring, addr, now, p);
      std::cout << to_string(r.verdict) << " " << (r.original.empty() ? "-" : r.original)
                << std::endl;
    } else {
      std::cout << "error" << std::endl;
    }
  }
  return 0;
}
