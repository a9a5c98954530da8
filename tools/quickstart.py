"""The quickstart: real Dovecot (IMAP, POP3, ManageSieve) and Postfix on loopback, postern in front of them with
deploy/quickstart/postern.toml, one real client session through every listener, then the metrics.
Run by tools/quickstart.sh; `--keep` leaves everything running until Ctrl-C."""

import imaplib
import os
import poplib
import smtplib
import ssl
import subprocess
import sys
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import harness  # noqa: E402
import pki  # noqa: E402
from harness import DOMAIN, PASSWORD, USER  # noqa: E402

CONFIG = os.path.join(ROOT, "deploy", "quickstart", "postern.toml")
CERTS = os.path.join(ROOT, "deploy", "quickstart", "certs")
BACKEND_PORTS = {"imap": 11143, "pop3": 11110, "smtp": 11025, "submission": 11587,
                 "sieve": 24190}
SIEVE_SCRIPT = 'require "fileinto";\nif header :contains "subject" "quickstart" {\n  fileinto "INBOX";\n}\n'



def say(text):
    print(text, flush=True)


def tls_context():
    return ssl.create_default_context(cafile=os.path.join(CERTS, "ca.pem"))


def imap_session(postern, listener, tls=False):
    host, port = postern.address(listener)
    connect = (lambda: imaplib.IMAP4_SSL(host, port, ssl_context=tls_context())) if tls else (
        lambda: imaplib.IMAP4(host, port))
    with connect() as imap:
        if not tls:
            imap.starttls(ssl_context=tls_context())
        version = imap.sock.version()
        imap.login(USER, PASSWORD)
        _, data = imap.select("INBOX", readonly=True)
        _, subjects = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        found = [s[1].decode().strip() for s in subjects if isinstance(s, tuple)]
        imap.logout()
    how = "implicit TLS" if tls else "STARTTLS"
    return f"{how} {version}, logged in as {USER}, {int(data[0])} messages"


def pop3_session(postern, listener, tls=False):
    host, port = postern.address(listener)
    pop = poplib.POP3_SSL(host, port, context=tls_context()) if tls else poplib.POP3(host, port)
    if not tls:
        pop.stls(context=tls_context())
    pop.user(USER)
    pop.pass_(PASSWORD)
    count, size = pop.stat()
    pop.quit()
    how = "implicit TLS" if tls else "STLS"
    return f"{how}, logged in as {USER}, {count} messages, {size} bytes"


def smtp_session(postern, listener, servers, login=False, tls=False):
    host, port = postern.address(listener)
    subject = f"quickstart via {listener} {uuid.uuid4().hex[:8]}"
    connect = (lambda: smtplib.SMTP_SSL(host, port, context=tls_context())) if tls else (
        lambda: smtplib.SMTP(host, port))
    with connect() as smtp:
        smtp.ehlo("quickstart.example.test")
        if not tls:
            smtp.starttls(context=tls_context())
            smtp.ehlo("quickstart.example.test")
        if login:
            smtp.login(USER, PASSWORD)
        smtp.sendmail(f"quickstart@{DOMAIN}", [f"{USER}@{DOMAIN}"],
                      f"From: quickstart@{DOMAIN}\r\nTo: {USER}@{DOMAIN}\r\n"
                      f"Subject: {subject}\r\n\r\nHello from the postern quickstart.\r\n")
    delivered = harness.wait_until(
        lambda: any(subject in m for m in servers.delivered_messages()), timeout=20)
    if not delivered:
        raise RuntimeError(f"message sent through {listener} was not delivered")
    how = "implicit TLS" if tls else "STARTTLS"
    return f"{how}{', AUTH' if login else ''}, sent \"{subject}\"; delivered to the Maildir"


