"""ManageSieve through postern (SPEC §12, issue 15) against real Dovecot managesieved, with the
real client sieve-connect (Debian) uploading, listing, activating and downloading a script
through every listener kind: passthrough and login mode, STARTTLS and implicit TLS; towards a
plaintext Dovecot, a Dovecot that insists on TLS (backend STARTTLS and backend implicit TLS)
and one that reads a PROXY header. Raw sessions check what sieve-connect does not show: the
capability lists before and after TLS, require_tls, STARTTLS injection, literals, control bytes.
Two Dovecots on 127.0.0.2 and 127.0.0.3 show user_hash sending a user's sieve session to the
server their IMAP session goes to.

sieve-connect speaks STARTTLS only; for the implicit-TLS listeners it talks through a small
TLS forwarder (a thread of this test that wraps each connection in TLS, as stunnel's client
mode would). Needs: dovecot with dovecot-managesieved and dovecot-sieve, sieve-connect. All on
loopback; every client run is bounded; setUpModule/tearDownModule start and stop everything."""

import base64
import os
import select
import shutil
import socket
import ssl
import sys
import tempfile
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import pki as pki_module  # noqa: E402
from harness import PASSWORD, USER  # noqa: E402

CLIENT_TIMEOUT = 60
SCRIPT = 'require "fileinto";\r\nif header :contains "subject" "postern" {\r\n  fileinto "INBOX";\r\n}\r\n'
PLAIN = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
USERS = [(f"user{i}", f"pw{i}") for i in range(8)]

servers = None  # plaintext Dovecot
secure = None  # Dovecot with ssl = required
pair = []  # two Dovecots on 127.0.0.2 / 127.0.0.3 for user_hash
pki = None
pki_dir = None
postern = None


def setUpModule():
    global servers, secure, pki, pki_dir, postern
    if shutil.which("dovecot") is None or not os.path.exists("/usr/lib/dovecot/managesieve"):
        raise unittest.SkipTest("dovecot-managesieved is not installed")
    if shutil.which("sieve-connect") is None:
        raise unittest.SkipTest("sieve-connect is not installed")
    pki_dir = tempfile.mkdtemp(prefix="postern-pki-")
    pki = pki_module.Pki(pki_dir).create()
    try:
        # Trusting postern's address, Dovecot offers postern XCLIENT (and would believe one a
        # client slipped through): postern must hide it and use it itself in login mode.
        servers = harness.MailServers(users=USERS,
                                      dovecot_extra="login_trusted_networks = 127.0.0.0/8")
        servers.seed_mailbox()
        servers.start_dovecot()
        secure = harness.MailServers(pki=pki)
        secure.seed_mailbox()
        secure.start_dovecot()
        for host in ("127.0.0.2", "127.0.0.3"):
            d = harness.MailServers(host=host, users=USERS)
            pair.append(d)
            d.seed_mailbox()
            d.start_dovecot()
        postern = harness.Postern(config())
        postern.start()
        # Login mode learns the servers' capabilities from the health checks: every pool's
        # servers answered one before a test starts.
        pools = {"sieve-pool": 1, "secure-starttls": 1, "secure-implicit": 1, "sieve-proxied": 1,
                 "sieve-hash": 2, "imap-hash": 2}
        harness.wait_for_health(postern, pools)
    except Exception:
        tearDownModule()
        raise


def tearDownModule():
    harness.stop_everything(postern, [servers, secure] + pair, pki_dir)


LISTENERS = [
    # name, tls, mode, pool, extra
    ("sieve", "starttls", "passthrough", "sieve-pool", ""),
    ("sieves", "implicit", "passthrough", "sieve-pool", ""),
    ("sieve-login", "starttls", "login", "sieve-pool", ""),
    ("sieves-login", "implicit", "login", "sieve-pool", ""),
    ("sieve-open", "starttls", "passthrough", "sieve-pool", "require_tls = false\n"),
    ("sieve-backend-starttls", "starttls", "passthrough", "secure-starttls", ""),
    ("sieve-backend-tls", "implicit", "passthrough", "secure-implicit", ""),
    ("sieve-proxy", "starttls", "login", "sieve-proxied", ""),
    ("sieve-hash", "starttls", "login", "sieve-hash", ""),
    ("imap-hash", "starttls", "login", "imap-hash", ""),
]


