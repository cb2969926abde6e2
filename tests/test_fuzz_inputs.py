"""Fuzz the input parsers: any file either parses or raises envbisect's InputError.

Files are random text, and valid files mutated line by line (lines dropped,
duplicated, truncated, spliced with junk, options and markers garbled). A new
parser joins by adding one line to ``PARSERS``. ``FUZZ_EXAMPLES=5000`` runs a
longer campaign than the suite's default.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from packaging.markers import default_environment

from envbisect.errors import InputError
from envbisect.locks import InputKind, read_lock
from envbisect.requirements import read_requirement_file


def _lock_reader(kind: InputKind) -> Callable[[Path], object]:
    markers = {key: str(value) for key, value in default_environment().items()}
    return lambda path: read_lock(path, kind, markers)


#: name → (parser, a valid file to mutate)
PARSERS: dict[str, tuple[Callable[[Path], object], str]] = {
    "requirements": (
        read_requirement_file,
        "# pinned by pip freeze\n"
        "dramatiq[rabbitmq]==2.2.1 \\\n"
        "    --hash=sha256:0f3d5c0ab6a1ac6d4e0ac4a5c4b9ab1c2d7e8f90a1b2c3d4e5f60718293a4b5c\n"
        "pika>=1.3,<2 ; python_version >= '3.9'\n"
        "-c constraints.txt\n"
        "-r base.txt\n"
        "requests[socks]===2.34.2\n"
        "-e git+https://example.invalid/repo.git#egg=thing\n"
        "tenacity @ https://example.invalid/tenacity-9.2.1-py3-none-any.whl\n"
        "--find-links ./wheels\n"
        "six ; extra == 'x' and sys_platform == 'linux'\n",
    ),
    "uv.lock": (
        _lock_reader(InputKind.UV_LOCK),
        "version = 1\n"
        'requires-python = ">=3.11"\n'
        "[[package]]\n"
        'name = "svc"\n'
        'version = "0.1.0"\n'
        'source = { editable = "." }\n'
        'dependencies = [{ name = "dramatiq", extra = ["rabbitmq"] }, '
        '{ name = "colorama", marker = "sys_platform == \'win32\'" }, '
        '{ name = "tool" }, { name = "local" }]\n'
        "[package.dev-dependencies]\n"
        'dev = [{ name = "pytest" }]\n'
        "[[package]]\n"
        'name = "dramatiq"\n'
        'version = "2.2.1"\n'
        'source = { registry = "https://pypi.invalid/simple" }\n'
        'wheels = [{ url = "https://files.invalid/dramatiq-2.2.1-py3-none-any.whl", '
        'hash = "sha256:00" }]\n'
        "[package.optional-dependencies]\n"
        'rabbitmq = [{ name = "pika" }]\n'
        "[[package]]\n"
        'name = "pika"\n'
        'version = "1.4.4"\n'
        'source = { registry = "./wheels" }\n'
        "[[package]]\n"
        'name = "tool"\n'
        'version = "1.0"\n'
        'source = { git = "https://git.invalid/tool?rev=main#0123abc" }\n'
        "[[package]]\n"
        'name = "local"\n'
        'version = "2.0"\n'
        'source = { path = "dist/local-2.0-py3-none-any.whl" }\n'
        "[[package]]\n"
        'name = "pytest"\n'
        'version = "9.2.0"\n'
        'source = { url = "https://files.invalid/pytest-9.2.0-py3-none-any.whl" }\n'
        "[[package]]\n"
        'name = "colorama"\n'
        'version = "0.4.6"\n'
        'source = { registry = "https://pypi.invalid/simple" }\n',
    ),
    "pylock.toml": (
        _lock_reader(InputKind.PYLOCK),
        'lock-version = "1.0"\n'
        'created-by = "uv"\n'
        'requires-python = ">=3.11"\n'
        'default-groups = ["dev"]\n'
        "[[packages]]\n"
        'name = "pika"\n'
        'version = "1.4.4"\n'
        'index = "https://pypi.invalid/simple"\n'
        'wheels = [{ url = "https://files.invalid/pika-1.4.4-py3-none-any.whl", '
        'hashes = { sha256 = "00" } }]\n'
        "[[packages]]\n"
        'name = "tool"\n'
        'vcs = { type = "git", url = "https://git.invalid/tool", commit-id = "0123abc" }\n'
        "[[packages]]\n"
        'name = "local"\n'
        'directory = { path = "src/local", subdirectory = "pkg" }\n'
        "[[packages]]\n"
        'name = "archive"\n'
        'archive = { path = "dist/archive-1.0.tar.gz", hashes = { sha256 = "00" } }\n'
        "[[packages]]\n"
        'name = "pytest"\n'
        'version = "9.2.0"\n'
        "marker = \"'dev' in dependency_groups and python_version >= '3.9'\"\n"
        'sdist = { url = "https://files.invalid/pytest-9.2.0.tar.gz", '
        'hashes = { sha256 = "0" } }\n',
    ),
}

# Pieces that mean something to a requirements parser, to splice into lines.
TOKENS = [
    "==", "===", ">=", "~=", "!=", "<", "*", ",", ";", "[", "]", "@", "#", "\\", "-r", "-c",
    "-e", "--hash", "--hash=sha256:", "--index-url", "--find-links", "--pre", "-Z", "--",
    "python_version", "extra ==", "and", "'", '"', "file:", "./", "..", "\t", "\x00", "é",
    "1.0", "a.b.c", "pkg", "pkg[x]", "\r", "\n", " ",
    # TOML and lock-file pieces
    "=", "{", "}", '"', "[[package]]", "[[packages]]", "\\u0000", "https://[", "git = ",
    "path = ", "version = 2", "marker = ", "extra = [", "source = {", "dependencies = [",
]  # fmt: skip

# Files naming real hosts or device files are left out: they would reach the network or
# read forever. URLs on the reserved .invalid domain stay in: a failed fetch is an input error.
_DEVICES = re.compile(rb"/(dev|proc|sys)/")
_URL_HOST = re.compile(rb"://([^/\s]*)")


def _mutate(draw: st.DrawFn, line: str) -> str:
    kind = draw(st.sampled_from(["keep", "drop", "cut", "splice", "swap"]))
    if kind == "drop":
        return ""
    if kind == "cut" and line:
        return line[: draw(st.integers(0, len(line) - 1))]
    if kind == "splice":
        at = draw(st.integers(0, len(line)))
        junk = draw(st.one_of(st.sampled_from(TOKENS), st.text(max_size=8)))
        return line[:at] + junk + line[at:]
    if kind == "swap":
        return draw(st.sampled_from(TOKENS)).join(line.split(" ", 1))
    return line


@st.composite
def mutated(draw: st.DrawFn, valid: str) -> str:
    lines = valid.splitlines()
    out = [_mutate(draw, line) for line in lines]
    extra = draw(st.lists(st.sampled_from(lines), max_size=3))
    return "\n".join(draw(st.permutations(out + extra))) + draw(st.sampled_from(["", "\n"]))


def files(valid: str) -> st.SearchStrategy[bytes]:
    random_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=300)
    return st.one_of(
        mutated(valid).map(str.encode),
        random_text.map(str.encode),
        st.binary(max_size=200),  # not text at all
        st.lists(st.sampled_from(TOKENS), max_size=20).map(lambda t: " ".join(t).encode()),
    )


def harmless(content: bytes) -> bool:
    hosts = _URL_HOST.findall(content)
    return not _DEVICES.search(content) and all(h.endswith(b".invalid") for h in hosts)


def parses_or_input_error(parser: Callable[[Path], object], content: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "input.txt"
        path.write_bytes(content)
        (Path(tmp) / "base.txt").write_text("pika==1.4.4\n")
        try:
            parser(path)
        except InputError as exc:
            message = str(exc)
            assert tmp in message, f"the error names the file: {message!r}"
            assert "\n" not in message and message.strip(), f"one line: {message!r}"


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_parsers_parse_or_raise_input_error(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser, valid = PARSERS[name]

    @settings(
        max_examples=int(os.environ.get("FUZZ_EXAMPLES", "300")),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(content=files(valid))
    def check(content: bytes) -> None:
        assume(harmless(content))
        parses_or_input_error(parser, content)

    check()
    # The CLI prints the error as one line: the parser itself must print nothing.
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_the_valid_seed_parses(name: str, tmp_path: Path) -> None:
    parser, valid = PARSERS[name]
    (tmp_path / "base.txt").write_text("pika==1.4.4\n")
    (tmp_path / "constraints.txt").write_text("")
    path = tmp_path / "input.txt"
    path.write_text(valid)
    parser(path)
