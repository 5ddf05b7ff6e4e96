"""A local stand-in for the Hugging Face hub: serves generated files the way the hub's resolve endpoint does.

``HubStandIn({("timm/test_resnet.r160_in1k", "model.safetensors"): b"..."})`` listens on 127.0.0.1 at a free
port in a thread; point ``HF_ENDPOINT`` at ``.endpoint`` and ``huggingface_hub.hf_hub_download`` downloads from
it. ``HEAD`` / ``GET /{repo_id}/resolve/{revision}/{filename}`` answer with the headers the hub client reads
(``X-Repo-Commit``, ``ETag``, ``Content-Length``); unknown files get the hub's 404 with ``X-Error-Code:
EntryNotFound``. Every request is recorded in ``.requests`` as ``(method, path)``.
"""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubStandIn:
    def __init__(self, files: dict[tuple[str, str], bytes]) -> None:
        self.files = files
        self.requests: list[tuple[str, str]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> HubStandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:
                self._answer(with_body=False)

            def do_GET(self) -> None:
                self._answer(with_body=True)

            def _answer(self, with_body: bool) -> None:
                stand_in.requests.append((self.command, self.path))
                repo_id, _, rest = self.path.lstrip("/").partition("/resolve/")
                _revision, _, filename = rest.partition("/")
                body = stand_in.files.get((repo_id, filename))
                if body is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Error-Message", "Entry not found")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if with_body:
                    self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: the requests are recorded in ``stand_in.requests``."""

        return Handler
