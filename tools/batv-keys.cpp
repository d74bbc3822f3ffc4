// batv-keys: the key-lifecycle and offline sign/verify CLI.
//
// Arguments follow the conventions of a Unix command (CLI11): global options (--keys, --config,
// --domain, --now) before or after the command, per-command options and help (batv-keys sign --help),
// --opt=value, "--" ends the options (sign -- -alice@example.com), an option a command does not
// take is refused, and a usage error is one line ending in "try ... --help".
//
// Exit codes (<sysexits.h> for errors): 0 success (verify: valid); 1 refused (rotate with all
// ids used or while a key is staged, retire while tags can still be valid, import over an
// existing id, promote of a key that is not staged); verify: 1 bad_signature, 2 expired,
// 3 unknown_key, 4 malformed or untagged; sign: 3 not signed; 64 usage (EX_USAGE); 65 bad data,
// key file content or the secret on stdin (EX_DATAERR); 66 missing key file (EX_NOINPUT);
// 73 cannot write or lock (EX_CANTCREAT); 74 I/O error (EX_IOERR); 77 permissions too open
// (EX_NOPERM); 78 --config file errors (EX_CONFIG).
// Never prints a secret: keys are shown by id, state, dates and a fingerprint.
#include <sysexits.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <iostream>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "conf/config.hpp"
#include "conf/keyfile.hpp"
#include "conf/limits.hpp"
#include "conf/net.hpp"
#include "conf/timefmt.hpp"
#include "crypto/keyring.hpp"
#include "crypto/no_dump.hpp"
#include "crypto/prvs.hpp"

