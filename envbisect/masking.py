"""Text fit to leave the machine: credentials masked, terminal escapes and control
characters removed.

Three nets catch a credential, in this order:

1. **known secrets**, masked verbatim wherever they stand (in every percent-encoding):
   the broker URL's password, the credentials of the index URLs in ``PIP_*``/``UV_*``
   variables, those on the command line (see :meth:`Secrets.add_environment`,
   :meth:`Secrets.add_text`);
2. **URL userinfo**: ``scheme://user:password@host`` keeps the user, ``scheme://TOKEN@host``
   keeps nothing (a lone userinfo can be a token); a raw ``@`` in a password is allowed
   (the host follows the last one);
3. **secret-looking assignments**: ``API_TOKEN=…``, ``--password …``, ``'secret': '…'``,
   ``Authorization: Bearer …``, ``curl -u user:…``.
"""

from __future__ import annotations

import re
import threading
import urllib.parse
from collections.abc import Mapping
from typing import Any

MASK = "***"

# scheme://userinfo@ : the userinfo runs to the last "@" before the first "/" or space,
# so a password may hold a raw "@", ":", "#" or "?". No word boundary before the
# scheme: "0amqp://…" and "x_https://…" hold URLs too.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s/]*)@")
#: Lone user names that are conventions, not tokens (``git+ssh://git@github.com/…``).
_PUBLIC_USERS = frozenset({"git", MASK})
#: Passwords that say the user name is the token (``https://TOKEN:x-oauth-basic@github.com``).
_TOKEN_AS_USER = frozenset({"", "x-oauth-basic"})

_KEYWORD = (
    r"(?:token|secret|passwd|password|passphrase|api[_-]?key|access[_-]?key"
    r"|private[_-]?key|credentials?|auth)s?"
)
#: A name that ends a part with a secret-looking word (``PGPASSWORD``, ``client_secret``;
#: not ``tokenizers``).
_NAME = rf"(?:[A-Za-z0-9]+[_.-])*[A-Za-z0-9]*?{_KEYWORD}(?:[_.-][A-Za-z0-9]+)*"
#: A shell word: quoted and unquoted pieces, up to unquoted white space or ; & | < >.
_WORD = r"""(?:'[^']*'|"(?:[^"\\]|\\.)*"|[^\s'";&|<>])+"""
#: Where a secret follows a secret-looking name, for sure.
_ASSIGNMENTS = (
    # API_TOKEN=…, --password=…, client_secret=… (never a pin: name==1.0); the lookahead
    # spares every word without "=" the costly match of the name (a 2 MB log: 1.5 s → 0.1 s)
    re.compile(rf"(?i)(?<![\w.-])(?=[\w.-]*=)(?P<keep>-{{0,2}}{_NAME}=)(?!=)(?P<secret>{_WORD})"),
    # 'password': '…', "token": "…" (dict reprs, JSON)
    re.compile(
        rf"""(?i)(?P<keep>(?P<q>['"]){_NAME}(?P=q)\s*:\s*)"""
        r"""(?P<secret>'[^']*'|"(?:[^"\\]|\\.)*"|[^\s,}'"]+)"""
    ),
    # Authorization: Bearer …
    re.compile(
        r"""(?i)(?P<keep>\bauthorization\s*[:=]\s*(?:(?:bearer|basic|token|digest)\s+)?)"""
        r"""(?P<secret>[^\s'"]+)"""
    ),
    # curl -u user:…
    re.compile(r"(?<!\S)(?P<keep>(?:-u|--user)[ \t]+[^\s:]+:)(?P<secret>[^\s'\"]+)"),
)
#: --password …, --api-key …: the next word is probably the option's value (masked in
#: text, not kept as a known secret: it may be an ordinary word).
_OPTION_VALUE = re.compile(rf"(?i)(?<![\w.-])(?P<keep>--?{_NAME}[ \t]+)(?!-)(?P<secret>{_WORD})")

#: Every variable that may hold an index URL with credentials (several, space-, comma- or
#: ``name=``-separated), and the broker's.
INDEX_VARIABLES = (
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_FIND_LINKS",
    "UV_INDEX_URL",
    "UV_EXTRA_INDEX_URL",
    "UV_INDEX",
    "UV_DEFAULT_INDEX",
    "UV_FIND_LINKS",
    "ENVBISECT_BROKER_URL",
)
#: uv's per-index credentials: ``UV_INDEX_<NAME>_PASSWORD``.
_UV_INDEX_PASSWORD = re.compile(r"UV_INDEX_\w+_PASSWORD")

