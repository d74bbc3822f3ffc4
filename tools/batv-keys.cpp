// batv-keys: the key-lifecycle and offline sign/verify CLI.
//
// Exit codes: 0 success (verify: valid); 64 usage; 1 refused (rotate with all ids used, retire while
// tags can still be valid, import over an existing id); verify: 1 bad_signature, 2 expired,
// 3 unknown_key, 4 malformed or untagged; sign: 3 not signed; key-file problems use sysexits:
// 65 invalid content, 66 missing, 73 cannot write, 74 I/O error, 77 permissions too open.
// Never prints a secret: keys are shown by id, state, dates and a fingerprint.
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "conf/config.hpp"
#include "conf/keyfile.hpp"
#include "conf/timefmt.hpp"
#include "crypto/keyring.hpp"
#include "crypto/no_dump.hpp"
#include "crypto/prvs.hpp"

namespace {

using namespace batv;

constexpr int ex_ok = 0, ex_refused = 1, ex_usage = 64, ex_dataerr = 65, ex_noinput = 66,
              ex_cantcreat = 73, ex_ioerr = 74, ex_noperm = 77;
// A retired key's tags stay valid to the end of their expiry day; the margin covers clock skew
// between relays and mail that reaches us a little late.
constexpr int default_margin_days = 1;

constexpr std::string_view usage_text =
    "usage: batv-keys (--keys FILE | --config RELAY.toml) [options] COMMAND [ARGS]\n"
    "commands:\n"
    "  rotate                      add a new random key and make it the signing key\n"
    "  import --id N [--signing]   add a key whose secret is read from stdin\n"
    "  list [--json]               show keys (never the secrets)\n"
    "  retire --id N [--force]     remove a verify-only key once its tags have expired\n"
    "  prune                       retire every key that is safe to retire\n"
    "  sign ADDRESS                print the prvs-tagged address\n"
    "  verify ADDRESS              print the verdict and the original address\n"
    "options:\n"
    "  --now T             the clock: unix seconds or ISO-8601 UTC (2023-11-14T22:13:20Z)\n"
    "  --lifetime DAYS     tag lifetime, 1-30 (default 7, or the config's lifetime_days)\n"
    "  --hash MODE         exact | lowercase-local (default exact, or the config's hash)\n"
    "  --margin DAYS       extra days before a retired key is safe to remove (default 1)\n"
    "exit codes:\n"
    "  0   success; verify: the tag is valid\n"
    "  1   refused (rotate with all ids used, retire too early, import over a used id);\n"
    "      verify: bad_signature\n"
    "  2   verify: expired\n"
    "  3   verify: unknown_key; sign: not signed\n"
    "  4   verify: malformed or untagged\n"
    "  64  usage error\n"
    "  65  the key file or the config is invalid\n"
    "  66  the key file is missing\n"
    "  73  the key file cannot be written\n"
    "  74  I/O error\n"
    "  77  the key file's permissions are too open\n";

struct Options {
  std::string keys;
  std::string config;
  std::string command;
  std::vector<std::string> args;
  std::optional<int> id;
  bool signing = false, force = false, json = false;
  std::int64_t now = 0;
  crypto::PrvsParams prvs;
  int margin_days = default_margin_days;
};

[[noreturn]] void usage_error(const std::string& msg) {
  std::cerr << "batv-keys: " << msg << "\n" << usage_text;
  std::exit(ex_usage);
}

int parse_int(std::string_view opt, const std::string& v, int lo, int hi) {
  char* end = nullptr;
  errno = 0;
  const long n = std::strtol(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || errno != 0 || n < lo || n > hi)
    usage_error(std::string(opt) + " wants a number " + std::to_string(lo) + "-" +
                std::to_string(hi) + ", got '" + v + "'");
  return static_cast<int>(n);
}

Options parse_args(int argc, char** argv) {
  Options o;
  o.now = static_cast<std::int64_t>(std::time(nullptr));
  std::optional<int> lifetime;
  std::optional<crypto::HashMode> hash;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage_error(a + " needs a value");
      return argv[++i];
    };
    if (a == "--keys") o.keys = value();
    else if (a == "--config") o.config = value();
    else if (a == "--id") o.id = parse_int(a, value(), 0, 9);
    else if (a == "--signing") o.signing = true;
    else if (a == "--force") o.force = true;
    else if (a == "--json") o.json = true;
    else if (a == "--lifetime") lifetime = parse_int(a, value(), crypto::PrvsParams::min_lifetime_days, crypto::PrvsParams::max_lifetime_days);
    else if (a == "--margin") o.margin_days = parse_int(a, value(), 0, 365);
    else if (a == "--hash") {
      const std::string v = value();
      if (v == "exact") hash = crypto::HashMode::exact;
      else if (v == "lowercase-local") hash = crypto::HashMode::lowercase_local;
      else usage_error("--hash wants exact or lowercase-local, got '" + v + "'");
    } else if (a == "--now") {
      const std::string v = value();
      auto t = conf::parse_time(v);
      if (!t) usage_error("--now wants unix seconds or an ISO-8601 UTC time, got '" + v + "'");
      o.now = *t;
    } else if (a == "-h" || a == "--help") {
      std::cout << usage_text;
      std::exit(ex_ok);
    } else if (a.size() > 1 && a[0] == '-') {
      usage_error("unknown option " + a);
    } else if (o.command.empty()) {
      o.command = a;
    } else {
      o.args.push_back(a);
    }
  }
  if (o.command.empty()) usage_error("no command");
  if (o.keys.empty() && o.config.empty()) usage_error("--keys FILE (or --config FILE) is required");
  if (!o.config.empty()) {
    auto loaded = conf::load_config_file(o.config);
    if (!loaded.config) {
      for (const auto& e : loaded.errors) std::cerr << "batv-keys: " << conf::format(e) << "\n";
      std::exit(ex_dataerr);
    }
    if (o.keys.empty()) o.keys = loaded.config->key_file;
    o.prvs.lifetime_days = loaded.config->lifetime_days;
    o.prvs.hash = loaded.config->hash == conf::HashSetting::lowercase_local
                      ? crypto::HashMode::lowercase_local
                      : crypto::HashMode::exact;
  }
  if (lifetime) o.prvs.lifetime_days = *lifetime;
  if (hash) o.prvs.hash = *hash;
  return o;
}

