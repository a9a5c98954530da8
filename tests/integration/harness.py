"""Real mail servers and postern as plain processes on loopback, for the integration tests and
the quickstart: Dovecot (IMAP, POP3) and Postfix (SMTP) delivering into one Maildir."""

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAIL_UID = 8  # Debian's `mail` user owns the test Maildir; no system account is created.
USER = "alice"
PASSWORD = "wonderland"
DOMAIN = "example.test"


def postern_binary():
    return os.environ.get("POSTERN_BIN", os.path.join(ROOT, "build", "default", "postern"))


_next_port = [0]


def free_port(host="127.0.0.1"):
    """A port for a server the harness starts. Each test process takes ports from its own block
    below the kernel's ephemeral range (chosen by PID), so test modules running side by side
    never pick the same port between checking it and the server binding it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    base = 20000 + (os.getpid() % 250) * 50
    while _next_port[0] < 50:
        port = base + _next_port[0]
        _next_port[0] += 1
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
                return port
            except OSError:
                continue
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host, port, timeout=20.0, process=None, log=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited ({process.returncode}) before listening on "
                               f"{host}:{port}\n{read_tail(log)}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout}s\n{read_tail(log)}")


def read_tail(path, lines=40):
    if not path or not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-lines:])


def wait_until(predicate, timeout=10.0, interval=0.05):
    """Polls `predicate` until it returns a true value; bounded, returns the last value."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    return value


MESSAGES = [
    ("Welcome", "Hello Alice,\r\nthis message was seeded by the test harness.\r\n"),
    # A body line starting with "." exercises POP3 dot-stuffing end to end.
    ("Dots", "The next line starts with a dot.\r\n.hidden line\r\n..two dots\r\nend\r\n"),
]


