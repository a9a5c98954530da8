"""TLS termination (SPEC §4, issue 3): implicit TLS on the IMAP, POP3 and SMTP listeners in
front of real Dovecot and Postfix, SNI, ECDSA and RSA, resumption, client certificates, the
ALPACA defence, OCSP stapling, TLS towards a Dovecot that requires it, certificate reload on
SIGHUP, and testssl.sh."""

import imaplib
import os
import poplib
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
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

servers = None      # plaintext "legacy" Dovecot + Postfix that postern fronts
tls_servers = None  # Dovecot + Postfix that insist on TLS, on 127.0.0.3
pki = None
pki_dir = None


def setUpModule():
    global servers, tls_servers, pki, pki_dir
    pki_dir = tempfile.mkdtemp(prefix="postern-pki-")
    os.chmod(pki_dir, 0o755)
    pki = pki_module.Pki(pki_dir).create()
    for name in os.listdir(pki_dir):
        os.chmod(os.path.join(pki_dir, name), 0o644)  # Dovecot reads its key as root anyway
    servers = harness.MailServers().start()
    try:
        tls_servers = harness.MailServers(host="127.0.0.3", pki=pki).start()
    except Exception:
        servers.stop()
        raise


def tearDownModule():
    tls_servers.stop()
    servers.stop()
    shutil.rmtree(pki_dir, ignore_errors=True)


def tls_section(extra="", certificates=None):
    certificates = certificates or [
        f'{{ cert = "{pki.path("mail-ecdsa.pem")}", key = "{pki.path("mail-ecdsa.key")}", '
        f'ocsp = "{pki.path("mail-ecdsa.ocsp.der")}" }}',
        f'{{ cert = "{pki.path("mail-rsa.pem")}", key = "{pki.path("mail-rsa.key")}" }}',
        f'{{ cert = "{pki.path("other.pem")}", key = "{pki.path("other.key")}" }}',
    ]
    return "[tls]\ncertificates = [\n  " + ",\n  ".join(certificates) + ",\n]\n" + extra


def implicit_config(tls_extra="", certificates=None):
    text = '[metrics]\nlisten = "127.0.0.1:0"\n' + tls_section(tls_extra, certificates)
    for name, protocol, pool in (("imaps", "imap", "imap-pool"), ("pop3s", "pop3", "pop3-pool"),
                                 ("smtps", "smtp", "smtp-pool")):
        text += (f'\n[[listener]]\nname = "{name}"\nprotocol = "{protocol}"\n'
                 f'listen = "127.0.0.1:0"\ntls = "implicit"\nbackend = "{pool}"\n')
    for name, port in (("imap-pool", servers.imap_port), ("pop3-pool", servers.pop3_port),
                       ("smtp-pool", servers.smtp_port)):
        text += f'\n[[backend]]\nname = "{name}"\nservers = ["127.0.0.1:{port}"]\n'
    return text


def client_context():
    return ssl.create_default_context(cafile=pki.path("ca.pem"))


def s_client(address, *args, send=b"a1 LOGOUT\r\n", timeout=20):
    """Runs openssl s_client against `address`; returns (exit code, everything it printed)."""
    host, port = address
    command = ["openssl", "s_client", "-connect", f"{host}:{port}", "-CAfile",
               pki.path("ca.pem"), "-ign_eof", *args]
    out = subprocess.run(command, input=send, capture_output=True, timeout=timeout)
    return out.returncode, (out.stdout + out.stderr).decode(errors="replace")


class PosternCase(unittest.TestCase):
    def start_postern(self, text):
        postern = harness.Postern(text)
        self.addCleanup(postern.cleanup)
        postern.start()
        return postern

    def assert_clean_exit(self, postern):
        self.assertEqual(postern.stop(), 0, postern.log())

    def handshakes(self, postern, listener, result):
        return postern.metric("postern_tls_handshakes_total", listener=listener, result=result)


