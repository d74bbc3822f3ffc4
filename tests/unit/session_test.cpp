// relay/session: the client input buffer's per-thread spare pool (InputBuffer, session.hpp). The
// session's wire behaviour is pinned by the dialogue tier (tests/dialogue).
#include <doctest/doctest.h>

#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "conf/limits.hpp"
#include "relay/session.hpp"

using namespace batv::relay;

TEST_CASE("InputBuffer: freed stream buffers are reused by the same thread, at most the fixed number kept") {
  using batv::conf::fixed::spare_stream_buffers_per_thread;
  using batv::conf::fixed::stream_buffer_bytes;
  constexpr std::size_t n = spare_stream_buffers_per_thread + 4;
  // Whatever earlier tests left in this thread's pool is taken first, and held.
  std::vector<std::unique_ptr<InputBuffer>> drained;
  while (InputBuffer::spare_buffers() > 0) drained.push_back(std::make_unique<InputBuffer>(stream_buffer_bytes));
  std::set<const char*> first;
  {
    std::vector<std::unique_ptr<InputBuffer>> v;
    for (std::size_t i = 0; i < n; ++i) v.push_back(std::make_unique<InputBuffer>(stream_buffer_bytes));
    for (auto& b : v) first.insert(b->data());
    CHECK(InputBuffer::spare_buffers() == 0);
  }
  CHECK(InputBuffer::spare_buffers() == spare_stream_buffers_per_thread);  // the rest went back to malloc
  {
    InputBuffer b(stream_buffer_bytes);
    CHECK(first.count(b.data()) == 1);
    CHECK(InputBuffer::spare_buffers() == spare_stream_buffers_per_thread - 1);
  }
  CHECK(InputBuffer::spare_buffers() == spare_stream_buffers_per_thread);
  {
    InputBuffer small(batv::conf::fixed::command_buffer_bytes);  // not pooled: taken from malloc
    CHECK(InputBuffer::spare_buffers() == spare_stream_buffers_per_thread);
  }
  CHECK(InputBuffer::spare_buffers() == spare_stream_buffers_per_thread);

  // Growing to the stream size and back keeps the buffered bytes, and the command-sized buffer
  // never enters the pool.
  InputBuffer b(batv::conf::fixed::command_buffer_bytes);
  std::memcpy(b.data(), "MAIL FROM:<>\r\n", 14);
  b.reallocate(stream_buffer_bytes, 14);
  CHECK(std::string(b.data(), 14) == "MAIL FROM:<>\r\n");
  CHECK(b.size() == stream_buffer_bytes);
  b.reallocate(batv::conf::fixed::command_buffer_bytes, 14);
  CHECK(std::string(b.data(), 14) == "MAIL FROM:<>\r\n");
  CHECK(b.size() == batv::conf::fixed::command_buffer_bytes);
}
