"""STARTTLS on the client side (SPEC §5, issue 4): postern answers STARTTLS/STLS itself in front
of plaintext-only Dovecot and Postfix, rewrites capabilities before and after TLS, refuses
authentication before TLS, and refuses the STARTTLS command-injection probes."""

import imaplib
import os
import poplib
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import pki as pki_module  # noqa: E402
from harness import DOMAIN, PASSWORD, USER  # noqa: E402

servers = None
pki = None
pki_dir = None
postern = None


def setUpModule():
    global servers, pki, pki_dir, postern
    pki_dir = tempfile.mkdtemp(prefix="postern-pki-")
    pki = pki_module.Pki(pki_dir).create()
    servers = harness.MailServers().start()
    postern = harness.Postern(config())
    try:
        postern.start()
    except Exception:
        servers.stop()
        raise


def tearDownModule():
    postern.cleanup()
    servers.stop()
    shutil.rmtree(pki_dir, ignore_errors=True)


def config():
    text = (f'[metrics]\nlisten = "127.0.0.1:0"\n[tls]\ncertificates = [{{ cert = '
            f'"{pki.path("mail-ecdsa.pem")}", key = "{pki.path("mail-ecdsa.key")}" }}]\n')
    listeners = [
        ("imap", "imap", "imap-pool", ""),
        ("pop3", "pop3", "pop3-pool", ""),
        ("submission", "smtp", "submission-pool", ""),
        ("mx", "smtp", "smtp-pool", "require_tls = false\nallow_auth = false\n"),
    ]
    for name, protocol, pool, extra in listeners:
        text += (f'\n[[listener]]\nname = "{name}"\nprotocol = "{protocol}"\n'
                 f'listen = "127.0.0.1:0"\ntls = "starttls"\nbackend = "{pool}"\n{extra}')
    for name, port in (("imap-pool", servers.imap_port), ("pop3-pool", servers.pop3_port),
                       ("submission-pool", servers.submission_port),
                       ("smtp-pool", servers.smtp_port)):
        text += f'\n[[backend]]\nname = "{name}"\nservers = ["127.0.0.1:{port}"]\n'
    return text


def context():
    return ssl.create_default_context(cafile=pki.path("ca.pem"))


class Line:
    """A raw client: send bytes, read CRLF lines, upgrade to TLS."""

    def __init__(self, listener):
        self.sock = socket.create_connection(postern.address(listener), timeout=10)
        self.buffer = b""

    def send(self, data):
        self.sock.sendall(data)

    def line(self):
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise EOFError(self.buffer)
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line + b"\r\n"

    def until(self, predicate):
        lines = []
        while True:
            lines.append(self.line())
            if predicate(lines[-1]):
                return lines

    def rest(self):
        """Everything until the server closes."""
        data = self.buffer
        try:
            while True:
                chunk = self.sock.recv(4096)
                if not chunk:
                    return data
                data += chunk
        except (ConnectionResetError, ssl.SSLError):
            return data

    def starttls(self):
        self.sock = context().wrap_socket(self.sock, server_hostname="mail.example.test")

    def close(self):
        self.sock.close()


def counter(name, **labels):
    return postern.metric(name, **labels)


