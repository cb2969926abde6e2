"""A real package index on 127.0.0.1 for the tests: PEP 503 pages over HTTP, Basic auth.

:class:`LocalIndex` serves ``ROOT/simple/<name>/index.html`` (links to the wheels in
``ROOT/files/``, with their sha256) from a thread; with credentials set, every request
without them gets 401, as a private index would answer. :func:`build_wheels` builds
small real projects with ``uv build``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import http.server
import shutil
import subprocess
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from packaging.utils import canonicalize_name, parse_wheel_filename
from uv import find_uv_bin

UV = find_uv_bin()


class LocalIndex:
    """PEP 503 index pages for the wheels in ``root/files``, served while open."""

    def __init__(self, root: Path, credentials: tuple[str, str] | None = None) -> None:
        self.root = root
        self.credentials = credentials
        self.authorized = 0  #: requests that carried the credentials
        self.refused = 0  #: requests without them (answered 401)
        self.port = 0

    def publish(self, wheels: list[Path]) -> None:
        """Copy wheels into the index and (re)write its pages."""
        files = self.root / "files"
        files.mkdir(parents=True, exist_ok=True)
        for wheel in wheels:
            shutil.copy2(wheel, files / wheel.name)
        projects: dict[str, list[Path]] = {}
        for wheel in sorted(files.glob("*.whl")):
            name = canonicalize_name(parse_wheel_filename(wheel.name)[0])
            projects.setdefault(name, []).append(wheel)
        simple = self.root / "simple"
        for name, found in projects.items():
            links = "".join(
                f'<a href="../../files/{html.escape(w.name)}#sha256='
                f'{hashlib.sha256(w.read_bytes()).hexdigest()}">{html.escape(w.name)}</a>\n'
                for w in found
            )
            page = simple / name / "index.html"
            page.parent.mkdir(parents=True, exist_ok=True)
            page.write_text(f"<!DOCTYPE html>\n<html><body>\n{links}</body></html>\n")
        listing = "".join(f'<a href="{n}/">{n}</a>\n' for n in sorted(projects))
        (simple / "index.html").write_text(
            f"<!DOCTYPE html>\n<html><body>\n{listing}</body></html>\n"
        )

    def url(self, path: str = "simple", *, with_credentials: bool = True) -> str:
        auth = ""
        if self.credentials and with_credentials:
            auth = f"{self.credentials[0]}:{self.credentials[1]}@"
        return f"http://{auth}127.0.0.1:{self.port}/{path}"

    @contextmanager
    def serving(self) -> Iterator[LocalIndex]:
        expected = None
        if self.credentials:
            token = base64.b64encode(":".join(self.credentials).encode()).decode()
            expected = f"Basic {token}"
        index = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                if expected is not None and self.headers.get("Authorization") != expected:
                    index.refused += 1
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="envbisect-test"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                index.authorized += 1
                super().do_GET()

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet

        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(self.root))
        )
        self.port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=60)


def build_wheels(out: Path, projects: Mapping[tuple[str, str], str]) -> list[Path]:
    """Build one wheel per ``(name, version) → source of its module`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    wheels = []
    for (name, version), source in projects.items():
        module = name.replace("-", "_")
        project = out / "src" / f"{name}-{version}"
        (project / module).mkdir(parents=True, exist_ok=True)
        (project / module / "__init__.py").write_text(source)
        (project / "pyproject.toml").write_text(
            '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
            f'[project]\nname = "{name}"\nversion = "{version}"\n'
            f'[tool.hatch.build.targets.wheel]\npackages = ["{module}"]\n'
        )
        subprocess.run(
            [UV, "build", "--quiet", "--wheel", "--out-dir", str(out), str(project)],
            check=True,
            capture_output=True,
        )
        wheels.append(next(out.glob(f"{module}-{version}-*.whl")))
    return wheels
