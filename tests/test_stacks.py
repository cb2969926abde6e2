"""Stacks of a stuck worker: parsing py-spy's and faulthandler's output, the one-line summary.

The data under tests/data/ was captured from real stuck workers of the fixture envs
(stall: gevent/epoll; unacked: a middleware that holds the message; never-ready: a
start-up hook that waits forever), paths shortened to a made-up trial env.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from envbisect.stacks import (
    Frame,
    Stacks,
    ThreadStack,
    describe,
    parse_faulthandler,
    parse_py_spy,
    short_path,
)

DATA = Path(__file__).parent / "data"


def read(name: str) -> str:
    return (DATA / name).read_text()


def test_py_spy_json_of_the_gevent_stall() -> None:
    (main,) = parse_py_spy(read("py-spy-stall-main.json"))
    (worker,) = parse_py_spy(read("py-spy-stall-worker.json"))
    assert (main.pid, main.os_thread_id, main.thread_name) == (10732, 10732, None)
    assert main.active is False
    hub = "/tmp/envbisect-7x1a2b3c-x/t09/env/lib/python3.12/site-packages/gevent/hub.py"
    assert main.frames == (Frame("Hub.run", hub, 647),)
    assert main.tool == "py-spy"
    assert [f.function for f in worker.frames[:3]] == [
        "PollPoller.poll",
        "IOLoop.poll",
        "BlockingConnection._create_connection",
    ]
    assert worker.frames[0].line == 1240
    assert len(worker.frames) == 13


def test_py_spy_output_with_noise_around_the_json() -> None:
    text = "py-spy> warning: something\n" + read("py-spy-stall-main.json") + "\n"
    assert [t.pid for t in parse_py_spy(text)] == [10732]


@pytest.mark.parametrize(
    "text",
    ["", "Error: Operation not permitted (os error 1)", '[{"pid": "x"}]', "{}", "[1]"],
)
def test_py_spy_output_that_is_not_a_dump(text: str) -> None:
    with pytest.raises(ValueError):
        parse_py_spy(text)


def test_summary_of_the_gevent_stall() -> None:
    (main,) = parse_py_spy(read("py-spy-stall-main.json"))
    (worker,) = parse_py_spy(read("py-spy-stall-worker.json"))
    assert describe(main, leader=10732) == (
        "main process 10732: gevent hub running in main thread (gevent/hub.py:647)"
    )
    assert describe(worker, leader=10732) == (
        "worker process 10735: main thread blocked in PollPoller.poll "
        "(pika/adapters/select_connection.py:1240) ← IOLoop.poll "
        "(pika/adapters/select_connection.py:616) ← BlockingConnection._create_connection "
        "(pika/adapters/blocking_connection.py:472) ← … ← ConsumerThread.run "
        "(dramatiq/worker.py:308)"
    )


def test_summary_skips_threading_and_selector_plumbing() -> None:
    watch_logs, main = parse_py_spy(read("py-spy-unacked-main.json"))
    assert describe(main, leader=main.pid) == (
        f"main process {main.pid}: MainThread blocked in _PollLikeSelector.select "
        "(selectors.py:415) ← main (dramatiq/cli.py:677) ← <module> (dramatiq/__main__.py:25)"
    )
    assert describe(watch_logs, leader=main.pid) == (
        f"main process {main.pid}: Thread-1 (watch_logs) blocked in _PollLikeSelector.select "
        "(selectors.py:415) ← watch_logs (dramatiq/cli.py:387)"
    )


def test_summary_names_a_start_up_hook() -> None:
    (main,) = parse_py_spy(read("py-spy-never-ready-main.json"))
    line = describe(main, leader=main.pid)
    assert line.startswith(
        f"main process {main.pid}: main thread blocked in <module> "
        "(config_bootstrap/_wait.py:9) ← addpackage (<frozen site>:186)"
    )
    assert line.endswith("(run by a .pth file at interpreter start-up)")


def test_faulthandler_dump_with_thread_names_from_the_probe() -> None:
    names = {
        int(ident): name
        for ident, name in json.loads(read("faulthandler-unacked-worker-threads.json")).items()
    }
    threads = parse_faulthandler(read("faulthandler-unacked-worker.txt"), 12688, names)
    assert [t.thread_name for t in threads] == [
        "Thread-6",
        "Thread-3",
        "Thread-2",
        "Thread-1",
        "MainThread",
    ]
    assert {t.pid for t in threads} == {12688}
    assert {t.tool for t in threads} == {"faulthandler"}
    assert all(t.active is None and t.os_thread_id is None for t in threads)
    assert threads[0].thread_id == 0x7F1502FFD6C0
    assert threads[0].frames[0] == Frame(
        "wait", "/root/.pyenv/versions/3.12.1/lib/python3.12/threading.py", 359
    )
    assert describe(threads[0], leader=12686) == (
        "worker process 12688: Thread-6 in wait (threading.py:359) ← run (dramatiq/worker.py:534)"
    )
    consumer = threads[1]
    assert describe(consumer, leader=12686).startswith(
        "worker process 12688: Thread-3 in poll (pika/adapters/select_connection.py:1240)"
    )


def test_faulthandler_dump_without_names() -> None:
    text = (
        "Current thread 0x00007fe1fa96cb80 (most recent call first):\n"
        '  File "/env/lib/python3.12/site-packages/pika/adapters/select_connection.py", '
        "line 1240 in poll\n"
        '  File "/env/lib/python3.12/site-packages/x.py", line ??? in <lambda>\n'
        "  <no Python frame>\n"
        "  ...\n"
    )
    (thread,) = parse_faulthandler(text, 7, {})
    assert thread.thread_name is None
    assert thread.frames == (
        Frame("poll", "/env/lib/python3.12/site-packages/pika/adapters/select_connection.py", 1240),
        Frame("<lambda>", "/env/lib/python3.12/site-packages/x.py", None),
    )
    assert describe(thread, leader=1).startswith("worker process 7: thread 0x7fe1fa96cb80 in poll")


def test_faulthandler_text_that_is_not_a_dump() -> None:
    assert parse_faulthandler("", 7, {}) == ()
    assert parse_faulthandler("Fatal Python error: oops\n", 7, {}) == ()


def test_a_thread_without_python_frames() -> None:
    thread = ThreadStack(5, None, None, 6, True, (), "py-spy")
    assert describe(thread, leader=5) == "main process 5: thread 6 has no Python frame"


def test_summary_of_all_threads_main_process_first() -> None:
    (main,) = parse_py_spy(read("py-spy-stall-main.json"))
    (worker,) = parse_py_spy(read("py-spy-stall-worker.json"))
    stacks = Stacks((worker, main), leader=10732, note="taken with py-spy")
    assert [line.split(":")[0] for line in stacks.summary()] == [
        "main process 10732",
        "worker process 10735",
    ]


@pytest.mark.parametrize(
    ("path", "short"),
    [
        ("/e/lib/python3.12/site-packages/gevent/hub.py", "gevent/hub.py"),
        ("/root/.pyenv/versions/3.12.1/lib/python3.12/threading.py", "threading.py"),
        ("/usr/lib/python3.13t/multiprocessing/connection.py", "multiprocessing/connection.py"),
        ("<frozen site>", "<frozen site>"),
        ("/srv/app/worker.py", "/srv/app/worker.py"),
    ],
)
def test_short_path(path: str, short: str) -> None:
    assert short_path(path) == short
