#include "conf/keyfile.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <toml++/toml.h>

#include "conf/timefmt.hpp"

namespace batv::conf {

std::string_view to_string(KeyState s) {
  switch (s) {
    case KeyState::signing: return "signing";
    case KeyState::verify: return "verify";
    case KeyState::staged: return "staged";
  }
  return "verify";
}

const KeyRecord* KeyFile::find(int id) const {
  for (const auto& k : keys)
    if (k.id == id) return &k;
  return nullptr;
}
KeyRecord* KeyFile::find(int id) {
  return const_cast<KeyRecord*>(static_cast<const KeyFile*>(this)->find(id));
}
const KeyRecord* KeyFile::signer() const {
  for (const auto& k : keys)
    if (k.state == KeyState::signing) return &k;
  return nullptr;
}
KeyRecord* KeyFile::signer() {
  return const_cast<KeyRecord*>(static_cast<const KeyFile*>(this)->signer());
}
const KeyRecord* KeyFile::staged() const {
  for (const auto& k : keys)
    if (k.state == KeyState::staged) return &k;
  return nullptr;
}
KeyRecord* KeyFile::staged() {
  return const_cast<KeyRecord*>(static_cast<const KeyFile*>(this)->staged());
}

bool KeyFile::settle(std::int64_t now) {
  KeyRecord* next = staged();
  if (!next || !next->activate_at || *next->activate_at > now) return false;
  const std::int64_t at = *next->activate_at;
  if (KeyRecord* old = signer()) {
    old->state = KeyState::verify;
    old->stopped_signing = at;
  }
  next->state = KeyState::signing;
  next->activate_at.reset();
  return true;
}

// --- base64 ----------------------------------------------------------------------------------------

namespace {
constexpr char b64_alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
int b64_value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}
}  // namespace

std::string base64_encode(std::span<const std::uint8_t> in) {
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 3 <= in.size(); i += 3) {
    const unsigned v = in[i] << 16 | in[i + 1] << 8 | in[i + 2];
    out += b64_alphabet[v >> 18 & 63];
    out += b64_alphabet[v >> 12 & 63];
    out += b64_alphabet[v >> 6 & 63];
    out += b64_alphabet[v & 63];
  }
  if (in.size() - i == 1) {
    const unsigned v = in[i] << 16;
    out += b64_alphabet[v >> 18 & 63];
    out += b64_alphabet[v >> 12 & 63];
    out += "==";
  } else if (in.size() - i == 2) {
    const unsigned v = in[i] << 16 | in[i + 1] << 8;
    out += b64_alphabet[v >> 18 & 63];
    out += b64_alphabet[v >> 12 & 63];
    out += b64_alphabet[v >> 6 & 63];
    out += '=';
  }
  return out;
}

long base64_decode(std::string_view text, std::span<std::uint8_t> out) {
  // Strip padding; at most two "=".
  std::size_t end = text.size();
  int pad = 0;
  while (end > 0 && text[end - 1] == '=' && pad < 2) {
    --end;
    ++pad;
  }
  if (pad > 0 && text.size() % 4 != 0) return -1;
  if (end % 4 == 1) return -1;
  std::size_t n = 0;
  unsigned acc = 0;
  int bits = 0;
  for (std::size_t i = 0; i < end; ++i) {
    const int v = b64_value(text[i]);
    if (v < 0) return -1;
    acc = (acc << 6 | static_cast<unsigned>(v)) & 0xFFFFFF;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      if (n >= out.size()) return -1;
      out[n++] = static_cast<std::uint8_t>(acc >> bits & 0xFF);
    }
  }
  // Non-canonical trailing bits (e.g. "QR==" instead of "QQ==") are refused.
  if (bits > 0 && (acc & ((1u << bits) - 1)) != 0) return -1;
  return static_cast<long>(n);
}

// --- parsing ---------------------------------------------------------------------------------------

namespace {

struct Ctx {
  const std::string& name;
  std::vector<ConfigError>& errors;
  void add(const toml::source_region& where, std::string key, std::string message) const {
    errors.push_back(ConfigError{name, static_cast<int>(where.begin.line),
                                 static_cast<int>(where.begin.column), std::move(key),
                                 std::move(message)});
  }
};

std::string_view type_name(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a float";
    case toml::node_type::boolean: return "a boolean";
    case toml::node_type::date: return "a date";
    case toml::node_type::time: return "a time";
    case toml::node_type::date_time: return "a date-time";
    case toml::node_type::array: return "an array";
    case toml::node_type::table: return "a table";
    default: return "nothing";
  }
}