class MailServers:
    """One Dovecot (IMAP, POP3, ManageSieve; plaintext) and one Postfix (SMTP) on 127.0.0.1
    high ports."""

    def __init__(self, host="127.0.0.1", ports=None, pki=None, mechanisms="plain login",
                 dovecot_extra="", users=()):
        """`ports` pins imap/pop3/smtp/submission ports (the quickstart does); else free ones.
        With `pki` the servers insist on TLS: Dovecot has ssl = required and implicit-TLS
        imaps/pop3s ports, Postfix an smtps (wrapper mode) port, all with the backend
        certificate."""
        ports = ports or {}
        self.host = host
        # Login-mode tests: the SASL mechanisms Dovecot offers (and Postfix through it), extra
        # dovecot.conf lines, and more users (name, password) beside alice.
        self.mechanisms = mechanisms
        self.dovecot_extra = dovecot_extra
        self.users = [(USER, PASSWORD)] + list(users)
        self.pki = pki
        self.imaps_port = free_port(host) if pki else 0
        self.pop3s_port = free_port(host) if pki else 0
        self.smtps_port = free_port(host) if pki else 0
        self.run = tempfile.mkdtemp(prefix="postern-mail-")
        os.chmod(self.run, 0o755)
        self.imap_port = ports.get("imap") or free_port(host)
        self.pop3_port = ports.get("pop3") or free_port(host)
        self.smtp_port = ports.get("smtp") or free_port(host)
        self.submission_port = ports.get("submission") or free_port(host)
        self.sieve_port = ports.get("sieve") or free_port(host)
        self.sieves_port = free_port(host) if pki else 0
        # Listeners that expect a PROXY protocol header (Dovecot: v1/v2; Postfix: v1/v2).
        self.imap_proxy_port = free_port(host)
        self.pop3_proxy_port = free_port(host)
        self.smtp_proxy_port = free_port(host)
        self.sieve_proxy_port = free_port(host)
        self.dovecot = None
        self.postfix_dir = os.path.join(self.run, "postfix")
        self.postfix_started = False
        self.maildir = os.path.join(self.run, "mail", USER, "Maildir")

    # --- Maildir -------------------------------------------------------------------------
    def seed_mailbox(self):
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(self.maildir, sub), exist_ok=True)
        for index, (subject, body) in enumerate(MESSAGES):
            name = f"{int(time.time())}.M{index}P{os.getpid()}.seed:2,"
            text = (f"From: harness@{DOMAIN}\r\nTo: {USER}@{DOMAIN}\r\n"
                    f"Subject: {subject}\r\nMessage-ID: <seed{index}@{DOMAIN}>\r\n\r\n{body}")
            with open(os.path.join(self.maildir, "cur", name), "w", newline="") as f:
                f.write(text)
        for name, _ in self.users[1:]:
            for sub in ("cur", "new", "tmp"):
                os.makedirs(os.path.join(self.run, "mail", name, "Maildir", sub), exist_ok=True)
        for dirpath, dirnames, filenames in os.walk(os.path.join(self.run, "mail")):
            os.chown(dirpath, MAIL_UID, MAIL_UID)
            for name in filenames:
                os.chown(os.path.join(dirpath, name), MAIL_UID, MAIL_UID)

    def delivered_messages(self):
        out = []
        for sub in ("new", "cur"):
            folder = os.path.join(self.maildir, sub)
            for name in sorted(os.listdir(folder)):
                with open(os.path.join(folder, name), errors="replace") as f:
                    out.append(f.read())
        return out

    # --- Dovecot -------------------------------------------------------------------------
    def start_dovecot(self):
        conf = os.path.join(self.run, "dovecot.conf")
        passwd = os.path.join(self.run, "passwd")
        with open(passwd, "w") as f:
            for name, password in self.users:
                f.write(f"{name}:{{PLAIN}}{password}::::::\n")
        self.dovecot_log = os.path.join(self.run, "dovecot.log")
        with open(conf, "w") as f:
            f.write(f"""
protocols = imap pop3 sieve
listen = {self.host}
base_dir = {self.run}/dovecot-base
state_dir = {self.run}/dovecot-state
instance_name = postern-test-{os.path.basename(self.run)}
log_path = {self.dovecot_log}
info_log_path = {self.dovecot_log}
{self._dovecot_ssl()}
auth_mechanisms = {self.mechanisms}
auth_verbose = yes
{self.dovecot_extra}
mail_location = maildir:~/Maildir
first_valid_uid = {MAIL_UID}
mail_max_userip_connections = 1000
haproxy_trusted_networks = 127.0.0.0/8
pop3_uidl_format = %08Xu%08Xv
default_login_user = dovenull
default_internal_user = dovecot
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%n {passwd}
}}
userdb {{
  driver = static
  args = uid={MAIL_UID} gid={MAIL_UID} home={self.run}/mail/%n
}}
service imap-login {{
  inet_listener imap {{
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = {self.imaps_port}
    ssl = yes
  }}
  inet_listener imap_haproxy {{
    port = {self.imap_proxy_port}
    haproxy = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {self.pop3_port}
  }}
  inet_listener pop3s {{
    port = {self.pop3s_port}
    ssl = yes
  }}
  inet_listener pop3_haproxy {{
    port = {self.pop3_proxy_port}
    haproxy = yes
  }}
}}
service managesieve-login {{
  # A long-lived login process, connected to the auth service before the first client: a fresh
  # one (Dovecot's default) answers its greeting at once but, over TLS, sometimes never reads an
  # AUTHENTICATE that arrives before its auth connection is up (seen with 2.3.19; see README).
  service_count = 0
  process_min_avail = 1
  inet_listener sieve {{
    port = {self.sieve_port}
  }}
  inet_listener sieves {{
    port = {self.sieves_port}
    ssl = yes
  }}
  inet_listener sieve_haproxy {{
    port = {self.sieve_proxy_port}
    haproxy = yes
  }}
}}
plugin {{
  sieve = file:~/sieve;active=~/.dovecot.sieve
}}
service auth {{
  unix_listener {self.run}/dovecot-auth {{
    mode = 0666
  }}
}}
""")
        with open(os.path.join(self.run, "dovecot.stderr"), "w") as stderr:
            self.dovecot = subprocess.Popen(["dovecot", "-F", "-c", conf],
                                            stdout=subprocess.DEVNULL, stderr=stderr)
        wait_for_port(self.host, self.imap_port, process=self.dovecot, log=self.dovecot_log)
        wait_for_port(self.host, self.pop3_port, process=self.dovecot, log=self.dovecot_log)
        wait_for_port(self.host, self.sieve_port, process=self.dovecot, log=self.dovecot_log)
        if self.pki:
            wait_for_port(self.host, self.imaps_port, process=self.dovecot, log=self.dovecot_log)
            wait_for_port(self.host, self.pop3s_port, process=self.dovecot, log=self.dovecot_log)

    def dovecot_log_text(self):
        with open(self.dovecot_log, errors="replace") as f:
            return f.read()

    def _dovecot_ssl(self):
        if not self.pki:
            return "ssl = no\ndisable_plaintext_auth = no"
        return (f"ssl = required\nssl_cert = <{self.pki.path('backend.pem')}\n"
                f"ssl_key = <{self.pki.path('backend.key')}\nssl_min_protocol = TLSv1.2\n"
                "disable_plaintext_auth = yes")

    # --- Postfix -------------------------------------------------------------------------
    def start_postfix(self):
        d = self.postfix_dir
        os.makedirs(d, exist_ok=True)
        queue = os.path.join(self.run, "postfix-queue")
        data = os.path.join(self.run, "postfix-data")
        os.makedirs(queue, exist_ok=True)
        os.makedirs(data, exist_ok=True)
        shutil.chown(data, "postfix", "postfix")
        self.postfix_log = os.path.join(self.run, "postfix.log")
        with open(os.path.join(d, "vmailbox"), "w") as f:
            f.write(f"{USER}@{DOMAIN} {USER}/Maildir/\n")
        with open(os.path.join(d, "main.cf"), "w") as f:
            f.write(f"""
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
myhostname = mail.{DOMAIN}
mydomain = {DOMAIN}
myorigin = {DOMAIN}
mydestination =
inet_interfaces = all
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_banner = $myhostname ESMTP Postfix
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
virtual_mailbox_domains = {DOMAIN}
virtual_mailbox_base = {self.run}/mail
virtual_mailbox_maps = texthash:{d}/vmailbox
virtual_uid_maps = static:{MAIL_UID}
virtual_gid_maps = static:{MAIL_UID}
virtual_minimum_uid = {MAIL_UID}
alias_maps =
alias_database =
local_recipient_maps =
smtputf8_enable = no
biff = no
maillog_file = {self.postfix_log}
maillog_file_prefixes = {self.run}
smtpd_authorized_xclient_hosts = 127.0.0.0/8
{self._postfix_tls()}""")
        with open(os.path.join(d, "master.cf"), "w") as f:
            f.write(f"""
{self.host}:{self.smtp_port} inet n - n - - smtpd
{self.host}:{self.submission_port} inet n - n - - smtpd
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_sasl_type=dovecot
  -o smtpd_sasl_path={self.run}/dovecot-auth
  -o smtpd_recipient_restrictions=permit_sasl_authenticated,reject
{self.host}:{self.smtp_proxy_port} inet n - n - - smtpd
  -o smtpd_upstream_proxy_protocol=haproxy
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
proxywrite unix - - n - 1 proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
local     unix  - n n - - local
virtual   unix  - n n - - virtual
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
tlsmgr    unix  - - n 1000? 1 tlsmgr
{self._postfix_smtps()}""")
        with open(os.path.join(self.run, "postfix.stderr"), "w") as log:
            subprocess.run(["postfix", "-c", d, "check"], stdout=log, stderr=log, check=False)
            self.postfix = subprocess.Popen(["postfix", "-c", d, "start-fg"], stdout=log,
                                            stderr=subprocess.STDOUT)
        self.postfix_started = True
        wait_for_port(self.host, self.smtp_port, process=self.postfix,
                      log=os.path.join(self.run, "postfix.stderr"))
        wait_for_port(self.host, self.submission_port, process=self.postfix,
                      log=os.path.join(self.run, "postfix.stderr"))
        if self.pki:
            wait_for_port(self.host, self.smtps_port, process=self.postfix,
                          log=os.path.join(self.run, "postfix.stderr"))

    def _postfix_tls(self):
        if not self.pki:
            return ""
        return (f"smtpd_tls_cert_file = {self.pki.path('backend.pem')}\n"
                f"smtpd_tls_key_file = {self.pki.path('backend.key')}\n"
                "smtpd_tls_security_level = may\n")

    def _postfix_smtps(self):
        if not self.pki:
            return ""
        return (f"{self.host}:{self.smtps_port} inet n - n - - smtpd\n"
                "  -o smtpd_tls_wrappermode=yes\n  -o smtpd_tls_security_level=encrypt\n")

    def stop_dovecot(self):
        if self.dovecot is not None:
            self.dovecot.terminate()
            try:
                self.dovecot.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.dovecot.kill()
                self.dovecot.wait()
            self.dovecot = None

    def start(self):
        try:
            self.seed_mailbox()
            self.start_dovecot()
            self.start_postfix()
        except Exception:
            self.stop()
            raise
        return self

    def stop(self):
        if self.postfix_started:
            subprocess.run(["postfix", "-c", self.postfix_dir, "stop"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            try:
                self.postfix.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.postfix.kill()
                self.postfix.wait()
            self.postfix_started = False
        self.stop_dovecot()
        if os.environ.get("POSTERN_KEEP_RUN") != "1":
            shutil.rmtree(self.run, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class Postern:
    """A postern process with a generated config; learns its bound ports from its log."""

    LISTENING = re.compile(r'msg=listening listener=(\S+) .*address=(\S+)')
    METRICS = re.compile(r'msg="metrics listening" address=(\S+)')

    def __init__(self, config_text=None, name="postern", config_path=None):
        self.dir = tempfile.mkdtemp(prefix="postern-run-")
        self.config_path = config_path or os.path.join(self.dir, f"{name}.toml")
        if config_path is None:
            with open(self.config_path, "w") as f:
                f.write(config_text)
        self.log_path = os.path.join(self.dir, f"{name}.log")
        self.process = None
        self.addresses = {}
        self.metrics_address = None

    def start(self, timeout=15.0):
        self.log_file = open(self.log_path, "w")
        self.process = subprocess.Popen([postern_binary(), "--config", self.config_path],
                                        stdout=self.log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            if "msg=started" in text:
                for name, address in self.LISTENING.findall(text):
                    host, port = address.rsplit(":", 1)
                    self.addresses[name] = (host.strip("[]"), int(port))
                found = self.METRICS.search(text)
                if found:
                    self.metrics_address = found.group(1)
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"postern exited with {self.process.returncode}:\n{text}")
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"postern did not start within {timeout}s:\n{self.log()}")

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def access_lines(self):
        return [line for line in self.log().splitlines() if " reason=" in line and " listener=" in line
                and "level=" not in line]

    def address(self, listener):
        return self.addresses[listener]

    def scrape(self):
        with urllib.request.urlopen(f"http://{self.metrics_address}/metrics", timeout=5) as r:
            return r.read().decode()

    def metric(self, name, **labels):
        """The value of one series (0 when absent)."""
        return parse_metric(self.scrape(), name, labels)

    def stop(self, timeout=20.0):
        """SIGTERM, then wait; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log_file.close()
        code = self.process.returncode
        self.process = None
        # STYLE #9: every libuv handle is closed when a loop ends; postern names any that is
        # not (and exits 70). Every test that stops postern fails on a leak.
        if "handles still open" in self.log():
            raise AssertionError("postern left libuv handles open:\n" + read_tail(self.log_path))
        return code

    def cleanup(self):
        self.stop()
        if os.environ.get("POSTERN_KEEP_RUN") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)


def _socket_ports():
    """inode -> local port of every TCP socket on the machine (IPv4 and IPv6)."""
    ports = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    ports[fields[9]] = int(fields[1].rsplit(":", 1)[1], 16)
        except OSError:
            continue
    return ports


def descriptors(postern):
    """postern's open descriptors, leaving out connections to its metrics exposer (a scrape's
    socket closes on the exposer's own thread, a moment after the answer): what is left changes
    only with sessions, listeners and health checks, so tests wait on it as a condition instead
    of sampling it over time."""
    pid = postern.process.pid
    metrics_port = int(postern.metrics_address.rsplit(":", 1)[1]) if postern.metrics_address else None
    ports = _socket_ports() if metrics_port else {}
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:[") and metrics_port is not None:
            if ports.get(target[8:-1]) == metrics_port:
                continue
        count += 1
    return count


def wait_for_health(postern, pools, timeout=30):
    """Until every pool's servers have answered a health check (`pools`: name -> how many
    answers); login mode learns its capabilities from them."""
    ready = wait_until(lambda: all(
        postern.metric("postern_health_checks_total", backend=pool, result="ok") >= count
        for pool, count in pools.items()), timeout=timeout)
    assert ready, "a pool's health checks never succeeded"


def stop_everything(postern, mail_servers, pki_dir):
    """Stops postern and every MailServers (None entries skipped), removes the PKI folder."""
    if postern is not None:
        postern.cleanup()
    for servers in mail_servers:
        if servers is not None:
            servers.stop()
    if pki_dir is not None:
        shutil.rmtree(pki_dir, ignore_errors=True)


def sieve_connect(port, *args, user=USER, password=PASSWORD, cafile=None, timeout=60):
    """Runs the real ManageSieve client (Debian sieve-connect) against 127.0.0.1:`port` (as
    "localhost", the name the test certificates carry), the password on a pipe; with `cafile`
    STARTTLS is verified against it, without one the channel is taken as it is (a local TLS
    forwarder's plaintext side). Returns (exit code, output)."""
    r, w = os.pipe()
    os.write(w, (password + "\n").encode())
    os.close(w)
    command = ["sieve-connect", "--nosrv", "--server", "localhost", "--port", str(port),
               "--user", user, "--passwordfd", str(r)]
    command += ["--tlscafile", cafile] if cafile else ["--notlsverify"]
    try:
        done = subprocess.run(command + list(args), pass_fds=(r,), capture_output=True,
                              text=True, timeout=timeout)
    finally:
        os.close(r)
    return done.returncode, done.stdout + done.stderr


def parse_metric(text, name, labels):
    total = 0.0
    found = False
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        match = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$', line)
        if not match or match.group(1) != name:
            continue
        series = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(3) or ""))
        if all(series.get(k) == str(v) for k, v in labels.items()):
            total += float(match.group(4))
            found = True
    return total if found else 0.0


