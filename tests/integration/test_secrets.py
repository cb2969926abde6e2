"""No credential leaves the machine: real runs with random credentials in every place a
user puts them, and every output of the run searched for them.

Each example is a real, small envbisect run (in-process ``main``) on the ``leaky`` fixture
env, whose package logs the URL it was given and fails with it: the ``--probe-cmd`` text,
the command's output and exception text, an import probe's output (cached: the outcome
cache is searched too), index URLs in ``PIP_*``/``UV_*`` variables, the broker URL.
"""

from __future__ import annotations

import json
import os
import shlex
import string
import tempfile
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envbisect.cli import main
from envbisect.errors import ExitCode

from ..conftest import VALIDATOR

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_debris")]

# Passwords hold what URLs make hard ("@" left raw, as clients allow; the rest encoded).
PASSWORD_CHARS = string.ascii_letters + string.digits + "@:/%#?!$&'()+,;=-._~"
TOKEN_CHARS = string.ascii_letters + string.digits + "-_.~"
USERINFO_SAFE = "!$&'()+,;=-._~@:"


def distinctive(alphabet: str) -> st.SearchStrategy[str]:
    """8+ characters with upper and lower case and a digit, as password rules ask: a
    secret that cannot turn up in a report by chance (not "testcase", not "00000123")."""
    return st.text(alphabet, min_size=8, max_size=20).filter(
        lambda s: (
            any(c.isupper() for c in s)
            and any(c.islower() for c in s)
            and any(c.isdigit() for c in s)
        )
    )


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str
    token: str

    def with_password(self, host: str, path: str = "/simple") -> str:
        password = urllib.parse.quote(self.password, safe=USERINFO_SAFE)
        return f"https://{self.user}:{password}@{host}{path}"

    def with_token(self, host: str, path: str = "/simple") -> str:
        return f"https://{self.token}@{host}{path}"

    def forms(self) -> set[str]:
        """Every way the secrets may be written or printed."""
        found = set()
        for secret in (self.password, self.token):
            found |= {secret, urllib.parse.quote(secret, safe="")}
            found.add(urllib.parse.quote(secret, safe=USERINFO_SAFE))
        return found


credentials = st.builds(
    Credentials,
    user=st.text(string.ascii_lowercase + string.digits, min_size=3, max_size=10),
    password=distinctive(PASSWORD_CHARS),
    token=distinctive(TOKEN_CHARS),
)


@dataclass(frozen=True)
class Outputs:
    """Everything a run printed or wrote, by where it went."""

    texts: dict[str, str]

    def leaks(self, creds: Credentials) -> list[str]:
        return [
            f"{where}: {secret!r}"
            for where, text in self.texts.items()
            for secret in creds.forms()
            if secret in text
        ]


@pytest.fixture
def envbisect(
    capsys: pytest.CaptureFixture[str], fixture_env: Callable[[str], Path]
) -> Iterator[Callable[..., tuple[int, Outputs]]]:
    """``envbisect(creds, *args)``: a run on the leaky env with the index variables set."""
    leaky = str(fixture_env("leaky"))

    def run(creds: Credentials, *args: str, environ: dict[str, str]) -> tuple[int, Outputs]:
        with tempfile.TemporaryDirectory() as scratch:
            out = Path(scratch)
            summary = out / "step-summary.md"
            variables = {
                "PIP_INDEX_URL": creds.with_password("pypi.corp.example"),
                "UV_INDEX": f"corp={creds.with_token('uv.corp.example')}",
                "GITHUB_STEP_SUMMARY": str(summary),
                **environ,
            }
            written = ["--json", "report.json", "--markdown", "report.md", "--junit", "junit.xml"]
            written += ["--cache-dir", "cache", "--outcome-cache", "outcomes"]
            capsys.readouterr()
            with mock.patch.dict(os.environ, variables):
                code = main(
                    [
                        *("run", "--bad", leaky, "--good", leaky, *args, "--offline"),
                        *(str(out / arg) if arg[0] != "-" else arg for arg in written),
                    ]
                )
            captured = capsys.readouterr()
            report = json.loads((out / "report.json").read_text())
            assert [e.message for e in VALIDATOR.iter_errors(report)] == []
            texts = {"stdout": captured.out, "stderr": captured.err}
            for path in sorted(p for p in out.rglob("*") if p.is_file()):
                texts[str(path.relative_to(out))] = path.read_bytes().decode(errors="replace")
            return code, Outputs(texts)

    yield run