class ImplicitTlsWithRealClients(PosternCase):
    @classmethod
    def setUpClass(cls):
        cls.postern = harness.Postern(implicit_config())
        cls.postern.start()

    @classmethod
    def tearDownClass(cls):
        cls.postern.cleanup()

    def test_imaps_with_imaplib(self):
        host, port = self.postern.address("imaps")
        with imaplib.IMAP4_SSL(host, port, ssl_context=client_context()) as imap:
            self.assertEqual(imap.sock.version(), "TLSv1.3")
            imap.login(USER, PASSWORD)
            status, data = imap.select("INBOX", readonly=True)
            self.assertEqual(status, "OK")
            status, data = imap.search(None, "SUBJECT", "Welcome")
            status, data = imap.fetch(data[0].split()[0], "(RFC822)")
            self.assertIn(b"seeded by the test harness", data[0][1])
            imap.logout()

    def test_pop3s_with_poplib(self):
        host, port = self.postern.address("pop3s")
        pop = poplib.POP3_SSL(host, port, context=client_context())
        pop.user(USER)
        pop.pass_(PASSWORD)
        count, _ = pop.stat()
        bodies = [b"\r\n".join(pop.retr(i + 1)[1]) for i in range(count)]
        self.assertTrue(any(b"\r\n.hidden line\r\n" in b for b in bodies))
        pop.quit()

    def test_smtps_with_smtplib_is_delivered(self):
        host, port = self.postern.address("smtps")
        subject = f"smtps-{uuid.uuid4()}"
        with smtplib.SMTP_SSL(host, port, context=client_context()) as smtp:
            smtp.sendmail(f"bob@{DOMAIN}", [f"{USER}@{DOMAIN}"],
                          f"Subject: {subject}\r\n\r\nover implicit TLS\r\n")
        self.assertTrue(harness.wait_until(
            lambda: any(subject in m for m in servers.delivered_messages()), timeout=20))

    def curl(self, url, *args, **kwargs):
        host, port = re.match(r"\w+://([^:/]+):(\d+)", url).groups()
        return subprocess.run(
            ["curl", "-sS", "--max-time", "20", "--cacert", pki.path("ca.pem"), "--resolve",
             f"mail.example.test:{port}:127.0.0.1", *args,
             url.replace(host, "mail.example.test")],
            capture_output=True, text=True, timeout=30, **kwargs)

    def test_curl_imaps_pop3s_smtps(self):
        _, port = self.postern.address("imaps")
        out = self.curl(f"imaps://127.0.0.1:{port}/INBOX", "-u", f"{USER}:{PASSWORD}", "-X",
                        "EXAMINE INBOX")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("EXISTS", out.stdout)
        _, port = self.postern.address("pop3s")
        out = self.curl(f"pop3s://127.0.0.1:{port}/1", "-u", f"{USER}:{PASSWORD}")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("Subject:", out.stdout)
        _, port = self.postern.address("smtps")
        subject = f"curl-smtps-{uuid.uuid4()}"
        out = self.curl(f"smtps://127.0.0.1:{port}", "--mail-from", f"carol@{DOMAIN}",
                        "--mail-rcpt", f"{USER}@{DOMAIN}", "-T", "-",
                        input=f"Subject: {subject}\r\n\r\nfrom curl\r\n")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertTrue(harness.wait_until(
            lambda: any(subject in m for m in servers.delivered_messages()), timeout=20))

    def test_sni_selects_the_certificate(self):
        address = self.postern.address("imaps")
        _, text = s_client(address, "-servername", "other.example.test")
        self.assertIn("subject=CN = other.example.test", text)
        self.assertIn("Verify return code: 0 (ok)", text)
        _, text = s_client(address, "-servername", "mail.example.test")
        self.assertIn("subject=CN = mail.example.test", text)
        _, text = s_client(address, "-noservername")
        self.assertIn("subject=CN = mail.example.test", text, "the first certificate is default")

    def test_ecdsa_and_rsa_side_by_side(self):
        address = self.postern.address("imaps")
        _, text = s_client(address, "-servername", "mail.example.test")
        self.assertIn("Server public key is 256 bit", text)
        _, text = s_client(address, "-servername", "mail.example.test", "-sigalgs",
                           "RSA-PSS+SHA256")
        self.assertIn("Server public key is 2048 bit", text)
        self.assertIn("Verify return code: 0 (ok)", text)

    def test_old_protocol_versions_are_refused(self):
        address = self.postern.address("pop3s")
        before = self.handshakes(self.postern, "pop3s", "failed")
        for flag in ("-tls1", "-tls1_1"):
            code, text = s_client(address, flag, "-cipher", "DEFAULT@SECLEVEL=0")
            self.assertNotEqual(code, 0, text)
            self.assertNotIn("+OK", text)
        self.assertTrue(harness.wait_until(
            lambda: self.handshakes(self.postern, "pop3s", "failed") == before + 2))
        code, text = s_client(address, "-tls1_2", send=b"QUIT\r\n")
        self.assertEqual(code, 0, text)
        self.assertIn("Protocol  : TLSv1.2", text)
        self.assertRegex(text, r"Cipher is ECDHE-ECDSA-(AES\d+-GCM-SHA\d+|CHACHA20-POLY1305)")

    def test_resumption_with_tickets(self):
        address = self.postern.address("imaps")
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        session = os.path.join(folder, "session.pem")
        for version in ("-tls1_3", "-tls1_2"):
            before = self.postern.metric("postern_tls_resumed_total", listener="imaps")
            _, text = s_client(address, version, "-sess_out", session)
            self.assertIn("New, TLSv1.", text)
            _, text = s_client(address, version, "-sess_in", session)
            self.assertIn("Reused, TLSv1.", text)
            self.assertIn("* BYE", text, "the resumed session reached Dovecot")
            self.assertTrue(harness.wait_until(lambda: self.postern.metric(
                "postern_tls_resumed_total", listener="imaps") == before + 1))

    def test_alpaca_defence(self):
        address = self.postern.address("imaps")
        code, text = s_client(address, "-alpn", "http/1.1")
        self.assertNotEqual(code, 0)
        self.assertIn("no application protocol", text)
        self.assertNotIn("* OK", text)
        code, text = s_client(address, "-alpn", "imap")
        self.assertEqual(code, 0, text)
        self.assertIn("ALPN protocol: imap", text)
        self.assertIn("* OK", text)
        code, text = s_client(self.postern.address("smtps"), "-alpn", "imap", send=b"QUIT\r\n")
        self.assertNotEqual(code, 0, "an IMAP client must not reach the SMTP port")
        code, text = s_client(self.postern.address("smtps"), "-alpn", "smtp,http/1.1",
                              send=b"QUIT\r\n")
        self.assertEqual(code, 0, text)
        self.assertIn("ALPN protocol: smtp", text)

    def test_ocsp_response_is_stapled(self):
        _, text = s_client(self.postern.address("imaps"), "-status", "-servername",
                           "mail.example.test")
        self.assertIn("OCSP Response Status: successful", text)
        self.assertIn("Cert Status: good", text)
        _, text = s_client(self.postern.address("imaps"), "-status", "-servername",
                           "other.example.test")
        self.assertIn("OCSP response: no response sent", text)

    def test_plaintext_on_a_tls_port_closes_only_that_session(self):
        before = self.handshakes(self.postern, "imaps", "failed")
        with socket.create_connection(self.postern.address("imaps"), timeout=10) as sock:
            sock.sendall(b"a1 CAPABILITY\r\n")
            reply = b""
            try:
                while True:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    reply += chunk
            except ConnectionResetError:
                pass
        self.assertNotIn(b"* OK", reply, "no backend greeting without a handshake")
        self.assertTrue(harness.wait_until(
            lambda: self.handshakes(self.postern, "imaps", "failed") == before + 1))
        self.assertIn('msg="TLS handshake failed" listener=imaps', self.postern.log())
        with imaplib.IMAP4_SSL(*self.postern.address("imaps"),
                               ssl_context=client_context()) as imap:
            imap.noop()

    def test_certificate_expiry_is_exported(self):
        text = self.postern.scrape()
        for name, key_type in (("mail-ecdsa", "ecdsa"), ("mail-rsa", "rsa"), ("other", "ecdsa")):
            end = subprocess.run(["openssl", "x509", "-in", pki.path(f"{name}.pem"), "-noout",
                                  "-enddate"], capture_output=True, text=True).stdout
            expected = time.mktime(time.strptime(end.strip().split("=", 1)[1],
                                                 "%b %d %H:%M:%S %Y GMT")) - time.timezone
            subject = "other.example.test" if name == "other" else "mail.example.test"
            value = harness.parse_metric(
                text, "postern_tls_certificate_expiry_timestamp_seconds",
                dict(certificate=subject, key_type=key_type))
            self.assertAlmostEqual(value, expected, delta=1, msg=name)