def passthrough_config(servers, metrics="127.0.0.1:0", extra_global="", listeners=None,
                       backend_extra=""):
    """A postern config with plaintext passthrough listeners in front of `servers`."""
    listeners = listeners or [
        ("imap", "imap", "127.0.0.1:0", "imap-pool"),
        ("pop3", "pop3", "127.0.0.1:0", "pop3-pool"),
        ("smtp", "smtp", "127.0.0.1:0", "smtp-pool"),
        ("submission", "smtp", "127.0.0.1:0", "submission-pool"),
        ("imap6", "imap", "[::1]:0", "imap-pool"),
    ]
    text = f'[global]\nshutdown_grace = "2s"\n{extra_global}\n[metrics]\nlisten = "{metrics}"\n'
    for name, protocol, listen, backend in listeners:
        text += (f'\n[[listener]]\nname = "{name}"\nprotocol = "{protocol}"\n'
                 f'listen = "{listen}"\nbackend = "{backend}"\n')
    pools = {
        "imap-pool": servers.imap_port,
        "pop3-pool": servers.pop3_port,
        "smtp-pool": servers.smtp_port,
        "submission-pool": servers.submission_port,
    }
    for name, port in pools.items():
        text += (f'\n[[backend]]\nname = "{name}"\nservers = ["{servers.host}:{port}"]\n'
                 f'connect_timeout = "3s"\n{backend_extra}')
    return text
