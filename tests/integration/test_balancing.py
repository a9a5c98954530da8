"""Balancing over several real Dovecot servers (SPEC §7, issue 5, first part): round robin,
least connections, source hashing (stable per client address, also behind a PROXY header)."""

import imaplib
import os
import socket
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import PASSWORD, USER  # noqa: E402

dovecots = []


def setUpModule():
    for _ in range(3):
        servers = harness.MailServers()
        try:
            servers.seed_mailbox()
            servers.start_dovecot()
        except Exception:
            servers.stop()
            for started in dovecots:
                started.stop()
            raise
        dovecots.append(servers)


def tearDownModule():
    for servers in dovecots:
        servers.stop()


def config(balance, health=""):
    names = ", ".join(f'"127.0.0.1:{d.imap_port}"' for d in dovecots)
    return ('[metrics]\nlisten = "127.0.0.1:0"\n'
            '[[listener]]\nname = "imap"\nprotocol = "imap"\nlisten = "127.0.0.1:0"\n'
            'backend = "fleet"\n'
            '[[listener]]\nname = "behind-lb"\nprotocol = "imap"\nlisten = "127.0.0.1:0"\n'
            'backend = "fleet"\naccept_proxy_protocol = true\ntrusted_proxies = ["127.0.0.1"]\n'
            f'[[backend]]\nname = "fleet"\nservers = [{names}]\nbalance = "{balance}"\n{health}')


class Balancing(unittest.TestCase):
    def start(self, balance, health=""):
        postern = harness.Postern(config(balance, health))
        self.addCleanup(postern.cleanup)
        postern.start()
        return postern

    def selected(self, postern):
        return [postern.metric("postern_backend_selected_total", backend="fleet",
                               server=f"127.0.0.1:{d.imap_port}") for d in dovecots]

    def session(self, postern):
        with imaplib.IMAP4(*postern.address("imap")) as imap:
            imap.login(USER, PASSWORD)
            imap.logout()

    def test_round_robin_spreads_sessions_evenly(self):
        postern = self.start("round_robin")
        for _ in range(40):
            self.session(postern)
        counts = self.selected(postern)
        self.assertEqual(sum(counts), 40)
        self.assertLessEqual(max(counts) - min(counts), 1, counts)
        # Each Dovecot saw its share of logins.
        for d, count in zip(dovecots, counts):
            with open(d.dovecot_log, errors="replace") as f:
                self.assertGreaterEqual(f.read().count("Login: user=<alice>"), count)

    def test_least_conn_fills_the_idlest_server(self):
        postern = self.start("least_conn")
        held = []
        for _ in range(6):
            imap = imaplib.IMAP4(*postern.address("imap"))
            imap.login(USER, PASSWORD)
            held.append(imap)
        active = [postern.metric("postern_backend_connections_active", backend="fleet",
                                 server=f"127.0.0.1:{d.imap_port}") for d in dovecots]
        self.assertEqual(active, [2, 2, 2])
        # Ties go in turn, so sessions 0 and 3 share a server: free both, and the next two
        # sessions must go there.
        held[0].logout()
        held[3].logout()
        self.assertTrue(harness.wait_until(lambda: sorted(
            postern.metric("postern_backend_connections_active", backend="fleet",
                           server=f"127.0.0.1:{d.imap_port}") for d in dovecots) == [0, 2, 2]))
        before = self.selected(postern)
        for _ in range(2):
            imap = imaplib.IMAP4(*postern.address("imap"))
            imap.login(USER, PASSWORD)
            held.append(imap)
        after = self.selected(postern)
        gained = [a - b for a, b in zip(after, before)]
        self.assertEqual(sorted(gained), [0, 0, 2], "both new sessions went to the idle server")
        for imap in held[1:3] + held[4:]:
            imap.logout()

    def test_source_hash_is_stable_per_client_address(self):
        postern = self.start("source_hash")
        for _ in range(9):
            self.session(postern)
        counts = self.selected(postern)
        self.assertEqual(sorted(counts), [0, 0, 9], "one client address, one server")
        # Behind a load balancer the address in the PROXY header is the key.
        chosen = {}
        for round_ in range(2):
            for i in range(24):
                address = f"198.51.100.{i + 1}"
                before = self.selected(postern)
                with socket.create_connection(postern.address("behind-lb"), timeout=10) as sock:
                    sock.sendall(f"PROXY TCP4 {address} 127.0.0.1 40000 143\r\n".encode())
                    f = sock.makefile("rb")
                    self.assertTrue(f.readline().startswith(b"* OK"))
                    sock.sendall(b"a LOGOUT\r\n")
                    f.read()
                    f.close()
                after = self.selected(postern)
                server = [j for j in range(3) if after[j] != before[j]]
                self.assertEqual(len(server), 1)
                if round_ == 0:
                    chosen[address] = server[0]
                else:
                    self.assertEqual(chosen[address], server[0], address)
        self.assertEqual(len(set(chosen.values())), 3, "24 addresses use all three servers")


    def up(self, postern, index):
        return postern.metric("postern_backend_up", backend="fleet",
                              server=f"127.0.0.1:{dovecots[index].imap_port}")

    def test_health_checks_take_a_dead_server_out_and_bring_it_back(self):
        postern = self.start("round_robin", 'health = { interval = "300ms", timeout = "250ms", '
                                            'rise = 2, fall = 2 }\n')
        self.assertTrue(harness.wait_until(lambda: postern.metric(
            "postern_health_checks_total", result="ok") >= 6), "every server checked, politely")
        victim = dovecots[0]
        victim.stop_dovecot()
        # Down within interval x fall (plus a timeout): no session is sent there any more.
        self.assertTrue(harness.wait_until(lambda: self.up(postern, 0) == 0, timeout=5))
        self.assertIn('msg="backend server down"', postern.log())
        before = self.selected(postern)
        for _ in range(12):
            self.session(postern)  # every one succeeds on the two others
        after = self.selected(postern)
        self.assertEqual(after[0], before[0])
        self.assertEqual(after[1] - before[1] + after[2] - before[2], 12)
        victim.start_dovecot()
        self.assertTrue(harness.wait_until(lambda: self.up(postern, 0) == 1, timeout=5))
        before = self.selected(postern)
        for _ in range(6):
            self.session(postern)
        self.assertEqual(self.selected(postern)[0] - before[0], 2, "back in the rotation")
        self.assertGreater(postern.metric("postern_health_checks_total", result="failed"), 0)
        # The checks said goodbye: Dovecot logs a LOGOUT, not a dropped connection.
        with open(dovecots[1].dovecot_log, errors="replace") as f:
            self.assertIn("Aborted login by logging out", f.read())

    def test_all_servers_down_gives_the_unavailable_reply(self):
        postern = self.start("round_robin", 'health = { interval = "300ms", timeout = "250ms", '
                                            'rise = 1, fall = 1 }\n')
        for d in dovecots:
            d.stop_dovecot()
        try:
            self.assertTrue(harness.wait_until(
                lambda: all(self.up(postern, i) == 0 for i in range(3)), timeout=5))
            with socket.create_connection(postern.address("imap"), timeout=10) as sock:
                self.assertTrue(sock.recv(200).startswith(b"* BYE [UNAVAILABLE]"))
        finally:
            for d in dovecots:
                d.start_dovecot()
        self.assertTrue(harness.wait_until(
            lambda: all(self.up(postern, i) == 1 for i in range(3)), timeout=5))
        self.session(postern)


