"""Pure tests of the delta: changes, closure, "pulled in by"."""

from __future__ import annotations

from packaging.utils import NormalizedName, canonicalize_name

from envbisect.delta import (
    ChangeKind,
    Delta,
    FileChange,
    LocalChange,
    Package,
    unmet_requirements,
)

MARKERS = {
    "python_version": "3.12",
    "python_full_version": "3.12.1",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "platform_release": "",
    "platform_version": "",
    "implementation_version": "3.12.1",
}


def pkg(name: str, version: str, *requires: str, digest: str = "") -> Package:
    return Package(canonicalize_name(name), name, version, tuple(requires), digest)


def side(*packages: Package) -> dict[NormalizedName, Package]:
    return {p.name: p for p in packages}


GOOD = side(
    pkg("dramatiq", "2.2.1", "pika>=1.0; extra == 'rabbitmq'", "redis>=4; extra == 'redis'"),
    pkg("pika", "1.4.4"),
)
BAD = side(
    pkg("dramatiq", "2.2.1", "pika>=1.0; extra == 'rabbitmq'", "redis>=4; extra == 'redis'"),
    pkg("pika", "1.4.4"),
    pkg("perfsuite", "2.7.0", "telemetry-shim>=0.4", "locust>=2.20"),
    pkg("telemetry-shim", "0.4.1", "gevent>=23"),
    pkg("locust", "2.47.0", "gevent>=22", "flask>=2", "pywin32; sys_platform == 'win32'"),
    pkg("gevent", "26.9.0", "greenlet>=3", "zope.event"),
    pkg("greenlet", "3.5.6"),
    pkg("zope-event", "6.2"),
    pkg("flask", "3.1.3"),
    pkg("requests", "2.34.2"),
)


def delta(good=GOOD, bad=BAD, extras=None) -> Delta:  # type: ignore[no-untyped-def]
    return Delta(good, bad, MARKERS, extras or {})


def test_changes_are_additions_and_version_changes() -> None:
    changes = {c.name: c for c in delta().changes}
    assert set(changes) == {
        "perfsuite",
        "telemetry-shim",
        "locust",
        "gevent",
        "greenlet",
        "zope-event",
        "flask",
        "requests",
    }
    assert all(c.kind is ChangeKind.ADDED for c in changes.values())


def test_version_change_direction_and_removal() -> None:
    good = side(pkg("pika", "1.4.4"), pkg("six", "1.17.0"))
    bad = side(pkg("pika", "1.1.0"))
    changes = {c.name: c for c in delta(good, bad).changes}
    assert changes["pika"].kind is ChangeKind.VERSION
    assert changes["pika"].direction == "downgrade"
    assert changes["pika"].describe() == "pika 1.4.4 → 1.1.0 (downgrade)"
    assert changes["six"].kind is ChangeKind.REMOVED


def test_same_version_other_files_is_a_modification() -> None:
    good = side(pkg("pika", "1.4.4", digest="aaa"))
    bad = side(pkg("pika", "1.4.4", digest="bbb"))
    (change,) = delta(good, bad).changes
    assert change.kind is ChangeKind.MODIFIED


def patched(version: str, *paths: str, digest: str = "patched") -> Package:
    changes = tuple(LocalChange(path, FileChange.MODIFIED) for path in paths)
    return Package(canonicalize_name("pika"), "pika", version, (), digest, local_changes=changes)


def test_a_locally_modified_package_names_its_files() -> None:
    good = side(pkg("pika", "1.3.2", digest="clean"))
    bad = side(patched("1.3.2", "pika/adapters/blocking_connection.py"))
    (change,) = delta(good, bad).changes
    assert change.kind is ChangeKind.MODIFIED
    assert change.describe() == (
        "pika 1.3.2, locally modified: pika/adapters/blocking_connection.py"
    )


def test_many_local_changes_are_summed_up_and_added_files_marked() -> None:
    files = [f"pika/m{i}.py" for i in range(5)]
    bad = patched("1.3.2", *files)
    bad = Package(
        bad.name,
        bad.display_name,
        bad.version,
        digest="x",
        local_changes=(LocalChange("pika/new.py", FileChange.ADDED), *bad.local_changes),
    )
    (change,) = delta(side(pkg("pika", "1.3.2", digest="clean")), side(bad)).changes
    assert change.describe() == (
        "pika 1.3.2, locally modified: pika/new.py (added), pika/m0.py, pika/m1.py and 3 more"
    )


def test_a_version_change_whose_bad_side_is_patched_says_so() -> None:
    good = side(pkg("pika", "1.3.2"))
    bad = side(patched("1.4.4", "pika/__init__.py"))
    (change,) = delta(good, bad).changes
    assert change.kind is ChangeKind.VERSION
    assert change.describe() == "pika 1.3.2 → 1.4.4 (upgrade), locally modified: pika/__init__.py"