def config():
    text = (f'[global]\nshutdown_grace = "2s"\n[metrics]\nlisten = "127.0.0.1:0"\n'
            f'[tls]\ncertificates = [{{ cert = "{pki.path("mail-ecdsa.pem")}", '
            f'key = "{pki.path("mail-ecdsa.key")}" }}]\n')
    for name, tls, mode, pool, extra in LISTENERS:
        protocol = "imap" if name.startswith("imap") else "sieve"
        text += (f'\n[[listener]]\nname = "{name}"\nprotocol = "{protocol}"\n'
                 f'listen = "127.0.0.1:0"\ntls = "{tls}"\nmode = "{mode}"\nbackend = "{pool}"\n'
                 f'{extra}')
    health = 'health = { interval = "1s", timeout = "1s" }\n'
    ca = f'ca_file = "{pki.path("ca.pem")}"\n'
    pools = [
        ("sieve-pool", [f"127.0.0.1:{servers.sieve_port}"], health),
        ("secure-starttls", [f"127.0.0.1:{secure.sieve_port}"],
         f'tls = "starttls"\n{ca}{health}'),
        ("secure-implicit", [f"127.0.0.1:{secure.sieves_port}"],
         f'tls = "implicit"\n{ca}{health}'),
        ("sieve-proxied", [f"127.0.0.1:{servers.sieve_proxy_port}"],
         f'send_proxy_protocol = "v2"\n{health}'),
        ("sieve-hash", [f"{d.host}:{d.sieve_port}" for d in pair],
         f'balance = "user_hash"\n{health}'),
        ("imap-hash", [f"{d.host}:{d.imap_port}" for d in reversed(pair)],
         f'balance = "user_hash"\n{health}'),
    ]
    # connect_timeout also bounds a login's verdict: Dovecot's first login starts an auth worker
    # and a managesieve process, which on a loaded machine has taken more than 3 s.
    for name, addresses, extra in pools:
        listed = ", ".join(f'"{a}"' for a in addresses)
        text += (f'\n[[backend]]\nname = "{name}"\nservers = [{listed}]\n'
                 f'connect_timeout = "10s"\n{extra}')
    return text