if __name__ == "__main__":
    unittest.main()


class NameResolution(unittest.TestCase):
    """A backend server given by name: every address is a server, and the name is resolved
    again every dns_refresh (SPEC §7). /etc/hosts stands in for DNS; it is restored after."""

    NAME = "fleet.postern.test"

    def setUp(self):
        with open("/etc/hosts") as f:
            self.saved_hosts = f.read()
        self.addCleanup(self.restore_hosts)
        port = harness.free_port("127.0.0.4")
        self.servers = []
        for host in ("127.0.0.4", "127.0.0.5"):
            servers = harness.MailServers(host=host, ports={"imap": port})
            self.addCleanup(servers.stop)
            servers.seed_mailbox()
            servers.start_dovecot()
            self.servers.append(servers)
        self.port = port

    def restore_hosts(self):
        with open("/etc/hosts", "w") as f:
            f.write(self.saved_hosts)

    def point_name_at(self, *addresses):
        with open("/etc/hosts", "w") as f:
            f.write(self.saved_hosts.rstrip("\n") + "\n")
            for address in addresses:
                f.write(f"{address} {self.NAME}\n")

    def up(self, postern, address):
        return postern.metric("postern_backend_up", backend="fleet", server=f"{address}:{self.port}")

    def selected(self, postern, address):
        return postern.metric("postern_backend_selected_total", backend="fleet",
                              server=f"{address}:{self.port}")

    def test_the_name_is_resolved_again(self):
        self.point_name_at("127.0.0.4")
        postern = harness.Postern(
            '[metrics]\nlisten = "127.0.0.1:0"\n'
            '[[listener]]\nname = "imap"\nprotocol = "imap"\nlisten = "127.0.0.1:0"\n'
            'backend = "fleet"\n'
            f'[[backend]]\nname = "fleet"\nservers = ["{self.NAME}:{self.port}"]\n'
            'dns_refresh = "1s"\n')
        self.addCleanup(postern.cleanup)
        postern.start()
        held = imaplib.IMAP4(*postern.address("imap"))
        held.login(USER, PASSWORD)
        self.assertEqual(self.selected(postern, "127.0.0.4"), 1)
        # The name moves to another address: new sessions follow, the running one finishes.
        self.point_name_at("127.0.0.5")
        self.assertTrue(harness.wait_until(lambda: self.up(postern, "127.0.0.5") == 1, timeout=10))
        self.assertIn('msg="backend server removed"', postern.log())
        with imaplib.IMAP4(*postern.address("imap")) as imap:
            imap.login(USER, PASSWORD)
            imap.logout()
        self.assertEqual(self.selected(postern, "127.0.0.5"), 1)
        self.assertEqual(held.noop()[0], "OK", "the session on the vanished address goes on")
        held.logout()
        # Two addresses for the name: two servers, sharing the sessions.
        self.point_name_at("127.0.0.4", "127.0.0.5")
        self.assertTrue(harness.wait_until(lambda: self.up(postern, "127.0.0.4") == 1, timeout=10))
        for _ in range(4):
            with imaplib.IMAP4(*postern.address("imap")) as imap:
                imap.login(USER, PASSWORD)
                imap.logout()
        self.assertEqual(self.selected(postern, "127.0.0.5"), 3)
        self.assertEqual(self.selected(postern, "127.0.0.4"), 1 + 2)


