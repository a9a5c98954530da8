"""Plaintext passthrough between real clients and real Dovecot/Postfix, and the metrics it
leaves behind (SPEC §1, §3, §6; issue 2)."""

import hashlib
import imaplib
import os
import poplib
import smtplib
import socket
import threading
import subprocess
import sys
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fakes  # noqa: E402
import harness  # noqa: E402
from harness import PASSWORD, USER, DOMAIN  # noqa: E402

servers = None


def setUpModule():
    global servers
    servers = harness.MailServers().start()


def tearDownModule():
    servers.stop()



def read_until_closed(sock):
    """Everything `sock` receives until the other side closes (bounded by its timeout)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    sock.close()
    return data


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class PosternCase(unittest.TestCase):
    def start_postern(self, text):
        postern = harness.Postern(text)
        self.addCleanup(postern.cleanup)
        postern.start()
        self.postern = postern
        return postern

    def assert_clean_exit(self, postern):
        self.assertEqual(postern.stop(), 0, postern.log())
        self.assertNotIn("handles still open", postern.log())

    def wait_closed(self, postern, listener, count):
        """Sessions are counted when postern sees both ends close; wait (bounded) for that."""
        return harness.wait_until(
            lambda: postern.metric("postern_sessions_closed_total", listener=listener) >= count,
            timeout=10)


class RealClientsThroughPostern(PosternCase):
    def setUp(self):
        self.start_postern(harness.passthrough_config(servers))

    def test_imap_reads_a_seeded_message(self):
        host, port = self.postern.address("imap")
        with imaplib.IMAP4(host, port) as imap:
            self.assertIn(b"Dovecot", imap.welcome)
            imap.login(USER, PASSWORD)
            status, data = imap.select("INBOX")
            self.assertEqual(status, "OK")
            self.assertGreaterEqual(int(data[0]), 2)
            status, data = imap.search(None, "SUBJECT", "Welcome")
            self.assertEqual(status, "OK")
            number = data[0].split()[0]
            status, data = imap.fetch(number, "(RFC822)")
            self.assertIn(b"this message was seeded by the test harness", data[0][1])
            imap.logout()
        self.assert_clean_exit(self.postern)

    def test_imap_over_ipv6_listener(self):
        host, port = self.postern.address("imap6")
        self.assertEqual(host, "::1")
        imap = imaplib.IMAP4(host, port)
        imap.login(USER, PASSWORD)
        self.assertEqual(imap.select("INBOX", readonly=True)[0], "OK")
        imap.logout()
        self.assertTrue(self.wait_closed(self.postern, "imap6", 1))
        line = [l for l in self.postern.access_lines() if "listener=imap6" in l][0]
        self.assertIn("client=[::1]:", line)

    def test_pop3_retrieves_with_dot_stuffing(self):
        host, port = self.postern.address("pop3")
        pop = poplib.POP3(host, port)
        self.assertTrue(pop.getwelcome().startswith(b"+OK"))
        pop.user(USER)
        pop.pass_(PASSWORD)
        count, _ = pop.stat()
        self.assertGreaterEqual(count, 2)
        bodies = [b"\r\n".join(pop.retr(i + 1)[1]) for i in range(count)]
        dots = [b for b in bodies if b"Subject: Dots" in b][0]
        # poplib removes the stuffing; the lines must come back exactly as stored.
        self.assertIn(b"\r\n.hidden line\r\n..two dots\r\n", dots)
        pop.quit()

    def test_smtp_message_is_delivered_and_readable_over_imap(self):
        host, port = self.postern.address("smtp")
        subject = f"relay-{uuid.uuid4()}"
        with smtplib.SMTP(host, port) as smtp:
            code, banner = smtp.ehlo("client.example.test")
            self.assertEqual(code, 250)
            smtp.sendmail(f"bob@{DOMAIN}", [f"{USER}@{DOMAIN}"],
                          f"From: bob@{DOMAIN}\r\nTo: {USER}@{DOMAIN}\r\nSubject: {subject}\r\n"
                          f"\r\nsent through postern\r\n.leading dot\r\n")
        delivered = harness.wait_until(
            lambda: [m for m in servers.delivered_messages() if subject in m], timeout=20)
        self.assertTrue(delivered, "Postfix never delivered the message")
        self.assertIn("\n.leading dot", delivered[0])
        imap_host, imap_port = self.postern.address("imap")
        with imaplib.IMAP4(imap_host, imap_port) as imap:
            imap.login(USER, PASSWORD)
            imap.select("INBOX")
            status, data = imap.search(None, "SUBJECT", subject)
            self.assertEqual(status, "OK")
            self.assertEqual(len(data[0].split()), 1)
            imap.logout()

    def test_curl_speaks_every_protocol(self):
        imap_host, imap_port = self.postern.address("imap")
        out = subprocess.run(
            ["curl", "-sS", "--max-time", "20", "-u", f"{USER}:{PASSWORD}",
             f"imap://{imap_host}:{imap_port}/INBOX", "-X", "EXAMINE INBOX"],
            capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("EXISTS", out.stdout)
        pop_host, pop_port = self.postern.address("pop3")
        out = subprocess.run(
            ["curl", "-sS", "--max-time", "20", "-u", f"{USER}:{PASSWORD}",
             f"pop3://{pop_host}:{pop_port}/1"], capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("Subject:", out.stdout)
        smtp_host, smtp_port = self.postern.address("smtp")
        subject = f"curl-{uuid.uuid4()}"
        message = f"From: carol@{DOMAIN}\r\nSubject: {subject}\r\n\r\nfrom curl\r\n"
        out = subprocess.run(
            ["curl", "-sS", "--max-time", "20", f"smtp://{smtp_host}:{smtp_port}",
             "--mail-from", f"carol@{DOMAIN}", "--mail-rcpt", f"{USER}@{DOMAIN}", "-T", "-"],
            input=message, capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertTrue(harness.wait_until(
            lambda: any(subject in m for m in servers.delivered_messages()), timeout=20))

    def test_submission_with_sasl_auth(self):
        host, port = self.postern.address("submission")
        subject = f"submission-{uuid.uuid4()}"
        with smtplib.SMTP(host, port) as smtp:
            smtp.ehlo("client.example.test")
            self.assertTrue(smtp.has_extn("auth"))
            smtp.login(USER, PASSWORD)
            smtp.sendmail(f"{USER}@{DOMAIN}", [f"{USER}@{DOMAIN}"],
                          f"Subject: {subject}\r\n\r\nauthenticated\r\n")
        self.assertTrue(harness.wait_until(
            lambda: any(subject in m for m in servers.delivered_messages()), timeout=20))

    def test_client_half_close_still_gets_the_reply(self):
        # The client sends LOGOUT and closes its sending side at once; Dovecot's answer must still
        # arrive before postern closes the session.
        host, port = self.postern.address("imap")
        with socket.create_connection((host, port), timeout=10) as sock:
            greeting = sock.recv(4096)
            self.assertTrue(greeting.startswith(b"* OK"))
            sock.sendall(b"a1 LOGOUT\r\n")
            sock.shutdown(socket.SHUT_WR)
            reply = b""
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
        self.assertIn(b"* BYE", reply)
        self.assertIn(b"a1 OK", reply)


class Metrics(PosternCase):
    def test_counters_equal_sessions_exactly(self):
        # Health checks run once at start, then not for an hour: the descriptor count is quiet.
        postern = self.start_postern(harness.passthrough_config(
            servers, backend_extra='health = { interval = "1h", timeout = "2s" }\n'))
        self.assertTrue(harness.wait_until(
            lambda: postern.metric("postern_health_checks_total", result="ok") == 4))
        # A check's connection is closed before its result is counted, so once the metric says 4
        # the count of descriptors is settled (the exposer's own sockets are left out).
        baseline_fds = harness.descriptors(postern)
        rounds = 4
        for _ in range(rounds):
            host, port = postern.address("imap")
            with imaplib.IMAP4(host, port) as imap:
                imap.login(USER, PASSWORD)
                imap.logout()
            host, port = postern.address("pop3")
            pop = poplib.POP3(host, port)
            pop.user(USER)
            pop.pass_(PASSWORD)
            pop.quit()
            host, port = postern.address("smtp")
            with smtplib.SMTP(host, port) as smtp:
                smtp.noop()
        for listener in ("imap", "pop3", "smtp"):
            self.assertTrue(self.wait_closed(postern, listener, rounds))
        text = postern.scrape()
        for listener, protocol in (("imap", "imap"), ("pop3", "pop3"), ("smtp", "smtp")):
            port = postern.address(listener)[1]
            labels = dict(listener=listener, protocol=protocol, port=port, tls="none")
            self.assertEqual(
                harness.parse_metric(text, "postern_connections_accepted_total", labels), rounds)
            self.assertEqual(harness.parse_metric(text, "postern_connections_active", labels), 0)
            self.assertEqual(harness.parse_metric(text, "postern_sessions_closed_total",
                                                  dict(listener=listener)), rounds)
            self.assertEqual(harness.parse_metric(
                text, "postern_session_duration_seconds_count",
                dict(listener=listener, protocol=protocol)), rounds)
            self.assertGreater(harness.parse_metric(
                text, "postern_bytes_total",
                dict(listener=listener, direction="client_to_backend")), 0)
            self.assertGreater(harness.parse_metric(
                text, "postern_bytes_total",
                dict(listener=listener, direction="backend_to_client")), 0)
            self.assertEqual(harness.parse_metric(
                text, "postern_connections_rejected_total", dict(listener=listener)), 0)
        self.assertEqual(harness.parse_metric(
            text, "postern_backend_connect_duration_seconds_count", dict(backend="imap-pool")),
            rounds)
        self.assertEqual(harness.parse_metric(text, "postern_build_info", {}), 1)
        self.assertEqual(len(postern.access_lines()), 3 * rounds)
        # Every session's descriptors were given back.
        self.assertTrue(harness.wait_until(
            lambda: harness.descriptors(postern) == baseline_fds, timeout=5),
            f"{harness.descriptors(postern)} descriptors open, {baseline_fds} at start")
        self.assert_clean_exit(postern)

    def test_exposition_passes_promtool(self):
        postern = self.start_postern(harness.passthrough_config(servers))
        host, port = postern.address("imap")
        with imaplib.IMAP4(host, port) as imap:
            imap.logout()
        self.assertTrue(self.wait_closed(postern, "imap", 1))
        if not os.path.exists("/usr/bin/promtool"):
            self.skipTest("promtool is installed by tools/install-deps.sh")
        out = subprocess.run(["promtool", "check", "metrics"], input=postern.scrape(),
                             capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)


def unavailable_config(extra_backend=""):
    dead = harness.free_port()
    text = '[metrics]\nlisten = "127.0.0.1:0"\n'
    for protocol in ("imap", "pop3", "smtp"):
        text += (f'\n[[listener]]\nname = "{protocol}"\nprotocol = "{protocol}"\n'
                 f'listen = "127.0.0.1:0"\nbackend = "dead"\n')
    text += (f'\n[[backend]]\nname = "dead"\nservers = ["127.0.0.1:{dead}"]\n'
             f'connect_timeout = "2s"\n{extra_backend}')
    return text, dead


def first_line(address):
    with socket.create_connection(address, timeout=15) as sock:
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        rest = sock.recv(4096)
    return data, rest


class BackendFailures(PosternCase):
    def test_refused_backend_gets_each_protocols_unavailable_reply(self):
        text, dead = unavailable_config()
        postern = self.start_postern(text)
        expected = {"imap": b"* BYE [UNAVAILABLE] ", "pop3": b"-ERR [SYS/TEMP] ",
                    "smtp": b"421 4.3.2 "}
        for listener, prefix in expected.items():
            line, rest = first_line(postern.address(listener))
            self.assertTrue(line.startswith(prefix), line)
            self.assertEqual(rest, b"", "the session must end after the unavailable reply")
        for listener in expected:
            self.assertTrue(self.wait_closed(postern, listener, 1))
            self.assertEqual(postern.metric("postern_sessions_closed_total", listener=listener,
                                            reason="backend_unavailable"), 1)
        # Each session tried the one server at most once; refused connects (of sessions and of
        # the health checks) soon mark it down, and then nothing is tried at all.
        refused = postern.metric("postern_backend_errors_total", backend="dead",
                                 server=f"127.0.0.1:{dead}", reason="refused")
        self.assertGreaterEqual(refused, 1)
        self.assertLessEqual(refused, 3)
        self.assertTrue(harness.wait_until(lambda: postern.metric(
            "postern_backend_up", backend="dead", server=f"127.0.0.1:{dead}") == 0))
        self.assert_clean_exit(postern)

    def test_refused_server_is_retried_on_the_next(self):
        dead = harness.free_port()
        text = ('[metrics]\nlisten = "127.0.0.1:0"\n[[listener]]\nname = "imap"\n'
                'protocol = "imap"\nlisten = "127.0.0.1:0"\nbackend = "pool"\n'
                f'[[backend]]\nname = "pool"\nservers = ["127.0.0.1:{dead}", '
                f'"127.0.0.1:{servers.imap_port}"]\n')
        postern = self.start_postern(text)
        for _ in range(4):
            with imaplib.IMAP4(*postern.address("imap")) as imap:
                imap.login(USER, PASSWORD)
                imap.logout()
        self.assertTrue(self.wait_closed(postern, "imap", 4))
        self.assertEqual(postern.metric("postern_sessions_closed_total", listener="imap",
                                        reason="backend_unavailable"), 0)
        self.assertGreaterEqual(postern.metric("postern_backend_errors_total", reason="refused"), 2)

    def test_silent_backend_hits_connect_timeout(self):
        fake = fakes.FakeBackend(fakes.silent)
        self.addCleanup(fake.stop)
        text = ('[metrics]\nlisten = "127.0.0.1:0"\n[[listener]]\nname = "pop3"\n'
                'protocol = "pop3"\nlisten = "127.0.0.1:0"\nbackend = "pool"\n'
                f'[[backend]]\nname = "pool"\nservers = ["127.0.0.1:{fake.port}"]\n'
                'connect_timeout = "500ms"\nretries = 0\n')
        postern = self.start_postern(text)
        line, _ = first_line(postern.address("pop3"))
        self.assertTrue(line.startswith(b"-ERR [SYS/TEMP]"), line)
        self.assertTrue(self.wait_closed(postern, "pop3", 1))
        self.assertEqual(postern.metric("postern_backend_errors_total", reason="timeout"), 1)

    def test_a_refusing_greeting_is_a_failed_backend(self):
        busy = fakes.FakeBackend(fakes.scripted(b"* BYE [UNAVAILABLE] too busy\r\n", []))
        self.addCleanup(busy.stop)
        text = ('[metrics]\nlisten = "127.0.0.1:0"\n[[listener]]\nname = "imap"\n'
                'protocol = "imap"\nlisten = "127.0.0.1:0"\nbackend = "pool"\n'
                f'[[backend]]\nname = "pool"\nservers = ["127.0.0.1:{busy.port}", '
                f'"127.0.0.1:{servers.imap_port}"]\nretries = 1\n')
        postern = self.start_postern(text)
        for _ in range(2):
            # Whichever server round robin tries first, the client meets Dovecot.
            with imaplib.IMAP4(*postern.address("imap")) as imap:
                self.assertIn(b"Dovecot", imap.welcome)
                imap.logout()
        self.assertGreaterEqual(postern.metric("postern_backend_errors_total",
                                               server=f"127.0.0.1:{busy.port}",
                                               reason="greeting"), 1)

    def test_backend_dying_mid_session_ends_only_that_session(self):
        fake = fakes.FakeBackend(fakes.greet_then_die)
        self.addCleanup(fake.stop)
        text = ('[metrics]\nlisten = "127.0.0.1:0"\n'
                '[[listener]]\nname = "dying"\nprotocol = "imap"\nlisten = "127.0.0.1:0"\n'
                'backend = "fake"\n'
                '[[listener]]\nname = "imap"\nprotocol = "imap"\nlisten = "127.0.0.1:0"\n'
                'backend = "real"\n'
                f'[[backend]]\nname = "fake"\nservers = ["127.0.0.1:{fake.port}"]\n'
                f'[[backend]]\nname = "real"\nservers = ["127.0.0.1:{servers.imap_port}"]\n')
        postern = self.start_postern(text)
        with socket.create_connection(postern.address("dying"), timeout=10) as sock:
            self.assertTrue(sock.recv(100).startswith(b"* OK"))
            sock.sendall(b"a NOOP\r\n")
            try:
                self.assertEqual(sock.recv(100), b"")
            except ConnectionResetError:
                pass
        self.assertTrue(self.wait_closed(postern, "dying", 1))
        self.assertEqual(postern.metric("postern_sessions_closed_total", listener="dying",
                                        reason="backend_closed"), 1)
        with imaplib.IMAP4(*postern.address("imap")) as imap:
            imap.login(USER, PASSWORD)
            imap.logout()
        self.assert_clean_exit(postern)


class Limits(PosternCase):
    def test_max_connections_rejects_with_the_protocols_line(self):
        text = harness.passthrough_config(servers, extra_global="max_connections = 2")
        postern = self.start_postern(text)
        held = []
        for _ in range(2):
            imap = imaplib.IMAP4(*postern.address("imap"))
            held.append(imap)
        line, rest = first_line(postern.address("imap"))
        self.assertTrue(line.startswith(b"* BYE [UNAVAILABLE] Too many connections"), line)
        self.assertEqual(rest, b"")
        port = postern.address("imap")[1]
        self.assertTrue(harness.wait_until(lambda: postern.metric(
            "postern_connections_rejected_total", listener="imap", reason="max_connections") == 1))
        self.assertEqual(postern.metric("postern_connections_accepted_total", listener="imap",
                                        port=port), 2)
        self.assertEqual(postern.metric("postern_connections_active", listener="imap"), 2)
        for imap in held:
            imap.logout()
        self.assertTrue(self.wait_closed(postern, "imap", 2))
        with imaplib.IMAP4(*postern.address("imap")) as imap:
            imap.noop()
        self.assert_clean_exit(postern)

    def test_per_ip_limits_answer_in_the_protocols_words(self):
        text = harness.passthrough_config(servers)
        text = text.replace("[metrics]", '[limits]\nper_ip_max_connections = 2\n\n[metrics]', 1)
        # The POP3 listener overrides the rate: one new connection a second per address.
        text = text.replace('name = "pop3"\n', 'name = "pop3"\nlimits = { per_ip_connect_rate = 1 }\n',
                            1)
        postern = self.start_postern(text)
        held = [imaplib.IMAP4(*postern.address("imap")) for _ in range(2)]
        line, rest = first_line(postern.address("imap"))
        self.assertTrue(line.startswith(b"* BYE [UNAVAILABLE] Too many connections"), line)
        self.assertEqual(rest, b"")
        for imap in held:
            imap.logout()
        # One new connection a second (the burst is one second's worth): the second in a row
        # is refused.
        def greeting():
            with socket.create_connection(postern.address("pop3"), timeout=10) as sock:
                return sock.makefile("rb").readline()
        replies = [greeting() for _ in range(2)]
        self.assertTrue(replies[0].startswith(b"+OK"), replies)
        self.assertTrue(replies[1].startswith(b"-ERR [SYS/TEMP] Too many connections"), replies)
        self.assertTrue(harness.wait_until(lambda: postern.metric(
            "postern_connections_rejected_total", listener="imap", reason="per_ip_limit") == 1))
        self.assertGreaterEqual(postern.metric("postern_connections_rejected_total",
                                               listener="pop3", reason="rate_limit"), 1)
        self.assertEqual(postern.metric("postern_connections_accepted_total", listener="imap"),
                         2, "refused connections are not counted as accepted")

    def test_preauth_timeout_ends_a_session_that_never_logs_in(self):
        text = harness.passthrough_config(servers)
        text = text.replace("[metrics]", '[limits]\npreauth_timeout = "1s"\n\n[metrics]', 1)
        postern = self.start_postern(text)
        with socket.create_connection(postern.address("imap"), timeout=15) as sock:
            self.assertTrue(sock.recv(4096).startswith(b"* OK"))
            sock.sendall(b"a NOOP\r\n")  # activity does not help: only a login does
            data = b""
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        self.assertIn(b"* BYE Autologout", data)
        # A session that logs in in time is not limited any more.
        imap = imaplib.IMAP4(*postern.address("imap"))
        # A second session, opened with it, that never logs in: once postern has ended that one
        # for its age, the logged-in session is past the same deadline (no sleep needed).
        witness = socket.create_connection(postern.address("imap"), timeout=15)
        imap.login(USER, PASSWORD)
        self.assertIn(b"* BYE Autologout", read_until_closed(witness))
        self.assertEqual(imap.noop()[0], "OK")
        imap.logout()

    def test_idle_timeout_closes_a_silent_session(self):
        text = harness.passthrough_config(servers) + '\n[limits]\nidle_timeout = "1s"\n'
        # [limits] must come before the arrays of tables in TOML; rebuild the text accordingly.
        text = text.replace('\n[limits]\nidle_timeout = "1s"\n', "")
        text = text.replace("[metrics]", '[limits]\nidle_timeout = "1s"\n\n[metrics]', 1)
        postern = self.start_postern(text)
        with socket.create_connection(postern.address("imap"), timeout=15) as sock:
            self.assertTrue(sock.recv(4096).startswith(b"* OK"))
            started = time.monotonic()
            self.assertEqual(sock.recv(4096), b"")  # postern closes; bounded by the socket timeout
            self.assertLess(time.monotonic() - started, 14)
        self.assertTrue(self.wait_closed(postern, "imap", 1))
        self.assertEqual(postern.metric("postern_sessions_closed_total", listener="imap",
                                        reason="timeout"), 1)

    def test_slow_client_holds_bounded_memory(self):
        total = 64 * 1024 * 1024
        stalled = threading.Event()
        fake = fakes.FakeBackend(fakes.flood(total, stalled=stalled))
        self.addCleanup(fake.stop)
        text = ('[metrics]\nlisten = "127.0.0.1:0"\n[[listener]]\nname = "bulk"\n'
                'protocol = "imap"\nlisten = "127.0.0.1:0"\nbackend = "flood"\n'
                f'[[backend]]\nname = "flood"\nservers = ["127.0.0.1:{fake.port}"]\n')
        postern = self.start_postern(text)
        pid = postern.process.pid
        before = rss_kib(pid)
        sock = socket.create_connection(postern.address("bulk"), timeout=30)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        # The backend floods while the client reads nothing, until its socket towards postern
        # stops taking bytes: postern has stopped reading it (backpressure engaged).
        self.assertTrue(stalled.wait(timeout=30), "the backend was never held back")
        grown = rss_kib(pid) - before
        # Backpressure: postern stops reading the backend instead of buffering 64 MiB. (The bound
        # leaves room for AddressSanitizer's quarantine of freed memory.)
        self.assertLess(grown, 16 * 1024, f"postern grew by {grown} KiB for one stalled client")
        digest = hashlib.sha256()
        expected = hashlib.sha256()
        block = bytes(range(256)) * 256
        remaining = total
        while remaining:
            n = min(len(block), remaining)
            expected.update(block[:n])
            remaining -= n
        received = 0
        greeting = b""
        while not greeting.endswith(b"\r\n"):
            greeting += sock.recv(1)
        while received < total:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            digest.update(chunk)
            received += len(chunk)
        sock.close()
        self.assertEqual(received, total)
        self.assertEqual(digest.hexdigest(), expected.hexdigest())


if __name__ == "__main__":
    unittest.main()
