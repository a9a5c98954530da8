"""Routing for many domains (SPEC §13, issue 16): two real Dovecots stand for two tenants' pools
(tenant A on 127.0.0.2, tenant B on 127.0.0.3) and a third for the default pool (127.0.0.1).
One implicit-TLS listener routes by the TLS server name the client sends (Python's ssl and
`openssl s_client -servername`), one STARTTLS login-mode listener by server name and by the
domain of the user name. Each session must land on its tenant's Dovecot: the access log names
the server and the pool, Dovecot's own log shows the login, and postern_routes_total counts the
route. A SIGHUP with other routes re-routes new sessions. Everything on loopback; every
process is stopped at the end."""

import imaplib
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import pki as pki_module  # noqa: E402
from harness import PASSWORD, USER  # noqa: E402

USERS = [("anna", "pw-anna"), ("bert", "pw-bert")]  # in every Dovecot; the domain picks one

pki = None
pki_dir = None
default = None
tenant_a = None
tenant_b = None
postern = None


def setUpModule():
    global pki, pki_dir, default, tenant_a, tenant_b, postern
    if shutil.which("dovecot") is None:
        raise unittest.SkipTest("dovecot is not installed")
    pki_dir = tempfile.mkdtemp(prefix="postern-pki-")
    pki = pki_module.Pki(pki_dir).create()
    try:
        default = harness.MailServers(users=USERS)
        # Tenant A logs what a PROXY v2 header told it: the server name (AUTHORITY TLV, Dovecot's
        # %{local_name}) and whether the client's connection was TLS (the SSL TLV makes the
        # session "secured"; postern reaches 127.0.0.2 from 127.0.0.1, which Dovecot does not
        # count as local, and the network is not in login_trusted_networks).
        tenant_a = harness.MailServers(host="127.0.0.2", users=USERS, dovecot_extra=(
            "login_log_format_elements = user=<%u> method=%m rip=%r lip=%l mpid=%e %c "
            "session=<%{session}> local_name=<%{local_name}>\n"))
        tenant_b = harness.MailServers(host="127.0.0.3", users=USERS)
        for d in (default, tenant_a, tenant_b):
            d.seed_mailbox()
            d.start_dovecot()
        postern = harness.Postern(config())
        postern.start()
        harness.wait_for_health(postern, {"default-pool": 1, "a-pool": 1, "b-pool": 1})
    except Exception:
        tearDownModule()
        raise


def tearDownModule():
    harness.stop_everything(postern, (default, tenant_a, tenant_b), pki_dir)


def config(sni_a="*.tenant-a.example", sni_b="imap.tenant-b.example"):
    text = (f'[global]\nshutdown_grace = "2s"\n[metrics]\nlisten = "127.0.0.1:0"\n'
            f'[tls]\ncertificates = [{{ cert = "{pki.path("mail-ecdsa.pem")}", '
            f'key = "{pki.path("mail-ecdsa.key")}" }}]\n')
    text += f'''
[[listener]]
name = "imaps"
protocol = "imap"
listen = "127.0.0.1:0"
tls = "implicit"
backend = "default-pool"
routes = [
  {{ sni = "{sni_a}", backend = "a-pool" }},
  {{ sni = "{sni_b}", backend = "b-pool" }},
]

[[listener]]
name = "imap-login"
protocol = "imap"
listen = "127.0.0.1:0"
tls = "starttls"
mode = "login"
backend = "default-pool"
routes = [
  {{ sni = "{sni_a}", backend = "a-pool" }},
  {{ domain = "tenant-a.example", backend = "a-pool" }},
  {{ domain = "Tenant-B.example", backend = "b-pool" }},
]
'''
    text += f'''
[[listener]]
name = "imaps-v2"
protocol = "imap"
listen = "127.0.0.1:0"
tls = "implicit"
backend = "a-proxied"

[[listener]]
name = "imap-v2"
protocol = "imap"
listen = "127.0.0.1:0"
backend = "a-proxied"

[[backend]]
name = "a-proxied"
servers = ["{tenant_a.host}:{tenant_a.imap_proxy_port}"]
send_proxy_protocol = "v2"
'''
    for name, d in (("default-pool", default), ("a-pool", tenant_a), ("b-pool", tenant_b)):
        text += (f'\n[[backend]]\nname = "{name}"\nservers = ["{d.host}:{d.imap_port}"]\n'
                 'connect_timeout = "5s"\nhealth = { interval = "1s", timeout = "1s" }\n')
    return text


