// A libFuzzer-compatible driver for builds without libFuzzer (g++): runs every corpus file given
// on the command line, then a fixed number of deterministic mutations of them, so each fuzz
// target runs in every ctest pass. With -DBATV_FUZZ=ON (clang) the targets link libFuzzer instead.
//   replay CORPUS_DIR [ITERATIONS]
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR [ITERATIONS]\n", argv[0]);
    return 64;
  }
  const long iterations = argc > 2 ? std::atol(argv[2]) : 20000;
  std::vector<std::string> corpus;
  for (const auto& e : std::filesystem::directory_iterator(argv[1])) {
    std::ifstream in(e.path(), std::ios::binary);
    corpus.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  if (corpus.empty()) {
    std::fprintf(stderr, "no corpus files in %s\n", argv[1]);
    return 1;
  }
  for (const auto& c : corpus)
    LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(c.data()), c.size());
  std::mt19937_64 rng(12345);  // fixed seed: a failure reproduces
  static const std::string dictionary[] = {"prvs=", "=", "@", "\"", "[[key]]", "\n", "id = ",
                                           "secret = \"", "\"", "0", "9", "Z", "\x80", "\\u0000",
                                           "[limits]", "listen = \"", "[::1]:", "/128"};
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
  std::printf("%zu corpus files and %ld mutations: no failure\n", corpus.size(), iterations);
  return 0;
}
