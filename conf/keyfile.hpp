// The key file: TOML with one [[key]] table per BATV key.
//
//   [[key]]
//   id = 1                                   # 0-9, the K digit of the tag
//   secret = "base64..."                     # 1-64 bytes once decoded
//   state = "signing"                        # "signing" (exactly one) or "verify"
//   created = 2026-11-23T09:00:00Z           # when the key was made or imported
//   stopped_signing = 2026-11-30T09:00:00Z   # verify keys only: when it was demoted
//   activate_at = 2026-12-01T09:00:00Z       # staged keys only: when it starts signing
//
// A "staged" key (batv-keys rotate --at T; at most one) verifies at once and signs from
// activate_at on; the "signing" key signs until then and is verify-only from then on. The file
// does not change at that moment: every reader decides the signer from the time (settle() below
// rewrites a passed activation as the plain signing/verify form, for batv-keys). Files without
// staged keys are the format of before.
//
// Contract: parse_keyfile is pure (text in, records or errors out). load_keyfile opens the file,
// refuses one that group or others can access (like ssh with private keys) and parses it.
// write_keyfile_atomic writes a temp file in the same directory (mode 0600, the replaced file's
// owner and group kept), fsyncs it, renames it over the target and fsyncs the directory, so
// readers see the old file or the new one, never a torn one. Errors name the file, line, column and key; they never contain secret bytes.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "conf/config.hpp"  // ConfigError, format()
#include "crypto/secret.hpp"

namespace batv::conf {

enum class KeyState { signing, verify, staged };
std::string_view to_string(KeyState s);

struct KeyRecord {
  int id = -1;
  KeyState state = KeyState::verify;
  crypto::Secret secret;
  std::int64_t created = 0;                     // unix seconds
  std::optional<std::int64_t> stopped_signing;  // verify keys only
  std::optional<std::int64_t> activate_at;      // staged keys only
};

struct KeyFile {
  std::vector<KeyRecord> keys;  // in file order

  [[nodiscard]] const KeyRecord* find(int id) const;
  [[nodiscard]] KeyRecord* find(int id);
  [[nodiscard]] const KeyRecord* signer() const;
  [[nodiscard]] KeyRecord* signer();
  [[nodiscard]] const KeyRecord* staged() const;
  [[nodiscard]] KeyRecord* staged();

  // Pure: when the staged key's activation time is at or before `now`, rewrites the file as it is
  // in effect: the staged key becomes "signing", the signer "verify" with stopped_signing =
  // activate_at. Returns whether anything changed.
  bool settle(std::int64_t now);
};

enum class KeyFileStatus {
  ok,
  missing,         // the file does not exist
  unsafe,          // group/world accessible, or not a regular file
  io_error,        // cannot open or read
  invalid,         // TOML or content errors
};

struct KeyFileLoad {
  KeyFileStatus status = KeyFileStatus::invalid;
  std::optional<KeyFile> file;
  std::vector<ConfigError> errors;  // at least one unless status == ok
};

// Pure: parse and validate key-file text. `name` is used in errors.
// `allow_empty` accepts a file with no [[key]] at all (batv-keys reading a fresh file).
KeyFileLoad parse_keyfile(std::string_view text, const std::string& name, bool allow_empty = false);

// Opens `path`, checks it is a regular file with no group/other permission bits, reads and parses.
KeyFileLoad load_keyfile(const std::string& path, bool allow_empty = false);

// Deterministic TOML text for `file` (keys sorted by id). The returned string holds secrets:
// callers wipe it (write_keyfile_atomic does).
std::string serialize_keyfile(const KeyFile& file);

// Atomic replace as described above. Returns false and sets `error` (no secret in it) on failure.
bool write_keyfile_atomic(const std::string& path, const KeyFile& file, std::string& error);

// An exclusive advisory lock on "<path>.lock" for read-modify-write cycles (batv-keys), so two
// operators rotating at once cannot lose a key. Released on destruction.
class KeyFileLock {
 public:
  explicit KeyFileLock(const std::string& path);
  ~KeyFileLock();
  KeyFileLock(const KeyFileLock&) = delete;
  KeyFileLock& operator=(const KeyFileLock&) = delete;
  [[nodiscard]] bool ok() const { return fd_ >= 0; }
  [[nodiscard]] const std::string& error() const { return error_; }

 private:
  int fd_ = -1;
  std::string error_;
};

// Base64 (RFC 4648 standard alphabet, padding optional on input). Pure.
std::string base64_encode(std::span<const std::uint8_t> bytes);
// Decodes into `out` (at most out.size() bytes); returns the decoded length, or -1 when the text is
// not base64 or decodes to more than out.size() bytes.
long base64_decode(std::string_view text, std::span<std::uint8_t> out);

}  // namespace batv::conf
