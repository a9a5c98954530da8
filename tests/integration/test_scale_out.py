"""Scale-out (SPEC §11, issue 8): three postern processes behind HAProxy (PROXY v2) in front of
three Dovecots. Whichever postern takes a session, a user lands on the same Dovecot (user_hash,
no shared state); the real client address reaches postern's and Dovecot's logs; a Prometheus
server scrapes all three instances and answers a query over them."""

import imaplib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

DOVECOT_EXTRA = "login_trusted_networks = 127.0.0.0/8\n"
USERS = [(f"fleet{i:02d}", f"pass{i:02d}") for i in range(11)]  # not a multiple of 3:
# with HAProxy's round robin each user meets a different postern each round
CLIENT = "127.0.0.31"  # the client's own address, as HAProxy sees it


def postern_config(dovecots):
    servers = ", ".join(f'"127.0.0.1:{d.imap_port}"' for d in dovecots)
    return ('[global]\nshutdown_grace = "2s"\n[metrics]\nlisten = "127.0.0.1:0"\n'
            '[[listener]]\nname = "imap"\nprotocol = "imap"\nlisten = "127.0.0.1:0"\n'
            'mode = "login"\nbackend = "fleet"\naccept_proxy_protocol = true\n'
            'trusted_proxies = ["127.0.0.1/32"]\n'
            f'[[backend]]\nname = "fleet"\nservers = [{servers}]\nbalance = "user_hash"\n'
            'health = { interval = "1s", timeout = "1s" }\n')


class ClientImap(imaplib.IMAP4):
    """imaplib connecting from the client's own loopback address."""

    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout or 10,
                                        source_address=(CLIENT, 0))


class ScaleOut(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dovecots, cls.posterns, cls.processes = [], [], []
        cls.run_dir = tempfile.mkdtemp(prefix="postern-scale-")
        try:
            for _ in range(3):
                d = harness.MailServers(dovecot_extra=DOVECOT_EXTRA, users=USERS)
                cls.dovecots.append(d)
                d.seed_mailbox()
                d.start_dovecot()
            for _ in range(3):
                p = harness.Postern(postern_config(cls.dovecots))
                cls.posterns.append(p)
                p.start()
            cls.start_haproxy()
            cls.start_prometheus()
        except Exception:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        for process in cls.processes:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for p in cls.posterns:
            p.cleanup()
        for d in cls.dovecots:
            d.stop()
        shutil.rmtree(cls.run_dir, ignore_errors=True)

    @classmethod
    def spawn(cls, args, name):
        log = open(os.path.join(cls.run_dir, name + ".log"), "w")
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        cls.processes.append(process)
        return process

    @classmethod
    def start_haproxy(cls):
        cls.haproxy_port = harness.free_port()
        backends = "\n".join(
            f"    server postern{i} {':'.join(map(str, p.address('imap')))} send-proxy-v2"
            for i, p in enumerate(cls.posterns))
        config = os.path.join(cls.run_dir, "haproxy.cfg")
        with open(config, "w") as f:
            f.write(f"""global
    maxconn 1000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend imap
    bind 127.0.0.1:{cls.haproxy_port}
    default_backend posterns
backend posterns
    balance roundrobin
{backends}
""")
        process = cls.spawn(["haproxy", "-db", "-f", config], "haproxy")
        harness.wait_for_port("127.0.0.1", cls.haproxy_port, process=process)

    @classmethod
    def start_prometheus(cls):
        cls.prometheus_port = harness.free_port()
        targets = ", ".join(f'"{p.metrics_address}"' for p in cls.posterns)
        config = os.path.join(cls.run_dir, "prometheus.yml")
        with open(config, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                    "scrape_configs:\n  - job_name: postern\n"
                    f"    static_configs:\n      - targets: [{targets}]\n")
        process = cls.spawn(["prometheus", f"--config.file={config}",
                             f"--storage.tsdb.path={cls.run_dir}/tsdb",
                             f"--web.listen-address=127.0.0.1:{cls.prometheus_port}"],
                            "prometheus")
        harness.wait_for_port("127.0.0.1", cls.prometheus_port, timeout=60, process=process)

    def query(self, expression):
        url = (f"http://127.0.0.1:{self.prometheus_port}/api/v1/query?"
               + urllib.parse.urlencode({"query": expression}))
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
        self.assertEqual(body["status"], "success")
        return body["data"]["result"]

    def login_through_haproxy(self, user, password):
        with ClientImap("127.0.0.1", self.haproxy_port) as imap:
            imap.login(user, password)
            imap.select("INBOX")
            imap.logout()

    def test_same_user_same_dovecot_from_every_instance_and_the_client_address_kept(self):
        rounds = 3  # HAProxy's round robin hands each user to each of the three posterns
        for _ in range(rounds):
            for user, password in USERS:
                self.login_through_haproxy(user, password)
        total = rounds * len(USERS)
        harness.wait_until(lambda: sum(
            len([x for x in p.access_lines() if " user=-" not in x]) for p in self.posterns) >= total)
        placed = {}
        for index, p in enumerate(self.posterns):
            # (The harness's own readiness probe of each listener is no session of a user.)
            lines = [line for line in p.access_lines() if " user=-" not in line]
            self.assertGreater(len(lines), 0, f"postern {index} took no session")
            for line in lines:
                user = re.search(r" user=(\S+)", line).group(1)
                backend = re.search(r" backend=(\S+)", line).group(1)
                placed.setdefault(user, set()).add((backend, index))
                # The real client address, from HAProxy's PROXY v2 header.
                self.assertRegex(line, rf" client={re.escape(CLIENT)}:\d+ ")
        self.assertEqual(set(placed), {u for u, _ in USERS})
        for user, seen in placed.items():
            self.assertEqual(len({backend for backend, _ in seen}), 1, (user, seen))
            self.assertGreater(len({index for _, index in seen}), 1, (user, seen))
        self.assertGreater(len({next(iter(s))[0] for s in placed.values()}), 1)
        # ... and Dovecot logged it too (postern forwarded it with IMAP ID).
        logs = "".join(harness.read_tail(d.dovecot_log, 500) for d in self.dovecots)
        self.assertEqual(len(re.findall(rf"Login: user=<fleet\d+>.*rip={re.escape(CLIENT)},",
                                        logs)), total)
        # Prometheus scrapes the three instances and sums over them.
        expression = 'sum(postern_auth_total{job="postern",result="ok"})'
        result = harness.wait_until(
            lambda: [r for r in self.query(expression) if float(r["value"][1]) == total],
            timeout=30)
        self.assertTrue(result, self.query(expression))
        up = self.query('count(up{job="postern"} == 1)')
        self.assertEqual(float(up[0]["value"][1]), 3)
        per_instance = self.query('sum by (instance) (postern_connections_accepted_total)')
        self.assertEqual(len(per_instance), 3)
        # Exact counters: what Prometheus sums is every session the three access logs hold
        # (the users' ones and HAProxy's forward of the harness's readiness probe).
        sessions = sum(len(p.access_lines()) for p in self.posterns)
        self.assertGreaterEqual(sessions, total)
        self.assertEqual(sum(float(r["value"][1]) for r in per_instance), sessions)


if __name__ == "__main__":
    unittest.main()
