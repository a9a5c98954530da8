"""Operating postern (SPEC §14, issue 17): the runtime API, `postern ctl` and the status page,
against two real Dovecots (127.0.0.2 and 127.0.0.3, one pool). A real IMAP session keeps
working while its server is drained, and new sessions go to the other server; a login-mode
session kicked through `postern ctl kick` hears `* BYE` and is counted with close reason
`kicked`; the state set through the API survives SIGHUP; the token guards the API; the status
page is rendered by a real headless browser (Debian's chromium) and shows the drained server.
Everything on loopback; every process is stopped at the end."""

import base64
import imaplib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import PASSWORD, USER  # noqa: E402

USERS = [("bob", "pw-bob")]
TOKEN = "s3cret-token-for-tests"

first = None
second = None
postern = None
guarded = None
admin_port = None
guarded_port = None


def setUpModule():
    global first, second, postern, guarded, admin_port, guarded_port
    if shutil.which("dovecot") is None:
        raise unittest.SkipTest("dovecot is not installed")
    try:
        first = harness.MailServers(host="127.0.0.2", users=USERS)
        second = harness.MailServers(host="127.0.0.3", users=USERS)
        for servers in (first, second):
            servers.seed_mailbox()
            servers.start_dovecot()
        admin_port = harness.free_port()
        postern = harness.Postern(config(f'[admin]\nlisten = "127.0.0.1:{admin_port}"\n'))
        postern.start()
        harness.wait_for_health(postern, {"imap-pool": 2})
        # A second instance whose API needs a token, read from a file.
        guarded_port = harness.free_port()
        token_dir = tempfile.mkdtemp(prefix="postern-token-")
        token_file = os.path.join(token_dir, "admin.token")
        with open(token_file, "w") as f:
            f.write(TOKEN + "\n")
        guarded = harness.Postern(config(
            f'[admin]\nlisten = "127.0.0.1:{guarded_port}"\ntoken_file = "{token_file}"\n'),
            name="guarded")
        guarded.start()
    except Exception:
        tearDownModule()
        raise


def tearDownModule():
    if guarded is not None:
        guarded.cleanup()
    harness.stop_everything(postern, (first, second), None)


def config(admin):
    # Two workers: sessions land on both loops, and kicks must reach each.
    return f'''[global]
workers = 2
shutdown_grace = "2s"
[metrics]
listen = "127.0.0.1:0"
{admin}
[[listener]]
name = "imap"
protocol = "imap"
listen = "127.0.0.1:0"
backend = "imap-pool"

[[listener]]
name = "imap-login"
protocol = "imap"
listen = "127.0.0.1:0"
mode = "login"
require_tls = false
backend = "imap-pool"

[[backend]]
name = "imap-pool"
servers = ["127.0.0.2:{first.imap_port}", "127.0.0.3:{second.imap_port}"]
balance = "round_robin"
health = {{ interval = "1s", timeout = "1s", rise = 1, fall = 1 }}
'''


def server_names():
    return f"127.0.0.2:{first.imap_port}", f"127.0.0.3:{second.imap_port}"


