// Keyring: up to ten BATV keys (ids 0-9), exactly one of which signs; the rest only verify.
// At most one more key may be staged: it verifies at once and takes over signing at its
// activation time, so a fleet that got the key file at different moments switches together
// (the signer is a function of the injected time; nothing here reads a clock).
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
  KeyMaterial() = default;
  KeyMaterial(int key_id, bool signs, Secret key, std::optional<std::int64_t> activation = std::nullopt)
      : id(key_id), signing(signs), secret(std::move(key)), activate_at(activation) {}

  int id = -1;           // 0..9
  bool signing = false;  // exactly one key of a ring signs (until a staged key activates)
  Secret secret;         // 1..64 bytes
  // Set on a staged key (never on the signing key): it verifies now and signs from this unix
  // time on, when the signing key becomes verify-only.
  std::optional<std::int64_t> activate_at;
};

class Keyring {
 public:
  static constexpr int max_keys = 10;  // the K digit of the tag

  // Validates the set (ids 0-9 and unique, secrets 1-64 bytes, exactly one signing key, at most one
  // staged key) and keys the HMAC contexts. On failure returns std::nullopt and sets `error` to a
  // one-line reason.
  static std::optional<Keyring> build(std::span<const KeyMaterial> keys, std::string& error);

  Keyring(Keyring&&) noexcept;
  Keyring& operator=(Keyring&&) noexcept;
  ~Keyring();

  // The key that signs at unix time `now`: the staged key from its activation time on, else the
  // signing key. A ring shared by long-lived sessions therefore signs right across the switch.
  [[nodiscard]] int signing_id(std::int64_t now) const {
    return staged_id_ >= 0 && now >= activate_at_ ? staged_id_ : signing_id_;
  }
  // When the signer changes next, if after `now` (the staged key's activation time).
  [[nodiscard]] std::optional<std::int64_t> next_switch(std::int64_t now) const {
    if (staged_id_ >= 0 && now < activate_at_) return activate_at_;
    return std::nullopt;
  }
  // The staged key's id, or -1 when none is staged.
  [[nodiscard]] int staged_id() const { return staged_id_; }
  [[nodiscard]] bool has(int id) const;
  [[nodiscard]] std::vector<int> ids() const;

  // HMAC-SHA1(key `id`, message) into `out`. False when `id` is not in the ring (or OpenSSL fails).
  bool hmac_sha1(int id, std::string_view message, std::array<std::uint8_t, 20>& out) const;

 private:
  struct Slot;
  Keyring();
  std::array<std::unique_ptr<Slot>, max_keys> slots_;
  int signing_id_ = -1;
  int staged_id_ = -1;
  std::int64_t activate_at_ = 0;
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