def client_context():
    context = ssl.create_default_context(cafile=pki.path("ca.pem"))
    context.check_hostname = False  # the tenants' names are not on the test certificate
    return context


def sni_context(server_name):
    """A client context that sends `server_name` as SNI whatever host the client connects to
    (None: the host itself, which for an IP address means no SNI at all)."""
    context = client_context()
    if server_name is not None:
        wrap = context.wrap_socket
        context.wrap_socket = lambda sock, server_hostname=None, **kwargs: wrap(
            sock, server_hostname=server_name, **kwargs)
    return context


def last_access(listener, user=None):
    for line in reversed(postern.access_lines()):
        if f"listener={listener} " in line and (user is None or f"user={user} " in line):
            return line
    return None


def listener_lines(listener):
    """The access-log lines of one listener: waiting on them, an earlier test's session of
    another listener ending meanwhile cannot stand in for the one awaited."""
    return [line for line in postern.access_lines() if f" listener={listener} " in line]


def field(line, key):
    return line.split(f" {key}=", 1)[1].split(" ", 1)[0]


class SniRoutes(unittest.TestCase):
    def login_with_sni(self, server_name):
        """One IMAPS login sending `server_name` as SNI (None: none); its access-log line."""
        before = len(listener_lines("imaps"))
        host, port = postern.address("imaps")
        with imaplib.IMAP4_SSL(host, port, ssl_context=sni_context(server_name)) as imap:
            imap.login(USER, PASSWORD)
            imap.logout()
        self.assertTrue(harness.wait_until(lambda: len(listener_lines("imaps")) > before))
        return last_access("imaps")

    def test_server_names_pick_the_tenants_pools(self):
        for name, tenant, pool in (("imap.tenant-a.example", tenant_a, "a-pool"),
                                   ("deep.mail.TENANT-A.example", tenant_a, "a-pool"),
                                   ("imap.tenant-b.example", tenant_b, "b-pool"),
                                   ("tenant-a.example", default, "default-pool"),
                                   ("mail.tenant-b.example", default, "default-pool")):
            with self.subTest(name=name):
                before = postern.metric("postern_routes_total", listener="imaps", route=pool)
                line = self.login_with_sni(name)
                self.assertEqual(field(line, "backend"), f"{tenant.host}:{tenant.imap_port}",
                                 line)
                self.assertEqual(field(line, "pool"), pool, line)
                self.assertTrue(harness.wait_until(lambda: postern.metric(
                    "postern_routes_total", listener="imaps", route=pool) >= before + 1))
        self.assertIn(f"user=<{USER}>", tenant_a.dovecot_log_text())
        self.assertIn(f"user=<{USER}>", tenant_b.dovecot_log_text())

    def test_no_server_name_takes_the_default(self):
        line = self.login_with_sni(None)  # an IP address as host: Python sends no SNI
        self.assertEqual(field(line, "backend"), f"{default.host}:{default.imap_port}", line)

    def test_openssl_s_client_servername(self):
        host, port = postern.address("imaps")
        before = len(listener_lines("imaps"))
        done = subprocess.run(
            ["openssl", "s_client", "-connect", f"{host}:{port}", "-servername",
             "imap.tenant-b.example", "-CAfile", pki.path("ca.pem"), "-quiet"],
            input=f"a LOGIN {USER} {PASSWORD}\r\nb LOGOUT\r\n", capture_output=True, text=True,
            timeout=30)
        self.assertIn("a OK", done.stdout, done.stdout + done.stderr)
        self.assertTrue(harness.wait_until(lambda: len(listener_lines("imaps")) > before))
        line = last_access("imaps")
        self.assertEqual(field(line, "backend"), f"{tenant_b.host}:{tenant_b.imap_port}", line)


