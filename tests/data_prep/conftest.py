"""A local HTTP server on 127.0.0.1 (random port) whose routes tests fill in; the only network tests use."""

import collections
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

Route = Callable[[BaseHTTPRequestHandler], None]


def reply(status: int, body: bytes = b"", headers: dict | None = None, content_length: bool = True) -> Route:
    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        if content_length:
            handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return route


def redirect(location: str, status: int = 302) -> Route:
    return reply(status, headers={"Location": location})


def delayed(seconds: float, then: Route) -> Route:
    """Say nothing for ``seconds`` before answering: a server slower than the read timeout."""

    def route(handler):
        time.sleep(seconds)
        then(handler)

    return route


def stalled_body(head: bytes, seconds: float, declared: int) -> Route:
    """Send headers and the first bytes, then go quiet: a timeout while streaming the body."""

    def route(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", str(declared))
        handler.end_headers()
        handler.wfile.write(head)
        handler.wfile.flush()
        time.sleep(seconds)

    return route


def endless_body(chunk: bytes = b"\0" * 65536, limit: int = 512 * 2**20) -> Route:
    """Stream without a Content-Length until the client hangs up (or ``limit`` bytes, as a safety net)."""

    def route(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        handler.end_headers()
        sent = 0
        try:
            while sent < limit:
                handler.wfile.write(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        handler.server.bytes_sent[handler.path] = sent

    return route


def failing_first(times: int, status: int, then: Route) -> Route:
    """Answer ``status`` the first ``times`` calls, then behave like ``then`` (a flaky server)."""
    calls = {"n": 0}
    lock = threading.Lock()

    def route(handler):
        with lock:
            calls["n"] += 1
            fail = calls["n"] <= times
        (reply(status, b"try again") if fail else then)(handler)

    return route


class LocalServer:
    # Route builders, reachable from tests through the fixture (test modules should not import conftest).
    reply = staticmethod(reply)
    redirect = staticmethod(redirect)
    delayed = staticmethod(delayed)
    stalled_body = staticmethod(stalled_body)
    endless_body = staticmethod(endless_body)
    failing_first = staticmethod(failing_first)

    def __init__(self):
        routes: dict[str, Route] = {}
        hits: collections.Counter = collections.Counter()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802 - http.server's naming
                hits[self.path] += 1
                route = routes.get(self.path)
                if route is None:
                    reply(404, b"<html>not found</html>", {"Content-Type": "text/html"})(self)
                else:
                    route(self)

            def log_message(self, *args):  # keep test output clean
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True  # a deliberately stalled handler must not block shutdown

            def handle_error(self, request, client_address):
                # Clients that time out or refuse a body hang up on purpose; anything else is a test bug.
                if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                    super().handle_error(request, client_address)

        self.routes, self.hits = routes, hits
        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.bytes_sent = {}
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def bytes_sent(self) -> dict:
        return self.httpd.bytes_sent

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def http_server():
    server = LocalServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    """Tiny VAE / tokenizer / text encoder saved once (read-only), so a stage and its test load the same weights."""
    import torch
    from transformers import CLIPTokenizer

    from diffusion.models import tiny

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    tiny.tiny_vae().save_pretrained(root / "vae")
    tok_dir = tiny.save_tiny_tokenizer(str(root / "tokenizer"))
    tiny.tiny_text_encoder(len(CLIPTokenizer.from_pretrained(tok_dir))).save_pretrained(root / "text_encoder")
    return root
