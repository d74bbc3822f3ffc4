// conf/config, [[domain_keys]]: the loader's checks (values, every error with its position).
// How each role then picks the ring of an address: policy_keyrings_test.cpp.
#include <doctest/doctest.h>

#include <string>

#include "conf/config.hpp"
#include "conf/limits.hpp"

using namespace batv;

namespace {

conf::LoadResult load(const std::string& text) { return conf::load_config_string(text, "t.toml", "/etc/batv"); }

std::string all_errors(const conf::LoadResult& r) {
  std::string s;
  for (const auto& e : r.errors) s += conf::format(e) + "\n";
  return s;
}

// Lines 1-8; `tail` starts at line 9.
std::string doc(const std::string& tail) {
  return "key_file = \"keys.toml\"\n"                                   // 1
         "[domains]\n"                                                  // 2
         "sign = [\"example.com\", \"a.example\", \"www.a.example\"]\n"  // 3
         "verify = [\"example.com\", \"a.example\", \"b.example\"]\n"     // 4
         "[[listener]]\n"                                               // 5
         "role = \"outbound\"\n"                                        // 6
         "listen = \"127.0.0.1:10025\"\n"                               // 7
         "upstream = \"127.0.0.1:10026\"\n" +                           // 8
         tail;
}

const std::string kRingsToml =
    "[[domain_keys]]\n"
    "domains = [\"a.example\", \"WWW.A.example\"]\n"
    "key_file = \"customers/a.toml\"\n"
    "[[domain_keys]]\n"
    "domains = [\"b.example\"]\n"
    "key_file = \"/var/lib/batv/b.toml\"\n";

}  // namespace

// --- the loader ----------------------------------------------------------------------------------------

TEST_CASE("domain_keys: entries loaded in order, domains lowercased, key files resolved like key_file") {
  const auto r = load(doc(kRingsToml));
  INFO(all_errors(r));
  REQUIRE(r.config.has_value());
  const auto& dk = r.config->domain_keys;
  REQUIRE(dk.size() == 2);
  CHECK(dk[0].domains == std::vector<std::string>{"a.example", "www.a.example"});
  CHECK(dk[0].key_file == "/etc/batv/customers/a.toml");
  CHECK(dk[0].where == "t.toml:9:1");
  CHECK(dk[1].domains == std::vector<std::string>{"b.example"});
  CHECK(dk[1].key_file == "/var/lib/batv/b.toml");
  // Without a base directory a relative name stays relative, as key_file does.
  const auto rel = conf::load_config_string(doc(kRingsToml), "t.toml", "");
  REQUIRE(rel.config.has_value());
  CHECK(rel.config->domain_keys[0].key_file == "customers/a.toml");
  // No entry: no rings (the default ring does everything).
  REQUIRE(load(doc("")).config.has_value());
  CHECK(load(doc("")).config->domain_keys.empty());
}

