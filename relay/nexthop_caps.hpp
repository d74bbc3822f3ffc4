// nexthop_caps: what the next hop of each listener offered at EHLO, as last learned, for the
// listeners that open their next-hop connection at the client's first MAIL
// (listener.upstream_connect = "mail", the inbound default, as Postfix's smtpd_proxy): their
// sessions answer the client's EHLO from here, before any next-hop connection exists.
//
// Learned by a probe connection per such listener at start-up and after every reload
// (probe_next_hops: greeting, EHLO, STARTTLS per upstream_tls, QUIT; a PROXY LOCAL/UNKNOWN
// header first with forward_client = "proxy-v1"/"proxy-v2"), and refreshed by the EHLO of every
// real next-hop connection a session opens. A probe runs in the background: it never delays
// start-up or a reload, and a failed one keeps what was learned before. Until something was
// learned, conservative(): only what the relay honours whatever the next hop does.
// Thread-safe (one mutex, held for a copy); bounded by the number of configured listeners
// (a reload forgets listeners no longer configured). Never throws out of a probe.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "conf/config.hpp"
#include "relay/io.hpp"
#include "relay/runtime.hpp"
#include "relay/smtp/reply.hpp"

namespace batv::relay {

class NextHopCaps {
 public:
  enum class Source { conservative, probe, session };
  struct Known {
    smtp::Capabilities caps;
    Source source = Source::conservative;
  };

  static NextHopCaps& global();

  // PIPELINING (the relay paces a next hop without it itself) and ENHANCEDSTATUSCODES (every reply
  // the relay writes carries one); SIZE is always offered, from limits.message_size. Nothing
  // that needs the next hop: no 8BITMIME, SMTPUTF8, DSN, CHUNKING.
  static smtp::Capabilities conservative();
  // The identity of a listener's next hop across reloads: listen address, upstream, TLS policy
  // and client forwarding (each can change what the next hop offers).
  static std::string key_of(const conf::Listener& l);

  [[nodiscard]] Known get(const std::string& key) const;  // conservative() when nothing is known
  void learn(const std::string& key, const smtp::Capabilities& caps, Source source);
  // Forgets every listener whose key is not in `keys` (after a reload).
  void retain(const std::vector<std::string>& keys);
  void clear();  // tests

 private:
  mutable std::mutex mu_;
  std::unordered_map<std::string, Known> known_;
};

std::string_view to_string(NextHopCaps::Source s);

// Spawns one probe on `ex` for each listener of `rt` with upstream_connect = "mail", and forgets
// listeners `rt` no longer has. Logs event=upstream_probe per probe; counts
// batv_upstream_probes_total.
void probe_next_hops(asio::any_io_executor ex, std::shared_ptr<const Runtime> rt);

}  // namespace batv::relay
