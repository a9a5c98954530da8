"""Login mode (SPEC §5, §7 user_hash, §8 abuse control; issue 7) against real Dovecot (IMAP,
POP3) and Postfix submission (SASL through Dovecot): postern greets, captures the credentials in
every mechanism and argument form, routes by user, replays them with a mechanism the server
offers, and relays the server's verdict."""

import base64
import imaplib
import os
import poplib
import re
import shutil
import smtplib
import socket
import ssl
import sys
import tempfile
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fakes  # noqa: E402
import harness  # noqa: E402
import pki as pki_module  # noqa: E402
from harness import DOMAIN, PASSWORD, USER  # noqa: E402

# No Dovecot-side penalty or failure delay (postern's own throttle is under test), and
# x-originating-ip from IMAP ID trusted from loopback.
DOVECOT_EXTRA = """auth_failure_delay = 0
login_trusted_networks = 127.0.0.0/8
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
"""
BOB = ("bob", "two words \\ \"quoted\"")
FLEET_USERS = [(f"user{i:02d}", f"secret{i:02d}") for i in range(24)]
ALL_PASSWORDS = [PASSWORD, BOB[1], "wrong-password-1", "wrong-password-2"] + \
    [p for _, p in FLEET_USERS]

servers = None      # every mechanism
login_only = None   # a server that takes AUTH LOGIN only (no PLAIN)
fleet = []          # three Dovecots for user_hash
pki = None
pki_dir = None


def setUpModule():
    global servers, login_only, pki, pki_dir
    pki_dir = tempfile.mkdtemp(prefix="postern-pki-")
    pki = pki_module.Pki(pki_dir).create()
    try:
        servers = harness.MailServers(mechanisms="plain login xoauth2 oauthbearer",
                                      dovecot_extra=DOVECOT_EXTRA, users=[BOB]).start()
        login_only = harness.MailServers(mechanisms="login", dovecot_extra=DOVECOT_EXTRA).start()
        for _ in range(3):
            d = harness.MailServers(dovecot_extra=DOVECOT_EXTRA, users=FLEET_USERS)
            fleet.append(d)
            d.seed_mailbox()
            d.start_dovecot()
    except Exception:
        tearDownModule()
        raise


def tearDownModule():
    for d in [servers, login_only] + fleet:
        if d is not None:
            d.stop()
    shutil.rmtree(pki_dir, ignore_errors=True)


def tls_block():
    return (f'[tls]\ncertificates = [{{ cert = "{pki.path("mail-ecdsa.pem")}", '
            f'key = "{pki.path("mail-ecdsa.key")}" }}]\n')


def login_config(mail, extra_listener="", backend_extra="", limits=""):
    """Plaintext and STARTTLS login listeners for IMAP, POP3 and submission in front of `mail`."""
    text = f'[global]\nshutdown_grace = "2s"\n[metrics]\nlisten = "127.0.0.1:0"\n{tls_block()}'
    for name, protocol, pool, tls in (
            ("imap", "imap", "imap-pool", "none"), ("pop3", "pop3", "pop3-pool", "none"),
            ("submission", "smtp", "submission-pool", "none"),
            ("imap-tls", "imap", "imap-pool", "starttls"),
            ("pop3-tls", "pop3", "pop3-pool", "starttls"),
            ("submission-tls", "smtp", "submission-pool", "starttls")):
        text += (f'\n[[listener]]\nname = "{name}"\nprotocol = "{protocol}"\n'
                 f'listen = "127.0.0.1:0"\ntls = "{tls}"\nmode = "login"\nbackend = "{pool}"\n'
                 f'{extra_listener}{limits}')
    for name, port in (("imap-pool", mail.imap_port), ("pop3-pool", mail.pop3_port),
                       ("submission-pool", mail.submission_port)):
        text += (f'\n[[backend]]\nname = "{name}"\nservers = ["127.0.0.1:{port}"]\n'
                 f'connect_timeout = "3s"\nhealth = {{ interval = "1s", timeout = "1s" }}\n'
                 f'{backend_extra}')
    return text


def b64(text):
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


