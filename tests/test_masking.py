"""Credentials never leave envbisect unmasked; reports hold no terminal escapes (no I/O)."""

from __future__ import annotations

import string
import urllib.parse

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from envbisect.masking import Secrets, mask, mask_url_path, mask_urls, printable, scrub


def test_mask_hides_the_password_only() -> None:
    assert mask("amqp://user:s3cret@host:5672/vh") == "amqp://user:***@host:5672/vh"
    assert mask("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        # a raw "@" in the password: the host is after the last "@"
        ("amqp://u:p@ss@host/", "amqp://u:***@host/"),
        ("amqp://u:p@ss:w@rd@host:5672/vh", "amqp://u:***@host:5672/vh"),
        # a lone userinfo can be a token (pip, GitHub, GitLab deploy tokens)
        ("https://TOKEN@host/", "https://***@host/"),
        ("amqp://guest@h/", "amqp://***@h/"),
        # the token is the user name when the password is empty or a placeholder
        (
            "https://ghp_abcdef123:x-oauth-basic@github.com/o/r",
            "https://***:x-oauth-basic@github.com/o/r",
        ),
        ("https://ghp_abcdef123:@github.com/o/r", "https://***:@github.com/o/r"),
        # percent-encoded and reserved characters
        ("https://u:p%40ss%2Fw%23d@pypi.corp/simple", "https://u:***@pypi.corp/simple"),
        ("https://u:p#ss?w@pypi.corp/simple", "https://u:***@pypi.corp/simple"),
        # "git" is the conventional user of ssh URLs, not a secret
        ("git+ssh://git@github.com/org/repo.git", "git+ssh://git@github.com/org/repo.git"),
        # an "@" in the path is a git ref, not userinfo
        (
            "git+https://github.com/org/repo@v1.0#egg=x",
            "git+https://github.com/org/repo@v1.0#egg=x",
        ),
        (
            "git+https://tok3n123@github.com/org/repo@v1.0",
            "git+https://***@github.com/org/repo@v1.0",
        ),
        ("http://h:80/x@y", "http://h:80/x@y"),
        # already masked: unchanged
        ("amqp://u:***@h/", "amqp://u:***@h/"),
        ("https://***@h/", "https://***@h/"),
    ],
)
def test_mask_url_forms(url: str, masked: str) -> None:
    assert mask(url) == masked


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (
            "ENVBISECT_BROKER_URL=amqp://user:s3cret@host:5672/ ready",
            "ENVBISECT_BROKER_URL=amqp://user:***@host:5672/ ready",
        ),
        ("(see `redis://:pw@h:6379/0`)", "(see `redis://:***@h:6379/0`)"),
        ("two amqp://a:x@h/ amqps://b:y@h/", "two amqp://a:***@h/ amqps://b:***@h/"),
        ("no password: http://h:80/x", "no password: http://h:80/x"),
        (
            "'https://tok3n@h/' (https://u:p@ss@h) <https://u:pw@h/>",
            "'https://***@h/' (https://u:***@h) <https://u:***@h/>",
        ),
        ('url="amqp://u:p@ss@h:5672"', 'url="amqp://u:***@h:5672"'),
        # secret-looking assignments and options
        ("API_TOKEN=abc123 pytest -x", "API_TOKEN=*** pytest -x"),
        ("export GITHUB_TOKEN='ghp x y' && run", "export GITHUB_TOKEN='***' && run"),
        ('PGPASSWORD="p w" psql', 'PGPASSWORD="***" psql'),
        ("tool --password=hunter22 --user=me", "tool --password=*** --user=me"),
        ("tool --api-key hunter22 --verbose", "tool --api-key *** --verbose"),
        ("AWS_SECRET_ACCESS_KEY=abc/def+g", "AWS_SECRET_ACCESS_KEY=***"),
        ("client_secret=xyz; db.credentials=abc", "client_secret=***; db.credentials=***"),
        ("{'password': 'hunter22', 'user': 'me'}", "{'password': '***', 'user': 'me'}"),
        ('{"token": "abc", "n": 1}', '{"token": "***", "n": 1}'),
        ("curl -H 'Authorization: Bearer abc.def'", "curl -H 'Authorization: Bearer ***'"),
        ("curl -u me:hunter22 https://h/", "curl -u me:*** https://h/"),
        # not secrets: package pins, words that merely contain a keyword
        ("django-secret-key==1.0 tokenizers==0.19.1", "django-secret-key==1.0 tokenizers==0.19.1"),
        ("author=me passwords: none", "author=me passwords: none"),
    ],
)
def test_mask_urls_in_free_text(text: str, masked: str) -> None:
    assert mask_urls(text) == masked


