#include "relay/runtime.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <optional>

#include "conf/keyfile.hpp"
#include "relay/policy.hpp"

namespace batv::relay {

namespace {

std::string system_hostname() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') return "localhost";
  return buf;
}

std::optional<crypto::Keyring> load_keys(const conf::Config& cfg, std::size_t& count,
                                         std::vector<std::string>& errors,
                                         std::vector<std::pair<int, std::int64_t>>* created = nullptr) {
  auto keys = conf::load_keyfile(cfg.key_file);
  if (!keys.file) {
    for (const auto& e : keys.errors)
      errors.push_back(conf::format(e) + " (key_file, set in " + cfg.source + ")");
    return std::nullopt;
  }
  std::vector<crypto::KeyMaterial> mats;
  for (const auto& k : keys.file->keys)
    mats.push_back({k.id, k.state == conf::KeyState::signing, k.secret.clone(), k.activate_at});
  if (created)
    for (const auto& k : keys.file->keys) created->emplace_back(k.id, k.created);
  std::string err;
  auto ring = crypto::Keyring::build(mats, err);
  if (!ring) errors.push_back(cfg.key_file + ": " + err);
  count = mats.size();
  return ring;
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
  std::size_t count = 0;
  std::vector<std::pair<int, std::int64_t>> created;
  // Before the read: a change from here on differs from this stamp, so the watcher reloads.
  const FileStamp key_stamp = stamp_of(loaded.config->key_file);
  auto ring = load_keys(*loaded.config, count, errors, &created);
  auto tls = build_tls(*loaded.config, errors);
  if (!ring || !errors.empty()) return nullptr;
  const conf::Config& cfg = *loaded.config;
  const crypto::PrvsParams params = prvs_params(cfg);
  std::string host = cfg.smtp.hostname.empty() ? system_hostname() : cfg.smtp.hostname;
  return std::make_shared<const Runtime>(
      Runtime{std::move(*loaded.config), std::move(*ring), params, std::move(host), count, std::move(created), std::move(tls), key_stamp});
}


}  // namespace batv::relay
