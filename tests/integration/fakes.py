"""Scripted backends for faults a real mail server will not produce on demand: one that accepts
and never greets, one that floods, one that greets and then dies. Real protocol behaviour is
always tested against Dovecot and Postfix instead."""

import select
import socket
import threading


class FakeBackend:
    """Listens on 127.0.0.1; each connection is handled by `behaviour(conn)` in a thread."""

    def __init__(self, behaviour):
        self.behaviour = behaviour
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.connections = []
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn):
        try:
            self.behaviour(conn)
        except OSError:
            pass

    def stop(self):
        self.stopping = True
        self.sock.close()
        for conn in self.connections:
            try:
                conn.close()
            except OSError:
                pass


def silent(conn):
    """Accepts and never says a word (a hung server)."""
    conn.settimeout(30)
    try:
        conn.recv(1)
    except OSError:
        pass


def flood(total, chunk=65536, stalled=None):
    """Greets, then sends `total` bytes of a known pattern as fast as the client takes them.
    `stalled` (a threading.Event) is set the first time the socket takes no more bytes: the
    proxy in between has stopped reading."""
    def behaviour(conn):
        conn.sendall(b"* OK flood\r\n")
        block = bytes(range(256)) * (chunk // 256)
        sent = 0
        while sent < total:
            piece = block[: min(chunk, total - sent)]
            if stalled is not None and not stalled.is_set():
                _, writable, _ = select.select([], [conn], [], 0.5)
                if not writable:
                    stalled.set()
            conn.sendall(piece)
            sent += len(piece)
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(30)
        while conn.recv(65536):
            pass
        conn.close()
    return behaviour


def greet_then_die(conn):
    """Greets, waits for one command, then vanishes mid-session."""
    conn.sendall(b"* OK about to die\r\n")
    conn.settimeout(30)
    conn.recv(1024)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    conn.close()


def lines(conn):
    """The lines the client sends (without their LF), until it closes."""
    conn.settimeout(30)
    buffer = b""
    while True:
        while b"\n" not in buffer:
            chunk = conn.recv(4096)
            if not chunk:
                return
            buffer += chunk
        line, buffer = buffer.split(b"\n", 1)
        yield line


def scripted(greeting, replies):
    """Sends `greeting`, then answers the n-th line the client sends with replies[n]."""
    def behaviour(conn):
        conn.sendall(greeting)
        received = lines(conn)
        for reply in replies:
            if next(received, None) is None:
                return
            conn.sendall(reply)
        for _ in received:
            pass
    return behaviour
