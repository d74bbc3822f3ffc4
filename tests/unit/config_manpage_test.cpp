// batv-relay.toml(5) against the loader: every key the loader accepts (conf::config_keys(), built
// from the loader's own key lists and kLimits) has an entry `*KEY* = DEFAULT` in the page source
// (conf/batv-relay.toml.5.scd), numeric keys with their kLimits range and unit, and the page
// documents no key the loader would refuse. So the page cannot drift from the code.
#include <doctest/doctest.h>

#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <toml++/toml.h>

#include "conf/config.hpp"
#include "conf/limits.hpp"

#ifndef BATV_SOURCE_DIR
#error "BATV_SOURCE_DIR must name the source tree (the manual page source is read from it)"
#endif

namespace {

// Entry lines of the page: "*KEY* = REST" at the start of a line, KEY a dotted name.
std::map<std::string, std::string> page_entries(const std::string& text) {
  std::map<std::string, std::string> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.size() < 3 || line[0] != '*') continue;
    const auto close = line.find("* = ", 1);
    if (close == std::string::npos) continue;
    const std::string key = line.substr(1, close - 1);
    if (key.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789_.") != std::string::npos) continue;
    CHECK_MESSAGE(out.count(key) == 0, "documented twice: ", key);
    out[key] = line.substr(close + 4);
  }
  return out;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE_MESSAGE(in, "cannot read ", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

TEST_CASE("config_keys: every key has a default, numeric ones their kLimits row") {
  const auto keys = batv::conf::config_keys();
  std::set<std::string> seen;
  std::size_t limits = 0;
  for (const auto& k : keys) {
    CHECK_MESSAGE(!k.default_value.empty(), "no documented default for ", k.key, " (conf/config.cpp kDefaultTexts)");
    CHECK_MESSAGE(seen.insert(k.key).second, "listed twice: ", k.key);
    if (k.limit) {
      ++limits;
      CHECK(k.default_value == std::to_string(k.limit->def));
    }
  }
  // Every kLimits row is a key of the file.
  CHECK(limits == batv::conf::kLimits.size());
  // Spot checks that the list is the loader's: required keys and table members are present.
  for (const char* k : {"key_file", "domains.sign", "listener.role", "listener.upstream", "limits.sessions",
                        "timeouts.idle", "metrics.listen", "inbound.domain_mode", "domain_keys.key_file"})
    CHECK_MESSAGE(seen.count(k) == 1, "missing: ", k);
  // Table names are not keys.
  for (const char* k : {"domains", "domain_keys", "listener", "limits", "metrics"}) CHECK(seen.count(k) == 0);
}

TEST_CASE("config_keys: the loader accepts every listed key and checks its value") {
  // One document per key, with the key set to a table (the wrong type for every key but
  // inbound.domain_mode): the loader must report an error naming that key, and never "unknown
  // key", which would mean the list names a key the loader does not accept.
  for (const auto& k : batv::conf::config_keys()) {
    toml::table root{{"key_file", "keys.toml"},
                     {"domains", toml::table{{"sign", toml::array{"example.com"}}}},
                     {"listener", toml::array{toml::table{{"role", "outbound"},
                                                          {"listen", "127.0.0.1:10025"},
                                                          {"upstream", "127.0.0.1:10026"}}}}};
    const auto dot = k.key.find('.');
    std::string where = k.key;  // the key the loader's error names
    if (dot == std::string::npos) {
      root.insert_or_assign(k.key, toml::table{});
    } else {
      const std::string table = k.key.substr(0, dot), name = k.key.substr(dot + 1);
      toml::table* t = nullptr;
      if (table == "listener") {
        t = root["listener"].as_array()->get(0)->as_table();
        where = "listener[0]." + name;
      } else if (table == "domain_keys") {
        root.insert("domain_keys", toml::array{toml::table{{"domains", toml::array{"example.com"}},
                                                           {"key_file", "customer.toml"}}});
        t = root["domain_keys"].as_array()->get(0)->as_table();
        where = "domain_keys[0]." + name;
      } else {
        if (!root.contains(table)) root.insert(table, toml::table{});
        t = root[table].as_table();
      }
      REQUIRE(t != nullptr);
      t->insert_or_assign(name, toml::table{});
    }
    std::ostringstream text;
    text << root;
    const auto r = batv::conf::load_config_string(text.str(), "t.toml", "/etc/batv");
    if (k.key == "inbound.domain_mode") {  // a table: {} is its valid, empty value
      CHECK_MESSAGE(r.errors.empty(), k.key);
      continue;
    }
    bool named = false, unknown = false;
    for (const auto& e : r.errors) {
      if (e.key == where || e.key.rfind(where + "[", 0) == 0) named = true;
      if (e.message.find("unknown key") != std::string::npos) unknown = true;
    }
    CHECK_MESSAGE(named, "the loader did not check ", k.key, ":\n", text.str());
    CHECK_MESSAGE(!unknown, "the loader does not know ", k.key);
  }
}

TEST_CASE("batv-relay.toml(5) documents every key with its default, and no other key") {
  const std::string page = read_file(std::string(BATV_SOURCE_DIR) + "/conf/batv-relay.toml.5.scd");
  const auto entries = page_entries(page);
  std::set<std::string> documented;
  for (const auto& [key, rest] : entries) documented.insert(key);
  for (const auto& k : batv::conf::config_keys()) {
    const auto it = entries.find(k.key);
    if (it == entries.end()) {
      FAIL_CHECK("batv-relay.toml(5) has no entry *", k.key, "* = ", k.default_value);
      continue;
    }
    documented.erase(k.key);
    std::string want = k.default_value;
    if (k.limit)
      want += " (" + std::to_string(k.limit->min) + "-" + std::to_string(k.limit->max) + " " +
              std::string(k.limit->unit) + ")";
    CHECK_MESSAGE(it->second == want, "batv-relay.toml(5): *", k.key, "* = ", it->second, "; the loader: ", want);
  }
  for (const auto& key : documented) FAIL_CHECK("batv-relay.toml(5) documents ", key, ", which the loader refuses");
}
