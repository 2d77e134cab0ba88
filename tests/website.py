"""A small web site on loopback that tests write: pages, redirects, huge, slow and binary answers."""

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Page:
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    status: int = 200
    location: str | None = None  # a redirect's target
    repeat: int = 1  # the body sent this many times (huge pages), without Content-Length when > 1
    delay: float = 0.0  # seconds slept between the pieces of a slow body
    pieces: int = 1


@dataclass
class Site:
    host: str
    port: int
    pages: dict[str, Page | Callable[[], Page]] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    headers: dict[str, dict[str, str]] = field(default_factory=dict)  # the last request's, per path

    def url(self, path: str, host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"


def _handler(site: Site) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return None

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            site.hits[path] = site.hits.get(path, 0) + 1
            site.headers[path] = {k.lower(): v for k, v in self.headers.items()}
            page = site.pages.get(path)
            if callable(page):
                page = page()
            if page is None:
                page = Page(b"not found", "text/plain", 404)
            with contextlib.suppress(OSError):
                self._send(page)

        def _send(self, page: Page) -> None:
            self.send_response(page.status)
            self.send_header("Content-Type", page.content_type)
            if page.location is not None:
                self.send_header("Location", page.location)
            if page.repeat > 1 or page.pieces > 1:
                self.send_header("Connection", "close")
                self.end_headers()
                for _ in range(page.repeat):
                    self.wfile.write(page.body)
                for _ in range(page.pieces - 1):
                    time.sleep(page.delay)
                    self.wfile.write(page.body)
                    self.wfile.flush()
                self.close_connection = True
                return
            self.send_header("Content-Length", str(len(page.body)))
            self.end_headers()
            self.wfile.write(page.body)

    return Handler


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        return None  # a client that hung up on a huge or slow page is what those tests do


@contextlib.contextmanager
def website(pages: dict[str, Page | Callable[[], Page]] | None = None) -> Iterator[Site]:
    """Serve ``pages`` on 127.0.0.1 (a free port) in a background thread."""
    server = _Server(("127.0.0.1", 0), BaseHTTPRequestHandler)
    site = Site("127.0.0.1", int(server.server_address[1]), dict(pages or {}))
    server.RequestHandlerClass = _handler(site)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield site
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