class RealClients(unittest.TestCase):
    def test_openssl_s_client_starttls_for_each_protocol(self):
        probes = [
            ("imap", "imap", b"a1 LOGIN alice wonderland\r\na2 LOGOUT\r\n", b"a1 OK"),
            ("pop3", "pop3", b"USER alice\r\nPASS wonderland\r\nQUIT\r\n", b"+OK Logged in"),
            ("submission", "smtp", b"EHLO client.example\r\nQUIT\r\n", b"250-AUTH PLAIN LOGIN"),
            ("mx", "smtp", b"EHLO client.example\r\nQUIT\r\n", b"250 "),
        ]
        for listener, kind, send, expected in probes:
            host, port = postern.address(listener)
            out = subprocess.run(["openssl", "s_client", "-connect", f"{host}:{port}",
                                  "-starttls", kind, "-CAfile", pki.path("ca.pem"), "-ign_eof",
                                  "-crlf"], input=send.replace(b"\r\n", b"\n"),
                                 capture_output=True, timeout=30)
            text = out.stdout
            self.assertIn(b"Verify return code: 0 (ok)", text, listener)
            self.assertIn(expected, text, listener)

    def test_curl_ssl_reqd(self):
        ca = pki.path("ca.pem")
        _, port = postern.address("imap")
        out = subprocess.run(["curl", "-sS", "--max-time", "20", "--ssl-reqd", "--cacert", ca,
                              "-u", f"{USER}:{PASSWORD}", f"imap://127.0.0.1:{port}/INBOX",
                              "-X", "EXAMINE INBOX"], capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("EXISTS", out.stdout)
        _, port = postern.address("pop3")
        out = subprocess.run(["curl", "-sS", "--max-time", "20", "--ssl-reqd", "--cacert", ca,
                              "-u", f"{USER}:{PASSWORD}", f"pop3://127.0.0.1:{port}/1"],
                             capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("Subject:", out.stdout)
        for listener, login in (("submission", True), ("mx", False)):
            _, port = postern.address(listener)
            subject = f"curl-starttls-{listener}-{uuid.uuid4()}"
            args = ["curl", "-sS", "--max-time", "20", "--ssl-reqd", "--cacert", ca,
                    f"smtp://127.0.0.1:{port}", "--mail-from", f"{USER}@{DOMAIN}",
                    "--mail-rcpt", f"{USER}@{DOMAIN}", "-T", "-"]
            if login:
                args[1:1] = ["-u", f"{USER}:{PASSWORD}"]
            out = subprocess.run(args, input=f"Subject: {subject}\r\n\r\nhello\r\n",
                                 capture_output=True, text=True, timeout=30)
            self.assertEqual(out.returncode, 0, f"{listener}: {out.stderr}")
            self.assertTrue(harness.wait_until(
                lambda: any(subject in m for m in servers.delivered_messages()), timeout=20))

    def test_python_clients_upgrade_and_log_in(self):
        imap = imaplib.IMAP4(*postern.address("imap"))
        imap.starttls(ssl_context=context())
        imap.login(USER, PASSWORD)
        self.assertEqual(imap.select("INBOX", readonly=True)[0], "OK")
        imap.logout()
        pop = poplib.POP3(*postern.address("pop3"))
        pop.stls(context=context())
        pop.user(USER)
        pop.pass_(PASSWORD)
        self.assertGreaterEqual(pop.stat()[0], 2)
        pop.quit()
        with smtplib.SMTP(*postern.address("submission")) as smtp:
            smtp.starttls(context=context())
            smtp.login(USER, PASSWORD)
            smtp.noop()


class Capabilities(unittest.TestCase):
    def test_imap_capabilities_before_and_after_tls(self):
        c = Line("imap")
        greeting = c.line()
        self.assertIn(b"STARTTLS", greeting)
        self.assertIn(b"LOGINDISABLED", greeting)
        self.assertNotIn(b"AUTH=", greeting)
        c.send(b"a CAPABILITY\r\n")
        lines = c.until(lambda l: l.startswith(b"a "))
        caps = lines[0].split()
        self.assertIn(b"STARTTLS", caps)
        self.assertIn(b"LOGINDISABLED", caps)
        self.assertFalse([x for x in caps if x.startswith(b"AUTH=")])
        c.send(b"b STARTTLS\r\n")
        self.assertEqual(c.line(), b"b OK Begin TLS negotiation now\r\n")
        c.starttls()
        c.send(b"c CAPABILITY\r\n")
        lines = c.until(lambda l: l.startswith(b"c "))
        caps = lines[0].split()
        self.assertNotIn(b"STARTTLS", caps)
        self.assertNotIn(b"LOGINDISABLED", caps)
        self.assertIn(b"AUTH=PLAIN", caps)
        c.close()

    def test_pop3_capa_before_and_after_tls(self):
        c = Line("pop3")
        c.line()
        c.send(b"CAPA\r\n")
        capa = c.until(lambda l: l == b".\r\n")
        self.assertIn(b"STLS\r\n", capa)
        self.assertFalse([x for x in capa if x.startswith((b"SASL", b"USER"))])
        c.send(b"STLS\r\n")
        self.assertTrue(c.line().startswith(b"+OK"))
        c.starttls()
        c.send(b"CAPA\r\n")
        capa = c.until(lambda l: l == b".\r\n")
        self.assertNotIn(b"STLS\r\n", capa)
        self.assertIn(b"USER\r\n", capa)
        self.assertTrue([x for x in capa if x.startswith(b"SASL ")])
        c.close()

    def test_smtp_ehlo_before_and_after_tls(self):
        for listener, auth_after in (("submission", True), ("mx", False)):
            c = Line(listener)
            self.assertTrue(c.line().startswith(b"220 "))
            c.send(b"EHLO client.example\r\n")
            ehlo = c.until(lambda l: l[3:4] == b" ")
            self.assertEqual(ehlo[-1], b"250 STARTTLS\r\n", listener)
            self.assertFalse([x for x in ehlo if x[4:8] == b"AUTH"], listener)
            c.send(b"STARTTLS\r\n")
            self.assertEqual(c.line(), b"220 2.0.0 Ready to start TLS\r\n")
            c.starttls()
            c.send(b"EHLO client.example\r\n")
            ehlo = c.until(lambda l: l[3:4] == b" ")
            self.assertFalse([x for x in ehlo if b"STARTTLS" in x], listener)
            self.assertEqual(bool([x for x in ehlo if x[4:8] == b"AUTH"]), auth_after, listener)
            c.close()


class RefusedBeforeTls(unittest.TestCase):
    def test_authentication_before_tls_never_reaches_the_backend(self):
        before = counter("postern_auth_total", result="refused_plaintext")
        c = Line("imap")
        c.line()
        c.send(b"a LOGIN alice wonderland\r\n")
        self.assertEqual(c.line(), b"a NO [PRIVACYREQUIRED] Use STARTTLS before authenticating\r\n")
        c.close()
        c = Line("pop3")
        c.line()
        c.send(b"USER alice\r\n")
        self.assertTrue(c.line().startswith(b"-ERR"))
        c.close()
        c = Line("submission")
        c.line()
        c.send(b"EHLO x\r\n")
        c.until(lambda l: l[3:4] == b" ")
        c.send(b"AUTH PLAIN AGFsaWNlAHdvbmRlcmxhbmQ=\r\n")
        self.assertEqual(c.line(), b"530 5.7.0 Must issue a STARTTLS command first\r\n")
        c.send(b"MAIL FROM:<alice@example.test>\r\n")
        self.assertEqual(c.line(), b"530 5.7.0 Must issue a STARTTLS command first\r\n")
        c.close()
        self.assertTrue(harness.wait_until(
            lambda: counter("postern_auth_total", result="refused_plaintext") == before + 3))
        # Dovecot never saw a login attempt: the password stayed with postern.
        with open(servers.dovecot_log, errors="replace") as f:
            self.assertNotIn("wonderland", f.read())

    def test_mx_port_accepts_mail_without_tls_and_refuses_auth(self):
        c = Line("mx")
        c.line()
        c.send(b"EHLO client.example\r\n")
        c.until(lambda l: l[3:4] == b" ")
        c.send(b"AUTH PLAIN AGFsaWNlAHdvbmRlcmxhbmQ=\r\n")
        self.assertEqual(c.line(), b"503 5.5.1 Error: authentication not enabled\r\n")
        c.close()
        subject = f"mx-plain-{uuid.uuid4()}"
        with smtplib.SMTP(*postern.address("mx")) as smtp:
            smtp.sendmail(f"bob@{DOMAIN}", [f"{USER}@{DOMAIN}"], f"Subject: {subject}\r\n\r\nx\r\n")
        self.assertTrue(harness.wait_until(
            lambda: any(subject in m for m in servers.delivered_messages()), timeout=20))


class Injection(unittest.TestCase):
    """CVE-2011-0411 and the "NO STARTTLS" classes: pipelined bytes never run inside TLS."""

    def probe(self, listener, greeting_end, setup, attack, error_prefix):
        before = counter("postern_starttls_total", listener=listener,
                         result="injection_rejected")
        c = Line(listener)
        c.until(greeting_end)
        for command, done in setup:
            c.send(command)
            c.until(done)
        c.send(attack)
        reply = c.rest()
        c.close()
        self.assertTrue(reply.startswith(error_prefix), reply)
        self.assertEqual(reply.count(b"\r\n"), 1, "one error line, then the session is closed")
        self.assertTrue(harness.wait_until(lambda: counter(
            "postern_starttls_total", listener=listener, result="injection_rejected") ==
            before + 1))

    def test_imap(self):
        self.probe("imap", lambda l: True, [], b"a STARTTLS\r\nb CAPABILITY\r\n", b"a BAD")

    def test_pop3(self):
        self.probe("pop3", lambda l: True, [], b"STLS\r\nCAPA\r\n", b"-ERR")

    def test_smtp(self):
        self.probe("submission", lambda l: True,
                   [(b"EHLO x\r\n", lambda l: l[3:4] == b" ")],
                   b"STARTTLS\r\nRSET\r\n", b"554 5.5.1")

    def test_plaintext_after_the_go_ahead_fails_the_handshake(self):
        before = counter("postern_starttls_total", listener="imap", result="handshake_failed")
        c = Line("imap")
        c.line()
        c.send(b"a STARTTLS\r\n")
        self.assertEqual(c.line(), b"a OK Begin TLS negotiation now\r\n")
        c.send(b"b CAPABILITY\r\n")
        reply = c.rest()
        c.close()
        self.assertNotIn(b"CAPABILITY", reply)
        self.assertNotIn(b"b OK", reply)
        self.assertTrue(harness.wait_until(lambda: counter(
            "postern_starttls_total", listener="imap", result="handshake_failed") == before + 1))

    def test_starttls_misuse_gets_protocol_errors(self):
        c = Line("submission")
        c.line()
        c.send(b"STARTTLS please\r\n")
        self.assertTrue(c.line().startswith(b"501 "))
        c.send(b"STARTTLS\r\n")
        self.assertTrue(c.line().startswith(b"220 "))
        c.starttls()
        c.send(b"STARTTLS\r\n")
        self.assertTrue(c.line().startswith(b"503 "))
        c.send(b"MAIL FROM:<a@example.test>\r\n")
        self.assertEqual(c.line(), b"503 5.5.1 Error: send EHLO/HELO first\r\n")
        c.close()


if __name__ == "__main__":
    unittest.main()
