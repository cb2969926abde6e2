"""Which of the user's environment variables a trial process or an installer inherits."""

from __future__ import annotations

import os

#: Variables of the user's environment that no trial process and no installer command
#: inherits: each would put code, packages or settings other than the trial env's into
#: play, or make an installer resolve, install or create differently than envbisect
#: asked. The user's package configuration (indexes, find-links, credentials,
#: certificates, proxies) is kept. See README, "Isolation".
DROPPED_VARIABLES = frozenset(
    {
        # Python: what the interpreter imports, and from where.
        "PYTHONPATH",  # puts foreign code first on sys.path (a stray dramatiq.py)
        "PYTHONHOME",  # points the interpreter at another prefix's stdlib and packages
        "PYTHONSTARTUP",  # runs the user's file in every interactive interpreter
        "PYTHONUSERBASE",  # another user site: where --user installs go and come from
        "PYTHONPLATLIBDIR",  # another lib dir name: the env's site-packages is not found
        "VIRTUAL_ENV",  # another env counts as active (a trial sets its own)
        "CONDA_PREFIX",  # an active conda env, which uv would take as the target
        "__PYVENV_LAUNCHER__",  # macOS: the interpreter believes it runs another venv
        # uv: what gets resolved or installed, and where.
        "UV_CONSTRAINT",  # constraints beside the sides' own files
        "UV_OVERRIDE",
        "UV_EXCLUDE",
        "UV_BUILD_CONSTRAINT",
        "UV_PYTHON",  # another interpreter than the one envbisect names
        "UV_SYSTEM_PYTHON",
        "UV_REQUIRE_HASHES",  # refuses the repacked wheels (no hashes to check them by)
        "UV_NO_EDITABLE",  # an editable of the good file would be installed as a copy
        "UV_VENV_SEED",  # pip and setuptools in every trial env: packages neither side has
        # pip: the same, for pip and pip-tools.
        "PIP_CONSTRAINT",
        "PIP_PYTHON",
        "PIP_REQUIRE_HASHES",
        "PIP_REQUIRE_VIRTUALENV",  # refuses fetching into a directory with a base Python
        "PIP_TARGET",  # installs somewhere else than the env envbisect names
        "PIP_PREFIX",
        "PIP_ROOT",
        "PIP_USER",
    }
)
#: Every variable starting with one of these is dropped too: virtualenv's settings
#: (``VIRTUALENV_SYSTEM_SITE_PACKAGES`` shows the system's packages in a trial env).
DROPPED_PREFIXES = ("VIRTUALENV_",)


def isolated_environ() -> dict[str, str]:
    """The user's environment without :data:`DROPPED_VARIABLES` (and prefixes)."""
    return {
        key: value
        for key, value in os.environ.items()
        if key not in DROPPED_VARIABLES and not key.startswith(DROPPED_PREFIXES)
    }
