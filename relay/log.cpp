#include "relay/log.hpp"

#include <syslog.h>
#include <unistd.h>

#include <atomic>
#include <ctime>

#include "conf/limits.hpp"

namespace batv::relay {

namespace {
std::atomic<int> g_min_level{static_cast<int>(Level::info)};
std::atomic<bool> g_syslog{false};

constexpr std::size_t max_value_chars = conf::fixed::max_log_value_chars;

int syslog_priority(Level l) {
  switch (l) {
    case Level::debug: return LOG_DEBUG;
    case Level::info: return LOG_INFO;
    case Level::warning: return LOG_WARNING;
    case Level::error: return LOG_ERR;
  }
  return LOG_INFO;
}

std::string_view level_name(Level l) {
  switch (l) {
    case Level::debug: return "debug";
    case Level::info: return "info";
    case Level::warning: return "warning";
    case Level::error: return "error";
  }
  return "info";
}

int facility(conf::SyslogFacility f) {
  switch (f) {
    case conf::SyslogFacility::mail: return LOG_MAIL;
    case conf::SyslogFacility::daemon: return LOG_DAEMON;
    case conf::SyslogFacility::local0: return LOG_LOCAL0;
    case conf::SyslogFacility::local1: return LOG_LOCAL1;
    case conf::SyslogFacility::local2: return LOG_LOCAL2;
    case conf::SyslogFacility::local3: return LOG_LOCAL3;
    case conf::SyslogFacility::local4: return LOG_LOCAL4;
    case conf::SyslogFacility::local5: return LOG_LOCAL5;
    case conf::SyslogFacility::local6: return LOG_LOCAL6;
    case conf::SyslogFacility::local7: return LOG_LOCAL7;
  }
  return LOG_MAIL;
}
}  // namespace

void configure_logging(const conf::Logging& cfg) {
  Level l = Level::info;
  switch (cfg.level) {
    case conf::LogLevel::debug: l = Level::debug; break;
    case conf::LogLevel::info: l = Level::info; break;
    case conf::LogLevel::warning: l = Level::warning; break;
    case conf::LogLevel::error: l = Level::error; break;
  }
  g_min_level = static_cast<int>(l);
  const bool sys = cfg.target == conf::LogTarget::syslog;
  if (sys) openlog("batv-relay", LOG_PID | LOG_NDELAY, facility(cfg.syslog_facility));
  g_syslog = sys;
}

bool log_enabled(Level level) { return static_cast<int>(level) >= g_min_level.load(); }

std::string log_value(std::string_view v) {
  bool quote = v.empty();
  std::string out;
  std::size_t n = 0;
  for (char c : v) {
    if (++n > max_value_chars) {
      out += "...";
      quote = true;
      break;
    }
    const auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
      quote = true;
    } else if (u < 0x20 || u >= 0x7f) {
      static constexpr char hex[] = "0123456789abcdef";
      out += "\\x";
      out += hex[u >> 4];
      out += hex[u & 15];
      quote = true;
    } else {
      if (c == ' ' || c == '=') quote = true;
      out += c;
    }
  }
  return quote ? "\"" + out + "\"" : out;
}

LogLine::LogLine(Level level, std::string_view event) : level_(level), on_(log_enabled(level)) {
  if (!on_) return;
  text_.reserve(256);
  if (!g_syslog) {
    std::time_t t = std::time(nullptr);
    std::tm tm{};
    gmtime_r(&t, &tm);
    char ts[32];
    std::strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
    text_ += "ts=";
    text_ += ts;
    text_ += ' ';
  }
  text_ += "level=";
  text_ += level_name(level);
  text_ += " event=";
  text_ += event;
}

LogLine& LogLine::kv(std::string_view key, std::string_view value) {
  if (!on_) return *this;
  text_ += ' ';
  text_ += key;
  text_ += '=';
  text_ += log_value(value);
  return *this;
}

LogLine& LogLine::kv(std::string_view key, std::int64_t value) {
  if (!on_) return *this;
  text_ += ' ';
  text_ += key;
  text_ += '=';
  text_ += std::to_string(value);
  return *this;
}

LogLine::~LogLine() {
  if (!on_) return;
  if (g_syslog) {
    syslog(syslog_priority(level_), "%s", text_.c_str());
    return;
  }
  text_ += '\n';
  const char* p = text_.data();
  std::size_t left = text_.size();
  while (left > 0) {
    const ssize_t n = ::write(2, p, left);
    if (n <= 0) break;  // stderr gone: nothing sensible to do
    p += n;
    left -= static_cast<std::size_t>(n);
  }
}

}  // namespace batv::relay
