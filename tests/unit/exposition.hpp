// Reading the Prometheus text exposition format (0.0.4) in unit tests: lines, samples, a format
// check. Shared by metrics_test.cpp (the registry) and http_test.cpp (its HTTP endpoint).
#pragma once

#include <doctest/doctest.h>

#include <cctype>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

namespace batv::test {

inline std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::size_t pos = 0;
  while (pos < text.size()) {
    const std::size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) {
      out.push_back(text.substr(pos));
      break;
    }
    out.push_back(text.substr(pos, nl - pos));
    pos = nl + 1;
  }
  return out;
}

inline bool has_line(const std::string& text, const std::string& line) {
  for (const auto& l : lines_of(text))
    if (l == line) return true;
  return false;
}

// The value of the sample whose name-and-labels part is exactly `series`; nullopt when absent.
inline std::optional<std::string> value_of(const std::string& text, const std::string& series) {
  for (const auto& l : lines_of(text))
    if (l.size() > series.size() && l.compare(0, series.size(), series) == 0 && l[series.size()] == ' ')
      return l.substr(series.size() + 1);
  return std::nullopt;
}

// A metric or label name: [a-z_]+ at `pos`; advances `pos`.
inline std::string name_at(const std::string& l, std::size_t& pos) {
  const std::size_t b = pos;
  while (pos < l.size() && ((l[pos] >= 'a' && l[pos] <= 'z') || l[pos] == '_')) ++pos;
  return l.substr(b, pos - b);
}

// A sample line `name{k="v",...} value`: its metric name, or "" when the line is not one.
inline std::string sample_name(const std::string& l) {
  std::size_t pos = 0;
  const std::string name = name_at(l, pos);
  if (!name.starts_with("batv_")) return {};
  if (pos < l.size() && l[pos] == '{') {
    ++pos;
    for (;;) {
      if (name_at(l, pos).empty() || l.compare(pos, 2, "=\"") != 0) return {};
      pos += 2;
      for (;; ++pos) {  // the value: escapes \\ \" \n only, no raw line feed
        if (pos >= l.size()) return {};
        if (l[pos] == '"') break;
        if (l[pos] == '\\') {
          if (pos + 1 >= l.size() || (l[pos + 1] != '\\' && l[pos + 1] != '"' && l[pos + 1] != 'n')) return {};
          ++pos;
        }
      }
      ++pos;
      if (pos < l.size() && l[pos] == ',') {
        ++pos;
        continue;
      }
      if (pos < l.size() && l[pos] == '}') {
        ++pos;
        break;
      }
      return {};
    }
  }
  if (pos >= l.size() || l[pos] != ' ') return {};
  const std::string value = l.substr(pos + 1);
  if (value == "+Inf" || value == "NaN") return name;
  if (value.empty()) return {};
  char* end = nullptr;
  (void)std::strtod(value.c_str(), &end);
  return end == value.c_str() + value.size() ? name : std::string();
}

// Checks the exposition format: every line is a HELP, a TYPE or a sample; samples follow the
// TYPE of their family; each family is declared once; the text ends with a newline.
inline void check_format(const std::string& text) {
  REQUIRE(!text.empty());
  CHECK(text.back() == '\n');
  std::vector<std::string> families;
  std::string current, current_type, pending_help;
  for (const auto& l : lines_of(text)) {
    if (l.starts_with("# HELP ")) {
      std::size_t pos = 7;
      pending_help = name_at(l, pos);
      CHECK_MESSAGE((pending_help.starts_with("batv_") && pos + 1 < l.size() && l[pos] == ' '), l);
    } else if (l.starts_with("# TYPE ")) {
      std::size_t pos = 7;
      current = name_at(l, pos);
      current_type = pos < l.size() ? l.substr(pos + 1) : "";
      CHECK_MESSAGE((current_type == "counter" || current_type == "gauge" || current_type == "histogram"), l);
      CHECK_MESSAGE(pending_help == current, "TYPE without its HELP: " << l);
      for (const auto& f : families) CHECK_MESSAGE(f != current, "family declared twice: " << current);
      families.push_back(current);
    } else if (std::string name = sample_name(l); !name.empty()) {
      if (current_type == "histogram")
        for (const std::string suffix : {"_bucket", "_sum", "_count"})
          if (name.size() > suffix.size() && name.ends_with(suffix)) {
            name.resize(name.size() - suffix.size());
            break;
          }
      CHECK_MESSAGE(name == current, "sample outside its family: " << l);
    } else {
      FAIL_CHECK("not exposition format: " << l);
    }
  }
}

}  // namespace batv::test