int exit_for(conf::KeyFileStatus s) {
  switch (s) {
    case conf::KeyFileStatus::ok: return ex_ok;
    case conf::KeyFileStatus::missing: return ex_noinput;
    case conf::KeyFileStatus::unsafe: return ex_noperm;
    case conf::KeyFileStatus::io_error: return ex_ioerr;
    case conf::KeyFileStatus::invalid: return ex_dataerr;
  }
  return ex_dataerr;
}

// Loads the key file or exits with its errors. `allow_missing` gives an empty file instead.
conf::KeyFile load_or_exit(const Options& o, bool allow_missing) {
  auto r = conf::load_keyfile(o.keys, allow_missing);
  if (r.status == conf::KeyFileStatus::missing && allow_missing) return {};
  if (!r.file) {
    for (const auto& e : r.errors) std::cerr << "batv-keys: " << conf::format(e) << "\n";
    std::exit(exit_for(r.status));
  }
  return std::move(*r.file);
}

void save_or_exit(const Options& o, const conf::KeyFile& f) {
  std::string err;
  if (!conf::write_keyfile_atomic(o.keys, f, err)) {
    std::cerr << "batv-keys: " << err << "\n";
    std::exit(ex_cantcreat);
  }
}

crypto::Keyring ring_or_exit(const Options& o, const conf::KeyFile& f) {
  std::vector<crypto::KeyMaterial> mats;
  for (const auto& k : f.keys)
    mats.push_back({k.id, k.state == conf::KeyState::signing, k.secret.clone()});
  std::string err;
  auto ring = crypto::Keyring::build(mats, err);
  if (!ring) {
    std::cerr << "batv-keys: " << o.keys << ": " << err << "\n";
    std::exit(ex_dataerr);
  }
  return std::move(*ring);
}

