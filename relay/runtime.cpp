#include "relay/runtime.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <optional>
#include <utility>

#include "conf/keyfile.hpp"
#include "relay/policy.hpp"

namespace batv::relay {

namespace {

std::string system_hostname() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') return "localhost";
  return buf;
}

// One ring from its key file. `origin` says where the config set the file, for the errors.
std::optional<Ring> load_ring(std::string name, std::vector<std::string> domains, const std::string& key_file,
                              const std::string& origin, std::vector<std::string>& errors) {
  auto keys = conf::load_keyfile(key_file);
  if (!keys.file) {
    for (const auto& e : keys.errors) errors.push_back(conf::format(e) + " (" + origin + ")");
    return std::nullopt;
  }
  std::vector<crypto::KeyMaterial> mats;
  std::vector<std::pair<int, std::int64_t>> created;
  for (const auto& k : keys.file->keys) {
    mats.push_back({k.id, k.state == conf::KeyState::signing, k.secret.clone(), k.activate_at});
    created.emplace_back(k.id, k.created);
  }
  std::string err;
  auto ring = crypto::Keyring::build(mats, err);
  if (!ring) {
    errors.push_back(key_file + ": " + err + " (" + origin + ")");
    return std::nullopt;
  }
  return Ring{std::move(name), std::move(domains), key_file, std::move(*ring), mats.size(), std::move(created)};
}

}  // namespace

FileStamp stamp_of(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return {};
  return {true, st.st_dev, st.st_ino, st.st_size,
          static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec};
}

std::shared_ptr<const Runtime> load_runtime(const std::string& config_path,
                                            std::vector<std::string>& errors) {
  auto loaded = conf::load_config_file(config_path);
  if (!loaded.config) {
    for (const auto& e : loaded.errors) errors.push_back(conf::format(e));
    return nullptr;
  }
  const conf::Config& cfg = *loaded.config;
  std::vector<Ring> rings;
  std::vector<FileStamp> stamps;
  bool keys_ok = true;
  // Before each read: a change from here on differs from this stamp, so the watcher reloads.
  stamps.push_back(stamp_of(cfg.key_file));
  if (auto r = load_ring("default", {}, cfg.key_file, "key_file, set in " + cfg.source, errors))
    rings.push_back(std::move(*r));
  else
    keys_ok = false;
  for (std::size_t i = 0; i < cfg.domain_keys.size(); ++i) {
    const conf::DomainKeys& dk = cfg.domain_keys[i];
    stamps.push_back(stamp_of(dk.key_file));
    // Every file is read even after a failure: all errors at once.
    if (auto r = load_ring(dk.domains.front(), dk.domains, dk.key_file,
                           "domain_keys[" + std::to_string(i) + "].key_file, set at " + dk.where, errors))
      rings.push_back(std::move(*r));
    else
      keys_ok = false;
  }
  auto tls = build_tls(cfg, errors);
  if (!keys_ok || !errors.empty()) return nullptr;
  const crypto::PrvsParams params = prvs_params(cfg);
  std::string host = cfg.smtp.hostname.empty() ? system_hostname() : cfg.smtp.hostname;
  return std::make_shared<const Runtime>(Runtime{std::move(*loaded.config), Keyrings(std::move(rings)), params,
                                                 std::move(host), std::move(tls), std::move(stamps)});
}


}  // namespace batv::relay
