// A libFuzzer-compatible driver for builds without libFuzzer (g++): runs every input file given on
// the command line (directly or in the given directories: the seed corpus and the regression
// inputs), then a fixed number of deterministic mutations of them, so each fuzz target runs in
// every ctest pass. With -DBATV_FUZZ=ON (clang) the targets link libFuzzer instead.
//   replay [--iterations=N] PATH...      (PATH: a file, or a directory of files; dot files skipped)
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <string_view>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace {

void add_file(const std::filesystem::path& p, std::vector<std::string>& corpus) {
  if (p.filename().string().starts_with(".")) return;  // .gitkeep
  std::ifstream in(p, std::ios::binary);
  corpus.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

}  // namespace

int main(int argc, char** argv) {
  long iterations = 20000;
  std::vector<std::string> corpus;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg.starts_with("--iterations=")) {
      iterations = std::atol(argv[i] + 13);
      continue;
    }
    const std::filesystem::path p(arg);
    if (std::filesystem::is_directory(p)) {
      std::vector<std::filesystem::path> files;
      for (const auto& e : std::filesystem::directory_iterator(p))
        if (e.is_regular_file()) files.push_back(e.path());
      std::sort(files.begin(), files.end());  // a fixed order: a failure reproduces
      for (const auto& f : files) add_file(f, corpus);
    } else if (std::filesystem::is_regular_file(p)) {
      add_file(p, corpus);
    } else {
      std::fprintf(stderr, "%s: no such file or directory\n", argv[i]);
      return 64;
    }
  }
  if (corpus.empty()) {
    std::fprintf(stderr, "usage: %s [--iterations=N] PATH... (no input files found)\n", argv[0]);
    return 64;
  }
  for (const auto& c : corpus)
    LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(c.data()), c.size());
  std::mt19937_64 rng(12345);  // fixed seed: a failure reproduces
  static const std::string dictionary[] = {
      "prvs=", "=", "@", "\"", "[[key]]", "\n", "id = ", "secret = \"", "\"", "0", "9", "Z", "\x80",
      "\\u0000", "[limits]", "listen = \"", "[::1]:", "/128", "\r\n", "MAIL FROM:<", "RCPT TO:<", ">",
      "DATA\r\n", "\r\n.\r\n", "BDAT 5", " LAST", "EHLO x\r\n", "RSET\r\n", "250 ", "250-", " SIZE=",
      "prvs=TAG=", "<>", "AUTH PLAIN", "STARTTLS\r\n", "QUIT\r\n"};
  for (long i = 0; i < iterations; ++i) {
    std::string s = corpus[rng() % corpus.size()];
    const int edits = 1 + static_cast<int>(rng() % 8);
    for (int e = 0; e < edits; ++e) {
      const std::size_t pos = s.empty() ? 0 : rng() % (s.size() + 1);
      switch (rng() % 5) {
        case 0: if (!s.empty() && pos < s.size()) s[pos] = static_cast<char>(rng()); break;
        case 1: if (pos < s.size()) s.erase(pos, 1 + rng() % 8); break;
        case 2: s.insert(pos, dictionary[rng() % std::size(dictionary)]); break;
        case 3: s.insert(pos, 1, static_cast<char>(rng())); break;
        case 4: if (!s.empty()) s.insert(pos, s.substr(rng() % s.size(), 1 + rng() % 16)); break;
      }
    }
    LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(s.data()), s.size());
  }
  std::printf("%zu inputs and %ld mutations: no failure\n", corpus.size(), iterations);
  return 0;
}
