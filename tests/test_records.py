"""A live env's files as they are on disk: local changes, symlinks, the scheme, big files.

Each env here is a real virtualenv (``venv``, no pip) holding distributions laid
out as an installer leaves them: the files, and a RECORD with their hashes.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
import tracemalloc
import venv
import zipfile
from pathlib import Path

import pytest

from envbisect.delta import FileChange, LocalChange
from envbisect.errors import EnvironmentBuildError
from envbisect.hashing import RACY_NS, FileHashes
from envbisect.venvs import read_venv
from envbisect.wheels import WheelCache

PACKAGE = {
    "demo/__init__.py": b"from demo.core import VALUE\n",
    "demo/core.py": b"VALUE = 'as released'\n",
    "demo/sub/helpers.py": b"def helper():\n    return 1\n",
}


def make_env(path: Path) -> Path:
    venv.create(path, with_pip=False)
    return path


def site_of(env: Path) -> Path:
    return next((env / "lib").glob("python3*/site-packages"))


def record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def install(
    env: Path,
    files: dict[str, bytes],
    *,
    name: str = "demo",
    listed: dict[str, bytes] | None = None,
) -> Path:
    """Lay out ``name`` 1.0 in ``env`` as an installer would: its files and their RECORD.

    ``listed``: RECORD rows for files not written here (already on disk), with their bytes.
    """
    site = site_of(env)
    dist_info = f"{name}-1.0.dist-info"
    files = {
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        **files,
    }
    rows = []
    for relative, data in files.items():
        target = Path(os.path.normpath(site / relative))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        rows.append(f"{relative},{record_hash(data)},{len(data)}")
    rows += [
        f"{relative},{record_hash(data)},{len(data)}" for relative, data in (listed or {}).items()
    ]
    rows.append(f"{dist_info}/RECORD,,")
    (site / dist_info / "RECORD").write_text("\n".join(rows) + "\n")
    return site


def members(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_a_file_patched_in_place_is_a_local_change(tmp_path: Path) -> None:
    clean, patched = make_env(tmp_path / "clean"), make_env(tmp_path / "patched")
    install(clean, PACKAGE)
    site = install(patched, PACKAGE)
    (site / "demo" / "core.py").write_bytes(b"VALUE = 'patched in place'\n")
    before, after = (read_venv(env).distributions["demo"] for env in (clean, patched))
    assert before.content_digest != after.content_digest, "the patch must show in the digest"
    assert before.local_changes == ()
    assert after.local_changes == (LocalChange("demo/core.py", FileChange.MODIFIED),)


def test_a_file_added_or_removed_is_a_local_change(tmp_path: Path) -> None:
    clean, added, removed = (make_env(tmp_path / n) for n in ("clean", "added", "removed"))
    digests = {}
    for env in (clean, added, removed):
        install(env, PACKAGE)
    (site_of(added) / "demo" / "sub" / "extra.py").write_bytes(b"import os\n")
    (site_of(added) / "demo" / "new" / "deep").mkdir(parents=True)
    (site_of(added) / "demo" / "new" / "deep" / "x.py").write_bytes(b"")
    (site_of(removed) / "demo" / "sub" / "helpers.py").unlink()
    # Bytecode and what sits in no directory of the distribution's are not its changes.
    (site_of(added) / "demo" / "__pycache__").mkdir()
    (site_of(added) / "demo" / "__pycache__" / "core.cpython-312.pyc").write_bytes(b"\0")
    (site_of(added) / "unrelated.py").write_bytes(b"")
    for env in (clean, added, removed):
        digests[env.name] = read_venv(env).distributions["demo"].content_digest
    assert len(set(digests.values())) == 3, digests
    assert read_venv(added).distributions["demo"].local_changes == (
        LocalChange("demo/new/deep/x.py", FileChange.ADDED),
        LocalChange("demo/sub/extra.py", FileChange.ADDED),
    )
    assert read_venv(removed).distributions["demo"].local_changes == (
        LocalChange("demo/sub/helpers.py", FileChange.REMOVED),
    )
    # What is on disk is what is packed: the added file in, the removed one out.
    cache = WheelCache(tmp_path / "cache")
    assert "demo/new/deep/x.py" in members(
        cache.repack(read_venv(added).distributions["demo"]).path
    )
    assert "demo/sub/helpers.py" not in members(
        cache.repack(read_venv(removed).distributions["demo"]).path
    )


def test_the_same_files_in_two_envs_have_one_digest(tmp_path: Path) -> None:
    one, two = make_env(tmp_path / "one"), make_env(tmp_path / "elsewhere" / "two")
    install(one, PACKAGE)
    install(two, PACKAGE)
    assert (
        read_venv(one).distributions["demo"].content_digest
        == read_venv(two).distributions["demo"].content_digest
    )


def test_a_second_read_hashes_nothing_unchanged(tmp_path: Path) -> None:
    env = make_env(tmp_path / "env")
    site = install(env, PACKAGE)
    time.sleep(RACY_NS / 1e9 + 0.5)  # files changed this recently are never remembered
    database = tmp_path / "cache" / "hashes.sqlite3"
    first = FileHashes(database)
    read_venv(env, first)
    assert first.read >= len(PACKAGE)
    again = FileHashes(database)
    digest = read_venv(env, again).distributions["demo"].content_digest
    assert again.read == 0
    core = site / "demo" / "core.py"
    core.write_bytes(b"VALUE = 'edited'\n")
    edited = FileHashes(database)
    assert read_venv(env, edited).distributions["demo"].content_digest != digest
    assert edited.read == 1


def test_symlinks_are_packed_as_their_target_only_inside_the_env(tmp_path: Path) -> None:
    env = make_env(tmp_path / "env")
    outside = tmp_path / "outside-secret.txt"
    outside.write_bytes(b"not the env's to carry\n")
    site = site_of(env)
    (site / "demo_data").mkdir()
    (site / "demo_data" / "table.txt").write_bytes(b"inside the env\n")
    (site / "demo").mkdir()
    (site / "demo" / "table.txt").symlink_to(site / "demo_data" / "table.txt")
    (site / "demo" / "secret.txt").symlink_to(outside)
    install(
        env,
        PACKAGE,
        listed={"demo/table.txt": b"inside the env\n", "demo/secret.txt": outside.read_bytes()},
    )
    dist = read_venv(env).distributions["demo"]
    packed = members(WheelCache(tmp_path / "cache").repack(dist).path)
    assert "demo/secret.txt" not in packed, "a file outside the env was packed"
    assert packed["demo/table.txt"] == b"inside the env\n"
    assert any("demo/secret.txt" in note and "outside the env" in note for note in dist.left_out)


def test_entries_outside_the_wheel_scheme_are_left_out(tmp_path: Path) -> None:
    env = make_env(tmp_path / "env")
    claimed = {
        name: (env / name).read_bytes()
        for name in ("pyvenv.cfg", "bin/activate", "bin/Activate.ps1")
    }
    stdlib = next((env / "lib").glob("python3*"))
    (stdlib / "sitecustomize.py").write_bytes(b"import demo\n")
    claimed[f"lib/{stdlib.name}/sitecustomize.py"] = b"import demo\n"
    # A data file under the prefix is the distribution's: it goes into .data/data.
    files = {**PACKAGE, "../../../share/demo/demo.1": b".TH demo\n"}
    install(env, files, listed={f"../../../{name}": data for name, data in claimed.items()})
    dist = read_venv(env).distributions["demo"]
    packed = members(WheelCache(tmp_path / "cache").repack(dist).path)
    assert [name for name in packed if ".data/" in name] == ["demo-1.0.data/data/share/demo/demo.1"]
    assert packed["demo-1.0.data/data/share/demo/demo.1"] == b".TH demo\n"
    for name in claimed:
        assert any(f"../../../{name}" in note for note in dist.left_out), (name, dist.left_out)
    assert dist.local_changes == ()


def test_a_large_file_is_repacked_in_bounded_memory(tmp_path: Path) -> None:
    env = make_env(tmp_path / "env")
    site = install(env, PACKAGE)
    size = 64 * 1024 * 1024
    blob = site / "demo" / "blob.bin"
    digest = hashlib.sha256()
    with blob.open("wb") as out:
        for i in range(size // (1 << 20)):
            chunk = bytes([i % 251]) * (1 << 20)
            digest.update(chunk)
            out.write(chunk)
    row = "sha256=" + base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
    with (site / "demo-1.0.dist-info" / "RECORD").open("a") as record:
        record.write(f"demo/blob.bin,{row},{size}\n")
    tracemalloc.start()
    try:
        dist = read_venv(env).distributions["demo"]
        wheel = WheelCache(tmp_path / "cache").repack(dist)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < size // 8, f"peak {peak / 2**20:.1f} MiB for a {size / 2**20:.0f} MiB file"
    assert dist.local_changes == ()
    with zipfile.ZipFile(wheel.path) as archive:
        assert archive.getinfo("demo/blob.bin").file_size == size
        with archive.open("demo/blob.bin") as packed:
            assert hashlib.file_digest(packed, "sha256").digest() == digest.digest()


def test_a_file_changed_after_the_env_was_read_is_never_packed_under_the_old_digest(
    tmp_path: Path,
) -> None:
    env = make_env(tmp_path / "env")
    site = install(env, PACKAGE)
    dist = read_venv(env).distributions["demo"]
    (site / "demo" / "core.py").write_bytes(b"VALUE = 'changed while envbisect ran'\n")
    cache = WheelCache(tmp_path / "cache")
    with pytest.raises(EnvironmentBuildError, match=r"demo==1\.0: demo/core\.py changed while"):
        cache.repack(dist)
    assert not list((tmp_path / "cache").rglob("*.whl")), "a wheel was filed under the old digest"
    # Read again, it is a local change of its own, in a slot of its own.
    again = read_venv(env).distributions["demo"]
    assert again.local_changes == (LocalChange("demo/core.py", FileChange.MODIFIED),)
    assert b"changed while" in members(cache.repack(again).path)["demo/core.py"]


def test_a_record_that_cannot_be_parsed_makes_the_distribution_not_repackable(
    tmp_path: Path,
) -> None:
    env = make_env(tmp_path / "env")
    site = install(env, PACKAGE)
    with (site / "demo-1.0.dist-info" / "RECORD").open("a") as record:
        record.write("demo/" + "x" * 200_000 + ".py,,\n")  # beyond the csv module's field limit
    dist = read_venv(env).distributions["demo"]
    assert (dist.version, dist.dist_info, dist.files) == ("1.0", None, ())