def test_known_secrets_are_masked_verbatim_in_every_encoding() -> None:
    known = Secrets()
    known.add("p@ss/w0rd")
    text = "raw p@ss/w0rd, quoted p%40ss%2Fw0rd, in a form p%40ss%2Fw0rd"
    assert known.mask(text) == "raw ***, quoted ***, in a form ***"
    known.add("short")  # shorter ones would mask ordinary words: URL masking covers them
    assert known.mask("a short word") == "a short word"


def test_known_secrets_from_urls_options_and_the_environment() -> None:
    known = Secrets()
    known.add_text("--probe-cmd 'API_TOKEN=tok-123456 curl https://u:pa%23ss99@h/'")
    known.add_environment(
        {
            "PIP_INDEX_URL": "https://alice:idx-pass-1@pypi.corp/simple",
            "PIP_EXTRA_INDEX_URL": "https://a.example/simple https://idx-token-2@b.example/s",
            "UV_INDEX": "corp=https://bob:idx-pass-3@uv.corp/simple",
            "UV_FIND_LINKS": "https://idx-token-4@links.corp/,/local/dir",
            "UV_INDEX_CORP_PASSWORD": "idx-pass-5",
            "ENVBISECT_BROKER_URL": "amqp://u:broker-pass-6@h/",
            "HOME": "/home/someone",
        }
    )
    leaked = "tok-123456 pa#ss99 pa%23ss99 idx-pass-1 idx-token-2 idx-pass-3 idx-token-4"
    assert known.mask(f"{leaked} idx-pass-5 broker-pass-6") == " ".join(["***"] * 9)
    assert known.mask("alice bob /home/someone") == "alice bob /home/someone"


def test_the_default_broker_password_is_not_a_secret() -> None:
    known = Secrets()
    known.add_url("amqp://guest:guest@127.0.0.1:5672/")
    assert known.mask("consume on amqp://guest:***@127.0.0.1:5672/") == (
        "consume on amqp://guest:***@127.0.0.1:5672/"
    )


def test_printable_drops_terminal_escapes_and_control_characters() -> None:
    text = "\x1b[31mred\x1b[0m a\x00b\x07c \x1b]0;title\x07done\x1b[2K\r\nnext\rover"
    assert printable(text + "\ttab\x7f\x9b\ufffe") == "red abc done\nnext\nover\ttab"


def test_scrub_masks_every_string_of_a_document_but_not_its_keys() -> None:
    document = {"probe": "amqp://u:pw@h/", "n": 1, "lines": ["\x1b[1mTOKEN=abc\x1b[0m"], "x": None}
    assert scrub(document) == {
        "probe": "amqp://u:***@h/",
        "n": 1,
        "lines": ["TOKEN=***"],
        "x": None,
    }


# -- properties ------------------------------------------------------------------------------

# What a password may hold (RFC 3986 userinfo: unreserved, sub-delims, ":", and the raw "@"
# that clients tolerate) besides what a user percent-encodes ("/", "#", "?", "%", " ").
PASSWORD_CHARS = string.ascii_letters + string.digits + "@:/%#?!$&'()+,;=-._~ "
TOKEN_CHARS = string.ascii_letters + string.digits + "-_.~+/="
USERINFO_SAFE = "!$&'()+,;=-._~@:"  # left raw in the URL; the rest is percent-encoded


def distinctive(alphabet: str) -> st.SearchStrategy[str]:
    """Secrets of 8+ characters that cannot turn up in text by chance (not "00000000")."""
    return st.text(alphabet, min_size=8, max_size=24).filter(lambda s: len(set(s)) >= 4)


passwords = distinctive(PASSWORD_CHARS)
tokens = distinctive(TOKEN_CHARS).filter(lambda t: t[0].isalnum())  # as real tokens do
users = st.text(string.ascii_letters + string.digits + "._-", min_size=1, max_size=12).filter(
    lambda u: u != "git"
)
schemes = st.sampled_from(["amqp", "amqps", "redis", "https", "http", "git+https", "sftp"])
hosts = st.sampled_from(["h", "127.0.0.1", "pypi.corp.example", "[::1]", "broker-1.internal"])
tails = st.sampled_from(["", "/", ":5672/", ":6379/0", "/simple/", "/org/repo.git@v1.0", "?x=1"])
frames = st.sampled_from(
    [
        *(("", ""), ("url=", " next"), ("'", "'"), ('"', '"'), ("(", ")"), ("<", ">")),
        *(("[", "]"), ("`", "`"), ("see ", ", then"), ("X_URL=", ";"), ("{'url': '", "'}")),
    ]
)


def forms(secret: str) -> set[str]:
    """The secret as a user may have written it, and as a program may print it."""
    return {
        secret,
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote(secret, safe=USERINFO_SAFE),
    }