namespace {

using namespace batv;

constexpr int ex_ok = 0, ex_refused = 1;
// A retired key's tags stay valid to the end of their expiry day; the margin covers clock skew
// between relays and mail that reaches us a little late.
constexpr int default_margin_days = 1;
constexpr int max_margin_days = 365;

struct Options {
  std::string keys;
  std::string config;
  std::string domain;  // --domain: the ring of this domain in --config
  std::string command;
  std::string address;  // sign / verify
  std::optional<int> id;
  std::string at_text;  // rotate --at
  bool signing = false, force = false, json = false;
  std::int64_t now = 0;
  std::optional<std::int64_t> at;  // rotate --at, resolved against now
  crypto::PrvsParams prvs;
  int margin_days = default_margin_days;
};

[[noreturn]] void usage_error(std::string_view context, const std::string& msg) {
  std::string line = msg;
  std::replace(line.begin(), line.end(), '\n', ' ');
  std::cerr << "batv-keys: " << (context.empty() ? "" : std::string(context) + ": ") << line
            << "; try batv-keys " << (context.empty() ? "" : std::string(context) + " ")
            << "--help\n";
  std::exit(EX_USAGE);
}

// The key file of the [[domain_keys]] entry that lists `domain` (lowercase), as the relay picks
// it (relay/policy.hpp Keyrings: exact match); nullptr for the default ring.
const std::string* ring_file(const conf::Config& cfg, const std::string& domain) {
  for (const auto& dk : cfg.domain_keys)
    if (std::find(dk.domains.begin(), dk.domains.end(), domain) != dk.domains.end()) return &dk.key_file;
  return nullptr;
}

// Parses the command line into Options or exits: 0 after --help/--version, 64 on a usage error,
// 78 when --config does not load.
Options parse_args(int argc, char** argv) {
  Options o;
  o.now = static_cast<std::int64_t>(std::time(nullptr));
  std::string now_text, hash_text;
  std::optional<int> lifetime;

  CLI::App app{"BATV key lifecycle (rotate, stage, promote, import, list, retire, prune) and\n"
               "offline prvs sign/verify for batv-relay key files.",
               "batv-keys"};
  app.footer(
      "Exit codes: 0 ok; 1 refused; verify 1-4 bad_signature/expired/unknown_key/malformed;\n"
      "sign 3 not signed; 64 usage; 65 bad data; 66 no key file; 73 cannot write;\n"
      "74 I/O error; 77 key file permissions too open; 78 bad --config file.\n");
  app.set_version_flag("--version", std::string("batv-keys ") + BATV_VERSION);
  app.require_subcommand(1, 1);
  app.add_option("--keys", o.keys, "the key file")->type_name("FILE");
  app.add_option("--config", o.config,
                 "take key_file, lifetime_days and hash from this batv-relay config")
      ->type_name("RELAY.toml");
  app.add_option("--domain", o.domain,
                 "with --config: the key file of this domain's keyring ([[domain_keys]], else "
                 "key_file); sign and verify pick it from the address by themselves")
      ->type_name("D");
  app.add_option("--now", now_text,
                 "the clock: unix seconds or ISO-8601 UTC (2023-11-14T22:13:20Z); default: now")
      ->type_name("T");

  // Options of some commands, each added to exactly those commands.
  auto add_lifetime = [&](CLI::App* sub) {
    sub->add_option("--lifetime", lifetime, "tag lifetime in days, 1-30 (default 7, or the config's lifetime_days)")
        ->type_name("DAYS")
        ->check(CLI::Range(crypto::PrvsParams::min_lifetime_days, crypto::PrvsParams::max_lifetime_days));
  };
  auto add_margin = [&](CLI::App* sub) {
    sub->add_option("--margin", o.margin_days,
                    "extra days before a retired key is safe to remove (default 1)")
        ->type_name("DAYS")
        ->check(CLI::Range(0, max_margin_days));
  };
  auto add_hash = [&](CLI::App* sub) {
    sub->add_option("--hash", hash_text, "exact | lowercase-local (default exact, or the config's hash)")
        ->type_name("MODE")
        ->check(CLI::IsMember({"exact", "lowercase-local"}));
  };
  auto add_id = [&](CLI::App* sub, const char* what) {
    sub->add_option("--id", o.id, what)->type_name("N")->required()->check(CLI::Range(0, 9));
  };

  std::vector<CLI::App*> subs;
  auto command = [&](const char* name, const char* what) {
    CLI::App* sub = app.add_subcommand(name, what);
    sub->fallthrough();  // global options may follow the command too
    subs.push_back(sub);
    return sub;
  };
  CLI::App* rotate = command("rotate", "add a new random key; it signs at once, or from --at T");
  rotate->add_option("--at", o.at_text,
                     "stage the key: it verifies now and signs from T (unix seconds, ISO-8601 UTC, "
                     "or +90s/+30m/+2h/+1d from now); the signing key signs until then")
      ->type_name("T");
  add_lifetime(rotate);
  add_margin(rotate);
  CLI::App* promote = command("promote", "make the staged key the signing key now");
  add_id(promote, "the staged key");
  CLI::App* import = command("import", "add a key whose secret is read from standard input");
  add_id(import, "its id, 0-9");
  import->add_flag("--signing", o.signing, "make it the signing key");
  CLI::App* list = command("list", "show keys (never the secrets)");
  list->add_flag("--json", o.json, "as a JSON array");
  add_lifetime(list);
  add_margin(list);
  CLI::App* retire = command("retire", "remove a verify-only key once its tags have expired");
  add_id(retire, "the key");
  retire->add_flag("--force", o.force, "even while its tags can still be valid");
  add_lifetime(retire);
  add_margin(retire);
  CLI::App* prune = command("prune", "retire every key that is safe to retire");
  add_lifetime(prune);
  add_margin(prune);
  CLI::App* sign = command("sign", "print the prvs-tagged address");
  CLI::App* verify = command("verify", "print the verdict and the original address");
  for (CLI::App* sub : {sign, verify}) {
    sub->add_option("ADDRESS", o.address, "the address (use -- before one that starts with -)")
        ->required();
    add_lifetime(sub);
    add_hash(sub);
  }

  // Before the command too (batv-keys --lifetime 30 sign ..., as scripts wrote it before the
  // per-command options): hidden here, and refused below for a command that does not take them.
  const std::vector<std::string> early = {"--lifetime", "--margin", "--hash"};
  app.add_option("--lifetime", lifetime)->group("")->check(
      CLI::Range(crypto::PrvsParams::min_lifetime_days, crypto::PrvsParams::max_lifetime_days));
  app.add_option("--margin", o.margin_days)->group("")->check(CLI::Range(0, max_margin_days));
  app.add_option("--hash", hash_text)->group("")->check(CLI::IsMember({"exact", "lowercase-local"}));

  auto context = [&]() -> std::string {
    const auto got = app.get_subcommands();
    return got.empty() ? std::string() : got.front()->get_name();
  };
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    std::exit(app.exit(e));
  } catch (const CLI::CallForAllHelp& e) {
    std::exit(app.exit(e));
  } catch (const CLI::CallForVersion& e) {
    std::exit(app.exit(e));
  } catch (const CLI::RequiredError& e) {
    // Words CLI11 could not place, in command-line order: the likely culprit.
    std::vector<std::string> left = app.remaining();
    if (context().empty()) {
      if (!left.empty() && left.front().rfind('-', 0) != 0)
        usage_error("", "unknown command '" + left.front() + "'");
      usage_error("", "no command (rotate, promote, import, list, retire, prune, sign or verify)");
    }
    std::string msg = e.what();
    if (!left.empty()) msg += " (and '" + left.front() + "' is not an option of " + context() + ")";
    if (context() == "sign" || context() == "verify")
      msg += "; an ADDRESS that starts with - goes after --";
    usage_error(context(), msg);
  } catch (const CLI::ExtrasError&) {
    // A word CLI11 could not place: an unknown command, an option of another command, or one
    // argument too many. Name the first one and the command.
    const std::vector<std::string> left = app.remaining();
    const std::string word = left.empty() ? std::string("?") : left.front();
    if (context().empty()) usage_error("", "unknown command '" + word + "'");
    usage_error(context(), word.rfind('-', 0) == 0
                               ? word + " is not an option of " + context()
                               : "unexpected argument '" + word + "'");
  } catch (const CLI::ParseError& e) {
    usage_error(context(), e.what());
  }
  o.command = context();
  const CLI::App* chosen = app.get_subcommands().front();
  for (const std::string& name : early)
    if (app.count(name) > 0 && chosen->get_option_no_throw(name) == nullptr)
      usage_error(o.command, name + " does not apply to " + o.command);
  if (!now_text.empty()) {
    auto t = conf::parse_time(now_text);
    if (!t) usage_error("", "--now wants unix seconds or an ISO-8601 UTC time, got '" + now_text + "'");
    o.now = *t;
  }
  if (o.command == "rotate" && rotate->count("--at") > 0) {
    auto t = conf::parse_time_or_offset(o.at_text, o.now);
    if (!t)
      usage_error("rotate", "--at wants unix seconds, an ISO-8601 UTC time or +N followed by s, m, h "
                            "or d, got '" + o.at_text + "'");
    if (*t <= o.now)
      usage_error("rotate", "--at " + conf::format_utc(*t) + " is not in the future (now is " +
                                conf::format_utc(o.now) + "); rotate without --at switches at once");
    if (*t - o.now > conf::fixed::max_key_activation_delay_seconds)
      usage_error("rotate", "--at " + conf::format_utc(*t) + " is more than " +
                                std::to_string(conf::fixed::max_key_activation_delay_seconds / 86400) +
                                " days ahead; stage a key for when the key file has reached every relay");
    o.at = *t;
  }
  if (!o.domain.empty() && o.config.empty())
    usage_error(o.command, "--domain needs --config RELAY.toml (the config names each domain's key file)");
  if (o.keys.empty() && o.config.empty())
    usage_error(o.command, "--keys FILE (or --config RELAY.toml) is required");
  if (!o.domain.empty() && !o.keys.empty())
    usage_error(o.command, "--domain and --keys exclude each other: --domain picks the key file from --config");
  if (!o.config.empty()) {
    auto loaded = conf::load_config_file(o.config);
    if (!loaded.config) {
      for (const auto& e : loaded.errors) std::cerr << "batv-keys: " << conf::format(e) << "\n";
      std::exit(EX_CONFIG);
    }
    const conf::Config& cfg = *loaded.config;
    if (!o.domain.empty()) {
      std::string why;
      const auto d = conf::normalize_domain(o.domain, &why);
      if (!d) usage_error(o.command, "--domain '" + o.domain + "': " + why);
      auto listed = [&](const std::vector<std::string>& l) { return std::find(l.begin(), l.end(), *d) != l.end(); };
      const std::string* file = ring_file(cfg, *d);
      // A domain the relay does not serve would silently act on the default ring: a typo in
      // "--domain custmer.example rotate" must not rotate every other customer's key.
      if (!file && !listed(cfg.domains.sign) && !listed(cfg.domains.verify))
        usage_error(o.command, "--domain " + *d + " is in neither domains.sign, domains.verify nor any "
                               "[[domain_keys]] of " + o.config);
      o.keys = file ? *file : cfg.key_file;
    } else if (o.keys.empty() && (o.command == "sign" || o.command == "verify")) {
      // The ring the relay would use for this address: its domain's [[domain_keys]] entry.
      const auto at = o.address.rfind('@');
      const std::string* file = nullptr;
      if (at != std::string::npos) {
        std::string domain = o.address.substr(at + 1);
        if (!domain.empty() && domain.back() == '>') domain.pop_back();
        if (auto d = conf::normalize_domain(domain)) file = ring_file(cfg, *d);
      }
      o.keys = file ? *file : cfg.key_file;
    }
    if (o.keys.empty()) o.keys = loaded.config->key_file;
    o.prvs.lifetime_days = loaded.config->lifetime_days;
    o.prvs.hash = loaded.config->hash == conf::HashSetting::lowercase_local
                      ? crypto::HashMode::lowercase_local
                      : crypto::HashMode::exact;
  }
  if (lifetime) o.prvs.lifetime_days = *lifetime;
  if (!hash_text.empty())
    o.prvs.hash = hash_text == "lowercase-local" ? crypto::HashMode::lowercase_local : crypto::HashMode::exact;
  return o;
}

