"""A Hugging Face Hub stand-in on localhost for tests without network: the file endpoints ``hf_hub_download`` uses
(HEAD and GET ``/{repo}/resolve/{revision}/{file}``, with the ``X-Repo-Commit`` and ``ETag`` headers and the
``X-Error-Code`` of a missing repo, revision or file). Point huggingface_hub at it with ``HF_ENDPOINT``."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class FakeHub:
    """Serves ``repos``: repo id -> (commit, {revision name: commit} extra, {file name: bytes}); records requests."""

    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def reply(self, code: int, body: bytes = b"", headers: dict | None = None) -> None:
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self) -> None:
                hub.requests.append((self.command, self.path))
                parts = self.path.split("?")[0].lstrip("/").split("/")
                if len(parts) < 5 or parts[2] != "resolve":
                    return self.reply(404, b"", {"X-Error-Code": "EntryNotFound"})
                repo, revision, name = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
                info = hub.repos.get(repo)
                if info is None:
                    return self.reply(401, b"", {"X-Error-Code": "RepoNotFound"})
                commit = info["revisions"].get(revision)
                if commit is None:
                    return self.reply(404, b"", {"X-Error-Code": "RevisionNotFound"})
                if name not in info["files"]:
                    return self.reply(404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit})
                data = info["files"][name]
                return self.reply(200, data, {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                                              "Content-Type": "application/octet-stream"})

            do_HEAD = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add_repo(self, repo_id: str, folder: Path, commit: str, tags: tuple[str, ...] = ()) -> None:
        """Serve every file of ``folder`` as ``repo_id`` at ``commit`` (also reachable as main and as each of ``tags``)."""
        files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
        revisions = {"main": commit, commit: commit, **{t: commit for t in tags}}
        self.repos[repo_id] = {"files": files, "revisions": revisions}

    def downloads(self) -> list[str]:
        """The paths fetched with GET (file bodies) so far."""
        return [path for method, path in self.requests if method == "GET"]

    def asked(self, filename: str) -> int:
        """How many requests (HEAD or GET) named ``filename``."""
        return sum(path.split("?")[0].endswith("/" + filename) for _, path in self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