def test_same_version_other_build_is_not_called_a_local_change() -> None:
    (change,) = delta(
        side(pkg("pika", "1.4.4", digest="a")), side(pkg("pika", "1.4.4", digest="b"))
    ).changes
    assert change.describe() == "pika 1.4.4 (same version, other files)"


def test_closure_brings_what_the_bad_package_was_installed_with() -> None:
    d = delta()
    assert d.closure({"telemetry-shim"}) == {"telemetry-shim", "gevent", "greenlet", "zope-event"}
    assert d.closure({"perfsuite"}) == {
        "perfsuite",
        "telemetry-shim",
        "locust",
        "gevent",
        "greenlet",
        "zope-event",
        "flask",
    }
    assert d.closure(set()) == frozenset()
    assert d.closure({"requests"}) == {"requests"}


def test_closure_ignores_requirements_whose_markers_do_not_apply() -> None:
    bad = dict(BAD)
    bad[NormalizedName("pywin32")] = pkg("pywin32", "306")
    d = delta(bad=bad)
    assert "pywin32" not in d.closure({"locust"})


def test_closure_follows_extras_requested_at_the_top() -> None:
    good = side(pkg("dramatiq", "2.2.1", "pika>=1.0; extra == 'rabbitmq'"))
    bad = side(pkg("dramatiq", "2.2.1", "pika>=1.0; extra == 'rabbitmq'"), pkg("pika", "1.4.4"))
    plain = delta(good, bad)
    assert plain.required_by("pika") == ()
    with_extra = delta(good, bad, {NormalizedName("dramatiq"): frozenset({"rabbitmq"})})
    assert [p.name for p in with_extra.required_by("pika")] == ["dramatiq"]


def test_closure_mends_a_requirement_the_trial_would_break() -> None:
    # Removing `six` breaks the good `legacy` 1.0, which needs it; legacy 2.0 does not.
    good = side(pkg("legacy", "1.0", "six"), pkg("six", "1.17.0"))
    bad = side(pkg("legacy", "2.0"))
    d = delta(good, bad)
    assert d.closure({"six"}) == {"six", "legacy"}
    assert d.closure({"legacy"}) == {"legacy"}


def test_closure_is_monotone_and_idempotent() -> None:
    d = delta()
    names = [c.name for c in d.changes]
    for i, name in enumerate(names):
        once = d.closure({name})
        assert d.closure(once) == once
        assert once <= d.closure({name, names[i - 1]})


def test_trial_applies_changes_to_the_good_set() -> None:
    d = delta()
    trial = d.trial(d.closure({"telemetry-shim"}))
    assert set(trial) == {"dramatiq", "pika", "telemetry-shim", "gevent", "greenlet", "zope-event"}


def test_pulled_in_by_and_path_from_top() -> None:
    d = delta()
    assert [str(p) for p in d.required_by("telemetry-shim")] == ["perfsuite 2.7.0"]
    chain = [p.name for p in d.path_from_top("greenlet")]
    assert chain[0] == "perfsuite"
    assert chain[-1] == "greenlet"
    assert [p.name for p in d.path_from_top("perfsuite")] == ["perfsuite"]
    assert [str(p) for p in d.needs("telemetry-shim")] == ["gevent 26.9.0"]


def test_a_removal_is_a_change_a_trial_applies_by_leaving_the_package_out() -> None:
    good = side(pkg("pika", "1.4.4"), pkg("colorama", "0.4.6"), pkg("six", "1.16.0"))
    bad = side(pkg("pika", "1.4.4"), pkg("six", "1.17.0"), pkg("humanize", "4.17.0"))
    d = delta(good, bad)
    kinds = {c.name: c.kind for c in d.changes}
    assert kinds == {
        "colorama": ChangeKind.REMOVED,
        "humanize": ChangeKind.ADDED,
        "six": ChangeKind.VERSION,
    }
    assert set(d.trial({"colorama"})) == {"pika", "six"}
    assert d.trial({"colorama"})[NormalizedName("six")].version == "1.16.0"
    assert d.trial(d.closure({"colorama", "humanize", "six"})) == dict(bad)


def test_unmet_requirements_of_a_package_in_a_set() -> None:
    client = pkg("client", "2.0", "pika>=1.0", "six", "tomli; python_version < '3.11'")
    packages = side(pkg("pika", "0.13.1"))
    assert unmet_requirements(client, packages, MARKERS) == ["pika>=1.0", "six"]
    assert unmet_requirements(client, side(pkg("pika", "1.4.4"), pkg("six", "1")), MARKERS) == []
