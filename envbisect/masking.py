"""Secrets stay secret: credentials are masked in anything envbisect prints or writes."""

from __future__ import annotations

import re
import urllib.parse

# user:password@ in any URL-shaped text, e.g. a worker log line or an env dump.
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)([^\s@/]+)(@)")


def mask(url: str) -> str:
    """The URL with its password replaced by ``***``, for anything printed or written."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:  # not a URL we can take apart: mask by pattern
        return mask_urls(url)
    if parts.password is None:
        return url
    user = urllib.parse.quote(parts.username or "", safe="")
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{port}" if port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def mask_urls(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    return _URL_PASSWORD.sub(r"\1***\3", text)


def mask_url_path(url: str) -> str:
    """``url`` fit to print when its path or query may hold a secret (a per-run token, a
    signature): the password, every path segment but the last, and the query become ``***``.
    """
    parts = urllib.parse.urlsplit(mask(url))
    head, _, last = parts.path.rpartition("/")
    path = f"/***/{last}" if head.strip("/") else parts.path
    return urllib.parse.urlunsplit(
        parts._replace(path=path, query="***" if parts.query else "", fragment="")
    )
