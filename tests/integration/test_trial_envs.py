"""Trial envs with real uv: a finished trial's env is synced into the next one, faithfully."""

from __future__ import annotations

from importlib.metadata import distributions
from pathlib import Path

from envbisect.installers.pip import PipInstaller
from envbisect.installers.uv import UvInstaller
from envbisect.processes import new_run_token
from envbisect.workspace import Workspace


def installed(env: Path) -> set[str]:
    (site,) = env.glob("lib/python*/site-packages")
    return {dist.metadata["Name"] for dist in distributions(path=[str(site)])}


def top_level(env: Path) -> set[str]:
    (site,) = env.glob("lib/python*/site-packages")
    return {path.name for path in site.iterdir() if not path.name.startswith("_virtualenv")}


def test_an_idle_env_is_synced_into_the_next_trial(fixture_wheels: Path, cache_dir: Path) -> None:
    wheel = {path.name.split("-")[0]: path for path in fixture_wheels.glob("*.whl")}
    workspace = Workspace(UvInstaller(cache_dir, cache_dir / "logs"), new_run_token())
    try:
        shared = [wheel["fastcodec"], wheel["perfsuite"], wheel["ops_core"]]
        first, _ = workspace.build([*shared, wheel["telemetry_shim"]], "t01")
        assert installed(first.path) == {"fastcodec", "perfsuite", "ops-core", "telemetry-shim"}
        assert "telemetry_shim.pth" in top_level(first.path)
        workspace.discard(first)

        # Two packages differ, out of four: syncing beats building afresh.
        second, timings = workspace.build([*shared, wheel["codec_autoload"]], "t02")
        assert second.path == first.path, "the idle env was reused"
        assert timings.create == 0.0
        assert second.scratch != first.scratch and second.scratch.is_dir()
        assert installed(second.path) == {"fastcodec", "perfsuite", "ops-core", "codec-autoload"}
        # Nothing of the uninstalled package is left to import: no .pth hook, no package dir.
        assert not any(name.startswith("telemetry_shim") for name in top_level(second.path))

        # A set that shares too little with the idle env is built afresh.
        workspace.discard(second)
        third, timings = workspace.build([wheel["slow_start"]], "t03")
        assert third.path != first.path
        assert installed(third.path) == {"slow-start"}
    finally:
        workspace.close()
    assert not workspace.root.exists()


def test_kept_envs_and_pip_envs_are_always_built_afresh(
    fixture_wheels: Path, cache_dir: Path, tmp_path: Path
) -> None:
    wheel = {path.name.split("-")[0]: path for path in fixture_wheels.glob("*.whl")}
    backends = [
        (UvInstaller(cache_dir, cache_dir / "logs"), True),
        (PipInstaller(cache_dir, cache_dir / "logs"), False),
    ]
    for backend, keep in backends:
        workspace = Workspace(backend, new_run_token(), keep=keep)
        try:
            first, _ = workspace.build([wheel["fastcodec"]], "t01")
            workspace.discard(first)
            second, _ = workspace.build([wheel["fastcodec"], wheel["codec_autoload"]], "t02")
            assert second.path != first.path
            assert installed(second.path) == {"fastcodec", "codec-autoload"}
            assert first.path.is_dir() is keep  # --keep-envs keeps every trial's env
        finally:
            workspace.keep = False
            workspace.close()
