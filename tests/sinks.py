"""Real receivers on loopback for notification tests: an SMTP server and an HTTP webhook endpoint.

Each is a context manager that binds 127.0.0.1 on a free port, records what arrives and stops on
exit. Nothing here reaches beyond loopback. Also: ports that refuse or never answer, for failures.
"""

from __future__ import annotations

import email
import email.policy
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Mail:
    """One message as the SMTP server received it."""

    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    message: EmailMessage

    @property
    def text(self) -> str:
        """The plain-text body, decoded."""
        part = self.message.get_body(preferencelist=("plain",))
        assert part is not None, "no text/plain part"
        return part.get_content()


@dataclass
class SmtpSink:
    host: str
    port: int
    messages: list[Mail] = field(default_factory=list)

    def apprise_url(self, to: str = "staff@example.org", sender: str = "pa@example.org") -> str:
        """A plain-SMTP apprise URL for this sink: no TLS (`mode=insecure`), no login."""
        return f"mailto://{self.host}:{self.port}?from={sender}&to={to}&mode=insecure"


class _Collector:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = bytes(envelope.original_content or envelope.content)
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.sink.messages.append(Mail(envelope.mail_from, list(envelope.rcpt_tos), raw, message))
        return "250 Message accepted for delivery"


class _FreePortController(Controller):
    # aiosmtpd's Controller probes `self.port` after binding; with port 0 that probe would dial
    # port 0, so learn the port the OS picked first (no bind-close-rebind race).
    def _trigger_server(self) -> None:
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


@contextmanager
def smtp_sink(port: int = 0) -> Iterator[SmtpSink]:
    """An aiosmtpd server on 127.0.0.1:<port> (default: a free one) that keeps every message."""
    sink = SmtpSink(LOOPBACK, port)
    controller = _FreePortController(
        _Collector(sink), hostname=LOOPBACK, port=port, server_hostname="sink.localhost"
    )
    controller.start()
    sink.port = controller.port
    try:
        yield sink
    finally:
        controller.stop()


@dataclass(frozen=True)
class Request:
    """One HTTP request as the webhook endpoint received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class HttpSink:
    host: str
    port: int
    status: int = 200  # set to 500 (or any code) to play a failing channel
    drip_s: float = 0.0  # answer one header line every 0.1 s for this long: alive but too slow
    requests: list[Request] = field(default_factory=list)
    closed: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str = "/hook") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def apprise_url(self, path: str = "/hook", userinfo: str = "") -> str:
        """A generic JSON webhook apprise URL (`json://`) pointing here."""
        auth = f"{userinfo}@" if userinfo else ""
        return f"json://{auth}{self.host}:{self.port}{path}"


def _handler_for(sink: HttpSink) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            sink.requests.append(Request(self.command, self.path, dict(self.headers), body))
            reply = b'{"ok": true}' if sink.status < 400 else b'{"error": "sink says no"}'
            try:
                self.send_response(sink.status)
                deadline = time.monotonic() + sink.drip_s
                while time.monotonic() < deadline and not sink.closed.is_set():
                    self.send_header("X-Drip", "wait")
                    self.flush_headers()
                    sink.closed.wait(0.1)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up: fine here
                self.close_connection = True

        do_POST = do_PUT = do_GET = do_PATCH = do_DELETE = _record

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

    return Handler


@contextmanager
def http_sink(status: int = 200, drip_s: float = 0.0) -> Iterator[HttpSink]:
    """A stdlib ThreadingHTTPServer on 127.0.0.1:<free port> recording every request."""
    sink = HttpSink(LOOPBACK, 0, status, drip_s)
    server = ThreadingHTTPServer((LOOPBACK, 0), _handler_for(sink))
    sink.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield sink
    finally:
        sink.closed.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port held bound but not listening: every connection is refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        yield sock.getsockname()[1]


@contextmanager
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections (kernel backlog) but never says a word."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        sock.listen(8)
        yield sock.getsockname()[1]
