// Unit tests for relay/replies.hpp: the EHLO reply builder (RFC 5321 4.1.1.1, exact bytes and
// order), and the shape of the replies the relay writes itself: "ddd x.y.z text" CRLF, where the
// enhanced code's class is the reply code's (RFC 3463 2) and the code is one RFC 5321 4.2.3 lists
// for the command.
#include <doctest/doctest.h>

#include <string>
#include <string_view>
#include <vector>

#include "relay/replies.hpp"

namespace replies = batv::relay::replies;

TEST_CASE("replies::ehlo: only SIZE when nothing else is offered") {
  replies::EhloOffer o;
  o.size = 67108864;
  CHECK(replies::ehlo("relay.example", o) == "250-relay.example\r\n250 SIZE 67108864\r\n");
  o.size = 0;  // RFC 1870 4: no fixed maximum
  CHECK(replies::ehlo("relay.example", o) == "250-relay.example\r\n250 SIZE 0\r\n");
}

TEST_CASE("replies::ehlo: every extension, in the fixed order, AUTH last with its mechanisms") {
  replies::EhloOffer o;
  o.pipelining = o.eightbitmime = o.smtputf8 = o.enhancedstatuscodes = o.dsn = o.chunking = o.starttls = true;
  o.size = 1000;
  o.auth = {"PLAIN", "LOGIN"};
  CHECK(replies::ehlo("mx.example.org", o) ==
        "250-mx.example.org\r\n"
        "250-PIPELINING\r\n"
        "250-SIZE 1000\r\n"
        "250-8BITMIME\r\n"
        "250-SMTPUTF8\r\n"
        "250-ENHANCEDSTATUSCODES\r\n"
        "250-DSN\r\n"
        "250-CHUNKING\r\n"
        "250-STARTTLS\r\n"
        "250 AUTH PLAIN LOGIN\r\n");
}

TEST_CASE("replies::ehlo: each flag adds exactly its own line") {
  struct Row {
    bool replies::EhloOffer::*flag;
    std::string_view line;
  };
  const Row rows[] = {
      {&replies::EhloOffer::pipelining, "PIPELINING"}, {&replies::EhloOffer::eightbitmime, "8BITMIME"},
      {&replies::EhloOffer::smtputf8, "SMTPUTF8"},     {&replies::EhloOffer::enhancedstatuscodes, "ENHANCEDSTATUSCODES"},
      {&replies::EhloOffer::dsn, "DSN"},               {&replies::EhloOffer::chunking, "CHUNKING"},
      {&replies::EhloOffer::starttls, "STARTTLS"},
  };
  for (const Row& r : rows) {
    CAPTURE(r.line);
    replies::EhloOffer o;
    o.size = 5;
    o.*r.flag = true;
    const std::string got = replies::ehlo("h", o);
    // PIPELINING comes before SIZE, everything else after it.
    const std::string want = r.line == "PIPELINING" ? "250-h\r\n250-PIPELINING\r\n250 SIZE 5\r\n"
                                                    : "250-h\r\n250-SIZE 5\r\n250 " + std::string(r.line) + "\r\n";
    CHECK(got == want);
  }
  replies::EhloOffer one;
  one.auth = {"CRAM-MD5"};
  CHECK(replies::ehlo("h", one) == "250-h\r\n250-SIZE 0\r\n250 AUTH CRAM-MD5\r\n");
}

TEST_CASE("replies::ehlo: text from the next hop is sanitised like any reply line") {
  replies::EhloOffer o;
  o.auth = {"PLAIN\r\n250 FAKE"};  // a mechanism name with a line break must not make a line
  const std::string got = replies::ehlo("h", o);
  CHECK(got.find("\r\n250 FAKE") == std::string::npos);
  CHECK(got.find("250 AUTH PLAIN") != std::string::npos);
  std::size_t lines = 0;
  for (char c : got) lines += c == '\n' ? 1 : 0;
  CHECK(lines == 3);  // host, SIZE, AUTH: nothing more
}