# ECMA-48: CSI (colours, cursor), OSC (window title) and string commands, two-byte escapes.
_ESCAPE = re.compile(
    r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\|$)"
    r"|[PX^_][^\x1b]*(?:\x1b\\|$)|[ -/]*[0-~])"
)
# What XML 1.0 forbids, what a terminal acts on, and what is no text at all.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


class Secrets:
    """Values known to be secret, masked verbatim wherever they appear.

    Values shorter than :attr:`MIN_LENGTH` are not kept: they would mask ordinary
    words (``guest``, say); a URL's password is masked by the URL rules whatever its
    length.
    """

    MIN_LENGTH = 6

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: tuple[str, ...] = ()

    def add(self, value: str) -> None:
        """Keep ``value`` (as written, decoded and percent-encoded) as a secret."""
        decoded = urllib.parse.unquote(value)
        variants = {value, decoded}
        for raw in (value, decoded):
            variants |= {urllib.parse.quote(raw, safe=""), urllib.parse.quote_plus(raw, safe="")}
            variants.add(urllib.parse.quote(raw, safe="!$&'()*+,;=:@-._~"))
        kept = {v for v in variants if len(v) >= self.MIN_LENGTH}
        with self._lock:
            # Longest first: a secret that holds another is masked whole.
            self._values = tuple(sorted(set(self._values) | kept, key=len, reverse=True))

    def add_url(self, url: str) -> None:
        """Keep the credentials of every URL in ``url`` (a password, or a lone token)."""
        for match in _USERINFO.finditer(url):
            _, secret, _ = _credential(match["userinfo"])
            if secret:
                self.add(secret)

    def add_text(self, text: str) -> None:
        """Keep every credential of ``text`` (a command line): URLs' and assignments'."""
        self.add_url(text)
        for pattern in _ASSIGNMENTS:
            for match in pattern.finditer(text):
                self.add(match["secret"].strip("'\""))

    def add_environment(self, environ: Mapping[str, str]) -> None:
        """Keep the credentials of the index and broker URLs set in ``environ``."""
        for name, value in environ.items():
            if name in INDEX_VARIABLES:
                self.add_url(value)
            elif _UV_INDEX_PASSWORD.fullmatch(name):
                self.add(value)

    def mask(self, text: str) -> str:
        """``text`` with every known secret replaced by ``***``."""
        for value in self._values:
            text = text.replace(value, MASK)
        return text


#: The run's known secrets; the CLI fills it before anything is printed.
KNOWN_SECRETS = Secrets()


def mask(url: str) -> str:
    """The URL with its credentials replaced by ``***``, for anything printed or written."""
    return mask_urls(url)


def mask_urls(text: str) -> str:
    """``text`` with every credential in it masked: known secrets, URL passwords and
    tokens, secret-looking assignments (see the module's docstring)."""
    text = _USERINFO.sub(_masked_userinfo, KNOWN_SECRETS.mask(text))
    for pattern in (*_ASSIGNMENTS, _OPTION_VALUE):
        text = pattern.sub(_masked_assignment, text)
    return text


def printable(text: str) -> str:
    """``text`` without terminal escapes or control characters (tabs and newlines stay;
    a carriage return becomes a newline): fit for a log, Markdown and XML 1.0."""
    text = _ESCAPE.sub("", text).replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("", text)


def scrub(document: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON document with every string in it masked and printable (keys stay as they are)."""
    return {key: _scrubbed(value) for key, value in document.items()}


def _scrubbed(value: Any) -> Any:
    if isinstance(value, str):
        return printable(mask_urls(value))
    if isinstance(value, Mapping):
        return scrub(value)
    if isinstance(value, list | tuple):
        return [_scrubbed(item) for item in value]
    return value


def _credential(userinfo: str) -> tuple[str, str, str]:
    """A URL's userinfo as (shown before, the secret, shown after); no secret: ``""``."""
    user, colon, password = userinfo.partition(":")
    if not colon:
        return ("", "", user) if user in _PUBLIC_USERS else ("", user, "")
    if password in _TOKEN_AS_USER:
        return "", user, f":{password}"
    return f"{user}:", password, ""


def _masked_userinfo(match: re.Match[str]) -> str:
    before, secret, after = _credential(match["userinfo"])
    return f"{match['scheme']}{before}{MASK if secret else ''}{after}@"


def _masked_assignment(match: re.Match[str]) -> str:
    secret = match["secret"]
    quote = secret[0] if len(secret) > 1 and secret[0] in "'\"" and secret[-1] == secret[0] else ""
    return f"{match['keep']}{quote}{MASK}{quote}"


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
