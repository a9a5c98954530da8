// The runtime API's request reader: what it accepts, what it refuses and with which status,
// fed whole and split at every byte.
#include "proxy/admin/http.h"

#include <gtest/gtest.h>

namespace admin::http {
namespace {

using Status = RequestReader::Status;

// Feeds `text` whole, then split at every byte; both must reach the same verdict.
Status read(const std::string& text, RequestReader& reader) {
  for (std::size_t cut = 0; cut <= text.size(); ++cut) {
    RequestReader split;
    split.feed(std::span(text.data(), cut));
    Status verdict = split.feed(std::span(text.data() + cut, text.size() - cut));
    RequestReader whole;
    EXPECT_EQ(verdict, whole.feed(text)) << "split at " << cut;
  }
  return reader.feed(text);
}

TEST(AdminHttp, ReadsRequestLinePathQueryAndAuthorization) {
  RequestReader reader;
  ASSERT_EQ(read("POST /v1/backends/imap-pool/127.0.0.1%3A143/drain?x=1&user=a%40b+c HTTP/1.1\r\n"
                 "Host: localhost\r\nAuthorization: Bearer tok\r\nContent-Length: 0\r\n\r\n",
                 reader),
            Status::Complete);
  const Request& request = reader.request();
  EXPECT_EQ(request.method, "POST");
  EXPECT_EQ(request.path, "/v1/backends/imap-pool/127.0.0.1:143/drain");
  EXPECT_EQ(request.segments,
            (std::vector<std::string>{"v1", "backends", "imap-pool", "127.0.0.1:143", "drain"}));
  EXPECT_EQ(request.parameter("user"), "a@b c");
  EXPECT_EQ(request.parameter("x"), "1");
  EXPECT_FALSE(request.hasParameter("client"));
  EXPECT_EQ(request.authorization, "Bearer tok");
}

TEST(AdminHttp, AnEscapedSlashStaysInItsSegment) {
  RequestReader reader;
  ASSERT_EQ(read("GET /v1/backends/a%2Fb HTTP/1.0\r\n\r\n", reader), Status::Complete);
  EXPECT_EQ(reader.request().segments, (std::vector<std::string>{"v1", "backends", "a/b"}));
}

TEST(AdminHttp, WaitsForTheWholeHead) {
  RequestReader reader;
  EXPECT_EQ(reader.feed(std::string_view("GET / HTTP/1.1\r\nHost: x\r\n")), Status::Incomplete);
  EXPECT_EQ(reader.feed(std::string_view("\r\n")), Status::Complete);
  EXPECT_EQ(reader.request().segments.size(), 0u);
}

struct Refusal {
  const char* request;
  int status;
};

class AdminHttpRefuses : public testing::TestWithParam<Refusal> {};

TEST_P(AdminHttpRefuses, WithTheRightStatus) {
  RequestReader reader;
  ASSERT_EQ(read(GetParam().request, reader), Status::Refused) << GetParam().request;
  EXPECT_EQ(reader.errorStatus(), GetParam().status) << reader.errorText();
}

INSTANTIATE_TEST_SUITE_P(
    Cases, AdminHttpRefuses,
    testing::Values(Refusal{"GET / HTTP/1.1\r\n\r\n", 400}, // no Host
                    Refusal{"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400},
                    Refusal{"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400},
                    Refusal{"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505},
                    Refusal{"GET / FOO\r\nHost: a\r\n\r\n", 400},
                    Refusal{"GET http://x/ HTTP/1.1\r\nHost: a\r\n\r\n", 400},
                    Refusal{"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400},
                    Refusal{"GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n", 400},
                    Refusal{"GET /%00 HTTP/1.1\r\nHost: a\r\n\r\n", 400},
                    Refusal{"GET /?u=%4 HTTP/1.1\r\nHost: a\r\n\r\n", 400},
                    Refusal{"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n", 400},
                    Refusal{"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400},
                    Refusal{"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", 400},
                    Refusal{"GET / HTTP/1.1\r\nHost: a\x01\r\n\r\n", 400},
                    Refusal{"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: a\r\nAuthorization: "
                            "b\r\n\r\n",
                            400},
                    Refusal{"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", 413},
                    Refusal{"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400},
                    Refusal{"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x0\r\n\r\n", 400},
                    Refusal{"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                            501}));

TEST(AdminHttp, AHeadPastTheBoundIsRefusedWithoutGrowing) {
  RequestReader reader;
  std::string line = "GET / HTTP/1.1\r\nHost: a\r\nX-Pad: " + std::string(100, 'p') + "\r\n";
  Status status = Status::Incomplete;
  for (int i = 0; i < 1000 && status == Status::Incomplete; ++i) {
    status = reader.feed(line);
    line = "X-Pad: " + std::string(100, 'p') + "\r\n";
  }
  EXPECT_EQ(status, Status::Refused);
  EXPECT_EQ(reader.errorStatus(), 431);
}

TEST(AdminHttp, PercentCodingRoundTrips) {
  std::string decoded;
  for (std::string text : {"alice", "a@b.example", "x y/z?&=%", "\xc3\xa9t\xc3\xa9", "[::1]:143"}) {
    ASSERT_TRUE(percentDecode(percentEncode(text), decoded, false));
    EXPECT_EQ(decoded, text);
  }
  EXPECT_EQ(percentEncode("a b:c"), "a%20b%3Ac");
  EXPECT_FALSE(percentDecode("%", decoded, false));
  EXPECT_FALSE(percentDecode("%a", decoded, false));
  ASSERT_TRUE(percentDecode("a+b", decoded, true));
  EXPECT_EQ(decoded, "a b");
  ASSERT_TRUE(percentDecode("a+b", decoded, false));
  EXPECT_EQ(decoded, "a+b");
}

TEST(AdminHttp, ResponsesCloseAndParseBack) {
  std::string text = response(404, "application/json", "{}\n", "X-A: b\r\n");
  EXPECT_TRUE(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
  EXPECT_NE(text.find("Content-Length: 3\r\n"), std::string::npos);
  EXPECT_NE(text.find("Connection: close\r\n"), std::string::npos);
  EXPECT_NE(text.find("X-A: b\r\n\r\n{}\n"), std::string::npos);
  int status = 0;
  std::string body;
  ASSERT_TRUE(parseResponse(text, status, body));
  EXPECT_EQ(status, 404);
  EXPECT_EQ(body, "{}\n");
  EXPECT_FALSE(parseResponse("HTTP/1.1 2", status, body));
  EXPECT_FALSE(parseResponse("SMTP 220\r\n\r\n", status, body));
}

} // namespace
} // namespace admin::http