// The first moment at which no tag signed by `k` can verify any more, plus the margin.
std::optional<std::int64_t> retirable_at(const Options& o, const conf::KeyRecord& k) {
  if (k.state == conf::KeyState::signing || !k.stopped_signing) return std::nullopt;
  // A tag signed at stopped_signing expires on day(stop) + lifetime and is valid all that day.
  const std::int64_t last_valid_day =
      crypto::day_number(*k.stopped_signing) + o.prvs.lifetime_days;
  return (last_valid_day + 1 + o.margin_days) * 86400;
}

std::string key_summary(const conf::KeyRecord& k) {
  return "key " + std::to_string(k.id) + " (" + crypto::fingerprint(k.secret) + ")";
}

int cmd_rotate(const Options& o) {
  conf::KeyFileLock lock(o.keys);
  if (!lock.ok()) {
    std::cerr << "batv-keys: " << lock.error() << "\n";
    return ex_cantcreat;
  }
  conf::KeyFile f = load_or_exit(o, true);
  conf::KeyRecord* old = f.signer();
  const int start = old ? (old->id + 1) % 10 : 0;
  int id = -1;
  for (int i = 0; i < 10 && id < 0; ++i)
    if (!f.find((start + i) % 10)) id = (start + i) % 10;
  if (id < 0) {
    // Name the verify key that stopped signing first: it is the one to retire.
    const conf::KeyRecord* oldest = nullptr;
    for (const auto& k : f.keys)
      if (k.stopped_signing && (!oldest || *k.stopped_signing < *oldest->stopped_signing)) oldest = &k;
    std::cerr << "batv-keys: all 10 key ids are in use; retire one first";
    if (oldest) {
      const auto at = retirable_at(o, *oldest);
      std::cerr << ": key " << oldest->id << " stopped signing longest ago ("
                << conf::format_utc(*oldest->stopped_signing) << ") and "
                << (at && *at <= o.now ? "is safe to retire now"
                                       : "is safe to retire after " + conf::format_utc(*at))
                << " (batv-keys retire --id " << oldest->id << ")";
    }
    std::cerr << "\n";
    return ex_refused;
  }
  auto secret = crypto::generate_secret(32);
  if (!secret) {
    std::cerr << "batv-keys: the OpenSSL random generator failed\n";
    return ex_ioerr;
  }
  std::string demoted;
  if (old) {
    old->state = conf::KeyState::verify;
    old->stopped_signing = o.now;
    demoted = key_summary(*old);
  }
  conf::KeyRecord rec;
  rec.id = id;
  rec.state = conf::KeyState::signing;
  rec.secret = std::move(*secret);
  rec.created = o.now;
  const std::string made = key_summary(rec);
  f.keys.push_back(std::move(rec));
  save_or_exit(o, f);
  std::cout << made << " is now the signing key";
  if (!demoted.empty()) std::cout << "; " << demoted << " now only verifies";
  std::cout << "\n";
  return ex_ok;
}