std::optional<std::int64_t> to_unix(const toml::date_time& dt) {
  if (!dt.offset) return std::nullopt;  // a local date-time has no defined instant
  return days_from_civil(dt.date.year, dt.date.month, dt.date.day) * 86400 +
         dt.time.hour * 3600 + dt.time.minute * 60 + dt.time.second -
         static_cast<std::int64_t>(dt.offset->minutes) * 60;
}

std::optional<std::int64_t> read_time(const Ctx& c, const toml::node& n, const std::string& key) {
  const auto* dt = n.as_date_time();
  if (!dt) {
    c.add(n.source(), key,
          std::string("expected a date-time like 2026-11-23T09:00:00Z, got ") +
              std::string(type_name(n)));
    return std::nullopt;
  }
  auto t = to_unix(dt->get());
  if (!t) c.add(n.source(), key, "date-time needs a UTC offset (end it with Z)");
  return t;
}

// toml++ quotes the input in some parse errors ("'3141...' is not representable in 64 bits",
// "expected 'true', saw 'tr'"); in a key file that input can be a secret (say, one whose base64
// is all digits, written without quotes). Every quoted span is replaced by '...': the file, line
// and column still point at the spot. An unbalanced quote drops the rest of the text.
std::string without_quoted_input(std::string_view description) {
  std::string out;
  bool quoted = false;
  for (char ch : description) {
    if (ch == '\'') {
      if (!quoted) out += "'...'";
      quoted = !quoted;
    } else if (!quoted) {
      out += ch;
    }
  }
  return out;
}

}  // namespace

