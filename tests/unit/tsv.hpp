// Reads the tab-separated vector files under tests/data: "#" starts a comment line, blank lines
// are skipped, every other line is split on tabs (empty fields kept).
#pragma once

#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace batv::test {

struct TsvRow {
  int line;
  std::vector<std::string> fields;
};

inline std::vector<TsvRow> read_tsv(const std::string& relative) {
  const std::string path = std::string(BATV_SOURCE_DIR) + "/" + relative;
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path);
  std::vector<TsvRow> rows;
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.empty() || line[0] == '#') continue;
    TsvRow row{n, {}};
    std::size_t start = 0;
    for (;;) {
      const auto tab = line.find('\t', start);
      row.fields.push_back(line.substr(start, tab - start));
      if (tab == std::string::npos) break;
      start = tab + 1;
    }
    rows.push_back(std::move(row));
  }
  return rows;
}

}  // namespace batv::test