int cmd_import(const Options& o) {
  if (!o.id) usage_error("import needs --id N");
  // Exim secrets are strings; read raw bytes, at most a little more than the 64-byte limit.
  std::string in;
  char buf[256];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, stdin)) > 0) {
    in.append(buf, n);
    if (in.size() > 1024) break;
  }
  explicit_bzero(buf, sizeof buf);
  if (!in.empty() && in.back() == '\n') {
    in.pop_back();
    if (!in.empty() && in.back() == '\r') in.pop_back();
  }
  auto wipe = [&] { explicit_bzero(in.data(), in.size()); };
  if (in.empty()) {
    std::cerr << "batv-keys: import: no secret on standard input\n";
    return ex_usage;
  }
  if (in.size() > crypto::Secret::max_size) {
    std::cerr << "batv-keys: import: the secret is " << in.size()
              << " bytes; 64 is the limit (Exim's too)\n";
    wipe();
    return ex_usage;
  }
  crypto::Secret secret{std::string_view(in)};
  wipe();
  conf::KeyFileLock lock(o.keys);
  if (!lock.ok()) {
    std::cerr << "batv-keys: " << lock.error() << "\n";
    return ex_cantcreat;
  }
  conf::KeyFile f = load_or_exit(o, true);
  if (f.find(*o.id)) {
    std::cerr << "batv-keys: key " << *o.id << " exists already; retire it first or pick a free id\n";
    return ex_refused;
  }
  if (!o.signing && !f.signer()) {
    std::cerr << "batv-keys: the key file has no signing key yet; import this one with --signing\n";
    return ex_refused;
  }
  if (secret.size() < 16)
    std::cerr << "batv-keys: warning: the secret is only " << secret.size()
              << " bytes; 16 or more are recommended (rotate to a generated key soon)\n";
  std::string demoted;
  if (o.signing) {
    if (auto* old = f.signer()) {
      old->state = conf::KeyState::verify;
      old->stopped_signing = o.now;
      demoted = key_summary(*old);
    }
  }
  conf::KeyRecord rec;
  rec.id = *o.id;
  rec.state = o.signing ? conf::KeyState::signing : conf::KeyState::verify;
  rec.secret = std::move(secret);
  rec.created = o.now;
  if (!o.signing) rec.stopped_signing = o.now;
  const std::string made = key_summary(rec);
  f.keys.push_back(std::move(rec));
  save_or_exit(o, f);
  std::cout << "imported " << made << (o.signing ? " as the signing key" : " as a verify key");
  if (!demoted.empty()) std::cout << "; " << demoted << " now only verifies";
  std::cout << "\n";
  return ex_ok;
}