KeyFileLoad parse_keyfile(std::string_view text, const std::string& name, bool allow_empty) {
  KeyFileLoad out;
  Ctx c{name, out.errors};
  toml::table root;
  try {
    root = toml::parse(text, name);
  } catch (const toml::parse_error& e) {
    out.errors.push_back(ConfigError{name, static_cast<int>(e.source().begin.line),
                                     static_cast<int>(e.source().begin.column), "",
                                     escape_nonprintable(without_quoted_input(e.description()))});
    return out;
  }
  KeyFile file;
  for (const auto& [k, v] : root) {
    if (k.str() != "key") c.add(v.source(), escape_nonprintable(k.str()), "unknown key (expected [[key]] tables)");
  }
  const toml::node* keys_node = root.get("key");
  const toml::array* arr = keys_node ? keys_node->as_array() : nullptr;
  if (keys_node && (!arr || !arr->is_array_of_tables())) {
    c.add(keys_node->source(), "key", "expected [[key]] tables");
    arr = nullptr;
  }
  int signing_seen = -1;
  int staged_seen = -1;
  if (arr) {
    std::size_t idx = 0;
    for (const toml::node& item : *arr) {
      const toml::table& t = *item.as_table();
      const std::string base = "key[" + std::to_string(idx++) + "]";
      KeyRecord rec;
      bool ok = true;
      for (const auto& [k, v] : t) {
        const std::string_view ks = k.str();
        if (ks != "id" && ks != "secret" && ks != "state" && ks != "created" &&
            ks != "stopped_signing" && ks != "activate_at") {
          c.add(v.source(), base + "." + escape_nonprintable(ks), "unknown key");
          ok = false;
        }
      }
      // id
      if (const toml::node* n = t.get("id")) {
        const auto* iv = n->as_integer();
        if (!iv) {
          c.add(n->source(), base + ".id", "expected an integer 0-9, got " + std::string(type_name(*n)));
          ok = false;
        } else if (iv->get() < 0 || iv->get() > 9) {
          c.add(n->source(), base + ".id",
                "key id " + std::to_string(iv->get()) + " is out of range 0-9");
          ok = false;
        } else {
          rec.id = static_cast<int>(iv->get());
          if (file.find(rec.id)) {
            c.add(n->source(), base + ".id", "key id " + std::to_string(rec.id) + " is used twice");
            ok = false;
          }
        }
      } else {
        c.add(t.source(), base + ".id", "missing (an integer 0-9)");
        ok = false;
      }
      // state
      if (const toml::node* n = t.get("state")) {
        const auto* sv = n->as_string();
        if (sv && sv->get() == "signing") {
          rec.state = KeyState::signing;
          if (signing_seen >= 0) {
            c.add(n->source(), base + ".state",
                  "a second signing key (key " + std::to_string(signing_seen) +
                      " signs already); exactly one key may have state \"signing\"");
            ok = false;
          }
          signing_seen = rec.id;
        } else if (sv && sv->get() == "verify") {
          rec.state = KeyState::verify;
        } else if (sv && sv->get() == "staged") {
          rec.state = KeyState::staged;
          if (staged_seen >= 0) {
            c.add(n->source(), base + ".state",
                  "a second staged key (key " + std::to_string(staged_seen) +
                      " is staged already); at most one key may wait to sign");
            ok = false;
          }
          staged_seen = rec.id;
        } else {
          c.add(n->source(), base + ".state", "expected \"signing\", \"verify\" or \"staged\"");
          ok = false;
        }
      } else {
        c.add(t.source(), base + ".state", "missing (\"signing\", \"verify\" or \"staged\")");
        ok = false;
      }
      // secret: errors never echo the value.
      if (const toml::node* n = t.get("secret")) {
        const auto* sv = n->as_string();
        if (!sv) {
          c.add(n->source(), base + ".secret", "expected a base64 string, got " + std::string(type_name(*n)));
          ok = false;
        } else {
          std::array<std::uint8_t, crypto::Secret::max_size> buf{};
          const long len = base64_decode(sv->get(), buf);
          if (len < 0) {
            c.add(n->source(), base + ".secret",
                  "not valid base64, or longer than 64 bytes once decoded");
            ok = false;
          } else if (len == 0) {
            c.add(n->source(), base + ".secret", "empty secret (1-64 bytes required)");
            ok = false;
          } else {
            rec.secret = crypto::Secret(std::span<const std::uint8_t>(buf.data(), static_cast<std::size_t>(len)));
          }
          explicit_bzero(buf.data(), buf.size());
        }
      } else {
        c.add(t.source(), base + ".secret", "missing (base64 of 1-64 bytes)");
        ok = false;
      }
      // created
      if (const toml::node* n = t.get("created")) {
        if (auto v = read_time(c, *n, base + ".created")) rec.created = *v; else ok = false;
      } else {
        c.add(t.source(), base + ".created", "missing (a date-time like 2026-11-23T09:00:00Z)");
        ok = false;
      }
      // stopped_signing: required on verify keys, refused on the signing and the staged key.
      const std::optional<std::string> state_text = t["state"].value<std::string>();
      if (const toml::node* n = t.get("stopped_signing")) {
        if (state_text == "signing" || state_text == "staged") {
          c.add(n->source(), base + ".stopped_signing",
                "a " + *state_text + " key has no stopped_signing time");
          ok = false;
        } else if (auto v = read_time(c, *n, base + ".stopped_signing")) {
          rec.stopped_signing = *v;
        } else {
          ok = false;
        }
      } else if (state_text == "verify") {
        c.add(t.source(), base + ".stopped_signing",
              "missing: a verify key records when it stopped signing");
        ok = false;
      }
      // activate_at: required on the staged key, refused on every other.
      if (const toml::node* n = t.get("activate_at")) {
        if (state_text != "staged") {
          c.add(n->source(), base + ".activate_at",
                "only a staged key has an activate_at time (state = \"staged\")");
          ok = false;
        } else if (auto v = read_time(c, *n, base + ".activate_at")) {
          rec.activate_at = *v;
        } else {
          ok = false;
        }
      } else if (state_text == "staged") {
        c.add(t.source(), base + ".activate_at",
              "missing: a staged key records when it starts signing");
        ok = false;
      }
      if (ok) file.keys.push_back(std::move(rec));
    }
  }
  if (out.errors.empty()) {
    if (file.keys.empty() && !allow_empty) {
      c.add(root.source(), "key", "no keys (create one with: batv-keys --keys FILE rotate)");
    } else if (!file.keys.empty() && !file.signer()) {
      c.add(root.source(), "key", "no signing key: exactly one key must have state \"signing\"");
    } else if (const KeyRecord* st = file.staged(); st && st->activate_at && st->created > *st->activate_at) {
      c.add(root.source(), "key", "key " + std::to_string(st->id) +
                                      ": activate_at is before its created time");
    }
  }
  if (out.errors.empty()) {
    out.status = KeyFileStatus::ok;
    out.file = std::move(file);
  }
  return out;
}