class ClientCertificates(PosternCase):
    def test_client_certificate_is_required_when_client_ca_is_set(self):
        postern = self.start_postern(implicit_config(f'client_ca = "{pki.path("ca.pem")}"\n'))
        address = postern.address("imaps")
        code, text = s_client(address)
        self.assertNotIn("* OK", text, "no certificate, no session")
        code, text = s_client(address, "-cert", pki.path("stranger.pem"), "-key",
                              pki.path("stranger.key"))
        self.assertNotIn("* OK", text, "a certificate the CA did not sign is refused")
        code, text = s_client(address, "-cert", pki.path("expired.pem"), "-key",
                              pki.path("expired.key"))
        self.assertNotIn("* OK", text, "an expired certificate is refused")
        code, text = s_client(address, "-cert", pki.path("client.pem"), "-key",
                              pki.path("client.key"))
        self.assertEqual(code, 0, text)
        self.assertIn("* OK", text)
        self.assertTrue(harness.wait_until(
            lambda: self.handshakes(postern, "imaps", "failed") == 3))
        self.assertIn('error="certificate verify failed: certificate has expired"', postern.log())
        self.assert_clean_exit(postern)


class StrictSni(PosternCase):
    def test_strict_sni_refuses_unknown_and_missing_names(self):
        postern = self.start_postern(implicit_config("strict_sni = true\n"))
        address = postern.address("pop3s")
        for args in (("-noservername",), ("-servername", "unknown.example.test")):
            code, text = s_client(address, *args, send=b"QUIT\r\n")
            self.assertNotEqual(code, 0, text)
            self.assertIn("unrecognized name", text)
        code, text = s_client(address, "-servername", "mail.example.test", send=b"QUIT\r\n")
        self.assertEqual(code, 0, text)
        self.assertIn("+OK", text)