int exit_for(conf::KeyFileStatus s) {
  switch (s) {
    case conf::KeyFileStatus::ok: return ex_ok;
    case conf::KeyFileStatus::missing: return EX_NOINPUT;
    case conf::KeyFileStatus::unsafe: return EX_NOPERM;
    case conf::KeyFileStatus::io_error: return EX_IOERR;
    case conf::KeyFileStatus::invalid: return EX_DATAERR;
  }
  return EX_DATAERR;
}

// Loads the key file or exits with its errors. `allow_missing` gives an empty file instead.
// The file comes back settled at --now: a staged key whose time has come is the signing key.
conf::KeyFile load_or_exit(const Options& o, bool allow_missing) {
  auto r = conf::load_keyfile(o.keys, allow_missing);
  if (r.status == conf::KeyFileStatus::missing && allow_missing) return {};
  if (!r.file) {
    for (const auto& e : r.errors) std::cerr << "batv-keys: " << conf::format(e) << "\n";
    std::exit(exit_for(r.status));
  }
  r.file->settle(o.now);
  return std::move(*r.file);
}

void save_or_exit(const Options& o, const conf::KeyFile& f) {
  std::string err;
  if (!conf::write_keyfile_atomic(o.keys, f, err)) {
    std::cerr << "batv-keys: " << err << "\n";
    std::exit(EX_CANTCREAT);
  }
}