KeyFileLoad load_keyfile(const std::string& path, bool allow_empty) {
  KeyFileLoad out;
  auto fail = [&](KeyFileStatus st, std::string msg) {
    out.status = st;
    out.errors.push_back(ConfigError{path, 0, 0, "", std::move(msg)});
    return std::move(out);
  };
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    const int e = errno;
    if (e == ENOENT) return fail(KeyFileStatus::missing, "no such key file");
    return fail(KeyFileStatus::io_error, std::string("cannot open key file: ") + std::strerror(e));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return fail(KeyFileStatus::unsafe, "not a regular file");
  }
  if ((st.st_mode & 077) != 0) {
    ::close(fd);
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return fail(KeyFileStatus::unsafe,
                std::string("permissions ") + mode +
                    " are too open: a key file must not be accessible by group or others "
                    "(fix: chmod 600 " + path + ")");
  }
  // Key files are tiny (ten keys); anything large is not ours.
  constexpr off_t max_size = 64 * 1024;
  if (st.st_size > max_size) {
    ::close(fd);
    return fail(KeyFileStatus::invalid, "larger than 64 KiB: not a key file");
  }
  std::string text(static_cast<std::size_t>(st.st_size), '\0');
  std::size_t got = 0;
  while (got < text.size()) {
    const ssize_t n = ::read(fd, text.data() + got, text.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<std::size_t>(n);
  }
  ::close(fd);
  text.resize(got);
  out = parse_keyfile(text, path, allow_empty);
  explicit_bzero(text.data(), text.size());
  return out;
}

std::string serialize_keyfile(const KeyFile& file) {
  std::vector<const KeyRecord*> sorted;
  for (const auto& k : file.keys) sorted.push_back(&k);
  std::sort(sorted.begin(), sorted.end(),
            [](const KeyRecord* a, const KeyRecord* b) { return a->id < b->id; });
  std::string out =
      "# batv-relay key file, written by batv-keys. Keep it mode 0600.\n"
      "# One [[key]] per key: id 0-9, base64 secret, state signing|verify|staged.\n";
  for (const KeyRecord* k : sorted) {
    out += "\n[[key]]\n";
    out += "id = " + std::to_string(k->id) + "\n";
    out += "state = \"" + std::string(to_string(k->state)) + "\"\n";
    std::string b64 = base64_encode(k->secret.bytes());
    out += "secret = \"" + b64 + "\"\n";
    explicit_bzero(b64.data(), b64.size());
    out += "created = " + format_utc(k->created) + "\n";
    if (k->stopped_signing) out += "stopped_signing = " + format_utc(*k->stopped_signing) + "\n";
    if (k->activate_at) out += "activate_at = " + format_utc(*k->activate_at) + "\n";
  }
  return out;
}

namespace {
std::string dir_of(const std::string& path) {
  auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}
}  // namespace

bool write_keyfile_atomic(const std::string& path, const KeyFile& file, std::string& error) {
  std::string text = serialize_keyfile(file);
  std::string tmp = path + ".tmp.XXXXXX";
  auto wipe = [&] { explicit_bzero(text.data(), text.size()); };
  const int fd = ::mkostemp(tmp.data(), O_CLOEXEC);
  if (fd < 0) {
    error = "cannot create a temporary file beside " + path + ": " + std::strerror(errno);
    wipe();
    return false;
  }
  bool ok = ::fchmod(fd, 0600) == 0;
  // Keep the owner of the file being replaced: root rotating a key file that belongs to the
  // relay's own user must not leave the relay unable to read the new one. (EPERM when not root
  // and the owner differs: then the file keeps ours, as any other write would.)
  struct stat old {};
  if (ok && ::stat(path.c_str(), &old) == 0 && (old.st_uid != ::geteuid() || old.st_gid != ::getegid()))
    if (::fchown(fd, old.st_uid, old.st_gid) != 0) {
      // Not root and the owner differs (EPERM): the new file keeps ours, as explained above.
    }
  std::size_t done = 0;
  while (ok && done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) ok = false; else done += static_cast<std::size_t>(n);
  }
  ok = ok && ::fsync(fd) == 0;
  const int saved = errno;
  ok = (::close(fd) == 0) && ok;
  wipe();
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
    error = "cannot write " + path + ": " + std::strerror(ok ? errno : saved);
    ::unlink(tmp.c_str());
    return false;
  }
  // Make the rename itself durable.
  const int dfd = ::open(dir_of(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return true;
}

KeyFileLock::KeyFileLock(const std::string& path) {
  const std::string lock = path + ".lock";
  fd_ = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd_ < 0) {
    error_ = "cannot open lock file " + lock + ": " + std::strerror(errno);
    return;
  }
  if (::flock(fd_, LOCK_EX) != 0) {
    error_ = "cannot lock " + lock + ": " + std::strerror(errno);
    ::close(fd_);
    fd_ = -1;
  }
}

KeyFileLock::~KeyFileLock() {
  if (fd_ >= 0) ::close(fd_);
}

}  // namespace batv::conf