class TlsBackends(PosternCase):
    def backend_config(self, ca_line, port_name="imaps_port", protocol="imap"):
        port = getattr(tls_servers, port_name)
        return (implicit_config().split("\n[[listener]]")[0] +
                f'\n[[listener]]\nname = "front"\nprotocol = "{protocol}"\n'
                'listen = "127.0.0.1:0"\ntls = "implicit"\nbackend = "secure"\n'
                f'\n[[listener]]\nname = "plain-front"\nprotocol = "{protocol}"\n'
                'listen = "127.0.0.1:0"\nbackend = "secure"\n'
                f'\n[[backend]]\nname = "secure"\nservers = ["127.0.0.3:{port}"]\n'
                f'tls = "implicit"\n{ca_line}\nretries = 0\n')

    def test_imap_backend_over_verified_tls(self):
        postern = self.start_postern(self.backend_config(f'ca_file = "{pki.path("ca.pem")}"'))
        # A client over TLS, and even a plaintext client, reach the TLS-only Dovecot over TLS.
        with imaplib.IMAP4_SSL(*postern.address("front"), ssl_context=client_context()) as imap:
            imap.login(USER, PASSWORD)
            self.assertEqual(imap.select("INBOX", readonly=True)[0], "OK")
            imap.logout()
        with imaplib.IMAP4(*postern.address("plain-front")) as imap:
            imap.login(USER, PASSWORD)
            imap.logout()
        expiry = postern.metric("postern_backend_certificate_expiry_timestamp_seconds",
                                backend="secure")
        self.assertGreater(expiry, time.time())
        self.assertIn("tls_version=TLSv1.3", "\n".join(postern.access_lines()))
        self.assert_clean_exit(postern)

    def test_smtp_backend_over_tls(self):
        postern = self.start_postern(self.backend_config(f'ca_file = "{pki.path("ca.pem")}"',
                                                         "smtps_port", "smtp"))
        subject = f"tls-backend-{uuid.uuid4()}"
        with smtplib.SMTP(*postern.address("plain-front")) as smtp:
            smtp.sendmail(f"bob@{DOMAIN}", [f"{USER}@{DOMAIN}"], f"Subject: {subject}\r\n\r\nx\r\n")
        self.assertTrue(harness.wait_until(
            lambda: any(subject in m for m in tls_servers.delivered_messages()), timeout=20))

    def test_unverifiable_backend_is_never_used_in_plaintext(self):
        # No ca_file: the system store does not know the test CA, so verification fails.
        postern = self.start_postern(self.backend_config(""))
        with socket.create_connection(postern.address("plain-front"), timeout=15) as sock:
            data = sock.recv(4096)
        self.assertTrue(data.startswith(b"* BYE [UNAVAILABLE]"), data)
        self.assertTrue(harness.wait_until(lambda: postern.metric(
            "postern_backend_errors_total", backend="secure", reason="tls") == 1))
        self.assertIn("certificate verify failed", postern.log())