@settings(max_examples=500)
@given(schemes, users, passwords, hosts, tails, frames)
def test_no_password_survives_in_any_url(
    scheme: str, user: str, password: str, host: str, tail: str, frame: tuple[str, str]
) -> None:
    assume(password != "x-oauth-basic")  # GitHub's placeholder: then the user is the token
    url = f"{scheme}://{user}:{urllib.parse.quote(password, safe=USERINFO_SAFE)}@{host}{tail}"
    # What is shown by design (user, host, the rest) may hold the password by chance.
    assume(not any(f in f"{frame[0]}{user} {host}{tail}{frame[1]}" for f in forms(password)))
    masked = mask_urls(f"{frame[0]}{url}{frame[1]}")
    assert not {f for f in forms(password) if f in masked}, masked
    assert f"{user}:***@{host}" in masked  # still readable: who, where


@settings(max_examples=300)
@given(schemes, users, passwords, tokens, st.text(max_size=20), st.text(max_size=20))
def test_no_credential_survives_whatever_surrounds_it(
    scheme: str, user: str, password: str, token: str, before: str, after: str
) -> None:
    assume(password != "x-oauth-basic")
    secrets = forms(password) | forms(token)
    # Not there by chance (the user name is shown, by design):
    assume(not any(secret in before + user + after for secret in secrets))
    password_url = f"{scheme}://{user}:{urllib.parse.quote(password, safe=USERINFO_SAFE)}@h/"
    token_url = f"{scheme}://{urllib.parse.quote(token, safe='-_.~')}@h/"
    masked = mask_urls(f"{before}{password_url} {token_url}{after}")
    assert not {secret for secret in secrets if secret in masked}, masked


@settings(max_examples=300)
@given(schemes, tokens, hosts, tails, frames)
def test_no_token_survives_in_any_url(
    scheme: str, token: str, host: str, tail: str, frame: tuple[str, str]
) -> None:
    url = f"{scheme}://{urllib.parse.quote(token, safe='-_.~')}@{host}{tail}"
    masked = mask_urls(f"{frame[0]}{url}{frame[1]}")
    assert not {f for f in forms(token) if f in masked}, masked
    assert f"***@{host}" in masked


names = st.sampled_from(
    [
        *("API_TOKEN", "GITHUB_TOKEN", "PGPASSWORD", "DB_PASSWD", "client_secret"),
        *("OPENAI_API_KEY", "--password", "--token", "--api-key", "AWS_SECRET_ACCESS_KEY"),
        "my.credentials",
    ]
)


@settings(max_examples=300)
@given(names, tokens, st.sampled_from(["=", "='", '="', " "]), frames)
def test_no_secret_survives_an_assignment(
    name: str, value: str, separator: str, frame: tuple[str, str]
) -> None:
    if separator == " " and not name.startswith("--"):
        separator = "="  # only options take their value as the next word
    quote = separator[1:]
    masked = mask_urls(f"{frame[0]}run {name}{separator}{value}{quote} --verbose{frame[1]}")
    assert value not in masked, masked
    assert f"{name}{separator}***{quote} --verbose" in masked


@settings(max_examples=300)
@given(passwords, st.text(min_size=0, max_size=40), st.text(min_size=0, max_size=40))
def test_a_known_secret_is_masked_wherever_it_stands(secret: str, before: str, after: str) -> None:
    known = Secrets()
    known.add(secret)
    assert secret not in known.mask(before + secret + after)


@settings(max_examples=300)
@given(st.text())
def test_printable_text_is_valid_in_xml_and_holds_no_escape(text: str) -> None:
    clean = printable(text)
    assert not any(ord(c) < 32 and c not in "\t\n" for c in clean)
    assert not any(0x7F <= ord(c) <= 0x9F or 0xD800 <= ord(c) <= 0xDFFF for c in clean)
    assert printable(clean) == clean


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "http://10.0.0.5:41234/Zq8tok3n/" + "a" * 64 + "/pika-1.3.2-py3-none-any.whl",
            "http://10.0.0.5:41234/***/pika-1.3.2-py3-none-any.whl",
        ),
        ("http://10.0.0.5:41234/Zq8tok3n/", "http://10.0.0.5:41234/***/"),
        (
            "https://user:s3cret@files.example/p/x-1-py3-none-any.whl?X-Sig=s1gn&e=1#sha256=ab",
            "https://user:***@files.example/***/x-1-py3-none-any.whl?***",
        ),
        ("http://[fd00::2]:80/x-1-py3-none-any.whl", "http://[fd00::2]:80/x-1-py3-none-any.whl"),
    ],
)
def test_mask_url_path_hides_tokens_in_the_path_and_query(url: str, shown: str) -> None:
    assert mask_url_path(url) == shown