crypto::Keyring ring_or_exit(const Options& o, const conf::KeyFile& f) {
  std::vector<crypto::KeyMaterial> mats;
  for (const auto& k : f.keys)
    mats.push_back({k.id, k.state == conf::KeyState::signing, k.secret.clone(), k.activate_at});
  std::string err;
  auto ring = crypto::Keyring::build(mats, err);
  if (!ring) {
    std::cerr << "batv-keys: " << o.keys << ": " << err << "\n";
    std::exit(EX_DATAERR);
  }
  return std::move(*ring);
}

// The first moment at which no tag signed by `k` can verify any more, plus the margin.
std::optional<std::int64_t> retirable_at(const Options& o, const conf::KeyRecord& k) {
  if (k.state != conf::KeyState::verify || !k.stopped_signing) return std::nullopt;
  // A tag signed at stopped_signing expires on day(stop) + lifetime and is valid all that day.
  const std::int64_t last_valid_day =
      crypto::day_number(*k.stopped_signing) + o.prvs.lifetime_days;
  return (last_valid_day + 1 + o.margin_days) * 86400;
}

std::string key_summary(const conf::KeyRecord& k) {
  return "key " + std::to_string(k.id) + " (" + crypto::fingerprint(k.secret) + ")";
}

// "in 6s", "in 2h 5m": how far ahead `t` is.
std::string in_words(std::int64_t t, std::int64_t now) {
  std::int64_t d = t - now;
  if (d <= 0) return "now";
  std::string out = "in";
  const std::pair<std::int64_t, const char*> units[] = {{86400, "d"}, {3600, "h"}, {60, "m"}, {1, "s"}};
  int shown = 0;
  for (const auto& [size, name] : units) {
    if (d >= size && shown < 2) {
      out += " " + std::to_string(d / size) + name;
      d %= size;
      ++shown;
    }
  }
  return out;
}

