// Secret: the bytes of one BATV key.
//
// Contract: holds 0..64 bytes (the keyring refuses empty and oversize ones); cannot be printed,
// streamed or formatted (no operator<<, no std::formatter); copies are explicit via clone(); the
// storage is wiped with explicit_bzero on destruction and on move-from, so a dropped key does not
// linger in freed heap memory or a core dump. Header-only with no OpenSSL dependency, so the
// key-file parser in conf/ can produce Secrets without linking the crypto library.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>
#include <utility>

namespace batv::crypto {

class Secret {
 public:
  static constexpr std::size_t max_size = 64;  // Exim's limit for ${prvs} secrets.

  Secret() = default;
  // Copies `bytes`; more than max_size bytes are cut and flagged (see truncated()).
  explicit Secret(std::span<const std::uint8_t> bytes) { assign(bytes.data(), bytes.size()); }
  explicit Secret(std::string_view bytes) {
    assign(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
  }
  ~Secret() { wipe(); }

  Secret(const Secret&) = delete;
  Secret& operator=(const Secret&) = delete;
  Secret(Secret&& other) noexcept { take(other); }
  Secret& operator=(Secret&& other) noexcept {
    if (this != &other) {
      wipe();
      take(other);
    }
    return *this;
  }

  [[nodiscard]] Secret clone() const { return Secret(bytes()); }
  [[nodiscard]] std::span<const std::uint8_t> bytes() const { return {data_, size_}; }
  [[nodiscard]] std::size_t size() const { return size_; }
  [[nodiscard]] bool empty() const { return size_ == 0; }
  // True when the input was longer than max_size and was cut: such a secret must be refused.
  [[nodiscard]] bool truncated() const { return truncated_; }

 private:
  void assign(const std::uint8_t* p, std::size_t n) {
    truncated_ = n > max_size;
    size_ = truncated_ ? max_size : n;
    if (size_ != 0) std::memcpy(data_, p, size_);
  }
  void take(Secret& other) {
    std::memcpy(data_, other.data_, other.size_);
    size_ = other.size_;
    truncated_ = other.truncated_;
    other.wipe();
  }
  void wipe() {
    explicit_bzero(data_, sizeof data_);
    size_ = 0;
    truncated_ = false;
  }

  // Fixed inline storage: no heap copy to forget to wipe.
  std::uint8_t data_[max_size] = {};
  std::size_t size_ = 0;
  bool truncated_ = false;
};

}  // namespace batv::crypto
