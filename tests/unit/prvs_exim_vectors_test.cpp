// Exim compatibility without Exim: every row of tests/data/exim_vectors.tsv is a tag that Exim 4.96
// produced with ${prvs{ADDR}{SECRET}{K}} at a frozen clock (tests/interop/make-exim-vectors.py).
// For each row, a keyring holding just that key must sign ADDR at that epoch (lifetime 7) to exactly
// Exim's tag, and verify Exim's tag as valid with the original address.
#include <doctest/doctest.h>

#include <cstdint>
#include <fstream>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "crypto/keyring.hpp"
#include "crypto/prvs.hpp"

namespace {

using namespace batv::crypto;

struct EximVector {
  int line = 0;
  std::string secret_hex;
  int key_id = -1;
  std::int64_t epoch = 0;
  std::string address;
  std::string exim_tag;
};

std::optional<std::vector<std::uint8_t>> from_hex(const std::string& hex) {
  if (hex.size() % 2 != 0) return std::nullopt;
  std::vector<std::uint8_t> out;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (std::size_t i = 0; i < hex.size(); i += 2) {
    int hi = nibble(hex[i]), lo = nibble(hex[i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out.push_back(static_cast<std::uint8_t>(hi * 16 + lo));
  }
  return out;
}

std::vector<std::string> split_tabs(const std::string& line) {
  std::vector<std::string> fields;
  std::size_t start = 0;
  for (;;) {
    auto tab = line.find('\t', start);
    fields.push_back(line.substr(start, tab == std::string::npos ? std::string::npos : tab - start));
    if (tab == std::string::npos) return fields;
    start = tab + 1;
  }
}

}  // namespace

TEST_CASE("Exim 4.96 prvs vectors: our sign is byte-identical and verify accepts Exim's tags") {
  const std::string path = std::string(BATV_SOURCE_DIR) + "/tests/data/exim_vectors.tsv";
  std::ifstream in(path);
  REQUIRE_MESSAGE(in.good(), "cannot open " << path);

  std::vector<EximVector> rows;
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line[0] == '#') continue;
    auto f = split_tabs(line);
    INFO(path << ":" << line_no << ": " << line);
    REQUIRE(f.size() == 5);
    EximVector v;
    v.line = line_no;
    v.secret_hex = f[0];
    REQUIRE(f[1].size() == 1);
    REQUIRE(f[1][0] >= '0');
    REQUIRE(f[1][0] <= '9');
    v.key_id = f[1][0] - '0';
    std::size_t used = 0;
    v.epoch = std::stoll(f[2], &used);
    REQUIRE(used == f[2].size());
    v.address = f[3];
    v.exim_tag = f[4];
    rows.push_back(std::move(v));
  }
  REQUIRE_MESSAGE(rows.size() >= 100, path << " has only " << rows.size() << " vectors");

  PrvsParams params;
  params.lifetime_days = 7;
  for (const auto& v : rows) {
    CAPTURE(v.line);
    CAPTURE(v.address);
    CAPTURE(v.epoch);
    CAPTURE(v.key_id);
    auto bytes = from_hex(v.secret_hex);
    REQUIRE_MESSAGE(bytes.has_value(), "bad secret hex on line " << v.line);

    std::vector<KeyMaterial> mats;
    mats.push_back({v.key_id, true, Secret(std::span<const std::uint8_t>(*bytes))});
    std::string error;
    auto ring = Keyring::build(mats, error);
    REQUIRE_MESSAGE(ring.has_value(), "keyring: " << error);

    auto signed_ = sign(*ring, v.address, v.epoch, params);
    REQUIRE_MESSAGE(signed_.tagged.has_value(),
                    "not signed: " << std::string(to_string(signed_.reason)));
    CHECK(*signed_.tagged == v.exim_tag);
    CHECK(signed_.key_id == v.key_id);

    auto checked = verify(*ring, v.exim_tag, v.epoch, params);
    CHECK_MESSAGE(checked.verdict == Verdict::valid,
                  "verdict " << std::string(to_string(checked.verdict)) << " for " << v.exim_tag);
    CHECK(checked.original == v.address);
    CHECK(checked.key_id == v.key_id);
  }
}