// Refuses (exit 1) a change of signer while a staged key waits: which of the two would sign at
// its time would be anyone's guess.
bool refuse_while_staged(const conf::KeyFile& f, std::string_view what) {
  const conf::KeyRecord* st = f.staged();
  if (!st) return false;
  std::cerr << "batv-keys: key " << st->id << " is staged (it signs from "
            << conf::format_utc(*st->activate_at) << "); " << what
            << " is refused while a key is staged: promote it (batv-keys promote --id " << st->id
            << ") or retire it (batv-keys retire --id " << st->id << ") first\n";
  return true;
}

int cmd_rotate(const Options& o) {
  conf::KeyFileLock lock(o.keys);
  if (!lock.ok()) {
    std::cerr << "batv-keys: " << lock.error() << "\n";
    return EX_CANTCREAT;
  }
  conf::KeyFile f = load_or_exit(o, true);
  if (refuse_while_staged(f, o.at ? "a second staged key" : "a rotation")) return ex_refused;
  conf::KeyRecord* old = f.signer();
  if (o.at && !old) {
    std::cerr << "batv-keys: the key file has no signing key yet, so there is nothing to sign until "
              << conf::format_utc(*o.at) << ": rotate without --at\n";
    return ex_refused;
  }
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
    return EX_IOERR;
  }
  conf::KeyRecord rec;
  rec.id = id;
  rec.secret = std::move(*secret);
  rec.created = o.now;
  const std::string made = key_summary(rec);
  if (o.at) {
    rec.state = conf::KeyState::staged;
    rec.activate_at = *o.at;
    const std::string signer = key_summary(*old);
    f.keys.push_back(std::move(rec));
    save_or_exit(o, f);
    std::cout << made << " is staged: it verifies now and signs from " << conf::format_utc(*o.at)
              << " (" << in_words(*o.at, o.now) << "); " << signer
              << " signs until then. Copy the key file to every relay before that.\n";
    return ex_ok;
  }
  std::string demoted;
  if (old) {
    old->state = conf::KeyState::verify;
    old->stopped_signing = o.now;
    demoted = key_summary(*old);
  }
  rec.state = conf::KeyState::signing;
  f.keys.push_back(std::move(rec));
  save_or_exit(o, f);
  std::cout << made << " is now the signing key";
  if (!demoted.empty()) std::cout << "; " << demoted << " now only verifies";
  std::cout << "\n";
  return ex_ok;
}

int cmd_promote(const Options& o) {
  conf::KeyFileLock lock(o.keys);
  if (!lock.ok()) {
    std::cerr << "batv-keys: " << lock.error() << "\n";
    return EX_CANTCREAT;
  }
  conf::KeyFile f = load_or_exit(o, false);
  conf::KeyRecord* k = f.find(*o.id);
  if (!k) {
    std::cerr << "batv-keys: there is no key " << *o.id << "\n";
    return ex_refused;
  }
  if (k->state != conf::KeyState::staged) {
    std::cerr << "batv-keys: key " << k->id << " is not staged (it is the "
              << (k->state == conf::KeyState::signing ? "signing key" : "verify key")
              << "); only a key added with rotate --at can be promoted\n";
    return ex_refused;
  }
  const std::string demoted = f.signer() ? key_summary(*f.signer()) : std::string();
  k->activate_at = o.now;
  f.settle(o.now);
  save_or_exit(o, f);
  std::cout << key_summary(*f.find(*o.id)) << " is now the signing key";
  if (!demoted.empty()) std::cout << "; " << demoted << " now only verifies";
  std::cout << "\n";
  return ex_ok;
}

