// Keyring implementation: HMAC-SHA1 (RFC 2104) on OpenSSL's SHA-1 with the key's inner and
// outer pad states absorbed once per key.
//
// Each MAC copies the two absorbed states (a 96-byte struct copy each) and runs the compressions
// the message needs: no key setup, no allocation, no lock and no per-thread state, so any number
// of threads share one keyring. This is the floor the performance issue names ("precomputed inner
// and outer states, two SHA-1 compressions"). The EVP_MAC route it replaces cost 1.5x the floor:
// OpenSSL 3.0 duplicates the digest context, with a malloc, twice per MAC.
// SHA1_Init/Update/Final are deprecated in OpenSSL 3.0 (not removed), and they run the same
// assembly (SHA-NI where the CPU has it) as EVP; the HMAC construction around them is the eight
// lines of hmac_sha1 below, checked by the spec's vectors, Exim-made vectors and the live Exim
// interop test against OpenSSL's own HMAC().
#define OPENSSL_SUPPRESS_DEPRECATED
#include "crypto/keyring.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <cstdio>

namespace batv::crypto {

// One key: SHA-1 states after absorbing key^ipad and key^opad. Key-equivalent material,
// cleansed on destruction.
struct Keyring::Slot {
  SHA_CTX inner;
  SHA_CTX outer;
  Slot() = default;
  Slot(const Slot&) = delete;
  Slot& operator=(const Slot&) = delete;
  ~Slot() {
    OPENSSL_cleanse(&inner, sizeof inner);
    OPENSSL_cleanse(&outer, sizeof outer);
  }
};

Keyring::Keyring() = default;
Keyring::Keyring(Keyring&&) noexcept = default;
Keyring& Keyring::operator=(Keyring&&) noexcept = default;
Keyring::~Keyring() = default;

std::optional<Keyring> Keyring::build(std::span<const KeyMaterial> keys, std::string& error) {
  Keyring ring;
  for (const KeyMaterial& k : keys) {
    const std::string who = "key " + std::to_string(k.id);
    if (k.id < 0 || k.id >= max_keys) {
      error = who + ": id must be 0-9 (the tag has one digit for it)";
      return std::nullopt;
    }
    if (ring.slots_[k.id]) {
      error = who + ": id used twice";
      return std::nullopt;
    }
    if (k.secret.empty()) {
      error = who + ": secret is empty";
      return std::nullopt;
    }
    if (k.secret.truncated()) {
      error = who + ": secret is longer than 64 bytes";
      return std::nullopt;
    }
    if (k.activate_at) {
      if (k.signing) {
        error = who + ": a staged key (with an activation time) cannot also be the signing key";
        return std::nullopt;
      }
      if (ring.staged_id_ >= 0) {
        error = who + ": a second staged key (key " + std::to_string(ring.staged_id_) +
                " is staged already); at most one key may wait to sign";
        return std::nullopt;
      }
      ring.staged_id_ = k.id;
      ring.activate_at_ = *k.activate_at;
    }
    if (k.signing) {
      if (ring.signing_id_ >= 0) {
        error = who + ": more than one signing key (key " + std::to_string(ring.signing_id_) +
                " signs already); exactly one key may sign";
        return std::nullopt;
      }
      ring.signing_id_ = k.id;
    }
    // RFC 2104: keys up to the 64-byte block are zero-padded (Secret holds at most 64 bytes).
    auto sec = k.secret.bytes();
    std::array<std::uint8_t, SHA_CBLOCK> ipad{}, opad{};
    for (std::size_t i = 0; i < ipad.size(); ++i) {
      const std::uint8_t b = i < sec.size() ? sec[i] : 0;
      ipad[i] = static_cast<std::uint8_t>(b ^ 0x36);
      opad[i] = static_cast<std::uint8_t>(b ^ 0x5c);
    }
    auto slot = std::make_unique<Slot>();
    const bool keyed = SHA1_Init(&slot->inner) == 1 && SHA1_Update(&slot->inner, ipad.data(), ipad.size()) == 1 &&
                       SHA1_Init(&slot->outer) == 1 && SHA1_Update(&slot->outer, opad.data(), opad.size()) == 1;
    OPENSSL_cleanse(ipad.data(), ipad.size());
    OPENSSL_cleanse(opad.data(), opad.size());
    if (!keyed) {
      error = who + ": OpenSSL could not key HMAC-SHA1";
      return std::nullopt;
    }
    ring.slots_[k.id] = std::move(slot);
  }
  if (ring.signing_id_ < 0) {
    error = keys.empty() ? "no keys" : "no signing key; exactly one key must have state \"signing\"";
    return std::nullopt;
  }
  return ring;
}

bool Keyring::has(int id) const {
  return id >= 0 && id < max_keys && slots_[id] != nullptr;
}

std::vector<int> Keyring::ids() const {
  std::vector<int> out;
  for (int i = 0; i < max_keys; ++i)
    if (slots_[i]) out.push_back(i);
  return out;
}

bool Keyring::hmac_sha1(int id, std::string_view message,
                        std::array<std::uint8_t, 20>& out) const {
  if (!has(id)) return false;
  const Slot& slot = *slots_[id];
  // HMAC = H(key^opad || H(key^ipad || message)), both pad blocks already absorbed.
  SHA_CTX c = slot.inner;
  std::array<std::uint8_t, SHA_DIGEST_LENGTH> inner{};
  bool ok = SHA1_Update(&c, message.data(), message.size()) == 1 && SHA1_Final(inner.data(), &c) == 1;
  c = slot.outer;
  ok = ok && SHA1_Update(&c, inner.data(), inner.size()) == 1 && SHA1_Final(out.data(), &c) == 1;
  // Nothing key-equivalent is left on the stack: each Final compressed the copied pad state
  // away, leaving digests (the inner one does not give the key or the outer state).
  return ok;
}

std::optional<Secret> generate_secret(std::size_t size) {
  if (size == 0 || size > Secret::max_size) return std::nullopt;
  std::array<std::uint8_t, Secret::max_size> buf{};
  if (RAND_bytes(buf.data(), static_cast<int>(size)) != 1) return std::nullopt;
  Secret s(std::span<const std::uint8_t>(buf.data(), size));
  OPENSSL_cleanse(buf.data(), buf.size());
  return s;
}

std::string fingerprint(const Secret& secret) {
  static constexpr std::string_view label = "batv-relay key fingerprint";
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  bool ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr) == 1 &&
            EVP_DigestUpdate(ctx, label.data(), label.size()) == 1 &&
            EVP_DigestUpdate(ctx, secret.bytes().data(), secret.size()) == 1 &&
            EVP_DigestFinal_ex(ctx, md, &len) == 1;
  EVP_MD_CTX_free(ctx);
  if (!ok) return "????????????";
  std::string out;
  static constexpr char hex[] = "0123456789abcdef";
  for (unsigned i = 0; i < 6 && i < len; ++i) {
    out += hex[md[i] >> 4];
    out += hex[md[i] & 15];
  }
  return out;
}

bool hmac_sha1_oneshot(const Secret& secret, std::string_view message,
                       std::array<std::uint8_t, 20>& out) {
  unsigned int len = 0;
  auto sec = secret.bytes();
  return HMAC(EVP_sha1(), sec.data(), static_cast<int>(sec.size()),
              reinterpret_cast<const unsigned char*>(message.data()), message.size(), out.data(),
              &len) != nullptr &&
         len == out.size();
}

}  // namespace batv::crypto
