#include "relay/pipeline.hpp"

#include <algorithm>

#include "relay/replies.hpp"

namespace batv::relay {

std::string next_hop_failure_reply(const Upstream& up) {
  switch (up.failure()) {
    case Upstream::Failure::timeout: return replies::upstream_timeout();
    case Upstream::Failure::protocol: return replies::upstream_garbled();
    case Upstream::Failure::unreachable: return replies::upstream_unreachable();
    default: return replies::upstream_failed();
  }
}

void Pipeline::local(std::string reply) {
  Entry e;
  e.local = std::move(reply);
  entries_.push_back(std::move(e));
}

void Pipeline::relay(std::vector<std::string> commands, Handler handler, bool stop_on_failure) {
  Entry e;
  e.commands = std::move(commands);
  e.handler = std::move(handler);
  e.stop_on_failure = stop_on_failure;
  entries_.push_back(std::move(e));
}

bool Pipeline::needs_next_hop() const {
  return std::any_of(entries_.begin(), entries_.end(), [](const Entry& e) { return !e.commands.empty(); });
}

awaitable<Pipeline::Flushed> Pipeline::flush(Upstream& up, bool up_ok) {
  Flushed f;
  // Keep what we work on: nothing queues meanwhile (one coroutine per session), but the entries
  // must be gone when this returns whatever happened.
  std::vector<Entry> entries = std::move(entries_);
  entries_.clear();
  const bool batch = up_ok && up.caps().pipelining;
  if (batch && std::any_of(entries.begin(), entries.end(), [](const Entry& e) { return !e.commands.empty(); })) {
    std::string all;
    for (const Entry& e : entries)
      for (const std::string& c : e.commands) all += c;
    up_ok = co_await up.send(all);
  }
  for (Entry& e : entries) {
    if (e.commands.empty()) {
      f.text += e.local;
      continue;
    }
    std::vector<smtp::Reply> got;
    for (const std::string& c : e.commands) {
      if (!up_ok) break;
      if (!batch && !(up_ok = co_await up.send(c))) break;
      auto r = co_await up.read_reply();
      if (!r) {
        up_ok = false;
        break;
      }
      got.push_back(std::move(*r));
      if (!batch && e.stop_on_failure && got.back().code / 100 != 2) break;
    }
    Answer a;
    if (up_ok) {
      a = e.handler(got);
    } else {
      f.lost = true;
      a.text = next_hop_failure_reply(up);
    }
    if (a.counts()) ++f.errors;
    f.text += a.text;
  }
  co_return f;
}

}  // namespace batv::relay
