// Keyring implementation: OpenSSL 3 EVP_MAC (HMAC-SHA1), one keyed template per key.
#include "crypto/keyring.hpp"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <cstdio>
#include <atomic>

namespace batv::crypto {

namespace {

struct MacDeleter {
  void operator()(EVP_MAC* m) const { EVP_MAC_free(m); }
};
struct MacCtxDeleter {
  void operator()(EVP_MAC_CTX* c) const { EVP_MAC_CTX_free(c); }
};
using MacPtr = std::unique_ptr<EVP_MAC, MacDeleter>;
using MacCtxPtr = std::unique_ptr<EVP_MAC_CTX, MacCtxDeleter>;

// Fetched once per process: EVP_MAC_fetch walks the provider tables and is far too slow per call.
EVP_MAC* hmac_algorithm() {
  static MacPtr mac(EVP_MAC_fetch(nullptr, "HMAC", nullptr));
  return mac.get();
}

}  // namespace

// One key: the keyed template, never used directly, only duplicated. Each thread keeps its own
// duplicates in a small cache (below), reset between uses with EVP_MAC_init(ctx, NULL, ...), which
// for HMAC restores the absorbed ipad state: no key setup, no allocation and no lock on the hot
// path (measured with tools/bench-prvs: ~1000 ns per MAC with a fresh dup per call, ~300 ns
// with a reused one, and a shared mutex-guarded pool halved per-core throughput on two threads).
struct Keyring::Slot {
  MacCtxPtr keyed;
  std::uint64_t serial = 0;  // unique per Slot for the process lifetime: the cache key
};

namespace {

std::atomic<std::uint64_t> next_serial{1};

// Per-thread cache of working duplicates, keyed by Slot::serial (never by address: a freed
// keyring's memory can be reused by a new one with other keys). Entries of keyrings that were
// replaced are evicted least-recently-used; EVP_MAC_CTX_free cleanses their key state.
class ThreadMacCache {
 public:
  static constexpr std::size_t entries = 16;  // ten keys of one ring plus a reload's overlap

  ~ThreadMacCache() {
    for (auto& e : slots_) EVP_MAC_CTX_free(e.ctx);
  }
  EVP_MAC_CTX* get(std::uint64_t serial, const EVP_MAC_CTX* keyed) {
    ++clock_;
    Entry* victim = &slots_[0];
    for (auto& e : slots_) {
      if (e.serial == serial && e.ctx) {
        e.used = clock_;
        return e.ctx;
      }
      if (e.used < victim->used) victim = &e;
    }
    EVP_MAC_CTX* dup = EVP_MAC_CTX_dup(keyed);
    if (!dup) return nullptr;
    EVP_MAC_CTX_free(victim->ctx);
    *victim = Entry{serial, dup, clock_};
    return dup;
  }
  // Drops a context left in an unknown state by a failed operation.
  void drop(std::uint64_t serial) {
    for (auto& e : slots_)
      if (e.serial == serial) {
        EVP_MAC_CTX_free(e.ctx);
        e = Entry{};
      }
  }

 private:
  struct Entry {
    std::uint64_t serial = 0;
    EVP_MAC_CTX* ctx = nullptr;
    std::uint64_t used = 0;
  };
  std::array<Entry, entries> slots_{};
  std::uint64_t clock_ = 0;
};

thread_local ThreadMacCache mac_cache;

}  // namespace

Keyring::Keyring() = default;
Keyring::Keyring(Keyring&&) noexcept = default;
Keyring& Keyring::operator=(Keyring&&) noexcept = default;
Keyring::~Keyring() = default;

std::optional<Keyring> Keyring::build(std::span<const KeyMaterial> keys, std::string& error) {
  Keyring ring;
  EVP_MAC* mac = hmac_algorithm();
  if (mac == nullptr) {
    error = "OpenSSL has no HMAC implementation (EVP_MAC_fetch failed)";
    return std::nullopt;
  }
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
    if (k.signing) {
      if (ring.signing_id_ >= 0) {
        error = who + ": more than one signing key (key " + std::to_string(ring.signing_id_) +
                " signs already); exactly one key may sign";
        return std::nullopt;
      }
      ring.signing_id_ = k.id;
    }
    MacCtxPtr ctx(EVP_MAC_CTX_new(mac));
    char digest[] = "SHA1";
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
        OSSL_PARAM_construct_end(),
    };
    auto sec = k.secret.bytes();
    if (!ctx || EVP_MAC_init(ctx.get(), sec.data(), sec.size(), params) != 1) {
      error = who + ": OpenSSL could not key HMAC-SHA1";
      return std::nullopt;
    }
    auto slot = std::make_unique<Slot>();
    slot->keyed = std::move(ctx);
    slot->serial = next_serial.fetch_add(1, std::memory_order_relaxed);
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
  // The duplicate carries the absorbed key: a NULL-key init resets it, no key setup on this path.
  const Slot& slot = *slots_[id];
  EVP_MAC_CTX* ctx = mac_cache.get(slot.serial, slot.keyed.get());
  if (!ctx) return false;
  std::size_t len = 0;
  const bool ok =
      EVP_MAC_init(ctx, nullptr, 0, nullptr) == 1 &&
      EVP_MAC_update(ctx, reinterpret_cast<const unsigned char*>(message.data()),
                     message.size()) == 1 &&
      EVP_MAC_final(ctx, out.data(), &len, out.size()) == 1 && len == out.size();
  if (!ok) mac_cache.drop(slot.serial);
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
