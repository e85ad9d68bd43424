"""A local HTTP server on 127.0.0.1 for the zoo tests: it serves files the test makes, as a
plain file host (for pooch) or as the Hugging Face Hub does (for huggingface_hub: ``HEAD``
answers with ``X-Repo-Commit``, ``ETag`` and ``Content-Length``), records every request,
and can cut a transfer short. No test reaches beyond this machine."""

import hashlib
import http.server
import threading


class ZooServer:
    """``files``: URL path -> bytes; ``requests``: (method, path) of each request;
    ``cut``: paths whose first GET sends half the body and drops the connection, and whose
    later GETs (a client resuming) are dropped before any response."""

    def __init__(self):
        self.files, self.requests, self.cut = {}, [], set()
        self._served = set()
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

            def _answer(self, body):
                path = self.path.split("?", 1)[0]
                with server._lock:
                    server.requests.append((self.command, path))
                    resumed = body and path in server.cut and path in server._served
                    if body:
                        server._served.add(path)
                data = server.files.get(path)
                if resumed:  # the transfer was cut: every later attempt is dropped too
                    self.close_connection = True
                    return
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("X-Repo-Commit", "0123456789abcdef0123456789abcdef01234567")
                self.end_headers()
                if not body:
                    return
                if path in server.cut:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.root = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self):
        if self._thread is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self._thread.join(timeout=10)
            self._thread = None