class TlsForwarder:
    """Accepts plaintext connections on loopback and relays each over TLS to `target` (what
    stunnel's client mode does for clients that cannot speak implicit TLS themselves). One
    thread per connection does all of its reads and writes: an SSL object must never be read
    in one thread while another writes it (OpenSSL forbids it; see test_real_clients.py)."""

    def __init__(self, target):
        self.target = target
        self.context = ssl.create_default_context(cafile=pki.path("ca.pem"))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.threads = []
        self.sockets = []
        self.stopping = False
        self.accepter = threading.Thread(target=self.accept, daemon=True)
        self.accepter.start()

    def accept(self):
        while not self.stopping:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self.relay, args=(client,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def relay(self, client):
        upstream = None
        try:
            upstream = self.context.wrap_socket(socket.create_connection(self.target, timeout=10),
                                                server_hostname="localhost")
            self.sockets += [client, upstream]
            upstream.setblocking(False)
            while not self.stopping:
                readable = [upstream] if upstream.pending() else \
                    select.select([client, upstream], [], [], 30)[0]
                if not readable:
                    return
                for source in readable:
                    if source is client:
                        data = client.recv(65536)
                        if not data:
                            return
                        upstream.setblocking(True)
                        upstream.sendall(data)
                        upstream.setblocking(False)
                        continue
                    try:
                        data = upstream.recv(65536)
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        continue  # a TLS record that was no data (a session ticket, say)
                    if not data:
                        return
                    client.sendall(data)
        except (OSError, ssl.SSLError):
            return
        finally:
            for s in (client, upstream):
                if s is not None:
                    try:
                        s.close()
                    except OSError:
                        pass

    def close(self):
        self.stopping = True
        self.listener.close()
        self.accepter.join(timeout=5)
        for thread in self.threads:
            thread.join(timeout=35)
        for s in self.sockets:
            try:
                s.close()
            except OSError:
                pass


class Raw:
    """A ManageSieve client for the exact bytes, plaintext or TLS."""

    def __init__(self, listener, implicit=False, source=None):
        self.sock = socket.create_connection(postern.address(listener), timeout=10,
                                             source_address=(source, 0) if source else None)
        if implicit:
            self.starttls()
        self.buffer = b""

    def starttls(self):
        context = ssl.create_default_context(cafile=pki.path("ca.pem"))
        self.sock = context.wrap_socket(self.sock, server_hostname="localhost")

    def line(self):
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buffer)
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line.decode(errors="replace")

    def response(self):
        """Lines up to and including the next OK/NO/BYE."""
        lines = []
        while True:
            lines.append(self.line())
            if lines[-1].split(" ", 1)[0].upper() in ("OK", "NO", "BYE"):
                return lines

    def send(self, data):
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def closed(self):
        try:
            self.sock.settimeout(10)
            return self.buffer == b"" and self.sock.recv(1) == b""
        except (ConnectionError, ssl.SSLError):
            return True

    def close(self):
        self.sock.close()


class SieveConnect(unittest.TestCase):
    """The real client: upload, list, activate, download, through every listener kind."""

    def setUp(self):
        self.work = tempfile.mkdtemp(prefix="postern-sieve-")
        self.forwarders = []

    def tearDown(self):
        for forwarder in self.forwarders:
            forwarder.close()
        shutil.rmtree(self.work, ignore_errors=True)

    def port_for(self, listener, implicit):
        host, port = postern.address(listener)
        if not implicit:
            return port
        forwarder = TlsForwarder((host, port))
        self.forwarders.append(forwarder)
        return forwarder.port

    def client(self, port, action, *args, password=PASSWORD, implicit=False):
        # Implicit TLS is the forwarder's; sieve-connect's own hop to it is loopback.
        return harness.sieve_connect(port, action, *args, password=password,
                                     cafile=None if implicit else pki.path("ca.pem"),
                                     timeout=CLIENT_TIMEOUT)

    def round_trip(self, listener, implicit, mail=None, name=None):
        """Upload a script, list it, activate it, download it; the server holds it active."""
        mail = mail or servers
        name = name or f"t-{listener}"
        port = self.port_for(listener, implicit)
        local = os.path.join(self.work, "local.sieve")
        with open(local, "w", newline="") as f:
            f.write(SCRIPT)
        code, out = self.client(port, "--upload", "--localsieve", local, "--remotesieve", name,
                                implicit=implicit)
        self.assertEqual(code, 0, out)
        code, out = self.client(port, "--list", implicit=implicit)
        self.assertEqual(code, 0, out)
        self.assertIn(name, out)
        code, out = self.client(port, "--activate", "--remotesieve", name, implicit=implicit)
        self.assertEqual(code, 0, out)
        back = os.path.join(self.work, "back.sieve")
        code, out = self.client(port, "--download", "--remotesieve", name, "--localsieve", back,
                                implicit=implicit)
        self.assertEqual(code, 0, out)
        with open(back, newline="") as f:
            self.assertEqual(f.read().replace("\r\n", "\n"), SCRIPT.replace("\r\n", "\n"))
        home = os.path.join(mail.run, "mail", USER)
        with open(os.path.join(home, "sieve", f"{name}.sieve"), newline="") as f:
            self.assertEqual(f.read().replace("\r\n", "\n"), SCRIPT.replace("\r\n", "\n"))
        self.assertEqual(os.path.basename(os.readlink(os.path.join(home, ".dovecot.sieve"))),
                         f"{name}.sieve")

    def test_passthrough_starttls(self):
        self.round_trip("sieve", implicit=False)

    def test_passthrough_implicit_tls(self):
        self.round_trip("sieves", implicit=True)

    def test_login_mode_starttls(self):
        before = postern.metric("postern_auth_total", listener="sieve-login", result="ok")
        self.round_trip("sieve-login", implicit=False)
        after = postern.metric("postern_auth_total", listener="sieve-login", result="ok")
        self.assertEqual(after - before, 4)  # one login per sieve-connect run
        lines = [line for line in postern.access_lines() if "listener=sieve-login " in line]
        self.assertTrue(lines)
        self.assertIn("protocol=sieve", lines[-1])
        self.assertIn(f"user={USER}", lines[-1])
        self.assertIn(f"backend=127.0.0.1:{servers.sieve_port}", lines[-1])

    def test_login_mode_implicit_tls(self):
        self.round_trip("sieves-login", implicit=True)

    def test_backend_starttls(self):
        before = postern.metric("postern_starttls_total", side="backend", result="ok")
        self.round_trip("sieve-backend-starttls", implicit=False, mail=secure)
        self.assertGreaterEqual(
            postern.metric("postern_starttls_total", side="backend", result="ok") - before, 4)

    def test_backend_implicit_tls(self):
        self.round_trip("sieve-backend-tls", implicit=True, mail=secure)

    def test_wrong_password_is_refused(self):
        code, out = self.client(self.port_for("sieve-login", False), "--list",
                                password="wrong")
        self.assertNotEqual(code, 0, out)
        self.assertGreaterEqual(
            postern.metric("postern_auth_total", listener="sieve-login", result="failed"), 1)