def api(path, method="GET", port=None, token=None):
    """(status, parsed JSON or text) of one request to the runtime API."""
    request = urllib.request.Request(f"http://127.0.0.1:{port or admin_port}{path}",
                                     method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            status, body, kind = reply.status, reply.read().decode(), reply.headers["Content-Type"]
    except urllib.error.HTTPError as error:
        status, body, kind = error.code, error.read().decode(), error.headers["Content-Type"]
    return status, (json.loads(body) if kind.startswith("application/json") else body)


def ctl(*args, config_path=None):
    done = subprocess.run([harness.postern_binary(), "ctl", "--config",
                           config_path or postern.config_path, *args],
                          capture_output=True, text=True, timeout=30)
    return done.returncode, done.stdout + done.stderr


def server_row(pool, server):
    status, body = api("/v1/backends")
    assert status == 200, body
    for entry in body["pools"]:
        for row in entry["servers"]:
            if entry["pool"] == pool and row["server"] == server:
                return row
    raise AssertionError(f"{pool}/{server} not listed: {body}")


def imap_session(listener="imap", user=USER, password=PASSWORD):
    host, port = postern.address(listener)
    client = imaplib.IMAP4(host, port, timeout=15)
    client.login(user, password)
    client.select("INBOX")
    return client


def session_of(client):
    """The API's record of the session whose client port `client` uses."""
    local = client.sock.getsockname()
    status, body = api(f"/v1/sessions?client={local[0]}")
    assert status == 200, body
    for session in body["sessions"]:
        if session["client"] == f"{local[0]}:{local[1]}":
            return session
    raise AssertionError(f"session from {local} not listed: {body}")


def render_page():
    """The status page as Chromium's DOM after rendering (`--dump-dom`)."""
    browser = shutil.which("chromium")
    if browser is None:
        raise unittest.SkipTest("chromium is not installed (tools/install-deps.sh installs it)")
    profile = tempfile.mkdtemp(prefix="postern-chromium-")
    try:
        done = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             f"--user-data-dir={profile}", "--dump-dom", f"http://127.0.0.1:{admin_port}/"],
            capture_output=True, text=True, timeout=90)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class RuntimeApi(unittest.TestCase):
    def tearDown(self):
        # Every test leaves both servers enabled.
        for server in server_names():
            api(f"/v1/backends/imap-pool/{server}/enable", method="POST")

    def test_backends_and_listeners(self):
        status, body = api("/v1/backends")
        self.assertEqual(status, 200)
        [pool] = body["pools"]
        self.assertEqual(pool["pool"], "imap-pool")
        self.assertEqual(pool["balance"], "round_robin")
        self.assertEqual([s["server"] for s in pool["servers"]], list(server_names()))
        for row in pool["servers"]:
            self.assertEqual((row["state"], row["health"], row["status"]), ("enabled", "up", "up"))
        status, body = api("/v1/listeners")
        self.assertEqual(status, 200)
        by_name = {entry["name"]: entry for entry in body["listeners"]}
        self.assertEqual(by_name["imap"]["listen"], "%s:%d" % postern.address("imap"))
        self.assertEqual(by_name["imap-login"]["mode"], "login")
        code, out = ctl("listeners")
        self.assertEqual(code, 0, out)
        self.assertRegex(out, r"(?m)^LISTENER\s+PROTOCOL\s+LISTEN")
        self.assertRegex(out, r"(?m)^imap-login\s+imap\s+127\.0\.0\.1:\d+\s+none\s+login\s+imap-pool")

    def test_drain_lets_a_running_session_finish_and_sends_new_ones_elsewhere(self):
        client = imap_session()
        try:
            drained = session_of(client)["backend"]
            other = [s for s in server_names() if s != drained][0]
            code, out = ctl("drain", "imap-pool", drained)
            self.assertEqual(code, 0, out)
            self.assertIn("drained", out)
            row = server_row("imap-pool", drained)
            self.assertEqual((row["state"], row["status"], row["sessions"]), ("drained", "drained", 1))
            self.assertEqual(postern.metric("postern_backend_admin_state", backend="imap-pool",
                                            server=drained, state="drained"), 1)
            # The running session goes on on the drained server.
            for _ in range(3):
                self.assertEqual(client.noop()[0], "OK")
            self.assertEqual(client.search(None, "ALL")[0], "OK")
            # New sessions all go to the other one.
            for _ in range(4):
                extra = imap_session()
                try:
                    self.assertEqual(session_of(extra)["backend"], other)
                finally:
                    extra.logout()
            # ctl shows it as a table.
            code, out = ctl("backends")
            self.assertEqual(code, 0, out)
            self.assertRegex(out, r"(?m)^imap-pool\s+%s\s+drained\s+up\s+drained\s+1\s+" % drained)
        finally:
            client.logout()
        # Its last session ended: the drained server has none.
        self.assertTrue(harness.wait_until(
            lambda: server_row("imap-pool", drained)["sessions"] == 0, timeout=10))
        log = postern.log()
        self.assertRegex(log, r'msg="backend server state set" backend=imap-pool server=%s '
                              r'state=drained was=enabled by=127\.0\.0\.1:\d+' % drained)
        code, out = ctl("enable", "imap-pool", drained)
        self.assertEqual(code, 0, out)
        self.assertEqual(server_row("imap-pool", drained)["status"], "up")

    def test_disabled_server_takes_nothing_while_checks_go_on(self):
        a, b = server_names()
        status, body = api(f"/v1/backends/imap-pool/{a}/disable", method="POST")
        self.assertEqual(status, 200, body)
        self.assertEqual(body["server"]["state"], "disabled")
        checks = postern.metric("postern_health_checks_total", backend="imap-pool", server=a,
                                result="ok")
        for _ in range(4):
            client = imap_session()
            try:
                self.assertEqual(session_of(client)["backend"], b)
            finally:
                client.logout()
        self.assertTrue(harness.wait_until(lambda: postern.metric(
            "postern_health_checks_total", backend="imap-pool", server=a, result="ok") > checks,
            timeout=10), "health checks stopped on the disabled server")
        self.assertEqual(postern.metric("postern_backend_admin_state", backend="imap-pool",
                                        server=a, state="disabled"), 1)
        # Both disabled: nothing is left, and the client hears IMAP's own refusal.
        api(f"/v1/backends/imap-pool/{b}/disable", method="POST")
        host, port = postern.address("imap")
        with socket.create_connection((host, port), timeout=10) as raw:
            self.assertTrue(raw.recv(200).startswith(b"* BYE [UNAVAILABLE]"))

    def test_unknown_pool_or_server_is_404_and_exit_1(self):
        status, body = api("/v1/backends/nope/127.0.0.1:1/drain", method="POST")
        self.assertEqual(status, 404)
        self.assertIn('no pool "nope"', body["error"])
        status, body = api("/v1/backends/imap-pool/127.0.0.9:1/drain", method="POST")
        self.assertEqual(status, 404)
        self.assertIn("has no server", body["error"])
        code, out = ctl("drain", "imap-pool", "127.0.0.9:1")
        self.assertEqual(code, 1, out)
        self.assertIn("404", out)
        self.assertEqual(api("/v1/backends", method="POST")[0], 405)
        self.assertEqual(api("/v1/nothing")[0], 404)
        self.assertEqual(api("/v1/sessions/kick", method="POST")[0], 400)

    def test_kick_closes_a_login_session_with_bye(self):
        host, port = postern.address("imap-login")
        raw = socket.create_connection((host, port), timeout=15)
        reader = raw.makefile("rb")
        try:
            self.assertTrue(reader.readline().startswith(b"* OK"))
            raw.sendall(b"a1 LOGIN bob pw-bob\r\n")
            line = reader.readline()
            while line.startswith(b"*"):
                line = reader.readline()
            self.assertTrue(line.startswith(b"a1 OK"), line)
            raw.sendall(b"a2 SELECT INBOX\r\n")
            line = reader.readline()
            while not line.startswith(b"a2 "):
                line = reader.readline()
            code, out = ctl("sessions", "--user", "BOB")
            self.assertEqual(code, 0, out)
            self.assertRegex(out, r"(?m)^\d+\s+imap-login\s+imap\s+127\.0\.0\.1:\d+\s+bob\s+127\.0\.0\.[23]:\d+")
            kicked_before = postern.metric("postern_sessions_closed_total", listener="imap-login",
                                           reason="kicked")
            code, out = ctl("kick", "bob")
            self.assertEqual(code, 0, out)
            self.assertIn("kicked 1 session of bob", out)
            self.assertEqual(reader.readline(), b"* BYE Disconnected by the administrator\r\n")
            self.assertEqual(reader.readline(), b"")  # and the connection ends
        finally:
            raw.close()
        self.assertTrue(harness.wait_until(lambda: postern.metric(
            "postern_sessions_closed_total", listener="imap-login", reason="kicked")
            == kicked_before + 1))
        self.assertTrue(any("user=bob" in line and "reason=kicked" in line
                            for line in postern.access_lines()))
        self.assertRegex(postern.log(), r'msg="sessions kicked" user=bob sessions=1 by=127\.0\.0\.1:\d+')
        # Nobody left to kick: exit 1.
        code, out = ctl("kick", "bob")
        self.assertEqual(code, 1, out)
        self.assertEqual(api("/v1/sessions?user=bob")[1]["sessions"], [])

    def test_kick_leaves_other_users_alone(self):
        mine = imap_session("imap-login", "bob", "pw-bob")
        theirs = imap_session("imap-login")
        try:
            status, body = api("/v1/sessions/kick?user=bob", method="POST")
            self.assertEqual((status, body["kicked"]), (200, 1))
            self.assertEqual(theirs.noop()[0], "OK")
            self.assertRaises((imaplib.IMAP4.abort, OSError), lambda: [mine.noop() for _ in range(3)])
        finally:
            mine.shutdown()
            theirs.logout()

    def test_state_survives_sighup(self):
        a, _ = server_names()
        api(f"/v1/backends/imap-pool/{a}/drain", method="POST")
        reloads = postern.metric("postern_config_reloads_total", result="ok")
        postern.process.send_signal(signal.SIGHUP)
        self.assertTrue(harness.wait_until(lambda: postern.metric(
            "postern_config_reloads_total", result="ok") == reloads + 1))
        self.assertEqual(server_row("imap-pool", a)["state"], "drained")
        for _ in range(3):
            client = imap_session()
            try:
                self.assertNotEqual(session_of(client)["backend"], a)
            finally:
                client.logout()

    def test_token_guards_the_api(self):
        self.assertEqual(api("/v1/backends", port=guarded_port)[0], 401)
        self.assertEqual(api("/v1/backends", port=guarded_port, token="wrong")[0], 401)
        self.assertEqual(api("/", port=guarded_port)[0], 401)
        status, body = api("/v1/backends", port=guarded_port, token=TOKEN)
        self.assertEqual(status, 200)
        self.assertEqual(body["pools"][0]["pool"], "imap-pool")
        self.assertRegex(guarded.log(), r'msg="admin request refused" client=127\.0\.0\.1:\d+ path=/v1/backends reason="wrong token"')
        # ctl reads the token from the same file postern does.
        code, out = ctl("backends", config_path=guarded.config_path)
        self.assertEqual(code, 0, out)
        self.assertIn("imap-pool", out)
        # A browser's Basic credentials with the token as the password open the page.
        basic = base64.b64encode(f"admin:{TOKEN}".encode()).decode()
        request = urllib.request.Request(f"http://127.0.0.1:{guarded_port}/")
        request.add_header("Authorization", f"Basic {basic}")
        with urllib.request.urlopen(request, timeout=10) as reply:
            self.assertIn("<title>postern status</title>", reply.read().decode())

    def test_a_reload_never_drops_the_token_of_a_running_listener(self):
        with open(guarded.config_path) as f:
            original = f.read()
        try:
            # The API turned off in the file: the listener stays until a restart, token and all.
            with open(guarded.config_path, "w") as f:
                f.write(config(""))
            reloads = guarded.metric("postern_config_reloads_total", result="ok")
            guarded.process.send_signal(signal.SIGHUP)
            self.assertTrue(harness.wait_until(lambda: guarded.metric(
                "postern_config_reloads_total", result="ok") == reloads + 1))
            self.assertEqual(api("/v1/backends", port=guarded_port)[0], 401)
            self.assertEqual(api("/v1/backends", port=guarded_port, token=TOKEN)[0], 200)
            self.assertIn("admin listener kept until restart", guarded.log())
        finally:
            with open(guarded.config_path, "w") as f:
                f.write(original)

    def test_ctl_exit_codes(self):
        self.assertEqual(ctl("frobnicate")[0], 2)
        self.assertEqual(ctl("drain", "imap-pool")[0], 2)
        off = os.path.join(postern.dir, "no-admin.toml")
        with open(off, "w") as f:
            f.write(config(""))
        code, out = ctl("backends", config_path=off)
        self.assertEqual(code, 2, out)
        self.assertIn("runtime API is off", out)
        gone = os.path.join(postern.dir, "gone.toml")
        with open(gone, "w") as f:
            f.write(config(f'[admin]\nlisten = "127.0.0.1:{harness.free_port()}"\n'))
        code, out = ctl("backends", config_path=gone)
        self.assertEqual(code, 1, out)
        self.assertIn("cannot reach", out)

    def test_bad_requests_get_http_errors(self):
        def exchange(data):
            with socket.create_connection(("127.0.0.1", admin_port), timeout=10) as s:
                s.sendall(data)
                return s.recv(200)
        self.assertTrue(exchange(b"GET /v1/backends HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 400"))
        self.assertTrue(exchange(b"GET /v1/backends HTTP/2.0\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 505"))
        self.assertTrue(exchange(b"POST /v1/sessions/kick?user=x HTTP/1.1\r\nHost: x\r\n"
                                 b"Content-Length: 5\r\n\r\nhello").startswith(b"HTTP/1.1 413"))
        self.assertTrue(exchange(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 431"))
        # postern is still there.
        self.assertEqual(api("/v1/backends")[0], 200)

    def test_status_page_in_a_browser(self):
        a, b = server_names()
        client = imap_session()
        try:
            on = session_of(client)["backend"]
            api(f"/v1/backends/imap-pool/{on}/drain", method="POST")
            dom = render_page()
            self.assertIn("<title>postern status</title>", dom)
            self.assertRegex(dom, r'<tr data-pool="imap-pool" data-server="%s" data-status="drained">'
                                  r'.*?<td class="n">1</td>' % on)
            off = b if on == a else a
            self.assertIn(f'data-server="{off}" data-status="up"', dom)
            self.assertRegex(dom, r'<tr data-listener="imap-login">')
            self.assertIn('http-equiv="refresh"', dom)
            self.assertNotRegex(dom, r'(src|href)="https?:')  # no external assets
        finally:
            client.logout()
        # Its session ended: the page shows the drained server with none left.
        self.assertTrue(harness.wait_until(
            lambda: server_row("imap-pool", on)["sessions"] == 0, timeout=10))
        dom = render_page()
        self.assertRegex(dom, r'data-server="%s" data-status="drained">.*?<td class="n">0</td>' % on)


if __name__ == "__main__":
    unittest.main()
