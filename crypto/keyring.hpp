// Keyring: up to ten BATV keys (ids 0-9), exactly one of which signs; the rest only verify.
//
// Contract: built once from key material and immutable afterwards, so one Keyring can be shared by
// every thread of the relay. Each key is set up once as the two SHA-1 states of HMAC-SHA1 with
// key^ipad and key^opad absorbed; a MAC works on stack copies of them (no key setup, allocation,
// lock or per-thread state on the hot path). hmac_sha1 is thread-safe.
// Never prints, logs or returns secret bytes: errors name the key id only.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "crypto/secret.hpp"

namespace batv::crypto {

struct KeyMaterial {
  int id = -1;           // 0..9
  bool signing = false;  // exactly one key of a ring signs
  Secret secret;         // 1..64 bytes
};

class Keyring {
 public:
  static constexpr int max_keys = 10;  // the K digit of the tag

  // Validates the set (ids 0-9 and unique, secrets 1-64 bytes, exactly one signing key) and keys
  // the HMAC contexts. On failure returns std::nullopt and sets `error` to a one-line reason.
  static std::optional<Keyring> build(std::span<const KeyMaterial> keys, std::string& error);

  Keyring(Keyring&&) noexcept;
  Keyring& operator=(Keyring&&) noexcept;
  ~Keyring();

  [[nodiscard]] int signing_id() const { return signing_id_; }
  [[nodiscard]] bool has(int id) const;
  [[nodiscard]] std::vector<int> ids() const;

  // HMAC-SHA1(key `id`, message) into `out`. False when `id` is not in the ring (or OpenSSL fails).
  bool hmac_sha1(int id, std::string_view message, std::array<std::uint8_t, 20>& out) const;

 private:
  struct Slot;
  Keyring();
  std::array<std::unique_ptr<Slot>, max_keys> slots_;
  int signing_id_ = -1;
};

// 32 random bytes from the OpenSSL DRBG (RAND_bytes), the size batv-keys generates.
std::optional<Secret> generate_secret(std::size_t size = 32);

// A short public fingerprint of a secret, for `batv-keys list` and logs: the first 12 hex digits of
// SHA-256("batv-relay key fingerprint" || secret). Lets operators compare key files across relays
// without revealing the key.
std::string fingerprint(const Secret& secret);

// Raw one-shot HMAC-SHA1 with per-call key setup: the benchmark's baseline.
bool hmac_sha1_oneshot(const Secret& secret, std::string_view message,
                       std::array<std::uint8_t, 20>& out);

}  // namespace batv::crypto