class Raw:
    """A line-oriented client for the argument forms the standard library does not send."""

    def __init__(self, address, source=None):
        self.sock = socket.create_connection(address, timeout=10,
                                             source_address=(source, 0) if source else None)
        self.buffer = b""

    def line(self):
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buffer)
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line.decode()

    def until(self, prefix):
        lines = []
        while True:
            lines.append(self.line())
            if lines[-1].startswith(prefix):
                return lines

    def send(self, text):
        self.sock.sendall(text.encode() if isinstance(text, str) else text)

    def close(self):
        self.sock.close()


class LoginMode(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.postern = harness.Postern(login_config(servers))
        cls.postern.start()
        # Capabilities come from the health checks: wait until every pool reported once.
        harness.wait_until(lambda: all(
            cls.postern.metric("postern_health_checks_total", backend=b,
                               server=f"127.0.0.1:{p}", result="ok") >= 1
            for b, p in (("imap-pool", servers.imap_port), ("pop3-pool", servers.pop3_port),
                         ("submission-pool", servers.submission_port))), timeout=15)

    @classmethod
    def tearDownClass(cls):
        cls.postern.cleanup()

    def address(self, name):
        return self.postern.address(name)

    def auth_count(self, listener, mechanism, result):
        return self.postern.metric("postern_auth_total", listener=listener, mechanism=mechanism,
                                   result=result)

    # --- IMAP ------------------------------------------------------------------------------
    def test_imap_capabilities_come_from_dovecot(self):
        with imaplib.IMAP4(*self.address("imap")) as imap:
            caps = set(imap.capabilities)
            # Learned from Dovecot's pre-login list, not written by postern ...
            self.assertTrue({"IMAP4REV1", "LITERAL+", "ENABLE", "IDLE"} <= caps, caps)
            # ... with the mechanisms postern captures and Dovecot offers.
            self.assertTrue({"AUTH=PLAIN", "AUTH=LOGIN", "AUTH=XOAUTH2", "AUTH=OAUTHBEARER",
                             "SASL-IR"} <= caps, caps)
            self.assertNotIn("STARTTLS", caps)
            self.assertIn(b"postern ready", imap.welcome)

    def test_imap_login_atoms_then_select(self):
        before = self.auth_count("imap", "login", "ok")
        with imaplib.IMAP4(*self.address("imap")) as imap:
            typ, data = imap.login(USER, PASSWORD)
            self.assertEqual(typ, "OK")
            self.assertIn(b"Logged in", data[0])  # Dovecot's own verdict
            typ, data = imap.select("INBOX")
            self.assertEqual((typ, int(data[0])), ("OK", len(harness.MESSAGES)))
            imap.logout()
        self.assertEqual(self.auth_count("imap", "login", "ok"), before + 1)

    def test_imap_login_quoted_and_literal_forms(self):
        user, password = BOB
        quoted = password.replace("\\", "\\\\").replace('"', '\\"')
        for form in (f'q1 LOGIN "{user}" "{quoted}"\r\n',
                     f"q1 LOGIN {{{len(user)}+}}\r\n{user} {{{len(password)}+}}\r\n{password}\r\n"):
            c = Raw(self.address("imap"))
            c.line()
            c.send(form)
            self.assertRegex(c.until("q1 ")[-1], r"^q1 OK .*Logged in")
            c.send("q2 LOGOUT\r\n")
            c.close()
        # Synchronising literals: postern says "+" before each.
        c = Raw(self.address("imap"))
        c.line()
        c.send(f"s1 LOGIN {{{len(user)}}}\r\n")
        self.assertTrue(c.line().startswith("+ "))
        c.send(f"{user} {{{len(password)}}}\r\n")
        self.assertTrue(c.line().startswith("+ "))
        c.send(f"{password}\r\n")
        self.assertRegex(c.until("s1 ")[-1], r"^s1 OK ")
        c.close()

    def test_imap_authenticate_every_mechanism_with_and_without_initial_response(self):
        plain = b64(f"\0{USER}\0{PASSWORD}")
        xoauth2 = b64(f"user={USER}\x01auth=Bearer {PASSWORD}\x01\x01")
        bearer = b64(f"n,a={USER},\x01host=localhost\x01port=143\x01auth=Bearer {PASSWORD}\x01\x01")
        cases = [("PLAIN", [plain]), ("LOGIN", [b64(USER), b64(PASSWORD)]),
                 ("XOAUTH2", [xoauth2]), ("OAUTHBEARER", [bearer])]
        for mechanism, responses in cases:
            for initial in (True, False):
                if mechanism == "LOGIN" and initial:
                    continue
                with self.subTest(mechanism=mechanism, initial=initial):
                    before = self.auth_count("imap", mechanism.lower(), "ok")
                    c = Raw(self.address("imap"))
                    c.line()
                    if initial:
                        c.send(f"m1 AUTHENTICATE {mechanism} {responses[0]}\r\n")
                    else:
                        c.send(f"m1 AUTHENTICATE {mechanism}\r\n")
                        for response in responses:
                            self.assertTrue(c.line().startswith("+"))
                            c.send(response + "\r\n")
                    self.assertRegex(c.until("m1 ")[-1], r"^m1 OK ")
                    c.send("m2 SELECT INBOX\r\n")
                    self.assertRegex(c.until("m2 ")[-1], r"^m2 OK ")
                    c.close()
                    harness.wait_until(lambda: self.auth_count(
                        "imap", mechanism.lower(), "ok") == before + 1)

    def test_imap_wrong_password_then_retry_on_the_same_session(self):
        failed = self.auth_count("imap", "login", "failed")
        with imaplib.IMAP4(*self.address("imap")) as imap:
            with self.assertRaises(imaplib.IMAP4.error) as refused:
                imap.login(USER, "wrong-password-1")
            self.assertIn("AUTHENTICATIONFAILED", str(refused.exception))  # Dovecot's words
            with self.assertRaises(imaplib.IMAP4.error):
                imap.login(USER, "wrong-password-2")
            self.assertEqual(imap.login(USER, PASSWORD)[0], "OK")
            self.assertEqual(imap.select("INBOX")[0], "OK")
            imap.logout()
        self.assertEqual(self.auth_count("imap", "login", "failed"), failed + 2)

    def test_imap_bad_input_gets_imap_errors(self):
        c = Raw(self.address("imap"))
        c.line()
        c.send("b1 AUTHENTICATE PLAIN\r\n")
        c.line()
        c.send("not*base64\r\n")
        self.assertEqual(c.line(), "b1 BAD Invalid base64 data")
        c.send("b2 AUTHENTICATE PLAIN\r\n")
        c.line()
        c.send("*\r\n")
        self.assertEqual(c.line(), "b2 BAD Authentication cancelled")
        c.send("b3 AUTHENTICATE CRAM-MD5\r\n")
        self.assertEqual(c.line(), "b3 NO [CANNOT] Unsupported authentication mechanism")
        c.send("b4 FETCH 1 BODY[]\r\n")
        self.assertEqual(c.line(), "b4 BAD Command not available before login")
        c.send("b5 LOGIN {999999}\r\n")
        self.assertEqual(c.line(), "* BYE Literal too large")
        c.close()

    def test_imap_starttls_then_login(self):
        with imaplib.IMAP4(*self.address("imap-tls")) as imap:
            self.assertIn("LOGINDISABLED", imap.capabilities)
            self.assertNotIn("AUTH=PLAIN", imap.capabilities)
            with self.assertRaises(imaplib.IMAP4.error) as refused:
                imap.login(USER, PASSWORD)
            self.assertIn("PRIVACYREQUIRED", str(refused.exception))
            imap.starttls(ssl.create_default_context(cafile=pki.path("ca.pem")))
            self.assertNotIn("LOGINDISABLED", imap.capabilities)
            self.assertIn("AUTH=PLAIN", imap.capabilities)
            self.assertEqual(imap.login(USER, PASSWORD)[0], "OK")
            imap.logout()
        self.assertGreaterEqual(
            self.postern.metric("postern_auth_total", listener="imap-tls", mechanism="login",
                                result="refused_plaintext"), 1)

    def test_imap_client_address_reaches_dovecot_through_id(self):
        c = Raw(self.address("imap"), source="127.0.0.9")
        c.line()
        c.send(f"i1 LOGIN {USER} {PASSWORD}\r\ni2 LOGOUT\r\n")
        self.assertRegex(c.until("i1 ")[-1], r"^i1 OK ")
        c.until("i2 ")
        c.close()
        harness.wait_until(lambda: re.search(
            r"Login: user=<alice>.*rip=127\.0\.0\.9", harness.read_tail(servers.dovecot_log, 200)),
            timeout=10)

    # --- POP3 ------------------------------------------------------------------------------
    def test_pop3_user_pass_and_sasl(self):
        pop = poplib.POP3(*self.address("pop3"))
        caps = pop.capa()
        self.assertIn("USER", caps)
        self.assertEqual(set(caps["SASL"]), {"PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER"})
        self.assertIn("UIDL", caps)  # Dovecot's, learned
        with self.assertRaises(poplib.error_proto):
            pop.user(USER)
            pop.pass_("wrong-password-1")
        pop.user(USER)
        self.assertTrue(pop.pass_(PASSWORD).startswith(b"+OK"))
        count, _ = pop.stat()
        self.assertEqual(count, len(harness.MESSAGES))
        pop.quit()
        for command, responses in (
                (f"AUTH PLAIN {b64(chr(0) + USER + chr(0) + PASSWORD)}", []),
                ("AUTH PLAIN", [b64(f"\0{USER}\0{PASSWORD}")]),
                (f"AUTH XOAUTH2 {b64(f'user={USER}' + chr(1) + f'auth=Bearer {PASSWORD}' + chr(1) * 2)}",
                 []),
                ("AUTH LOGIN", [b64(USER), b64(PASSWORD)])):
            with self.subTest(command=command.split()[1]):
                c = Raw(self.address("pop3"))
                c.line()
                c.send(command + "\r\n")
                for response in responses:
                    self.assertTrue(c.line().startswith("+ "))
                    c.send(response + "\r\n")
                self.assertTrue(c.line().startswith("+OK"))
                c.send("STAT\r\n")
                self.assertTrue(c.line().startswith(f"+OK {len(harness.MESSAGES)} "))
                c.close()

    def test_pop3_stls_then_login(self):
        pop = poplib.POP3(*self.address("pop3-tls"))
        self.assertNotIn("USER", pop.capa())
        pop.stls(ssl.create_default_context(cafile=pki.path("ca.pem")))
        self.assertIn("USER", pop.capa())
        pop.user(USER)
        self.assertTrue(pop.pass_(PASSWORD).startswith(b"+OK"))
        pop.quit()

    # --- SMTP submission -------------------------------------------------------------------
    def test_submission_login_then_mail_is_delivered(self):
        for mechanism in ("PLAIN", "LOGIN"):
            with self.subTest(mechanism=mechanism):
                tag = uuid.uuid4().hex
                helo = f"client-{mechanism.lower()}.tenant-b.example"
                with smtplib.SMTP(*self.address("submission")) as smtp:
                    smtp.ehlo(helo)
                    self.assertIn("auth", smtp.esmtp_features)
                    self.assertNotIn("xclient", smtp.esmtp_features)
                    code, _ = smtp.mail(f"{USER}@{DOMAIN}")
                    self.assertEqual(code, 530)  # no mail before authentication
                    with self.assertRaises(smtplib.SMTPAuthenticationError):
                        smtp.user, smtp.password = USER, "wrong-password-1"
                        smtp.auth(mechanism, getattr(smtp, f"auth_{mechanism.lower()}"))
                    smtp.user, smtp.password = USER, PASSWORD
                    code, _ = smtp.auth(mechanism, getattr(smtp, f"auth_{mechanism.lower()}"))
                    self.assertEqual(code, 235)
                    smtp.sendmail(f"{USER}@{DOMAIN}", [f"{USER}@{DOMAIN}"],
                                  f"Subject: {tag}\r\n\r\nthrough login mode\r\n")
                self.assertTrue(harness.wait_until(
                    lambda: any(tag in m for m in servers.delivered_messages()), timeout=15))
                # SPEC §13: Postfix (no XCLIENT offered here) was greeted with the client's own
                # EHLO name, so its Received: header and checks see the client's name.
                message = next(m for m in servers.delivered_messages() if tag in m)
                self.assertIn(f"from {helo} ", message)

    def test_submission_xoauth2_and_starttls(self):
        with smtplib.SMTP(*self.address("submission-tls")) as smtp:
            smtp.ehlo("client.example")
            self.assertNotIn("auth", smtp.esmtp_features)
            smtp.starttls(context=ssl.create_default_context(cafile=pki.path("ca.pem")))
            smtp.ehlo("client.example")
            self.assertIn("XOAUTH2", smtp.esmtp_features["auth"])
            code, _ = smtp.docmd("AUTH", "XOAUTH2 " +
                                 b64(f"user={USER}\x01auth=Bearer {PASSWORD}\x01\x01"))
            self.assertEqual(code, 235)
            # XCLIENT from an authenticated client is still refused (SMTP stays parsed).
            code, _ = smtp.docmd("XCLIENT", "ADDR=192.0.2.66")
            self.assertEqual(code, 550)

    def test_token_sized_lines_fit_and_a_refused_token_gets_the_servers_verdict(self):
        token = "t" * 6000  # an OAuth access token of several kilobytes
        c = Raw(self.address("imap"))
        c.line()
        c.send(f"x1 AUTHENTICATE XOAUTH2 {b64(f'user={USER}' + chr(1) + 'auth=Bearer ' + token + chr(1) * 2)}\r\n")
        # Dovecot refuses the token (it is not alice's); its XOAUTH2 error challenge is
        # answered by postern and the client sees Dovecot's tagged NO.
        self.assertRegex(c.until("x1 ")[-1], r"^x1 NO ")
        c.send(f"x2 LOGIN {USER} {PASSWORD}\r\n")
        self.assertRegex(c.until("x2 ")[-1], r"^x2 OK ")
        c.close()

    # --- what is never written -------------------------------------------------------------
    def test_zz_no_password_in_any_log_line(self):
        # (Runs last in this class: after every login above.)
        log = self.postern.log()
        self.assertIn("user=alice", log)
        for secret in ALL_PASSWORDS:
            for form in (secret, b64(secret), b64(f"\0{USER}\0{secret}")):
                self.assertNotIn(form, log)
        metrics = self.postern.scrape()
        for secret in ALL_PASSWORDS:
            self.assertNotIn(secret, metrics)


class AddressForwarding(unittest.TestCase):
    """The client address reaches the servers in login mode: XCLIENT to Postfix submission,
    a PROXY v2 header to Dovecot's haproxy listener."""

    def test_xclient_and_proxy_header(self):
        text = login_config(servers)
        text = text.replace(f'servers = ["127.0.0.1:{servers.submission_port}"]',
                            f'servers = ["127.0.0.1:{servers.submission_port}"]\n'
                            'smtp_xclient = true')
        text = text.replace(f'servers = ["127.0.0.1:{servers.pop3_port}"]',
                            f'servers = ["127.0.0.1:{servers.pop3_proxy_port}"]\n'
                            'send_proxy_protocol = "v2"')
        postern = harness.Postern(text)
        self.addCleanup(postern.cleanup)
        postern.start()
        c = Raw(postern.address("submission"), source="127.0.0.11")
        c.line()
        c.send("EHLO client.example\r\n")
        c.until("250 ")
        c.send(f"AUTH PLAIN {b64(chr(0) + USER + chr(0) + PASSWORD)}\r\n")
        self.assertTrue(c.line().startswith("235"))
        c.send(f"MAIL FROM:<{USER}@{DOMAIN}>\r\n")
        self.assertTrue(c.line().startswith("250"))
        c.send("QUIT\r\n")
        c.close()
        self.assertTrue(harness.wait_until(lambda: re.search(
            r"disconnect from \S*\[127\.0\.0\.11\].* auth=1",
            harness.read_tail(servers.postfix_log, 200)), timeout=10))
        c = Raw(postern.address("pop3"), source="127.0.0.12")
        c.line()
        c.send(f"USER {USER}\r\nPASS {PASSWORD}\r\n")
        self.assertEqual(c.line(), "+OK")
        self.assertTrue(c.line().startswith("+OK"))
        c.close()
        self.assertTrue(harness.wait_until(lambda: re.search(
            r"pop3-login: Info: Login: user=<alice>.*rip=127\.0\.0\.12",
            harness.read_tail(servers.dovecot_log, 200)), timeout=10))


class ServerDiesDuringLogin(unittest.TestCase):
    """A server that fails after the password reached it: the attempt ends with a temporary
    failure, counted as a failure, and the password is never replayed at another server."""

    def test_no_second_server_sees_the_password(self):
        passes = []

        def dies_at_pass(conn):
            conn.sendall(b"+OK fake ready\r\n")
            for line in fakes.lines(conn):
                verb = line.split(b" ")[0].strip().upper()
                if verb == b"CAPA":
                    conn.sendall(b"+OK\r\nUSER\r\n.\r\n")
                elif verb == b"USER":
                    conn.sendall(b"+OK\r\n")
                elif verb == b"PASS":
                    passes.append(line)
                    conn.close()
                    return
                else:
                    conn.sendall(b"+OK bye\r\n")
                    conn.close()
                    return

        a, b = fakes.FakeBackend(dies_at_pass), fakes.FakeBackend(dies_at_pass)
        self.addCleanup(a.stop)
        self.addCleanup(b.stop)
        config = (f'[metrics]\nlisten = "127.0.0.1:0"\n'
                  '[[listener]]\nname = "pop3"\nprotocol = "pop3"\nlisten = "127.0.0.1:0"\n'
                  'mode = "login"\nbackend = "fakes"\n'
                  f'[[backend]]\nname = "fakes"\nservers = ["127.0.0.1:{a.port}", '
                  f'"127.0.0.1:{b.port}"]\nretries = 2\n')
        postern = harness.Postern(config)
        self.addCleanup(postern.cleanup)
        postern.start()
        c = Raw(postern.address("pop3"))
        c.line()
        c.send(f"USER {USER}\r\nPASS guess-1\r\n")
        self.assertEqual(c.line(), "+OK")
        self.assertEqual(c.line(), "-ERR [SYS/TEMP] Authentication temporarily unavailable")
        c.send("CAPA\r\n")  # the session goes on
        self.assertTrue(c.line().startswith("+OK"))
        c.close()
        self.assertEqual(len(passes), 1, passes)
        self.assertEqual(postern.metric("postern_auth_total", listener="pop3", mechanism="user",
                                        result="failed"), 1)


class LoginWithoutPlain(unittest.TestCase):
    """A server that offers AUTH LOGIN only: the client's PLAIN is replayed as LOGIN."""

    def test_plain_from_the_client_is_replayed_as_login(self):
        postern = harness.Postern(login_config(login_only))
        self.addCleanup(postern.cleanup)
        postern.start()
        with smtplib.SMTP(*postern.address("submission")) as smtp:
            smtp.ehlo("client.example")
            self.assertEqual(smtp.esmtp_features["auth"].split(), ["PLAIN", "LOGIN"])
            smtp.user, smtp.password = USER, PASSWORD
            self.assertEqual(smtp.auth("PLAIN", smtp.auth_plain)[0], 235)
        harness.wait_until(lambda: "sasl_method=LOGIN" in harness.read_tail(
            login_only.postfix_log, 100), timeout=10)
        with imaplib.IMAP4(*postern.address("imap")) as imap:
            self.assertEqual(imap.authenticate(
                "PLAIN", lambda _: f"\0{USER}\0{PASSWORD}".encode())[0], "OK")
        harness.wait_until(lambda: re.search(r"Login: user=<alice>, method=LOGIN",
                                             harness.read_tail(login_only.dovecot_log, 100)))


class Throttling(unittest.TestCase):
    def test_failures_are_delayed_then_refused(self):
        limits = ('limits = { auth_failures_before_delay = 2, auth_failures_before_block = 4, '
                  'auth_block = "1m" }\n')
        postern = harness.Postern(login_config(servers, limits=limits))
        self.addCleanup(postern.cleanup)
        postern.start()
        attempts = []
        with imaplib.IMAP4(*postern.address("imap")) as imap:
            for i in range(4):
                started = time.monotonic()
                with self.assertRaises(imaplib.IMAP4.error):
                    imap.login(USER, "wrong-password-1")
                attempts.append(time.monotonic() - started)
            # The third and fourth attempts waited (1 s, then 2 s); the first two did not.
            self.assertLess(attempts[0], 1.0)
            self.assertGreaterEqual(attempts[2], 0.95)
            self.assertGreaterEqual(attempts[3], 1.95)
            seen = harness.read_tail(servers.dovecot_log, 400).count("Password mismatch")
            # Blocked now: refused by postern, even with the right password, unseen by Dovecot.
            with self.assertRaises(imaplib.IMAP4.error) as blocked:
                imap.login(USER, PASSWORD)
            self.assertIn("UNAVAILABLE", str(blocked.exception))
        # SPEC §8: the two delayed attempts and the refused one count as throttled.
        self.assertEqual(postern.metric("postern_auth_total", listener="imap", mechanism="login",
                                        result="throttled"), 3)
        self.assertEqual(postern.metric("postern_auth_total", listener="imap", mechanism="login",
                                        result="failed"), 4)
        self.assertEqual(seen, harness.read_tail(servers.dovecot_log, 400).count("Password mismatch"))
        # A client that keeps trying while blocked is closed after its third refusal.
        c = Raw(postern.address("imap"))
        c.line()
        c.send("r1 LOGIN alice x\r\nr2 LOGIN alice x\r\nr3 LOGIN alice x\r\nr4 NOOP\r\n")
        for tag in ("r1", "r2", "r3"):
            self.assertEqual(c.line(), f"{tag} NO [UNAVAILABLE] Too many failed logins, "
                                       "try again later")
        with self.assertRaises(EOFError):
            c.line()
        c.close()
        # Another address is not affected.
        c = Raw(postern.address("imap"), source="127.0.0.10")
        c.line()
        c.send(f"t1 LOGIN {USER} {PASSWORD}\r\n")
        self.assertRegex(c.until("t1 ")[-1], r"^t1 OK ")
        c.close()


class UserHash(unittest.TestCase):
    """user_hash over three Dovecots: two postern processes agree on every user's server, and
    removing a server moves only its users."""

    def fleet_config(self, members):
        names = ", ".join(f'"127.0.0.1:{d.imap_port}"' for d in members)
        return ('[metrics]\nlisten = "127.0.0.1:0"\n'
                '[[listener]]\nname = "imap"\nprotocol = "imap"\nlisten = "127.0.0.1:0"\n'
                'mode = "login"\nbackend = "fleet"\n'
                f'[[backend]]\nname = "fleet"\nservers = [{names}]\nbalance = "user_hash"\n')

    def placements(self, postern):
        """user -> the server (ip:port) postern sent their session to."""
        before = len(postern.access_lines())
        for user, password in FLEET_USERS:
            with imaplib.IMAP4(*postern.address("imap")) as imap:
                imap.login(user.upper() if user.endswith("3") else user, password)
                imap.logout()
        harness.wait_until(lambda: len(postern.access_lines()) >= before + len(FLEET_USERS))
        placed = {}
        for line in postern.access_lines()[before:]:
            user = re.search(r"user=(\S+)", line).group(1).lower()
            placed[user] = re.search(r"backend=(\S+)", line).group(1)
        return placed

    def test_same_user_same_server_and_minimal_movement(self):
        first = harness.Postern(self.fleet_config(fleet))
        second = harness.Postern(self.fleet_config(list(reversed(fleet))))  # order irrelevant
        for p in (first, second):
            self.addCleanup(p.cleanup)
            p.start()
        a = self.placements(first)
        b = self.placements(second)
        self.assertEqual(a, b)
        self.assertEqual(len(a), len(FLEET_USERS))
        self.assertEqual(len(set(a.values())), 3, a)  # all three servers get users
        # Case does not matter for the route (user03 logged in as USER03 above).
        # Remove one server: only its users move.
        removed = f"127.0.0.1:{fleet[0].imap_port}"
        third = harness.Postern(self.fleet_config(fleet[1:]))
        self.addCleanup(third.cleanup)
        third.start()
        c = self.placements(third)
        for user, server in a.items():
            if server != removed:
                self.assertEqual(c[user], server, user)
            else:
                self.assertNotEqual(c[user], removed)


if __name__ == "__main__":
    unittest.main()