class LoginRoutes(unittest.TestCase):
    def login(self, user, password, server_name="localhost"):
        host, port = postern.address("imap-login")
        imap = imaplib.IMAP4(host, port, timeout=10)
        try:
            imap.starttls(ssl_context=sni_context(server_name))
            imap.login(user, password)
            imap.logout()
        finally:
            try:
                imap.shutdown()
            except OSError:
                pass
        self.assertTrue(harness.wait_until(lambda: last_access("imap-login", user) is not None))
        return last_access("imap-login", user)

    def test_the_users_domain_picks_the_pool_case_insensitively(self):
        for user, tenant, pool in (("anna@tenant-a.example", tenant_a, "a-pool"),
                                   ("bert@TENANT-B.EXAMPLE", tenant_b, "b-pool"),
                                   ("anna", default, "default-pool"),
                                   ("anna@tenant-c.example", default, "default-pool")):
            with self.subTest(user=user):
                password = dict(USERS)[user.split("@")[0]]
                line = self.login(user, password)
                self.assertEqual(field(line, "backend"), f"{tenant.host}:{tenant.imap_port}",
                                 line)
                self.assertEqual(field(line, "pool"), pool, line)

    def test_the_server_name_after_starttls_routes_first(self):
        line = self.login("bert@tenant-b.example", "pw-bert", server_name="imap.tenant-a.example")
        # The sni route comes first in the list: tenant A's pool, whatever the domain says.
        self.assertEqual(field(line, "backend"), f"{tenant_a.host}:{tenant_a.imap_port}", line)


class ProxyTlvs(unittest.TestCase):
    """SPEC §13: a PROXY v2 header carries the client's TLS; a real Dovecot reads it."""

    def dovecot_login_line(self, user):
        found = [line for line in tenant_a.dovecot_log_text().splitlines()
                 if "Login:" in line and f"user=<{user}>" in line]
        return found[-1] if found else None

    def test_dovecot_reads_the_server_name_and_the_tls(self):
        host, port = postern.address("imaps-v2")
        with imaplib.IMAP4_SSL(host, port,
                               ssl_context=sni_context("imap.tenant-a.example")) as imap:
            imap.login("anna", "pw-anna")
            imap.logout()
        self.assertTrue(harness.wait_until(lambda: self.dovecot_login_line("anna")))
        line = self.dovecot_login_line("anna")
        self.assertIn("local_name=<imap.tenant-a.example>", line)
        self.assertIn(", secured,", line)
        # The same server behind a plaintext listener: no TLS to tell, and Dovecot knows it.
        imap = imaplib.IMAP4(*postern.address("imap-v2"), timeout=10)
        imap.login("bert", "pw-bert")
        imap.logout()
        self.assertTrue(harness.wait_until(lambda: self.dovecot_login_line("bert")))
        line = self.dovecot_login_line("bert")
        self.assertNotIn("local_name=", line)  # (Dovecot leaves empty elements out)
        self.assertNotIn("secured", line)


class Reload(unittest.TestCase):
    def test_sighup_changes_the_routes_of_new_sessions(self):
        probe = SniRoutes("test_no_server_name_takes_the_default")
        line = probe.login_with_sni("imap.tenant-b.example")
        self.assertEqual(field(line, "pool"), "b-pool")
        reloads = postern.metric("postern_config_reloads_total", result="ok")
        with open(postern.config_path, "w") as f:
            f.write(config(sni_b="*.elsewhere.example"))
        postern.process.send_signal(signal.SIGHUP)
        self.assertTrue(harness.wait_until(lambda: postern.metric(
            "postern_config_reloads_total", result="ok") == reloads + 1))
        line = probe.login_with_sni("imap.tenant-b.example")
        self.assertEqual(field(line, "pool"), "default-pool", line)
        line = probe.login_with_sni("imap.elsewhere.example")
        self.assertEqual(field(line, "pool"), "b-pool", line)
        with open(postern.config_path, "w") as f:
            f.write(config())
        postern.process.send_signal(signal.SIGHUP)
        self.assertTrue(harness.wait_until(lambda: postern.metric(
            "postern_config_reloads_total", result="ok") == reloads + 2))


if __name__ == "__main__":
    unittest.main()