std::string json_string(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

int cmd_list(const Options& o) {
  const conf::KeyFile f = load_or_exit(o, false);
  std::vector<const conf::KeyRecord*> keys;
  for (const auto& k : f.keys) keys.push_back(&k);
  std::sort(keys.begin(), keys.end(), [](auto* a, auto* b) { return a->id < b->id; });
  if (o.json) {
    std::cout << "[";
    bool first = true;
    for (const auto* k : keys) {
      const auto at = retirable_at(o, *k);
      std::cout << (first ? "" : ",") << "\n  {\"id\": " << k->id
                << ", \"state\": " << json_string(conf::to_string(k->state))
                << ", \"created\": " << json_string(conf::format_utc(k->created))
                << ", \"stopped_signing\": "
                << (k->stopped_signing ? json_string(conf::format_utc(*k->stopped_signing)) : "null")
                << ", \"retirable_after\": " << (at ? json_string(conf::format_utc(*at)) : "null")
                << ", \"retirable_now\": " << (at && *at <= o.now ? "true" : "false")
                << ", \"fingerprint\": " << json_string(crypto::fingerprint(k->secret)) << "}";
      first = false;
    }
    std::cout << "\n]\n";
    return ex_ok;
  }
  std::printf("%-3s %-8s %-21s %-21s %-21s %s\n", "ID", "STATE", "CREATED", "STOPPED_SIGNING",
              "RETIRABLE_AFTER", "FINGERPRINT");
  for (const auto* k : keys) {
    const auto at = retirable_at(o, *k);
    std::printf("%-3d %-8s %-21s %-21s %-21s %s\n", k->id,
                std::string(conf::to_string(k->state)).c_str(), conf::format_utc(k->created).c_str(),
                k->stopped_signing ? conf::format_utc(*k->stopped_signing).c_str() : "-",
                at ? conf::format_utc(*at).c_str() : "-", crypto::fingerprint(k->secret).c_str());
  }
  return ex_ok;
}

int cmd_retire(const Options& o, bool prune) {
  if (!prune && !o.id) usage_error("retire needs --id N");
  conf::KeyFileLock lock(o.keys);
  if (!lock.ok()) {
    std::cerr << "batv-keys: " << lock.error() << "\n";
    return ex_cantcreat;
  }
  conf::KeyFile f = load_or_exit(o, false);
  std::vector<int> remove;
  if (prune) {
    for (const auto& k : f.keys) {
      const auto at = retirable_at(o, k);
      if (at && *at <= o.now) remove.push_back(k.id);
    }
    if (remove.empty()) {
      std::cout << "nothing to prune\n";
      return ex_ok;
    }
  } else {
    const conf::KeyRecord* k = f.find(*o.id);
    if (!k) {
      std::cerr << "batv-keys: there is no key " << *o.id << "\n";
      return ex_refused;
    }
    if (k->state == conf::KeyState::signing) {
      std::cerr << "batv-keys: key " << k->id
                << " is the signing key; run rotate first, then retire it once its tags expired\n";
      return ex_refused;
    }
    const auto at = retirable_at(o, *k);
    if (at && *at > o.now && !o.force) {
      std::cerr << "batv-keys: key " << k->id << " stopped signing at "
                << conf::format_utc(*k->stopped_signing)
                << "; tags it signed can be valid until " << conf::format_utc(*at)
                << " (lifetime " << o.prvs.lifetime_days << " days + " << o.margin_days
                << " day margin): refusing (--force overrides)\n";
      return ex_refused;
    }
    remove.push_back(k->id);
  }
  std::string names;
  for (int id : remove) {
    names += (names.empty() ? "" : ", ") + key_summary(*f.find(id));
    std::erase_if(f.keys, [id](const conf::KeyRecord& k) { return k.id == id; });
  }
  save_or_exit(o, f);
  std::cout << "retired " << names << "\n";
  return ex_ok;
}

std::string strip_brackets(std::string a) {
  if (a.size() >= 2 && a.front() == '<' && a.back() == '>') a = a.substr(1, a.size() - 2);
  return a;
}

int cmd_sign(const Options& o) {
  if (o.args.size() != 1) usage_error("sign takes exactly one ADDRESS");
  const conf::KeyFile f = load_or_exit(o, false);
  const crypto::Keyring ring = ring_or_exit(o, f);
  const auto r = crypto::sign(ring, strip_brackets(o.args[0]), o.now, o.prvs);
  if (!r.tagged) {
    std::cout << "not signed: " << crypto::to_string(r.reason) << "\n";
    return 3;
  }
  std::cout << *r.tagged << "\n";
  return ex_ok;
}

int cmd_verify(const Options& o) {
  if (o.args.size() != 1) usage_error("verify takes exactly one ADDRESS");
  const conf::KeyFile f = load_or_exit(o, false);
  const crypto::Keyring ring = ring_or_exit(o, f);
  const auto r = crypto::verify(ring, strip_brackets(o.args[0]), o.now, o.prvs);
  std::cout << crypto::to_string(r.verdict);
  if (!r.original.empty()) std::cout << " " << r.original;
  std::cout << "\n";
  switch (r.verdict) {
    case crypto::Verdict::valid: return 0;
    case crypto::Verdict::bad_signature: return 1;
    case crypto::Verdict::expired: return 2;
    case crypto::Verdict::unknown_key: return 3;
    case crypto::Verdict::malformed:
    case crypto::Verdict::untagged: return 4;
  }
  return 4;
}

}  // namespace

int main(int argc, char** argv) {
  // Before any key is read or made: no core dump and no same-user ptrace of the secrets.
  if (const std::string err = crypto::forbid_core_dumps(); !err.empty())
    std::cerr << "batv-keys: warning: " << err << "\n";
  const Options o = parse_args(argc, argv);
  if (o.command == "rotate") return cmd_rotate(o);
  if (o.command == "import") return cmd_import(o);
  if (o.command == "list") return cmd_list(o);
  if (o.command == "retire") return cmd_retire(o, false);
  if (o.command == "prune") return cmd_retire(o, true);
  if (o.command == "sign") return cmd_sign(o);
  if (o.command == "verify") return cmd_verify(o);
  usage_error("unknown command '" + o.command + "'");
}
