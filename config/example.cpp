// The example printed by `postern --print-example-config`; tests check that it loads cleanly.
#include "config/load.h"

namespace config {

std::string_view exampleConfig() {
  return R"toml(# postern example configuration (TOML). Every key is shown with its default.
# Check a config with:  postern --check-config postern.toml
# Durations are strings with a unit: "250ms", "5s", "30m", "1h".

[global]
workers = 1                  # event-loop threads (one libuv loop each); 0 = one per core
user = ""                    # drop privileges to this user after binding ("" = stay)
log_level = "info"           # error|warn|info|debug
log_format = "logfmt"        # logfmt|json
max_connections = 20000      # all listeners together
shutdown_grace = "30s"       # how long SIGTERM waits for sessions to finish

[metrics]
listen = "127.0.0.1:9464"    # Prometheus exposition at /metrics; "" disables

[admin]                      # runtime API, status page and `postern ctl` (SPEC §14)
listen = ""                  # e.g. "127.0.0.1:9465"; "" disables
token = ""                   # bearer token; required unless listen is a loopback address
token_file = ""              # or read the token from this file's first line

[limits]                     # defaults; a listener can override any of them in its own `limits` table
max_line_length = 8192       # bytes of one pre-authentication command/response line, CRLF included
preauth_timeout = "60s"      # until authenticated (or until TLS for SMTP relay sessions)
idle_timeout = "30m"         # no bytes either way
per_ip_max_connections = 100 # concurrent, per client address
per_ip_connect_rate = 50     # new connections per second per client address
auth_failures_before_delay = 5
auth_failure_window = "10m"
auth_max_delay = "30s"
auth_failures_before_block = 50
auth_block = "10m"

[tls]                        # client-facing TLS, shared by all TLS listeners
# The first certificate is the default; others are chosen by SNI (their SAN names).
# Relative paths are read from the folder this file is in. Add yours, then uncomment the
# TLS listeners below.
certificates = [
  # { cert = "certs/mail.example.org.pem", key = "certs/mail.example.org.key", ocsp = "" },
]
strict_sni = false           # refuse handshakes whose SNI no certificate covers
min_version = "TLSv1.2"      # TLSv1.2|TLSv1.3
ciphers = ""                 # TLS 1.2 list; "" = ECDHE + AEAD only
ciphersuites = ""            # TLS 1.3 list; "" = OpenSSL default
session_tickets = true       # with rotating keys
client_ca = ""               # if set, request and verify client certificates

[[listener]]
name = "imap"                # unique; used as the metrics label
protocol = "imap"            # pop3|imap|smtp|sieve
listen = "0.0.0.0:143"       # an IP literal and port; "[::]:143" for IPv6
tls = "none"                 # none|starttls|implicit ("starttls" once certificates are set)
require_tls = false          # default true on starttls listeners, false elsewhere
mode = "passthrough"         # passthrough|login
allow_auth = true            # false: refuse all authentication here (e.g. an MX port)
backend = "imap-pool"
accept_proxy_protocol = false  # expect a PROXY v1/v2 header from a load balancer
trusted_proxies = []         # CIDRs allowed to send that header (required with accept_proxy_protocol)
# routes = [                 # SPEC §13: other pools by TLS server name or user domain (first match)
#   { sni = "*.tenant-a.example", backend = "tenant-a-pool" },
#   { domain = "tenant-b.example", backend = "tenant-b-pool" },  # login mode only
# ]
# limits = { idle_timeout = "1h" }   # per-listener overrides of [limits]

[[listener]]
name = "pop3"
protocol = "pop3"
listen = "0.0.0.0:110"
tls = "none"
backend = "pop3-pool"

[[listener]]
name = "smtp"
protocol = "smtp"
listen = "0.0.0.0:25"
tls = "none"
allow_auth = false
backend = "smtp-pool"

# [[listener]]
# name = "imaps"
# protocol = "imap"
# listen = "0.0.0.0:993"
# tls = "implicit"
# backend = "imap-pool"

# [[listener]]
# name = "sieve"
# protocol = "sieve"          # ManageSieve (RFC 5804), standard port 4190
# listen = "0.0.0.0:4190"
# tls = "starttls"
# backend = "sieve-pool"      # a [[backend]] with your Dovecot's managesieve port

# [[listener]]
# name = "submission"
# protocol = "smtp"
# listen = "0.0.0.0:587"
# tls = "starttls"           # require_tls defaults to true here
# backend = "smtp-pool"

[[backend]]
name = "imap-pool"
servers = ["127.0.0.1:1143"] # host names are re-resolved every dns_refresh
balance = "round_robin"      # round_robin|least_conn|source_hash|user_hash
tls = "none"                 # towards the servers: none|starttls|implicit
tls_verify = true            # verify the server certificate (ca_file, or the system store)
ca_file = ""
send_proxy_protocol = "off"  # off|v1|v2: tell the server the real client address
smtp_xclient = false         # SMTP: forward the client address with XCLIENT when offered
connect_timeout = "5s"       # TCP connect, TLS and the greeting must all arrive within it
retries = 2                  # other servers tried when a connect or greeting fails
dns_refresh = "30s"
health = { interval = "5s", timeout = "2s", rise = 2, fall = 3 }

[[backend]]
name = "pop3-pool"
servers = ["127.0.0.1:1110"]

[[backend]]
name = "smtp-pool"
servers = ["127.0.0.1:1025"]
)toml";
}

} // namespace config
