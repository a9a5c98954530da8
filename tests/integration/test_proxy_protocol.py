"""Client-address forwarding (SPEC §5, issue 4): PROXY protocol v1/v2 accepted from trusted load
balancers and sent to real Dovecot and Postfix, which log the client address postern was told."""

import os
import shutil
import socket
import ssl
import struct
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
# Documentation addresses (RFC 5737): only ever written inside PROXY headers, never connected to.
CLIENT_V4 = "192.0.2.7"
CLIENT_V6 = "2001:db8::7"


def setUpModule():
    global servers, pki, pki_dir
    pki_dir = tempfile.mkdtemp(prefix="postern-pki-")
    pki = pki_module.Pki(pki_dir).create()
    servers = harness.MailServers().start()


def tearDownModule():
    servers.stop()
    shutil.rmtree(pki_dir, ignore_errors=True)


def v1(source, port=40000, destination="127.0.0.1", dport=143):
    family = "TCP6" if ":" in source else "TCP4"
    return f"PROXY {family} {source} {destination} {port} {dport}\r\n".encode()


def v2(source, port=40001, destination="127.0.0.1", dport=993):
    body = (socket.inet_pton(socket.AF_INET, source) + socket.inet_pton(socket.AF_INET, destination)
            + struct.pack("!HH", port, dport))
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body


def config(trusted='["127.0.0.0/8"]'):
    text = (f'[metrics]\nlisten = "127.0.0.1:0"\n[tls]\ncertificates = [{{ cert = '
            f'"{pki.path("mail-ecdsa.pem")}", key = "{pki.path("mail-ecdsa.key")}" }}]\n')
    listeners = [("imap", "imap", "none", "imap-v2"), ("imaps", "imap", "implicit", "imap-v2"),
                 ("pop3", "pop3", "none", "pop3-v1"), ("smtp", "smtp", "none", "smtp-v2"),
                 ("smtp-xclient", "smtp", "none", "smtp-xclient")]
    for name, protocol, tls, pool in listeners:
        text += (f'\n[[listener]]\nname = "{name}"\nprotocol = "{protocol}"\n'
                 f'listen = "127.0.0.1:0"\ntls = "{tls}"\nbackend = "{pool}"\n'
                 f'accept_proxy_protocol = true\ntrusted_proxies = {trusted}\n')
    for name, port, version in (("imap-v2", servers.imap_proxy_port, "v2"),
                                ("pop3-v1", servers.pop3_proxy_port, "v1"),
                                ("smtp-v2", servers.smtp_proxy_port, "v2")):
        text += (f'\n[[backend]]\nname = "{name}"\nservers = ["127.0.0.1:{port}"]\n'
                 f'send_proxy_protocol = "{version}"\n')
    text += (f'\n[[backend]]\nname = "smtp-xclient"\nservers = ["127.0.0.1:{servers.smtp_port}"]\n'
             'smtp_xclient = true\n')
    return text


def connect_with_header(address, header):
    sock = socket.create_connection(address, timeout=10)
    sock.sendall(header)
    return sock