class Reload(unittest.TestCase):
    """SIGHUP (SPEC §9): new listeners open, removed ones close, changed pools apply to new
    sessions, running sessions keep their config; a bad config changes nothing."""

    def text(self, imap_server, extra_listener=True, broken=False):
        text = ('[metrics]\nlisten = "127.0.0.1:0"\n'
                '[[listener]]\nname = "imap"\nprotocol = "imap"\nlisten = "127.0.0.1:0"\n'
                'backend = "imap-pool"\n')
        if extra_listener:
            text += ('[[listener]]\nname = "pop3"\nprotocol = "pop3"\nlisten = "127.0.0.1:0"\n'
                     'backend = "pop3-pool"\n')
        text += (f'[[backend]]\nname = "imap-pool"\n'
                 f'servers = ["127.0.0.1:{dovecots[imap_server].imap_port}"]\n'
                 f'[[backend]]\nname = "pop3-pool"\nservers = ["127.0.0.1:{dovecots[0].pop3_port}"]\n')
        return text + ('colour = "blue"\n' if broken else "")

    def reload(self, postern, text, result):
        with open(postern.config_path, "w") as f:
            f.write(text)
        before = postern.metric("postern_config_reloads_total", result=result)
        postern.process.send_signal(1)
        self.assertTrue(harness.wait_until(lambda: postern.metric(
            "postern_config_reloads_total", result=result) == before + 1))

    def test_reload_applies_to_new_sessions_only(self):
        postern = harness.Postern(self.text(0, extra_listener=False))
        self.addCleanup(postern.cleanup)
        postern.start()
        imap_address = postern.address("imap")
        held = imaplib.IMAP4(*imap_address)
        held.login(USER, PASSWORD)
        self.reload(postern, self.text(1, extra_listener=True), "ok")
        # The new pop3 listener is open (its address is in the log); the imap socket stayed.
        pop3 = harness.Postern.LISTENING.findall(postern.log())
        pop3_address = [a for name, a in pop3 if name == "pop3"][-1]
        host, port = pop3_address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            self.assertTrue(sock.makefile("rb").readline().startswith(b"+OK"))
        with imaplib.IMAP4(*imap_address) as imap:
            imap.login(USER, PASSWORD)
            imap.logout()
        self.assertEqual(postern.metric("postern_backend_selected_total",
                                        server=f"127.0.0.1:{dovecots[1].imap_port}"), 1,
                         "new sessions use the changed pool")
        self.assertEqual(held.noop()[0], "OK", "the running session keeps its backend")
        # A broken config is refused whole; the pop3 listener stays, and so does the imap pool.
        self.reload(postern, self.text(0, broken=True), "failed")
        self.assertIn("colour: unknown key", postern.log())
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            self.assertTrue(sock.makefile("rb").readline().startswith(b"+OK"))
        # Removing the listener closes it.
        self.reload(postern, self.text(1, extra_listener=False), "ok")
        self.assertTrue(harness.wait_until(lambda: self._refused(host, int(port))))
        held.logout()
        self.assertEqual(postern.stop(), 0)

    @staticmethod
    def _refused(host, port):
        try:
            socket.create_connection((host, port), timeout=2).close()
            return False
        except ConnectionRefusedError:
            return True
