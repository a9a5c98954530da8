#!/usr/bin/env python3
"""The IMAP pipeline figure (SPEC §5.1, §10): postern's own CPU time for N pre-authentication
`tN NOOP` commands on one session, through an IMAP passthrough listener to a backend that
answers each at once. Two shapes:

  burst   all N commands in one go, as the attacker of "One reading of the wire" sent them
          (postern now closes such a session at 1,001 outstanding commands);
  window  at most W commands outstanding, the most a well-behaved pipelining client keeps.

The per-command cost must not grow with N. Usage:
  python3 tests/bench/pipeline.py [--binary build/default/postern] [--window 900] 50000 100000 200000
Prints one line per (shape, N): postern CPU seconds, answers received, how the session ended.
Never a test: numbers go to tests/bench/RESULTS.md."""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def fake_backend(listening):
    """An IMAP server that greets and answers every tagged line with `tag OK`."""
    while True:
        try:
            conn, _ = listening.accept()
        except OSError:
            return
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def serve(conn):
    with conn:
        conn.sendall(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] fake ready\r\n")
        buffer = b""
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            buffer += data
            lines = buffer.split(b"\r\n")
            buffer = lines.pop()
            out = b"".join(line.split(b" ", 1)[0] + b" OK NOOP done\r\n" for line in lines if line)
            try:
                conn.sendall(out)
            except OSError:
                return


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def run(port, count, window):
    """Sends `count` NOOPs keeping at most `window` outstanding; returns (answers, ending)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    f = s.makefile("rb")
    f.readline()  # greeting
    sent = answered = 0
    ending = "ok"
    while answered < count:
        batch = []
        while sent < count and sent - answered < window:
            batch.append(b"t%d NOOP\r\n" % sent)
            sent += 1
        if batch:
            try:
                s.sendall(b"".join(batch))
            except OSError:
                ending = "closed by postern"
                break
        line = f.readline()
        if not line:
            ending = "closed by postern"
            break
        if line.startswith(b"* BYE"):
            ending = line.decode().strip()
            break
        answered += 1
    s.close()
    return answered, ending


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=os.path.join(ROOT, "build", "default", "postern"))
    parser.add_argument("--window", type=int, default=900)
    parser.add_argument("counts", type=int, nargs="*", default=[50000, 100000, 200000])
    args = parser.parse_args()

    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(16)
    threading.Thread(target=fake_backend, args=(listening,), daemon=True).start()
    backend_port = listening.getsockname()[1]

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    config = (f'[limits]\nmax_line_length = 8192\npreauth_timeout = "10m"\n'
              f'[metrics]\nlisten = ""\n'
              f'[[listener]]\nname = "imap"\nprotocol = "imap"\nlisten = "127.0.0.1:{port}"\n'
              f'backend = "b"\n'
              f'[[backend]]\nname = "b"\nservers = ["127.0.0.1:{backend_port}"]\n'
              f'health = {{ interval = "1h", timeout = "2s" }}\n')
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(config)
        path = f.name
    proc = subprocess.Popen([args.binary, "--config", path], stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        for shape, window in (("burst", 10**9), ("window", args.window)):
            for count in args.counts:
                before = cpu_seconds(proc.pid)
                answered, ending = run(port, count, window)
                used = cpu_seconds(proc.pid) - before
                print(f"{shape:6} N={count:7d}  postern CPU {used:6.2f} s  "
                      f"({used / max(answered, 1) * 1e6:5.1f} us/answer)  "
                      f"answers {answered:7d}  {ending}", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