class Forwarding(unittest.TestCase):
    def setUp(self):
        self.postern = harness.Postern(config())
        self.addCleanup(self.postern.cleanup)
        self.postern.start()

    def dovecot_log(self):
        with open(servers.dovecot_log, errors="replace") as f:
            return f.read()

    def test_imap_client_address_reaches_dovecot_via_proxy_v2(self):
        sock = connect_with_header(self.postern.address("imap"), v1(CLIENT_V4, 40000))
        f = sock.makefile("rb")
        self.assertTrue(f.readline().startswith(b"* OK"))
        sock.sendall(f"a LOGIN {USER} {PASSWORD}\r\n".encode())
        line = f.readline()
        while line.startswith(b"* "):
            line = f.readline()
        self.assertTrue(line.startswith(b"a OK"), line)
        sock.sendall(b"b LOGOUT\r\n")
        f.read()
        f.close()
        sock.close()
        self.assertTrue(harness.wait_until(
            lambda: f"rip={CLIENT_V4}" in self.dovecot_log(), timeout=10), self.dovecot_log()[-2000:])
        self.assertTrue(harness.wait_until(
            lambda: any(f"client={CLIENT_V4}:40000" in l for l in self.postern.access_lines())))

    def test_implicit_tls_after_a_v2_header_from_the_balancer(self):
        sock = connect_with_header(self.postern.address("imaps"), v2(CLIENT_V4, 40001))
        tls = ssl.create_default_context(cafile=pki.path("ca.pem")).wrap_socket(
            sock, server_hostname="mail.example.test")
        f = tls.makefile("rb")
        self.assertTrue(f.readline().startswith(b"* OK"))
        tls.sendall(f"a LOGIN {USER} {PASSWORD}\r\nb LOGOUT\r\n".encode())
        self.assertIn(b"a OK", f.read())
        f.close()
        tls.close()
        self.assertTrue(harness.wait_until(
            lambda: any(f"client={CLIENT_V4}:40001" in l and "tls_version=TLSv1.3" in l
                        for l in self.postern.access_lines())))

    def test_pop3_via_proxy_v1_to_dovecot(self):
        sock = connect_with_header(self.postern.address("pop3"), v1(CLIENT_V6, 40002, "::1", 110))
        f = sock.makefile("rb")
        self.assertTrue(f.readline().startswith(b"+OK"))
        sock.sendall(f"USER {USER}\r\nPASS {PASSWORD}\r\nQUIT\r\n".encode())
        self.assertIn(b"+OK Logged in", f.read())
        sock.close()
        self.assertTrue(harness.wait_until(
            lambda: f"rip={CLIENT_V6}" in self.dovecot_log(), timeout=10))

    def test_smtp_client_address_reaches_postfix(self):
        sock = connect_with_header(self.postern.address("smtp"), v1(CLIENT_V4, 40003))
        f = sock.makefile("rb")
        self.assertTrue(f.readline().startswith(b"220 "))
        subject = f"proxy-{uuid.uuid4()}"
        sock.sendall(f"EHLO client.example\r\nMAIL FROM:<bob@{DOMAIN}>\r\n"
                     f"RCPT TO:<{USER}@{DOMAIN}>\r\nDATA\r\n".encode())
        while not f.readline().startswith(b"354"):
            pass
        sock.sendall(f"Subject: {subject}\r\n\r\nx\r\n.\r\nQUIT\r\n".encode())
        f.read()
        sock.close()
        self.assertTrue(harness.wait_until(lambda: f"[{CLIENT_V4}]" in open(
            servers.postfix_log, errors="replace").read(), timeout=10))
        self.assertTrue(harness.wait_until(
            lambda: any(subject in m for m in servers.delivered_messages()), timeout=20))


    def test_smtp_xclient_tells_postfix_the_client_address(self):
        client = "192.0.2.8"
        sock = connect_with_header(self.postern.address("smtp-xclient"), v1(client, 40004))
        f = sock.makefile("rb")
        greeting = f.readline()
        self.assertTrue(greeting.startswith(b"220 "), greeting)
        subject = f"xclient-{uuid.uuid4()}"
        sock.sendall(b"EHLO client.example\r\n")
        ehlo = [f.readline()]
        while ehlo[-1][3:4] == b"-":
            ehlo.append(f.readline())
        self.assertFalse([l for l in ehlo if b"XCLIENT" in l], "XCLIENT is postern's, not the client's")
        sock.sendall(b"XCLIENT ADDR=203.0.113.9\r\n")
        self.assertTrue(f.readline().startswith(b"550 "), "a client may not rename itself")
        sock.sendall(f"MAIL FROM:<bob@{DOMAIN}>\r\nRCPT TO:<{USER}@{DOMAIN}>\r\nDATA\r\n".encode())
        while not f.readline().startswith(b"354"):
            pass
        sock.sendall(f"Subject: {subject}\r\n\r\nx\r\n.\r\nQUIT\r\n".encode())
        f.read()
        f.close()
        sock.close()
        delivered = harness.wait_until(
            lambda: [m for m in servers.delivered_messages() if subject in m], timeout=20)
        self.assertTrue(delivered)
        self.assertIn(f"[{client}]", delivered[0], "Postfix's Received: header names the client")
        self.assertNotIn("203.0.113.9", delivered[0])


class Refusals(unittest.TestCase):
    def test_untrusted_sender_and_bad_headers_are_refused(self):
        postern = harness.Postern(config(trusted='["10.0.0.0/8"]'))
        self.addCleanup(postern.cleanup)
        postern.start()
        sock = connect_with_header(postern.address("imap"), v1(CLIENT_V4))
        try:
            self.assertEqual(sock.recv(100), b"", "an untrusted peer may not claim an address")
        except ConnectionResetError:
            pass
        sock.close()
        self.assertTrue(harness.wait_until(lambda: postern.metric(
            "postern_connections_rejected_total", listener="imap", reason="proxy_header") == 1))
        self.assertEqual(postern.metric("postern_connections_accepted_total", listener="imap"), 0)

        trusting = harness.Postern(config())
        self.addCleanup(trusting.cleanup)
        trusting.start()
        for garbage in (b"GET / HTTP/1.0\r\n\r\n", b"PROXY TCP4 1.2.3.4\r\n",
                        b"PROXY TCP4 999.1.1.1 1.1.1.1 1 2\r\n"):
            sock = connect_with_header(trusting.address("pop3"), garbage)
            try:
                self.assertEqual(sock.recv(100), b"")
            except ConnectionResetError:
                pass
            sock.close()
        self.assertTrue(harness.wait_until(lambda: trusting.metric(
            "postern_connections_rejected_total", listener="pop3", reason="proxy_header") == 3))
        # The listener still serves a well-formed session.
        sock = connect_with_header(trusting.address("pop3"), v1(CLIENT_V4))
        self.assertTrue(sock.makefile("rb").readline().startswith(b"+OK"))
        sock.close()


if __name__ == "__main__":
    unittest.main()
