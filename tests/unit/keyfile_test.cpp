// The key file: parsing, every error with its position, permissions, atomic writes, base64.
#include <doctest/doctest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "conf/keyfile.hpp"
#include "tests/unit/tempdir.hpp"

using namespace batv::conf;
namespace fs = std::filesystem;

namespace {

// "secretkey" in base64.
constexpr const char* good = R"(# two keys
[[key]]
id = 3
state = "signing"
secret = "c2VjcmV0a2V5"
created = 2023-11-14T22:13:20Z

[[key]]
id = 1
state = "verify"
secret = "b2xk"
created = 2023-01-01T00:00:00Z
stopped_signing = 2023-11-14T22:13:20+01:00
)";

std::string first_error(const KeyFileLoad& r) {
  return r.errors.empty() ? std::string("no error") : format(r.errors.front());
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

TEST_CASE("a valid key file parses") {
  const auto r = parse_keyfile(good, "keys.toml");
  REQUIRE_MESSAGE(r.status == KeyFileStatus::ok, first_error(r));
  REQUIRE(r.file->keys.size() == 2);
  const KeyRecord* k3 = r.file->find(3);
  REQUIRE(k3);
  CHECK(k3->state == KeyState::signing);
  CHECK(k3->created == 1700000000);
  CHECK_FALSE(k3->stopped_signing);
  CHECK(std::string_view(reinterpret_cast<const char*>(k3->secret.bytes().data()), k3->secret.size()) ==
        "secretkey");
  const KeyRecord* k1 = r.file->find(1);
  REQUIRE(k1);
  CHECK(k1->state == KeyState::verify);
  CHECK(k1->stopped_signing == 1700000000 - 3600);
  CHECK(r.file->signer() == k3);
}

TEST_CASE("key file errors name file, line, column and key, never the secret") {
  struct Case {
    const char* text;
    const char* want;
  };
  const Case cases[] = {
      {"[[key]]\nid = 3\nstate = \"signing\"\nsecret = \"c2VjcmV0a2V5\"\ncreated = 2023-11-14T22:13:20Z\ncolour = 1\n",
       "k.toml:6:10: key[0].colour: unknown key"},
      {"[[key]]\nid = 12\nstate = \"signing\"\nsecret = \"c2VjcmV0a2V5\"\ncreated = 2023-11-14T22:13:20Z\n",
       "k.toml:2:6: key[0].id: key id 12 is out of range 0-9"},
      {"[[key]]\nid = \"3\"\nstate = \"signing\"\nsecret = \"c2VjcmV0a2V5\"\ncreated = 2023-11-14T22:13:20Z\n",
       "k.toml:2:6: key[0].id: expected an integer 0-9, got a string"},
      {"[[key]]\nid = 3\nstate = \"primary\"\nsecret = \"c2VjcmV0a2V5\"\ncreated = 2023-11-14T22:13:20Z\n",
       "k.toml:3:9: key[0].state: expected \"signing\", \"verify\" or \"staged\""},
      {"[[key]]\nid = 3\nstate = \"signing\"\nsecret = \"c2VjcmV0a2V5!\"\ncreated = 2023-11-14T22:13:20Z\n",
       "k.toml:4:10: key[0].secret: not valid base64, or longer than 64 bytes once decoded"},
      {"[[key]]\nid = 3\nstate = \"signing\"\nsecret = \"\"\ncreated = 2023-11-14T22:13:20Z\n",
       "k.toml:4:10: key[0].secret: empty secret (1-64 bytes required)"},
      {"[[key]]\nid = 3\nstate = \"signing\"\ncreated = 2023-11-14T22:13:20Z\n",
       "k.toml:1:1: key[0].secret: missing (base64 of 1-64 bytes)"},
      {"[[key]]\nid = 3\nstate = \"signing\"\nsecret = \"c2VjcmV0a2V5\"\ncreated = 2023-11-14T22:13:20\n",
       "k.toml:5:11: key[0].created: date-time needs a UTC offset (end it with Z)"},
      {"[[key]]\nid = 3\nstate = \"signing\"\nsecret = \"c2VjcmV0a2V5\"\ncreated = \"yesterday\"\n",
       "k.toml:5:11: key[0].created: expected a date-time like 2026-11-23T09:00:00Z, got a string"},
      {"[[key]]\nid = 3\nstate = \"verify\"\nsecret = \"c2VjcmV0a2V5\"\ncreated = 2023-11-14T22:13:20Z\n",
       "k.toml:1:1: key[0].stopped_signing: missing: a verify key records when it stopped signing"},
      {"[[key]]\nid = 3\nstate = \"signing\"\nsecret = \"c2VjcmV0a2V5\"\ncreated = 2023-11-14T22:13:20Z\nstopped_signing = 2023-11-14T22:13:20Z\n",
       "k.toml:6:19: key[0].stopped_signing: a signing key has no stopped_signing time"},
      {"[[key]]\nid = 3\nstate = \"signing\"\nsecret = \"YQ==\"\ncreated = 2023-11-14T22:13:20Z\n"
       "[[key]]\nid = 3\nstate = \"verify\"\nsecret = \"YQ==\"\ncreated = 2023-11-14T22:13:20Z\nstopped_signing = 2023-11-14T22:13:20Z\n",
       "k.toml:7:6: key[1].id: key id 3 is used twice"},
      {"[[key]]\nid = 3\nstate = \"signing\"\nsecret = \"YQ==\"\ncreated = 2023-11-14T22:13:20Z\n"
       "[[key]]\nid = 4\nstate = \"signing\"\nsecret = \"YQ==\"\ncreated = 2023-11-14T22:13:20Z\n",
       "k.toml:8:9: key[1].state: a second signing key (key 3 signs already); exactly one key may have state \"signing\""},
      {"[[key]]\nid = 3\nstate = \"verify\"\nsecret = \"YQ==\"\ncreated = 2023-11-14T22:13:20Z\nstopped_signing = 2023-11-14T22:13:20Z\n",
       "k.toml:1:1: key: no signing key: exactly one key must have state \"signing\""},
      // Staged keys: activate_at only on them, required on them, at most one of them.
      {"[[key]]\nid = 3\nstate = \"signing\"\nsecret = \"YQ==\"\ncreated = 2023-11-14T22:13:20Z\nactivate_at = 2023-11-15T00:00:00Z\n",
       "k.toml:6:15: key[0].activate_at: only a staged key has an activate_at time (state = \"staged\")"},
      {"[[key]]\nid = 3\nstate = \"signing\"\nsecret = \"YQ==\"\ncreated = 2023-11-14T22:13:20Z\n"
       "[[key]]\nid = 4\nstate = \"staged\"\nsecret = \"YQ==\"\ncreated = 2023-11-14T22:13:20Z\n",
       "k.toml:6:1: key[1].activate_at: missing: a staged key records when it starts signing"},
      {"[[key]]\nid = 3\nstate = \"signing\"\nsecret = \"YQ==\"\ncreated = 2023-11-14T22:13:20Z\n"
       "[[key]]\nid = 4\nstate = \"staged\"\nsecret = \"YQ==\"\ncreated = 2023-11-14T22:13:20Z\nactivate_at = 2023-11-15\n",
       "k.toml:11:15: key[1].activate_at: expected a date-time like 2026-11-23T09:00:00Z, got a date"},
      {"[[key]]\nid = 3\nstate = \"signing\"\nsecret = \"YQ==\"\ncreated = 2023-11-14T22:13:20Z\n"
       "[[key]]\nid = 4\nstate = \"staged\"\nsecret = \"YQ==\"\ncreated = 2023-11-14T22:13:20Z\nactivate_at = 2023-11-15T00:00:00Z\n"
       "[[key]]\nid = 5\nstate = \"staged\"\nsecret = \"YQ==\"\ncreated = 2023-11-14T22:13:20Z\nactivate_at = 2023-11-16T00:00:00Z\n",
       "k.toml:14:9: key[2].state: a second staged key (key 4 is staged already); at most one key may wait to sign"},
      {"[[key]]\nid = 3\nstate = \"signing\"\nsecret = \"YQ==\"\ncreated = 2023-11-14T22:13:20Z\n"
       "[[key]]\nid = 4\nstate = \"staged\"\nsecret = \"YQ==\"\ncreated = 2023-11-14T22:13:20Z\nactivate_at = 2023-11-15T00:00:00Z\nstopped_signing = 2023-11-14T22:13:20Z\n",
       "k.toml:12:19: key[1].stopped_signing: a staged key has no stopped_signing time"},
      {"[[key]]\nid = 4\nstate = \"staged\"\nsecret = \"YQ==\"\ncreated = 2023-11-14T22:13:20Z\nactivate_at = 2023-11-15T00:00:00Z\n",
       "k.toml:1:1: key: no signing key: exactly one key must have state \"signing\""},
      {"[[key]]\nid = 3\nstate = \"signing\"\nsecret = \"YQ==\"\ncreated = 2023-11-14T22:13:20Z\n"
       "[[key]]\nid = 4\nstate = \"staged\"\nsecret = \"YQ==\"\ncreated = 2023-11-14T22:13:20Z\nactivate_at = 2023-11-13T00:00:00Z\n",
       "k.toml:1:1: key: key 4: activate_at is before its created time"},
      {"# nothing\n", "k.toml:1:1: key: no keys (create one with: batv-keys --keys FILE rotate)"},
      {"key = 1\n", "k.toml:1:7: key: expected [[key]] tables"},
      {"[[key]\n", "k.toml:1:7: "},
      {"version = 2\n[[key]]\nid = 3\nstate = \"signing\"\nsecret = \"YQ==\"\ncreated = 2023-11-14T22:13:20Z\n",
       "k.toml:1:11: version: unknown key (expected [[key]] tables)"},
      // Key names are the file's text: control bytes are escaped (found triaging fuzz_keyfile).
      {"\"\\u001b[2J\" = 1\n", "k.toml:1:15: \\x1b[2J: unknown key (expected [[key]] tables)"},
      {"[[key]]\n\"x\\u009by\" = 2\n", "k.toml:2:14: key[0].x\\xc2\\x9by: unknown key"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.text);
    const auto r = parse_keyfile(c.text, "k.toml");
    CHECK(r.status == KeyFileStatus::invalid);
    CHECK_FALSE(r.file);
    REQUIRE(!r.errors.empty());
    const std::string got = format(r.errors.front());
    CHECK_MESSAGE(got.starts_with(c.want), got);
    for (const auto& e : r.errors) CHECK(format(e).find("c2VjcmV0a2V5") == std::string::npos);
  }
}

TEST_CASE("key file TOML syntax errors do not quote the input: a bare-number secret stays out") {
  // toml++ quotes the digits of an integer too large for 64 bits; base64 can be all digits.
  const std::string digits = "3141592653589793238462643383279502884197";
  const auto r = parse_keyfile("[[key]]\nid = 3\nstate = \"signing\"\nsecret = " + digits +
                                   "\ncreated = 2023-11-14T22:13:20Z\n",
                               "k.toml");
  REQUIRE(r.errors.size() == 1);
  const std::string got = format(r.errors.front());
  CHECK_MESSAGE(got == "k.toml:4:50: Error while parsing decimal integer: '...' is not representable in 64 bits", got);
  for (const char* text : {"secret = tru3q2+7w==\n", "secret = \"abc\\qdef\"\n", "secret = 0x31415926535897932384626\n"}) {
    const auto e = parse_keyfile(std::string("[[key]]\n") + text, "k.toml");
    REQUIRE(e.errors.size() == 1);
    const std::string msg = format(e.errors.front());
    CAPTURE(text);
    CHECK_MESSAGE(msg.find("'...'") != std::string::npos, msg);
    for (const char* piece : {"tru", "\\q", "31415926"}) CHECK(msg.find(piece) == std::string::npos);
  }
}

TEST_CASE("all key file errors are reported together") {
  const auto r = parse_keyfile("[[key]]\nid = 12\nstate = \"x\"\nsecret = 5\ncreated = 1\n", "k.toml");
  CHECK(r.errors.size() == 4);
}

TEST_CASE("load_keyfile refuses a file that group or others can access") {
  batv::test::TempDir dir;
  const auto ok_path = dir.write("keys.toml", good);
  CHECK(load_keyfile(ok_path).status == KeyFileStatus::ok);
  for (auto mode : {fs::perms::group_read, fs::perms::others_read, fs::perms::group_write,
                    fs::perms::others_exec}) {
    const auto p = dir.write("open.toml", good, fs::perms::owner_read | fs::perms::owner_write | mode);
    const auto r = load_keyfile(p);
    CHECK(r.status == KeyFileStatus::unsafe);
    REQUIRE(!r.errors.empty());
    const std::string e = format(r.errors.front());
    CHECK_MESSAGE(e.find("are too open") != std::string::npos, e);
    CHECK_MESSAGE(e.find("chmod 600 " + p) != std::string::npos, e);
  }
  const auto missing = load_keyfile(dir.file("nope.toml"));
  CHECK(missing.status == KeyFileStatus::missing);
  CHECK(format(missing.errors.front()).find("no such key file") != std::string::npos);
  CHECK(load_keyfile(dir.path()).status == KeyFileStatus::unsafe);  // a directory
  const auto big = dir.write("big.toml", std::string(70000, '#'));
  CHECK(load_keyfile(big).status == KeyFileStatus::invalid);
}

TEST_CASE("write_keyfile_atomic: 0600, round trip, no temp file left, replaces atomically") {
  batv::test::TempDir dir;
  auto parsed = parse_keyfile(good, "k");
  REQUIRE(parsed.file);
  const std::string path = dir.file("keys.toml");
  std::string err;
  REQUIRE_MESSAGE(write_keyfile_atomic(path, *parsed.file, err), err);
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  const auto back = load_keyfile(path);
  REQUIRE_MESSAGE(back.file, first_error(back));
  CHECK(serialize_keyfile(*back.file) == serialize_keyfile(*parsed.file));
  // Keys come out sorted by id; the inode changes (rename), so open readers keep the old file.
  const std::string text = read_all(path);
  CHECK(text.find("id = 1") < text.find("id = 3"));
  const ino_t before = st.st_ino;
  REQUIRE(write_keyfile_atomic(path, *parsed.file, err));
  REQUIRE(::stat(path.c_str(), &st) == 0);
  CHECK(st.st_ino != before);
  int files = 0;
  for (const auto& e : fs::directory_iterator(dir.path())) {
    (void)e;
    ++files;
  }
  CHECK(files == 1);
  // A directory we cannot write to gives an error, not a crash.
  CHECK_FALSE(write_keyfile_atomic("/nonexistent-dir/keys.toml", *parsed.file, err));
  CHECK(err.find("/nonexistent-dir/keys.toml") != std::string::npos);
}

TEST_CASE("write_keyfile_atomic keeps the owner of the file it replaces") {
  if (::geteuid() != 0) return;  // only root can give a file away
  batv::test::TempDir dir;
  auto parsed = parse_keyfile(good, "k");
  REQUIRE(parsed.file);
  const std::string path = dir.write("keys.toml", good);
  REQUIRE(::chown(path.c_str(), 65534, 65534) == 0);  // the relay's own user, say
  std::string err;
  REQUIRE_MESSAGE(write_keyfile_atomic(path, *parsed.file, err), err);
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  CHECK(st.st_uid == 65534u);
  CHECK(st.st_gid == 65534u);
  CHECK((st.st_mode & 0777) == 0600);
}

TEST_CASE("base64: RFC 4648 vectors and strict decoding") {
  auto enc = [](std::string_view s) {
    return base64_encode({reinterpret_cast<const std::uint8_t*>(s.data()), s.size()});
  };
  auto dec = [](std::string_view s) -> std::string {
    std::array<std::uint8_t, 64> buf{};
    const long n = base64_decode(s, buf);
    if (n < 0) return "<error>";
    return std::string(reinterpret_cast<const char*>(buf.data()), static_cast<std::size_t>(n));
  };
  CHECK(enc("") == "");
  CHECK(enc("f") == "Zg==");
  CHECK(enc("fo") == "Zm8=");
  CHECK(enc("foo") == "Zm9v");
  CHECK(enc("foobar") == "Zm9vYmFy");
  CHECK(dec("Zm9vYmFy") == "foobar");
  CHECK(dec("Zg==") == "f");
  CHECK(dec("Zg") == "f");
  CHECK(dec("Zm8=") == "fo");
  CHECK(dec("Zh==") == "<error>");  // non-canonical trailing bits
  CHECK(dec("Z") == "<error>");
  CHECK(dec("Zm9v!") == "<error>");
  CHECK(dec("Zg=") == "<error>");
  CHECK(dec(std::string(88, 'A')) == "<error>");  // 66 bytes > 64
  CHECK(dec(std::string(86, 'A') + "==") == std::string(64, '\0'));
}

TEST_CASE("a staged key round-trips, and settle() applies a passed activation") {
  const std::string text =
      "[[key]]\nid = 3\nstate = \"signing\"\nsecret = \"YQ==\"\ncreated = 2023-11-14T22:13:20Z\n"
      "[[key]]\nid = 4\nstate = \"staged\"\nsecret = \"Yg==\"\ncreated = 2023-11-14T22:13:20Z\n"
      "activate_at = 2023-11-15T00:00:00Z\n";
  auto r = parse_keyfile(text, "k.toml");
  REQUIRE_MESSAGE(r.status == KeyFileStatus::ok, first_error(r));
  KeyFile f = std::move(*r.file);
  REQUIRE(f.staged());
  CHECK(f.staged()->id == 4);
  CHECK(f.staged()->activate_at == 1700006400);
  CHECK(f.signer()->id == 3);
  // Written back, it reads the same.
  const std::string written = serialize_keyfile(f);
  CHECK(written.find("activate_at = 2023-11-15T00:00:00Z") != std::string::npos);
  auto again = parse_keyfile(written, "k.toml");
  REQUIRE_MESSAGE(again.status == KeyFileStatus::ok, first_error(again));
  CHECK(again.file->staged()->activate_at == 1700006400);

  CHECK_FALSE(f.settle(1700006399));  // before T: nothing changes
  CHECK(f.staged());
  CHECK(f.settle(1700006400));
  CHECK_FALSE(f.staged());
  CHECK(f.signer()->id == 4);
  CHECK_FALSE(f.signer()->activate_at);
  CHECK(f.find(3)->state == KeyState::verify);
  CHECK(f.find(3)->stopped_signing == 1700006400);
  CHECK_FALSE(f.settle(1700006400));  // settled once
  auto settled = parse_keyfile(serialize_keyfile(f), "k.toml");
  CHECK_MESSAGE(settled.status == KeyFileStatus::ok, first_error(settled));
}