class Wire(unittest.TestCase):
    """What postern says and relays, byte for byte, in front of the real managesieved."""

    def greeting(self, raw):
        self.addCleanup(raw.close)
        return raw.response()

    def test_capabilities_before_and_after_starttls(self):
        raw = Raw("sieve")
        before = self.greeting(raw)
        self.assertIn('"STARTTLS"', before)
        self.assertFalse(any(line.startswith('"SASL"') for line in before), before)
        self.assertTrue(any(line.startswith('"SIEVE"') for line in before), before)
        self.assertNotIn('"XCLIENT"', before)  # Dovecot offers it to postern, not to clients
        self.assertTrue(before[-1].startswith("OK"))
        raw.send("CAPABILITY\r\n")
        answer = raw.response()
        self.assertIn('"STARTTLS"', answer)
        self.assertFalse(any(line.startswith('"SASL"') for line in answer), answer)
        raw.send("STARTTLS\r\n")
        self.assertEqual(raw.line(), 'OK "Begin TLS negotiation now."')
        raw.starttls()
        # RFC 5804 §2.2: the list again, unasked, as TLS shows it.
        after = raw.response()
        self.assertNotIn('"STARTTLS"', after)
        self.assertNotIn('"XCLIENT"', after)
        self.assertIn('"SASL" "PLAIN LOGIN"', after)
        raw.send(f'AUTHENTICATE "PLAIN" "{PLAIN}"\r\n')
        self.assertTrue(raw.line().startswith("OK"))
        raw.send("LISTSCRIPTS\r\n")
        self.assertTrue(raw.response()[-1].startswith("OK"))
        raw.send("LOGOUT\r\n")
        self.assertTrue(raw.line().startswith("OK"))
        raw.close()

    def test_implicit_tls_lists_sasl_and_no_starttls(self):
        raw = Raw("sieves", implicit=True)
        greeting = self.greeting(raw)
        self.assertNotIn('"STARTTLS"', greeting)
        self.assertIn('"SASL" "PLAIN LOGIN"', greeting)
        raw.close()

    def test_require_tls_refuses_authenticate_before_tls(self):
        raw = Raw("sieve")
        self.greeting(raw)
        before = postern.metric("postern_auth_total", listener="sieve", result="refused_plaintext")
        raw.send(f'AUTHENTICATE "PLAIN" "{PLAIN}"\r\n')
        self.assertEqual(raw.line(), 'NO (ENCRYPT-NEEDED) "Use STARTTLS before authenticating"')
        self.assertEqual(
            postern.metric("postern_auth_total", listener="sieve", result="refused_plaintext"),
            before + 1)
        raw.close()

    def test_without_require_tls_plaintext_login_works(self):
        raw = Raw("sieve-open")
        greeting = self.greeting(raw)
        self.assertIn('"SASL" "PLAIN LOGIN"', greeting)
        self.assertIn('"STARTTLS"', greeting)
        raw.send(f'AUTHENTICATE "PLAIN" {{{len(PLAIN)}+}}\r\n{PLAIN}\r\n')
        self.assertTrue(raw.line().startswith("OK"))
        raw.close()

    def test_starttls_injection_is_refused(self):
        raw = Raw("sieve")
        self.greeting(raw)
        before = postern.metric("postern_starttls_total", listener="sieve",
                                result="injection_rejected")
        raw.send(f'STARTTLS\r\nAUTHENTICATE "PLAIN" "{PLAIN}"\r\n')
        self.assertEqual(raw.line(), 'BYE "Commands pipelined after STARTTLS"')
        self.assertTrue(raw.closed())
        self.assertTrue(harness.wait_until(lambda: postern.metric(
            "postern_starttls_total", listener="sieve", result="injection_rejected") == before + 1))

    def test_login_mode_starttls_injection_is_refused(self):
        raw = Raw("sieve-login")
        self.greeting(raw)
        raw.send("STARTTLS\r\nCAPABILITY\r\n")
        self.assertEqual(raw.line(), 'BYE "Commands pipelined after STARTTLS"')
        self.assertTrue(raw.closed())

    def test_control_bytes_and_address_claims_never_reach_the_server(self):
        raw = Raw("sieve-open")
        self.greeting(raw)
        for line in ("NOOP\x0b\r\n", "LOGOUT\x7f\r\n", "STARTTLS\t\r\n"):
            raw.send(line)
            self.assertEqual(raw.line(), 'NO "Invalid characters in command"', repr(line))
        raw.send("XCLIENT ADDR=192.0.2.77\r\n")
        self.assertEqual(raw.line(), 'NO "Command not permitted"')
        # Dovecot skips the rest of a line it refuses (an unknown verb, an atom) and reads a
        # literal's bytes as commands: such lines never reach it, their literals are skipped.
        for head, address in (("FOO", "192.0.2.78"), ("NOOP atom", "192.0.2.79")):
            smuggled = f"XCLIENT ADDR={address}\r\n"
            raw.send(f"{head} {{{len(smuggled)}+}}\r\n{smuggled}\r\n")
            self.assertIn(raw.line(), ('NO "Authenticate first"', 'NO "Invalid arguments"'))
        raw.send("NOOP\r\n")
        self.assertTrue(raw.line().startswith("OK"))  # the session goes on
        raw.close()
        log = servers.dovecot_log_text()
        for address in ("192.0.2.77", "192.0.2.78", "192.0.2.79"):
            self.assertNotIn(address, log)

    def test_literals_are_bounded(self):
        raw = Raw("sieve-open")
        self.greeting(raw)
        raw.send("CHECKSCRIPT {18446744073709551615+}\r\n")
        self.assertEqual(raw.line(), 'BYE "Literal too large"')
        self.assertTrue(raw.closed())

    def test_login_mode_greets_with_what_the_servers_offer(self):
        raw = Raw("sieve-login")
        greeting = self.greeting(raw)
        # Learned from Dovecot by the health check, not written by hand.
        self.assertTrue(greeting[0].startswith('"IMPLEMENTATION" "Dovecot'), greeting)
        self.assertTrue(any(line.startswith('"SIEVE" ') and "fileinto" in line
                            for line in greeting), greeting)
        self.assertIn('"STARTTLS"', greeting)
        self.assertEqual(greeting[-1], 'OK "postern ready."')
        raw.send("STARTTLS\r\n")
        self.assertEqual(raw.line(), 'OK "Begin TLS negotiation now."')
        raw.starttls()
        after = raw.response()
        self.assertIn('"SASL" "PLAIN LOGIN"', after)
        self.assertEqual(after[-1], 'OK "TLS negotiation successful."')
        raw.send(f'AUTHENTICATE "PLAIN"\r\n')
        self.assertEqual(raw.line(), '""')
        raw.send(f'"{PLAIN}"\r\n')
        self.assertTrue(raw.line().startswith("OK"))
        raw.send("HAVESPACE \"x\" 100\r\n")
        self.assertTrue(raw.line().startswith("OK"))
        raw.close()

    def test_proxy_protocol_tells_dovecot_the_client(self):
        self.log_in_over_starttls("sieve-proxy", "127.0.0.9")
        self.assertTrue(harness.wait_until(
            lambda: "rip=127.0.0.9" in servers.dovecot_log_text()))

    def log_in_over_starttls(self, listener, source):
        """A whole session: STARTTLS, AUTHENTICATE, LOGOUT, from the address `source`."""
        raw = Raw(listener, source=source)
        self.greeting(raw)
        raw.send("STARTTLS\r\n")
        raw.line()
        raw.starttls()
        raw.response()
        raw.send(f'AUTHENTICATE "PLAIN" "{PLAIN}"\r\n')
        self.assertTrue(raw.line().startswith("OK"))
        raw.send("LOGOUT\r\n")
        raw.line()
        raw.close()

    def test_login_mode_tells_a_trusting_dovecot_the_client_with_xclient(self):
        self.log_in_over_starttls("sieve-login", "127.0.0.7")
        self.assertTrue(harness.wait_until(
            lambda: "rip=127.0.0.7" in servers.dovecot_log_text()))

    def test_metrics_carry_the_protocol(self):
        text = postern.scrape()
        self.assertIn('protocol="sieve"', text)