int cmd_import(const Options& o) {
  // Exim secrets are strings; read raw bytes, at most a little more than the 64-byte limit.
  std::string in;
  char buf[256];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, stdin)) > 0) {
    in.append(buf, n);
    if (in.size() > 1024) break;
  }
  const bool read_failed = std::ferror(stdin) != 0;
  explicit_bzero(buf, sizeof buf);
  auto wipe = [&] { explicit_bzero(in.data(), in.size()); };
  if (read_failed) {
    std::cerr << "batv-keys: import: cannot read standard input: " << std::strerror(errno) << "\n";
    wipe();
    return EX_IOERR;
  }
  if (!in.empty() && in.back() == '\n') {
    in.pop_back();
    if (!in.empty() && in.back() == '\r') in.pop_back();
  }
  if (in.empty()) {
    std::cerr << "batv-keys: import: no secret on standard input\n";
    return EX_DATAERR;
  }
  if (in.size() > crypto::Secret::max_size) {
    std::cerr << "batv-keys: import: the secret is " << (in.size() > 1024 ? "over 1024" : std::to_string(in.size()))
              << " bytes; 64 is the limit (Exim's too)\n";
    wipe();
    return EX_DATAERR;
  }
  crypto::Secret secret{std::string_view(in)};
  wipe();
  conf::KeyFileLock lock(o.keys);
  if (!lock.ok()) {
    std::cerr << "batv-keys: " << lock.error() << "\n";
    return EX_CANTCREAT;
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
  if (o.signing && refuse_while_staged(f, "importing a signing key")) return ex_refused;
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
  auto opt_time = [](const std::optional<std::int64_t>& t) {
    return t ? json_string(conf::format_utc(*t)) : std::string("null");
  };
  if (o.json) {
    std::cout << "[";
    bool first = true;
    for (const auto* k : keys) {
      const auto at = retirable_at(o, *k);
      std::cout << (first ? "" : ",") << "\n  {\"id\": " << k->id
                << ", \"state\": " << json_string(conf::to_string(k->state))
                << ", \"created\": " << json_string(conf::format_utc(k->created))
                << ", \"stopped_signing\": " << opt_time(k->stopped_signing)
                << ", \"activate_at\": " << opt_time(k->activate_at)
                << ", \"retirable_after\": " << opt_time(at)
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
  if (const conf::KeyRecord* st = f.staged()) {
    std::printf("key %d signs from %s (%s); key %d signs until then\n", st->id,
                conf::format_utc(*st->activate_at).c_str(), in_words(*st->activate_at, o.now).c_str(),
                f.signer() ? f.signer()->id : -1);
  }
  return ex_ok;
}

int cmd_retire(const Options& o, bool prune) {
  conf::KeyFileLock lock(o.keys);
  if (!lock.ok()) {
    std::cerr << "batv-keys: " << lock.error() << "\n";
    return EX_CANTCREAT;
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
    // A staged key has never signed (its time has not come: load settled the file), so
    // retiring it cancels the staged rotation; relays that hold the old file keep verifying it.
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
  const conf::KeyFile f = load_or_exit(o, false);
  const crypto::Keyring ring = ring_or_exit(o, f);
  const auto r = crypto::sign(ring, strip_brackets(o.address), o.now, o.prvs);
  if (!r.tagged) {
    std::cout << "not signed: " << crypto::to_string(r.reason) << "\n";
    return 3;
  }
  std::cout << *r.tagged << "\n";
  return ex_ok;
}

int cmd_verify(const Options& o) {
  const conf::KeyFile f = load_or_exit(o, false);
  const crypto::Keyring ring = ring_or_exit(o, f);
  const auto r = crypto::verify(ring, strip_brackets(o.address), o.now, o.prvs);
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
  if (o.command == "promote") return cmd_promote(o);
  if (o.command == "import") return cmd_import(o);
  if (o.command == "list") return cmd_list(o);
  if (o.command == "retire") return cmd_retire(o, false);
  if (o.command == "prune") return cmd_retire(o, true);
  if (o.command == "sign") return cmd_sign(o);
  if (o.command == "verify") return cmd_verify(o);
  usage_error("", "unknown command '" + o.command + "'");
}