class StartTlsBackends(PosternCase):
    """tls = "starttls" towards Dovecot and Postfix that insist on TLS (SPEC §4, §5)."""

    def config(self, servers_by_protocol, retries=0):
        text = '[metrics]\nlisten = "127.0.0.1:0"\n'
        for protocol, (host, port) in servers_by_protocol.items():
            text += (f'\n[[listener]]\nname = "{protocol}"\nprotocol = "{protocol}"\n'
                     f'listen = "127.0.0.1:0"\nbackend = "{protocol}-pool"\n'
                     f'\n[[backend]]\nname = "{protocol}-pool"\nservers = ["{host}:{port}"]\n'
                     f'tls = "starttls"\nca_file = "{pki.path("ca.pem")}"\nretries = {retries}\n')
        return text

    def test_each_protocol_upgrades_before_the_greeting_is_relayed(self):
        postern = self.start_postern(self.config({
            "imap": ("127.0.0.3", tls_servers.imap_port),
            "pop3": ("127.0.0.3", tls_servers.pop3_port),
            "smtp": ("127.0.0.3", tls_servers.smtp_port)}))
        # Dovecot refuses plaintext logins from 127.0.0.1, so a login proves TLS underneath.
        imap = imaplib.IMAP4(*postern.address("imap"))
        self.assertEqual(imap.welcome, b"* OK Dovecot (Debian) ready.",
                         "only the status line, without capabilities learned in plaintext")
        imap.login(USER, PASSWORD)
        self.assertEqual(imap.select("INBOX", readonly=True)[0], "OK")
        imap.logout()
        pop = poplib.POP3(*postern.address("pop3"))
        self.assertEqual(pop.getwelcome(), b"+OK Dovecot (Debian) ready.")
        pop.user(USER)
        pop.pass_(PASSWORD)
        pop.quit()
        subject = f"backend-starttls-{uuid.uuid4()}"
        with smtplib.SMTP(*postern.address("smtp")) as smtp:
            smtp.sendmail(f"bob@{DOMAIN}", [f"{USER}@{DOMAIN}"], f"Subject: {subject}\r\n\r\nx\r\n")
        self.assertTrue(harness.wait_until(
            lambda: any(subject in m for m in tls_servers.delivered_messages()), timeout=20))
        for protocol in ("imap", "pop3", "smtp"):
            self.assertEqual(postern.metric("postern_starttls_total", listener=protocol,
                                            side="backend", result="ok"), 1, protocol)
        with open(tls_servers.postfix_log, errors="replace") as f:
            self.assertRegex(f.read(), r"ehlo=2 starttls=1 mail=1 rcpt=1 data=1")

    def fake(self, greeting, replies):
        fake = fakes.FakeBackend(fakes.scripted(greeting, replies))
        self.addCleanup(fake.stop)
        return ("127.0.0.1", fake.port)

    def test_backends_that_do_not_upgrade_cleanly_fail_closed(self):
        cases = {
            "injects": (b"* OK [ALERT] hi\r\n",
                        [b"* CAPABILITY IMAP4rev1 STARTTLS\r\nP1 OK done\r\n",
                         b"P2 OK go\r\n* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] forged\r\n"],
                        "injection_rejected"),
            "omits": (b"* OK [ALERT] secret plaintext notice\r\n",
                      [b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\nP1 OK done\r\n"], "refused"),
            "refuses": (b"* OK hi\r\n", [b"* CAPABILITY IMAP4rev1 STARTTLS\r\nP1 OK\r\n",
                                          b"P2 NO [UNAVAILABLE] not today\r\n"], "refused"),
            "preauth": (b"* PREAUTH [ALERT] welcome back\r\n", [], None),
        }
        for name, (greeting, replies, result) in cases.items():
            postern = self.start_postern(self.config({"imap": self.fake(greeting, replies)}))
            with socket.create_connection(postern.address("imap"), timeout=15) as sock:
                data = b""
                while True:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            self.assertTrue(data.startswith(b"* BYE [UNAVAILABLE]"), f"{name}: {data!r}")
            self.assertNotIn(b"ALERT", data, name)
            self.assertNotIn(b"forged", data, name)
            self.assertTrue(harness.wait_until(lambda: postern.metric(
                "postern_sessions_closed_total", reason="backend_unavailable") == 1), name)
            if result is not None:
                self.assertEqual(postern.metric("postern_starttls_total", side="backend",
                                                result=result), 1, name)
            postern.cleanup()

    def test_a_failed_upgrade_is_retried_on_another_server(self):
        bad = self.fake(b"* OK hi\r\n", [b"* CAPABILITY IMAP4rev1\r\nP1 OK\r\n"])
        text = self.config({"imap": bad}, retries=1).replace(
            f'servers = ["{bad[0]}:{bad[1]}"]',
            f'servers = ["{bad[0]}:{bad[1]}", "127.0.0.3:{tls_servers.imap_port}"]')
        postern = self.start_postern(text)
        for _ in range(2):
            with imaplib.IMAP4(*postern.address("imap")) as imap:
                imap.login(USER, PASSWORD)
                imap.logout()
        self.assertGreaterEqual(postern.metric("postern_backend_errors_total", reason="tls"), 1)


def slow_greeting(conn):
    """Greets one second after the connection, then waits for the client to go."""
    time.sleep(1.0)
    conn.sendall(b"* OK slow\r\n")
    conn.settimeout(30)
    while conn.recv(4096):
        pass


def memory_handshake(sock, tls):
    """Drives an ssl.SSLObject's handshake over a plain socket; returns the bytes it read past
    the handshake's end (nothing, when the server said nothing more in those reads)."""
    incoming, outgoing = tls._incoming, tls._outgoing
    while True:
        try:
            tls.obj.do_handshake()
            sock.sendall(outgoing.read())
            return
        except ssl.SSLWantReadError:
            sock.sendall(outgoing.read())
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed during the handshake")
            incoming.write(data)


class MemoryTls:
    def __init__(self, context, host):
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.obj = context.wrap_bio(self._incoming, self._outgoing, server_hostname=host)


def tls_records(data):
    """The TLS record types in `data` (which must hold whole records)."""
    types = []
    while data:
        length = int.from_bytes(data[3:5], "big")
        types.append(data[0])
        data = data[5 + length:]
    return types


class TicketsTravelWithTheGreeting(PosternCase):
    """issue 18: a TLS 1.3 server's session ticket is not written on its own after the
    handshake; it waits for the greeting and goes out with it, in one write. TLS 1.2, whose
    server Finished comes last, is never held back."""

    def setUp(self):
        fake = fakes.FakeBackend(slow_greeting)
        self.addCleanup(fake.stop)
        text = ('[metrics]\nlisten = "127.0.0.1:0"\n' + tls_section() +
                '\n[[listener]]\nname = "imaps"\nprotocol = "imap"\nlisten = "127.0.0.1:0"\n'
                'tls = "implicit"\nbackend = "slow"\n'
                f'\n[[backend]]\nname = "slow"\nservers = ["127.0.0.1:{fake.port}"]\n')
        self.postern = self.start_postern(text)

    def connect(self, maximum):
        host, port = self.postern.address("imaps")
        context = client_context()
        context.maximum_version = maximum
        sock = socket.create_connection((host, port), timeout=10)
        self.addCleanup(sock.close)
        tls = MemoryTls(context, host)
        memory_handshake(sock, tls)
        return sock, tls

    def test_the_tls13_ticket_waits_for_the_greeting(self):
        sock, tls = self.connect(ssl.TLSVersion.TLSv1_3)
        self.assertEqual(tls.obj.version(), "TLSv1.3")
        sock.settimeout(0.5)
        with self.assertRaises(socket.timeout, msg="the ticket was sent before the greeting"):
            sock.recv(65536)
        sock.settimeout(10)
        data = sock.recv(65536)
        # The ticket record and the greeting record arrive in one read: one write.
        self.assertEqual(tls_records(data), [23, 23], data)
        tls._incoming.write(data)
        self.assertEqual(tls.obj.read(1024), b"* OK slow\r\n")
        self.assertTrue(tls.obj.session is not None and tls.obj.session.has_ticket,
                        "the held ticket reached the client")

    def test_tls12_is_not_held_back(self):
        started = time.monotonic()
        sock, tls = self.connect(ssl.TLSVersion.TLSv1_2)
        self.assertEqual(tls.obj.version(), "TLSv1.2")
        self.assertLess(time.monotonic() - started, 0.9,
                        "the TLS 1.2 handshake finished before the backend greeted")
        data = b""
        while b"* OK slow" not in data:
            chunk = sock.recv(65536)
            self.assertTrue(chunk, "closed before the greeting")
            tls._incoming.write(chunk)
            try:
                data += tls.obj.read(1024)
            except ssl.SSLWantReadError:
                pass
        self.assertEqual(data, b"* OK slow\r\n")


class Matrix(PosternCase):
    """SPEC §4: client side {none, starttls, implicit} x backend side {none, starttls, implicit}
    for all three protocols, each cell a real login (or delivery) through postern."""

    MODES = ("none", "starttls", "implicit")

    def backend_address(self, protocol, mode):
        if mode == "none":
            return "127.0.0.1", {"imap": servers.imap_port, "pop3": servers.pop3_port,
                                 "smtp": servers.smtp_port}[protocol]
        ports = {"starttls": {"imap": tls_servers.imap_port, "pop3": tls_servers.pop3_port,
                              "smtp": tls_servers.smtp_port},
                 "implicit": {"imap": tls_servers.imaps_port, "pop3": tls_servers.pop3s_port,
                              "smtp": tls_servers.smtps_port}}
        return "127.0.0.3", ports[mode][protocol]

    def test_every_combination(self):
        text = '[metrics]\nlisten = "127.0.0.1:0"\n' + tls_section()
        for protocol in ("imap", "pop3", "smtp"):
            for backend in self.MODES:
                host, port = self.backend_address(protocol, backend)
                text += (f'\n[[backend]]\nname = "{protocol}-{backend}"\n'
                         f'servers = ["{host}:{port}"]\ntls = "{backend}"\n'
                         f'ca_file = "{pki.path("ca.pem")}"\nretries = 0\n')
                for client in self.MODES:
                    text += (f'\n[[listener]]\nname = "{protocol}-{client}-{backend}"\n'
                             f'protocol = "{protocol}"\nlisten = "127.0.0.1:0"\n'
                             f'tls = "{client}"\nbackend = "{protocol}-{backend}"\n')
                    if client == "starttls" and protocol == "smtp":
                        text += "require_tls = false\n"
        postern = self.start_postern(text)
        failures = []
        for protocol in ("imap", "pop3", "smtp"):
            for client in self.MODES:
                for backend in self.MODES:
                    name = f"{protocol}-{client}-{backend}"
                    try:
                        getattr(self, protocol)(postern.address(name), client, backend)
                    except Exception as error:  # collect every cell, then report
                        failures.append(f"{name}: {error!r}")
        self.assertEqual(failures, [])
        # The health checks spoke each backend TLS mode too, STARTTLS included.
        for protocol in ("imap", "pop3", "smtp"):
            for backend in self.MODES:
                self.assertTrue(harness.wait_until(lambda: postern.metric(
                    "postern_health_checks_total", backend=f"{protocol}-{backend}",
                    result="ok") >= 1), f"{protocol}-{backend}")
        self.assertEqual(postern.metric("postern_health_checks_total", result="failed"), 0)

    def imap(self, address, client, backend):
        imap = (imaplib.IMAP4_SSL(*address, ssl_context=client_context()) if client == "implicit"
                else imaplib.IMAP4(*address))
        if client == "starttls":
            imap.starttls(ssl_context=client_context())
        imap.login(USER, PASSWORD)
        assert imap.select("INBOX", readonly=True)[0] == "OK"
        imap.logout()

    def pop3(self, address, client, backend):
        pop = (poplib.POP3_SSL(*address, context=client_context()) if client == "implicit"
               else poplib.POP3(*address))
        if client == "starttls":
            pop.stls(context=client_context())
        pop.user(USER)
        pop.pass_(PASSWORD)
        assert pop.stat()[0] >= 2
        pop.quit()

    def smtp(self, address, client, backend):
        subject = f"matrix-{client}-{backend}-{uuid.uuid4()}"
        smtp = (smtplib.SMTP_SSL(*address, context=client_context()) if client == "implicit"
                else smtplib.SMTP(*address))
        if client == "starttls":
            smtp.starttls(context=client_context())
        smtp.sendmail(f"bob@{DOMAIN}", [f"{USER}@{DOMAIN}"], f"Subject: {subject}\r\n\r\nx\r\n")
        smtp.quit()
        where = servers if backend == "none" else tls_servers
        assert harness.wait_until(
            lambda: any(subject in m for m in where.delivered_messages()), timeout=20), subject


class Reload(PosternCase):
    def test_sighup_reloads_certificates_without_dropping_sessions(self):
        postern = self.start_postern(implicit_config())
        address = postern.address("imaps")
        held = imaplib.IMAP4_SSL(*address, ssl_context=client_context())
        held.login(USER, PASSWORD)
        _, text = s_client(address, "-noservername")
        self.assertIn("subject=CN = mail.example.test", text)
        # Make "other" the default certificate and reload.
        swapped = implicit_config(certificates=[
            f'{{ cert = "{pki.path("other.pem")}", key = "{pki.path("other.key")}" }}',
            f'{{ cert = "{pki.path("mail-ecdsa.pem")}", key = "{pki.path("mail-ecdsa.key")}" }}',
        ])
        with open(postern.config_path, "w") as f:
            f.write(swapped)
        postern.process.send_signal(signal.SIGHUP)
        self.assertTrue(harness.wait_until(lambda: postern.metric(
            "postern_config_reloads_total", result="ok") == 1))
        _, text = s_client(address, "-noservername")
        self.assertIn("subject=CN = other.example.test", text)
        self.assertEqual(postern.metric("postern_tls_certificate_expiry_timestamp_seconds",
                                        key_type="rsa"), 0, "the RSA certificate was dropped")
        self.assertEqual(held.select("INBOX", readonly=True)[0], "OK", "old session still runs")
        # A broken config is refused and the running certificates stay.
        with open(postern.config_path, "w") as f:
            f.write(swapped.replace(pki.path("other.key"), pki.path("mail-rsa.key")))
        postern.process.send_signal(signal.SIGHUP)
        self.assertTrue(harness.wait_until(lambda: postern.metric(
            "postern_config_reloads_total", result="failed") == 1))
        self.assertIn("does not match certificate", postern.log())
        _, text = s_client(address, "-noservername")
        self.assertIn("subject=CN = other.example.test", text)
        held.logout()
        self.assert_clean_exit(postern)


class Counters(PosternCase):
    def test_handshake_counters_are_exact(self):
        postern = self.start_postern(implicit_config())
        rounds = 5
        for _ in range(rounds):
            with imaplib.IMAP4_SSL(*postern.address("imaps"), ssl_context=client_context()) as m:
                m.logout()
        s_client(postern.address("imaps"), "-alpn", "nope")
        self.assertTrue(harness.wait_until(lambda: postern.metric(
            "postern_sessions_closed_total", listener="imaps") == rounds + 1))
        text = postern.scrape()
        self.assertEqual(harness.parse_metric(text, "postern_tls_handshakes_total", dict(
            listener="imaps", result="ok", version="TLSv1.3")), rounds)
        self.assertEqual(harness.parse_metric(text, "postern_tls_handshakes_total", dict(
            listener="imaps", result="failed", version="none")), 1)
        self.assertEqual(harness.parse_metric(
            text, "postern_tls_handshake_duration_seconds_count", dict(listener="imaps")),
            rounds + 1)
        self.assertEqual(harness.parse_metric(text, "postern_sessions_closed_total", dict(
            listener="imaps", reason="tls_error")), 1)
        self.assertEqual(harness.parse_metric(text, "postern_connections_accepted_total", dict(
            listener="imaps", tls="implicit")), rounds + 1)
        out = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                             text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)


class TestSsl(PosternCase):
    def test_testssl_finds_no_weakness(self):
        testssl = shutil.which("testssl") or shutil.which("testssl.sh")
        if testssl is None:
            self.fail("testssl.sh is installed by tools/install-deps.sh")
        postern = self.start_postern(implicit_config())
        host, port = postern.address("imaps")
        out = subprocess.run([testssl, "--quiet", "--color", "0", "-p", "-s", "-U",
                              f"{host}:{port}"], capture_output=True, text=True, timeout=300)
        text = out.stdout
        for line in ("SSLv2      not offered", "SSLv3      not offered",
                     "TLS 1      not offered", "TLS 1.1    not offered",
                     "TLS 1.2    offered (OK)", "TLS 1.3    offered (OK)",
                     "NULL ciphers (no encryption)                  not offered (OK)",
                     "Obsolete CBC ciphers (AES, ARIA etc.)         not offered",
                     "Triple DES Ciphers / IDEA                     not offered"):
            self.assertIn(line, text)
        self.assertNotRegex(text, r"(?<!not )VULNERABLE", text)
        self.assertNotIn("potentially VULNERABLE", text)


if __name__ == "__main__":
    unittest.main()
