// Fuzz target: the key-file parser (conf/keyfile: parse_keyfile, serialize_keyfile, base64).
// Invariants: no crash; a file is accepted iff there are no errors; an accepted file has exactly
// one signing key, at most one staged key, unique ids 0-9, 1-64 byte secrets, stopped_signing on
// verify keys only, activate_at on the staged key only, and survives serialize -> parse with every
// field unchanged (serialize is a fixed point); settle() at any time leaves a valid file without a
// passed activation; errors are printable and never contain the text of a secret value from the
// input; base64 of any bytes decodes back to them; parse_time_or_offset never crashes.
#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <toml++/toml.h>

#include "conf/keyfile.hpp"
#include "conf/timefmt.hpp"

using namespace batv::conf;

namespace {

bool printable(std::string_view s) {
  for (const char ch : s)
    if (ch < 0x20 || ch > 0x7e) return false;
  return true;
}

bool same_secret(const batv::crypto::Secret& a, const batv::crypto::Secret& b) {
  return a.size() == b.size() && std::memcmp(a.bytes().data(), b.bytes().data(), a.size()) == 0;
}

void key_names(const toml::node& n, std::vector<std::string>& out) {
  if (const toml::table* t = n.as_table()) {
    for (const auto& [k, v] : *t) {
      out.emplace_back(k.str());
      key_names(v, out);
    }
  } else if (const toml::array* a = n.as_array()) {
    for (const toml::node& e : *a) key_names(e, out);
  }
}

// The [[key]] secret values of a file that is valid TOML, when they cannot appear in an error
// unless copied from the value: written exactly once in the input, part of no key name, and
// holding "+" or "/", which no message template contains.
std::vector<std::string> secret_texts(std::string_view in) {
  std::vector<std::string> out;
  try {
    const toml::table root = toml::parse(in);
    std::vector<std::string> names;
    key_names(root, names);
    if (const toml::array* keys = root["key"].as_array()) {
      for (const toml::node& item : *keys) {
        const toml::table* t = item.as_table();
        const auto v = t ? (*t)["secret"].value<std::string>() : std::nullopt;
        if (!v || v->size() < 12 || v->find_first_of("+/") == std::string::npos) continue;
        const std::size_t first = in.find(*v);
        if (first == std::string_view::npos || in.find(*v, first + 1) != std::string_view::npos) continue;
        bool in_name = false;
        for (const auto& name : names) in_name = in_name || name.find(*v) != std::string::npos;
        if (!in_name) out.push_back(*v);
      }
    }
  } catch (const toml::parse_error&) {
  }
  return out;
}

void check_file(const KeyFile& f) {
  int signers = 0, staged = 0;
  for (std::size_t i = 0; i < f.keys.size(); ++i) {
    const KeyRecord& k = f.keys[i];
    if (k.id < 0 || k.id > 9 || k.secret.empty() || k.secret.size() > batv::crypto::Secret::max_size) std::abort();
    if (k.activate_at.has_value() != (k.state == KeyState::staged)) std::abort();
    if (k.state == KeyState::signing) {
      ++signers;
      if (k.stopped_signing) std::abort();
    } else if (k.state == KeyState::staged) {
      ++staged;
      if (k.stopped_signing || *k.activate_at < k.created || f.staged() != &k) std::abort();
    } else if (!k.stopped_signing) {
      std::abort();
    }
    for (std::size_t j = 0; j < i; ++j)
      if (f.keys[j].id == k.id) std::abort();
    if (f.find(k.id) != &k) std::abort();
  }
  if (signers != 1 || f.signer() == nullptr || staged > 1) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const auto r = parse_keyfile(in, "fuzz.toml");
  if (r.file.has_value() == !r.errors.empty()) std::abort();
  if (r.file.has_value() != (r.status == KeyFileStatus::ok)) std::abort();
  const auto secrets = secret_texts(in);
  for (const auto& e : r.errors) {
    if (e.file != "fuzz.toml" || e.message.empty()) std::abort();
    const std::string text = format(e);
    if (!printable(text)) std::abort();
    for (const auto& s : secrets)
      if (text.find(s) != std::string::npos) std::abort();
  }
  if (r.file) {
    check_file(*r.file);
    const std::string text = serialize_keyfile(*r.file);
    auto again = parse_keyfile(text, "again.toml");
    if (!again.file || again.file->keys.size() != r.file->keys.size()) std::abort();
    for (const KeyRecord& k : r.file->keys) {
      const KeyRecord* k2 = again.file->find(k.id);
      if (k2 == nullptr || k2->state != k.state || k2->created != k.created ||
          k2->stopped_signing != k.stopped_signing || k2->activate_at != k.activate_at ||
          !same_secret(k.secret, k2->secret))
        std::abort();
    }
    if (serialize_keyfile(*again.file) != text) std::abort();
    // Settled at its activation time, a staged file is a plain valid one with the switch done.
    if (const KeyRecord* st = r.file->staged()) {
      const int next = st->id;
      const std::int64_t at = *st->activate_at;
      KeyFile before = std::move(*again.file);
      if (before.settle(at - 1) || !before.staged()) std::abort();
      if (!before.settle(at) || before.staged() || before.signer() == nullptr || before.signer()->id != next)
        std::abort();
      const auto settled = parse_keyfile(serialize_keyfile(before), "settled.toml");
      if (!settled.file) std::abort();
      check_file(*settled.file);
    }
  }
  (void)parse_time_or_offset(in, 0);

  // base64: the input bytes (at most 64, a secret's size) encode and decode back.
  const std::size_t n = std::min<std::size_t>(size, 64);
  const std::string b64 = base64_encode(std::span<const std::uint8_t>(data, n));
  std::array<std::uint8_t, 64> buf{};
  if (base64_decode(b64, buf) != static_cast<long>(n) || std::memcmp(buf.data(), data, n) != 0) std::abort();
  (void)base64_decode(in, buf);
  return 0;
}
