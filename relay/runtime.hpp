// runtime: everything a session needs, loaded and validated as one immutable value.
//
// Sessions take a shared_ptr<const Runtime> snapshot when they start and keep it to the end, so a
// reload never changes a session midway. A reload builds a complete new Runtime off to the side;
// on any error the old one stays (style.md, practice 7).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <ctime>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "conf/config.hpp"
#include "crypto/keyring.hpp"
#include "crypto/prvs.hpp"
#include "relay/policy.hpp"
#include "relay/tls.hpp"

namespace batv::relay {

// What identifies the key file's content on disk: rewrites in place change mtime/size,
// batv-keys' atomic rename changes the inode, delete-then-create changes both.
struct FileStamp {
  bool exists = false;
  dev_t dev = 0;
  ino_t ino = 0;
  off_t size = 0;
  std::int64_t mtime_ns = 0;
  bool operator==(const FileStamp&) const = default;
};

FileStamp stamp_of(const std::string& path);

// The wall clock (unix seconds) the roles read for the prvs day: the tags a session signs and
// checks, and the signing key in force. Production leaves `source` empty: std::time. A test or a
// fuzzer that builds a Runtime sets it, so that tags are made and checked on the day it chooses
// (postsrsd's injectable clock; crypto takes `now` as an argument already).
struct WallClock {
  std::function<std::int64_t()> source;
  [[nodiscard]] std::int64_t now() const {
    return source ? source() : static_cast<std::int64_t>(std::time(nullptr));
  }
};

struct Runtime {
  conf::Config config;
  // The default ring (config.key_file) first, then one per [[domain_keys]] entry in file order.
  // Every role picks the ring of an address through keys.for_address (relay/policy.hpp).
  Keyrings keys;
  crypto::PrvsParams prvs;
  std::string hostname;  // config smtp.hostname, or the system host name
  std::vector<ListenerTls> tls;  // one per listener, same order as config.listeners
  // Each ring's key file as it was just before it was read (same order as keys.rings()): the
  // watcher's baseline.
  std::vector<FileStamp> key_stamps;
  WallClock clock{};
};

// Loads the config file, every key file (the default one and each [[domain_keys]] file, each with
// the same safety checks) and the keyrings. All or nothing: one bad file fails the whole load. On
// failure returns nullptr and fills `errors` with one line each (file:line:col: key: message),
// naming the key file and the config entry that set it.
std::shared_ptr<const Runtime> load_runtime(const std::string& config_path,
                                            std::vector<std::string>& errors);


// The current runtime, swapped atomically.
class RuntimeHolder {
 public:
  explicit RuntimeHolder(std::shared_ptr<const Runtime> rt) : rt_(std::move(rt)) {}
  std::shared_ptr<const Runtime> get() const {
    std::lock_guard lock(mu_);
    return rt_;
  }
  void set(std::shared_ptr<const Runtime> rt) {
    std::lock_guard lock(mu_);
    rt_ = std::move(rt);
  }

 private:
  mutable std::mutex mu_;
  std::shared_ptr<const Runtime> rt_;
};

}  // namespace batv::relay