class UserHash(unittest.TestCase):
    """A user's ManageSieve session lands on the server their IMAP session lands on."""

    def backend_of(self, listener, user, password):
        if listener.startswith("imap"):
            import imaplib
            client = imaplib.IMAP4(*postern.address(listener), timeout=10)
            client.starttls(ssl.create_default_context(cafile=pki.path("ca.pem")))
            client.login(user, password)
            client.logout()
        else:
            raw = Raw(listener)
            raw.response()
            raw.send("STARTTLS\r\n")
            raw.line()
            raw.starttls()
            raw.response()
            plain = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
            raw.send(f'AUTHENTICATE "PLAIN" "{plain}"\r\n')
            self.assertTrue(raw.line().startswith("OK"))
            raw.send("LOGOUT\r\n")
            raw.line()
            raw.close()

        def found():
            for line in reversed(postern.access_lines()):
                if f"listener={listener} " in line and f"user={user} " in line:
                    return line.split(" backend=", 1)[1].split(":", 1)[0]
            return None
        self.assertTrue(harness.wait_until(lambda: found() is not None), (listener, user))
        return found()

    def test_same_host_for_imap_and_sieve(self):
        hosts = set()
        for user, password in USERS:
            imap = self.backend_of("imap-hash", user, password)
            sieve = self.backend_of("sieve-hash", user, password)
            self.assertEqual(imap, sieve, user)
            hosts.add(imap)
        self.assertEqual(hosts, {"127.0.0.2", "127.0.0.3"})  # both servers take users


if __name__ == "__main__":
    unittest.main()
