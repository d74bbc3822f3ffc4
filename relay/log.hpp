// log: one key=value line per event (logfmt), to stderr or syslog.
//
//   ts=2026-11-23T09:00:00Z level=info event=session_end sid=3f2a00000001 reason=quit ...
//
// Values from peers are untrusted: control characters and bytes >= 0x80 are shown as \xNN,
// quotes and backslashes escaped, values cut at conf::fixed::max_log_value_chars (256). Each line is written with one
// write(2) (or one syslog(3) call), so lines from different threads never interleave. Never pass
// a secret: there is no API that takes a crypto::Secret.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "conf/config.hpp"

namespace batv::relay {

enum class Level { debug, info, warning, error };

// Process-wide sink; configure once at start-up (and again on reload).
void configure_logging(const conf::Logging& cfg);
bool log_enabled(Level level);

class LogLine {
 public:
  LogLine(Level level, std::string_view event);
  ~LogLine();
  LogLine(const LogLine&) = delete;
  LogLine& operator=(const LogLine&) = delete;

  LogLine& kv(std::string_view key, std::string_view value);
  LogLine& kv(std::string_view key, const std::string& value) { return kv(key, std::string_view(value)); }
  LogLine& kv(std::string_view key, const char* value) { return kv(key, std::string_view(value)); }
  LogLine& kv(std::string_view key, std::int64_t value);
  LogLine& kv(std::string_view key, int value) { return kv(key, static_cast<std::int64_t>(value)); }
  LogLine& kv(std::string_view key, std::uint64_t value) { return kv(key, static_cast<std::int64_t>(value)); }
  LogLine& kv(std::string_view key, bool value) { return kv(key, std::string_view(value ? "true" : "false")); }

 private:
  Level level_;
  bool on_;
  std::string text_;
};

inline LogLine log(Level level, std::string_view event) { return LogLine(level, event); }

// The logfmt encoding of one value (exposed for tests).
std::string log_value(std::string_view v);

}  // namespace batv::relay