def sieve_session(postern, listener, servers):
    """The real ManageSieve client: upload a script, activate it, read it back."""
    _, port = postern.address(listener)
    work = os.path.join(servers.run, "sieve-connect")
    os.makedirs(work, exist_ok=True)
    local, back = os.path.join(work, "quickstart.sieve"), os.path.join(work, "back.sieve")
    with open(local, "w") as f:
        f.write(SIEVE_SCRIPT)
    ca = os.path.join(CERTS, "ca.pem")
    for args in (("--upload", "--localsieve", local, "--remotesieve", "quickstart"),
                 ("--activate", "--remotesieve", "quickstart"),
                 ("--download", "--remotesieve", "quickstart", "--localsieve", back)):
        code, output = harness.sieve_connect(port, *args, cafile=ca)
        if code != 0:
            raise RuntimeError(f"sieve-connect {args[0]} exited with {code}: {output.strip()}")
    with open(back) as f:
        if f.read().replace("\r\n", "\n") != SIEVE_SCRIPT:
            raise RuntimeError("the script read back differs from the one uploaded")
    code, listing = harness.sieve_connect(port, "--list", cafile=ca)
    return (f"STARTTLS, sieve-connect uploaded, activated and read back a script "
            f"({' '.join(listing.split())})")


def main():
    keep = "--keep" in sys.argv
    if not pki.Pki(CERTS).exists():
        say(f"== making a throw-away test CA and certificates in {os.path.relpath(CERTS, ROOT)}")
    pki.Pki(CERTS).create()
    say(f"== starting Dovecot and Postfix on 127.0.0.1 ports {sorted(BACKEND_PORTS.values())}")
    servers = harness.MailServers(ports=BACKEND_PORTS).start()
    postern = None
    try:
        say(f"== starting postern --config {os.path.relpath(CONFIG, ROOT)}")
        postern = harness.Postern(config_path=CONFIG).start()
        for name, (host, port) in postern.addresses.items():
            say(f"   listener {name:<11} {host}:{port}")
        say("== one real session through every listener")
        sessions = [
            ("imap", lambda: imap_session(postern, "imap")),
            ("imap-v6", lambda: imap_session(postern, "imap-v6")),
            ("pop3", lambda: pop3_session(postern, "pop3")),
            ("smtp", lambda: smtp_session(postern, "smtp", servers)),
            ("smtp-alt", lambda: smtp_session(postern, "smtp-alt", servers)),
            ("submission", lambda: smtp_session(postern, "submission", servers, login=True)),
            ("imaps", lambda: imap_session(postern, "imaps", tls=True)),
            ("pop3s", lambda: pop3_session(postern, "pop3s", tls=True)),
            ("smtps", lambda: smtp_session(postern, "smtps", servers, login=True, tls=True)),
            ("sieve", lambda: sieve_session(postern, "sieve", servers)),
        ]
        failed = 0
        for name, run in sessions:
            try:
                say(f"   {name:<11} OK   {run()}")
            except Exception as error:  # report every listener, then fail
                failed += 1
                say(f"   {name:<11} FAIL {error}")
        harness.wait_until(lambda: postern.metric("postern_connections_active") == 0, timeout=10)
        say(f"== metrics from http://{postern.metrics_address}/metrics")
        for line in postern.scrape().splitlines():
            if line.startswith("postern_") and not line.endswith(" 0") and "_bucket" not in line:
                say("   " + line)
        say("== the runtime API: postern ctl backends (status page at http://127.0.0.1:9465/)")
        ctl = subprocess.run([harness.postern_binary(), "ctl", "--config", CONFIG, "backends"],
                             capture_output=True, text=True, timeout=30)
        for line in (ctl.stdout + ctl.stderr).splitlines():
            say("   " + line)
        if ctl.returncode != 0:
            failed += 1
            say(f"   postern ctl failed (exit {ctl.returncode})")
        say("== access log")
        for line in postern.access_lines():
            say("   " + line)
        if failed:
            say(f"== {failed} listener(s) failed")
            return 1
        say("== every listener relayed a real session")
        if keep:
            say("== running; Ctrl-C stops postern, Dovecot and Postfix")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        return 0
    finally:
        if postern is not None:
            code = postern.stop()
            say(f"== postern stopped (exit {code})")
        servers.stop()


if __name__ == "__main__":
    sys.exit(main())