# Few examples: each is a real run (env builds, probes), a few seconds apiece.
REAL_RUNS = settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@REAL_RUNS
@given(creds=credentials)
def test_a_probe_command_its_output_and_its_exception(
    envbisect: Callable[..., tuple[int, Outputs]], creds: Credentials
) -> None:
    exception = f"raise RuntimeError({creds.with_token('git.corp.example', '/o/r.git')!r})"
    command = "; ".join(
        [
            f"API_TOKEN={shlex.quote(creds.token)} true",
            f"echo connecting to {shlex.quote(creds.with_password('db.corp.example', '/app'))}",
            'echo "index: $PIP_INDEX_URL $UV_INDEX"',
            f"python -c {shlex.quote(exception)}",
        ]
    )
    code, outputs = envbisect(creds, "--probe-cmd", command, environ={})
    assert code == ExitCode.GOOD_FAILS
    assert outputs.leaks(creds) == []
    # Not vacuous: the lines that carried the secrets made it into the reports, masked.
    report = json.loads(outputs.texts["report.json"])
    assert (
        f"connecting to https://{creds.user}:***@db.corp.example/app"
        in report["evidence"]["output"]
    )
    assert (
        f"index: https://{creds.user}:***@pypi.corp.example/simple corp=https://***@uv.corp.example/simple"
        in report["evidence"]["output"]
    )
    assert "RuntimeError: https://***@git.corp.example/o/r.git" in report["evidence"]["output"]
    assert "API_TOKEN=***" in report["probe"]


@REAL_RUNS
@given(creds=credentials)
def test_an_import_probes_output_and_the_outcome_cache(
    envbisect: Callable[..., tuple[int, Outputs]], creds: Credentials
) -> None:
    # Two config servers, as such clients take them: one with a password, one with a token.
    servers = [creds.with_password("config.corp.example"), creds.with_token("mirror.example")]
    code, outputs = envbisect(
        creds, "--probe", "import:leaky_config", environ={"LEAKY_CONFIG_URL": ",".join(servers)}
    )
    assert code == ExitCode.GOOD_FAILS
    assert outputs.leaks(creds) == []
    masked = (
        f"cannot load configuration from https://{creds.user}:***@config.corp.example/simple,"
        "https://***@mirror.example/simple"
    )
    cached = [text for where, text in outputs.texts.items() if where.startswith("outcomes/")]
    assert cached and all(masked in text for text in cached), "the outcome cache was written"
    assert masked in outputs.texts["report.md"]


@REAL_RUNS
@given(creds=credentials)
def test_the_broker_url(
    envbisect: Callable[..., tuple[int, Outputs]], broker_url: str, creds: Credentials
) -> None:
    # Each run ends in an error line and an error report that name the broker: the real
    # broker refuses the password (given as the option); a lone token (from the
    # environment) is no AMQP credential at all.
    host = urllib.parse.urlsplit(broker_url).netloc.rpartition("@")[2]
    with_password = creds.with_password(host, "/").replace("https://", "amqp://", 1)
    with_token = creds.with_token(host, "/").replace("https://", "amqp://", 1)
    runs = [
        (
            envbisect(creds, "--broker-url", with_password, environ={}),
            ExitCode.BROKER,
            f"RabbitMQ at amqp://{creds.user}:***@{host}/ refused the credentials",
        ),
        (
            envbisect(creds, environ={"ENVBISECT_BROKER_URL": with_token}),
            ExitCode.USAGE,
            f"--broker-url amqp://***@{host}/: a user without a password",
        ),
    ]
    for (code, outputs), expected, line in runs:
        assert code == expected
        assert outputs.leaks(creds) == []
        assert line in outputs.texts["stderr"]
        assert line in json.loads(outputs.texts["report.json"])["error"]


def test_terminal_escapes_in_a_probes_output_leave_every_report_valid(
    envbisect: Callable[..., tuple[int, Outputs]],
) -> None:
    # Colours, a window title, NUL, BEL and a carriage return, as a real command prints them.
    printed = r"printf '\033[31mred\033[0m line \000with\a bell \033]0;title\a and\r\nmore\n'"
    creds = Credentials("user", "Passw0rd-123", "Tok3n-4567")
    code, outputs = envbisect(creds, "--probe-cmd", f"{printed}; exit 1", environ={})
    assert code == ExitCode.GOOD_FAILS
    error = ET.fromstring(outputs.texts["junit.xml"]).find(".//error")  # XML 1.0: it parses
    assert error is not None and "red line with bell  and\nmore" in (error.text or "")
    for where in ("report.md", "stdout", "stderr", "step-summary.md"):
        text = outputs.texts[where]
        assert not [c for c in text if ord(c) < 32 and c not in "\n\t"], (where, text)
        assert "red line with bell  and" in text or where == "stderr"
    report = json.loads(outputs.texts["report.json"])
    assert report["evidence"]["output"] == ["red line with bell  and", "more"]