TEST_CASE("domain_keys: every mistake reported at its position, naming the other entry") {
  struct Case {
    std::string tail;
    int line, column;
    std::string key, message;
  };
  const std::vector<Case> cases = {
      // A domain in two entries: the second is the error, the first is named with its line.
      {kRingsToml + "[[domain_keys]]\ndomains = [\"example.com\", \"b.example\"]\nkey_file = \"c.toml\"\n", 16, 27,
       "domain_keys[2].domains[1]", "domain b.example already has a keyring: domain_keys[1] (t.toml:13)"},
      // Case does not hide a repeat.
      {kRingsToml + "[[domain_keys]]\ndomains = [\"A.Example\"]\nkey_file = \"c.toml\"\n", 16, 12,
       "domain_keys[2].domains[0]", "domain a.example already has a keyring: domain_keys[0] (t.toml:10)"},
      // A ring for a domain the relay neither signs nor verifies would never be used.
      {"[[domain_keys]]\ndomains = [\"c.example\"]\nkey_file = \"c.toml\"\n", 10, 12, "domain_keys[0].domains[0]",
       "domain c.example is in neither domains.sign nor domains.verify"},
      // A subdomain is another domain (no suffix match, as in [domains]).
      {"[[domain_keys]]\ndomains = [\"mail.a.example\"]\nkey_file = \"c.toml\"\n", 10, 12,
       "domain_keys[0].domains[0]", "domain mail.a.example is in neither"},
      {"[[domain_keys]]\ndomains = [\"a.example\"]\nkey_file = \"keys.toml\"\n", 11, 12, "domain_keys[0].key_file",
       "/etc/batv/keys.toml is the default key_file"},
      {"[[domain_keys]]\ndomains = [\"a.example\"]\nkey_file = \"c.toml\"\n[[domain_keys]]\ndomains = "
       "[\"b.example\"]\nkey_file = \"./c.toml\"\n",
       14, 12, "domain_keys[1].key_file", "/etc/batv/c.toml is already the key file of domain_keys[0] (t.toml:11)"},
      {"[[domain_keys]]\ndomains = []\nkey_file = \"c.toml\"\n", 10, 11, "domain_keys[0].domains",
       "must list at least one domain"},
      {"[[domain_keys]]\nkey_file = \"c.toml\"\n", 9, 1, "domain_keys[0].domains", "required key is missing"},
      {"[[domain_keys]]\ndomains = [\"a.example\"]\n", 9, 1, "domain_keys[0].key_file", "required key is missing"},
      {"[[domain_keys]]\ndomains = [\"a.example\"]\nkey_file = \"\"\n", 11, 12, "domain_keys[0].key_file",
       "must not be empty"},
      {"[[domain_keys]]\ndomains = [\"a.example\"]\nkey_file = \"c.toml\"\nkeyfile = \"d\"\n", 12, 1,
       "domain_keys[0].keyfile", "unknown key 'keyfile'; did you mean 'key_file'?"},
      {"[[domain_keys]]\ndomains = [\"a..example\"]\nkey_file = \"c.toml\"\n", 10, 12, "domain_keys[0].domains[0]",
       "bad domain 'a..example'"},
      {"[[domain_keys]]\ndomains = \"a.example\"\nkey_file = \"c.toml\"\n", 10, 11, "domain_keys[0].domains",
       "expected an array of strings, got a string"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.tail);
    const auto r = load(doc(c.tail));
    INFO(all_errors(r));
    CHECK_FALSE(r.config.has_value());
    REQUIRE(r.errors.size() == 1);
    CHECK(r.errors[0].file == "t.toml");
    CHECK(r.errors[0].line == c.line);
    CHECK(r.errors[0].column == c.column);
    CHECK(r.errors[0].key == c.key);
    CHECK(r.errors[0].message.find(c.message) != std::string::npos);
  }
  // Not an array of tables at all.
  const auto top = load("domain_keys = \"a.toml\"\n" + doc(""));
  REQUIRE(top.errors.size() == 1);
  CHECK(top.errors[0].key == "domain_keys");
  CHECK(top.errors[0].message.find("expected an array of tables ([[domain_keys]])") != std::string::npos);
  // Bounded: one entry more than fixed::max_domain_keys is refused as a whole.
  std::string many = "key_file = \"keys.toml\"\n[domains]\nsign = [\"example.com\"]\n";
  for (std::size_t i = 0; i <= conf::fixed::max_domain_keys; ++i)
    many += "[[domain_keys]]\ndomains = [\"example.com\"]\nkey_file = \"k" + std::to_string(i) + "\"\n";
  many += "[[listener]]\nrole = \"outbound\"\nlisten = \"127.0.0.1:1\"\nupstream = \"127.0.0.1:2\"\n";
  const auto big = load(many);
  REQUIRE(big.errors.size() == 1);
  CHECK(big.errors[0].key == "domain_keys");
  CHECK(big.errors[0].message.find("at most 1000") != std::string::npos);
}