TEST_CASE("replies: code, enhanced code of the same class, text, CRLF") {
  using batv::crypto::Verdict;
  const std::vector<std::string> all = {
      replies::greeting("h"), replies::proxy_health_check("h"), replies::access_denied("192.0.2.1"),
      replies::too_many_sessions("h"), replies::too_many_from_client("h"), replies::upstream_unavailable("h"),
      replies::upstream_tls_unavailable("h"), replies::upstream_tls_failed("h"), replies::upstream_lost_closing("h"),
      replies::idle_timeout("h"), replies::session_timeout("h"), replies::data_timeout("h"),
      replies::too_many_errors("h"), replies::too_many_commands("h"), replies::shutting_down("h"), replies::bye(),
      replies::ok(), replies::sender_ok(), replies::help(), replies::vrfy_cannot(), replies::vrfy_disabled(),
      replies::ready_for_tls(), replies::auth_required(), replies::auth_already(), replies::auth_in_transaction(),
      replies::auth_cancelled(), replies::auth_line_too_long(), replies::auth_encryption_required(),
      replies::tls_required(), replies::tls_already_active(), replies::starttls_syntax(), replies::auth_syntax(),
      replies::unknown_command(), replies::line_too_long(), replies::nul_in_command(),
      replies::not_implemented("BDAT"), replies::helo_syntax(true), replies::helo_syntax(false),
      replies::need_helo(), replies::nested_mail(), replies::need_mail(), replies::need_mail_for_data(),
      replies::need_rcpt(), replies::no_valid_recipients(), replies::bdat_sequence(), replies::rcpt_after_bdat(),
      replies::mail_syntax(), replies::rcpt_syntax(), replies::bdat_syntax(), replies::bad_sender("x"),
      replies::bad_recipient("x"), replies::null_recipient(), replies::param_unsupported("X"),
      replies::param_invalid("X"), replies::needs_smtputf8(), replies::size_exceeded(),
      replies::too_many_recipients(), replies::separate_transaction(), replies::bare_newline(),
      replies::bounce_refused(Verdict::expired), replies::tag_not_verified(Verdict::bad_signature),
      replies::too_many_invalid_recipients(), replies::upstream_failed(), replies::upstream_timeout(),
      replies::upstream_garbled(), replies::upstream_unreachable(), replies::upstream_no_chunking(),
      replies::upstream_lacks("DSN"), replies::upstream_tls_unavailable_mail(), replies::upstream_tls_failed_mail(),
  };
  for (const std::string& r : all) {
    CAPTURE(r);
    REQUIRE(r.size() > 6);
    CHECK(r.substr(r.size() - 2) == "\r\n");
    CHECK(r.find('\n') == r.size() - 1);  // one line
    CHECK(r[0] >= '2');
    CHECK(r[0] <= '5');
    CHECK(r[3] == ' ');
    // 220 greeting, 221/250 replies that carry a host first, 354 and 214/252 texts: RFC 3463 puts
    // no enhanced code on 220 greetings and 354; every other reply here starts "c.x.y".
    const std::string_view code = std::string_view(r).substr(0, 3);
    if (code == "220" && r.find("ESMTP") != std::string::npos) continue;
    if (code == "354") continue;
    CHECK(r[4] == r[0]);  // the enhanced class is the reply class
    CHECK(r[5] == '.');
  }
}

TEST_CASE("replies::final_reply: every SessionEnd has one, a 421/554/221 or nothing") {
  using batv::relay::SessionEnd;
  for (std::size_t i = 0; i < batv::relay::session_end_count; ++i) {
    const auto e = static_cast<SessionEnd>(i);
    const std::string r = replies::final_reply(e, "relay.example", "192.0.2.7");
    CAPTURE(batv::relay::to_string(e));
    if (r.empty()) continue;
    CHECK(r.size() > 6);
    CHECK(r.substr(r.size() - 2) == "\r\n");
    const std::string code = r.substr(0, 4);
    CHECK((code == "421 " || code == "554 " || code == "221 "));
  }
  // Nothing to write to a client that is gone, or whose TLS layer never came up.
  CHECK(replies::final_reply(SessionEnd::client_closed, "h", "c").empty());
  CHECK(replies::final_reply(SessionEnd::tls_failed, "h", "c").empty());
  CHECK(replies::final_reply(SessionEnd::io_error, "h", "c").empty());
  CHECK(replies::final_reply(SessionEnd::quit, "h", "c") == replies::bye());
  CHECK(replies::final_reply(SessionEnd::access_denied, "h", "192.0.2.7") == replies::access_denied("192.0.2.7"));
  CHECK(replies::final_reply(SessionEnd::too_many_errors, "h", "c") == replies::too_many_errors("h"));
  CHECK(replies::final_reply(SessionEnd::upstream_lost, "relay.example", "c") ==
        "421 4.4.2 relay.example Next hop connection lost, closing\r\n");
  CHECK(replies::final_reply(SessionEnd::data_timeout, "h", "c") == replies::data_timeout("h"));
  CHECK(replies::final_reply(SessionEnd::session_timeout, "h", "c") == replies::session_timeout("h"));
}
