"""Tests written from the mutation run of cl/train/results.py (issue 19): which result.json counts as a
run's finished result and what happens to the others, the state of a run folder in the order of its
checks, the outcome file of each status (and the files it replaces) when writing works and when it fails,
and the run lock: who holds it, waiting, the holder's record, the lock file's mode, release when a forked
child still holds the descriptor.  Every case is built by hand in a temporary folder; no run is trained."""
from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from cl.train import loggers, results
from cl.train.results import (FAILED, INTERRUPTED, LOCK, RESULT, RunLock, busy_record, finished_result, move_aside,
                              result_problem, run_state, saved_note, write_outcome)

GOOD = {"run_id": "b-run", "status": "finished", "R": [[0.5]]}


def _put(d: Path, name: str, content) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    p = d / name
    p.write_text(content if isinstance(content, str) else json.dumps(content))
    return p


def _moved(d: Path) -> list[str]:
    return sorted(p.name for p in d.glob(f"{RESULT}.bad-*"))


# -- reading --------------------------------------------------------------------------------------------------
def test_result_problem_of_each_kind_of_record():
    assert result_problem(None, "b-run") == "not valid JSON"
    assert result_problem([1, 2], "b-run") == "JSON of the wrong shape (list, not a mapping)"
    assert result_problem("x", None) == "JSON of the wrong shape (str, not a mapping)"
    assert result_problem(GOOD, "b-run") is None
    assert result_problem(GOOD, None) is None  # no id asked: any run's finished result
    for other in ("a-run", "c-run", None):  # ids sorting before and after this one, and none recorded
        assert result_problem({**GOOD, "run_id": other}, "b-run") == f"the result of another run ({other!r})"
    assert result_problem({**GOOD, "run_id": "a-run"}, None) is None
    for status in ("failed", "interrupted", "zz", None):
        assert result_problem({**GOOD, "status": status}, "b-run") == f"not finished (status {status!r})"
    for R in (None, "[[0.5]]", {"0": [0.5]}):
        rec = {**GOOD, "R": R} if R is not None else {k: v for k, v in GOOD.items() if k != "R"}
        assert result_problem(rec, "b-run") == "missing its accuracy matrix R"
    assert result_problem({**GOOD, "R": []}, "b-run") is None


def test_finished_result_returns_a_valid_record_and_moves_only_damaged_ones(tmp_path, capsys):
    d = tmp_path / "run"
    assert finished_result(d, "b-run") is None and not d.exists()  # nothing there: nothing created
    _put(d, RESULT, GOOD)
    assert finished_result(d, "b-run") == GOOD and finished_result(str(d), None) == GOOD
    # another run's valid result: not this run's, but left in place even with move=True
    assert finished_result(d, "a-run") is None and finished_result(d, "c-run") is None
    assert (d / RESULT).exists() and _moved(d) == []
    # a damaged one: kept where it is with move=False, moved aside by default
    for content, why in (("{", "not valid JSON"), ("[1]", "wrong shape"), ({**GOOD, "status": "failed"}, "not finished"),
                         ({"run_id": "b-run", "status": "finished"}, "missing its accuracy matrix R")):
        e = tmp_path / f"d{len(why)}"
        _put(e, RESULT, content)
        assert finished_result(e, "b-run", move=False) is None and (e / RESULT).exists() and _moved(e) == []
        capsys.readouterr()
        assert finished_result(e, "b-run") is None
        (name,) = _moved(e)
        assert not (e / RESULT).exists() and name.startswith(f"{RESULT}.bad-") and name.endswith(f"-{os.getpid()}")
        assert why in capsys.readouterr().err


def test_unreadable_and_undecodable_results_are_not_finished(tmp_path):
    d = tmp_path / "run"
    (d / RESULT).mkdir(parents=True)  # read_text raises IsADirectoryError (an OSError)
    assert finished_result(d, "b-run", move=False) is None
    e = tmp_path / "bytes"
    e.mkdir()
    (e / RESULT).write_bytes(b'{"run_id": "\xff\xfe"}')  # not UTF-8
    assert finished_result(e, None, move=False) is None


def test_move_aside_renames_with_time_and_pid_or_says_why_not(tmp_path, capsys):
    p = _put(tmp_path, "result.json", "{")
    dest = move_aside(p, "not valid JSON")
    assert dest is not None and dest.parent == tmp_path and dest.read_text() == "{" and not p.exists()
    assert dest.name.startswith("result.json.bad-") and dest.name.endswith(f"-{os.getpid()}")
    stamp = dest.name[len("result.json.bad-"):-len(f"-{os.getpid()}")]
    assert len(stamp) == 15 and stamp[8] == "-" and (stamp[:8] + stamp[9:]).isdigit()
    assert "moved aside to" in capsys.readouterr().err
    assert move_aside(tmp_path / "gone.json", "odd") is None  # the rename fails: reported, not raised
    assert "cannot be moved aside" in capsys.readouterr().err


def test_run_state_follows_the_order_of_its_checks_and_changes_nothing(tmp_path):
    def state(*files, rid="b-run", result=GOOD, lock=False):
        d = tmp_path / f"s{len(list(tmp_path.iterdir()))}"
        d.mkdir()
        for f in files:
            _put(d, f, result if f == RESULT else "{}")
        if lock:
            with RunLock(d) as held:
                assert held.acquired
                return run_state(d, rid), d
        return run_state(d, rid), d

    assert state()[0] == "pending"
    assert state(FAILED)[0] == "failed"
    assert state(INTERRUPTED, FAILED)[0] == "interrupted"
    assert state("checkpoint.pt", INTERRUPTED, FAILED)[0] == "partial"
    assert state("checkpoint.pt", lock=True)[0] == "running"
    assert state(LOCK, "checkpoint.pt")[0] == "partial"  # a lock file nobody holds
    assert state(RESULT, "checkpoint.pt", FAILED, lock=True)[0] == "finished"
    assert state(RESULT, FAILED, rid=None)[0] == "finished"
    s, d = state(RESULT, FAILED, rid="a-run")  # another run's result: this one has failed
    assert s == "failed" and (d / RESULT).exists()
    s, d = state(RESULT, INTERRUPTED, result="{")  # damaged: left where it is
    assert s == "interrupted" and (d / RESULT).read_text() == "{" and _moved(d) == []


# -- writing --------------------------------------------------------------------------------------------------
def test_each_status_writes_its_file_and_removes_only_the_stale_ones(tmp_path):
    for status, name, gone, kept in (("finished", RESULT, (FAILED, INTERRUPTED), ()),
                                     ("interrupted", INTERRUPTED, (FAILED,), (RESULT,)),
                                     ("failed", FAILED, (INTERRUPTED,), (RESULT,))):
        d = tmp_path / status
        for f in (RESULT, FAILED, INTERRUPTED):
            _put(d, f, {"old": f})
        rec = {"run_id": "b-run", "status": status, "R": [[1.0]], "error": "e", "traceback": "tb"}
        written = dict(rec)
        out = write_outcome(d, rec)
        assert out is rec and out["saved"] == str(d / name) and "save_error" not in out
        assert json.loads((d / name).read_text()) == written
        for f in gone:
            assert not (d / f).exists(), (status, f)
        for f in kept:
            assert json.loads((d / f).read_text()) == {"old": f}, (status, f)
    d = tmp_path / "fresh"  # nothing stale to remove
    assert write_outcome(d, {"status": "failed"})["saved"] == str(d / FAILED)
    assert sorted(p.name for p in d.iterdir()) == [FAILED]


def test_a_stale_file_that_cannot_be_removed_does_not_fail_the_write(tmp_path, monkeypatch):
    d = tmp_path / "run"
    _put(d, FAILED, "{}")
    _put(d, INTERRUPTED, "{}")

    def refuse(self, missing_ok=False):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "unlink", refuse)
    out = write_outcome(d, dict(GOOD))
    assert out["saved"] == str(d / RESULT) and out["status"] == "finished" and (d / RESULT).exists()


def test_a_finished_result_that_cannot_be_written_becomes_a_failed_one(tmp_path, monkeypatch):
    real = loggers.atomic_write_json

    def full_for_result(path, obj):
        if Path(path).name == RESULT:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, obj)

    monkeypatch.setattr(loggers, "atomic_write_json", full_for_result)
    d = tmp_path / "run"
    rec = {**GOOD, "traceback": "tb", "error": None, "versions": {"torch": "2.4"}, "threads": 1}  # keys on
    out = write_outcome(d, rec)  # either side of "traceback"
    msg = f"cannot write {d / RESULT}: No space left on device"
    assert out["status"] == "failed" and out["error"] == msg and out["save_error"] == msg
    assert out["saved"] == str(d / FAILED) and not (d / RESULT).exists()
    assert json.loads((d / FAILED).read_text()) == {  # everything but the traceback, as it was when written
        "run_id": "b-run", "status": "failed", "R": [[0.5]], "error": msg, "versions": {"torch": "2.4"}, "threads": 1,
        "saved": None, "save_error": msg}


def test_when_nothing_can_be_written_the_record_says_so_and_keeps_its_status(tmp_path, monkeypatch):
    def full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(loggers, "atomic_write_json", full)
    d = tmp_path / "run"
    out = write_outcome(d, dict(GOOD))
    assert out["status"] == "failed" and out["saved"] is None
    assert out["save_error"] == f"cannot write {d / RESULT}: No space left on device"
    for status, name in (("failed", FAILED), ("interrupted", INTERRUPTED)):
        out = write_outcome(d, {"status": status, "error": "boom"})
        assert out["status"] == status and out["error"] == "boom" and out["saved"] is None
        assert out["save_error"] == f"cannot write {d / name}: No space left on device"

    def bare(path, obj):  # an OSError without errno / strerror: its text is the reason
        raise OSError("quota exceeded")

    monkeypatch.setattr(loggers, "atomic_write_json", bare)
    assert write_outcome(d, {"status": "failed"})["save_error"] == f"cannot write {d / FAILED}: quota exceeded"


def test_saved_note_and_busy_record():
    assert saved_note({"saved": "/r/result.json", "save_error": "x"}) == "see /r/result.json"
    assert saved_note({"saved": None, "save_error": "cannot write /r"}) == "nothing written: cannot write /r"
    assert saved_note({"saved": None}) == "" and saved_note({}) == ""
    assert busy_record("b-run", None) == {"run_id": "b-run", "status": "busy",
                                          "error": "being computed by another process (pid ? on ?)"}
    assert busy_record("b-run", {"pid": 7, "host": "h1"})["error"] == "being computed by another process (pid 7 on h1)"


# -- the run lock ---------------------------------------------------------------------------------------------
def test_lock_is_created_with_its_holders_record_and_mode(tmp_path):
    d = tmp_path / "a" / "b" / "run"  # parents created
    old = os.umask(0)
    try:
        t0 = time.time()
        with RunLock(d, "b-run") as lock:
            assert lock.acquired and not lock.waited and lock.holder is None and lock.fd is not None
            rec = json.loads((d / LOCK).read_text())
            assert rec["pid"] == os.getpid() and rec["host"] == socket.gethostname() and rec["run_id"] == "b-run"
            assert t0 - 1 <= rec["since"] <= time.time() + 1
            assert (d / LOCK).stat().st_mode & 0o777 == 0o666
            assert RunLock.held_elsewhere(d)
        assert not lock.acquired and lock.fd is None and not RunLock.held_elsewhere(d)
        with RunLock(d) as again:  # an existing folder and lock file
            assert again.acquired
    finally:
        os.umask(old)
    assert (lock.wait, lock.poll, RunLock(d).wait) == (False, 0.5, False)


def test_a_taken_lock_is_not_acquired_and_names_its_holder(tmp_path):
    d = tmp_path / "run"
    with RunLock(d, "first-run-with-a-long-id"):
        pass  # a longer record left by an earlier holder
    with RunLock(d, "b") as first:
        assert first.acquired
        assert json.loads((d / LOCK).read_text())["run_id"] == "b"  # the old record is truncated
        got = {}

        def contend():
            with RunLock(d, "b") as second:
                got.update(acquired=second.acquired, holder=second.holder, waited=second.waited)

        t = threading.Thread(target=contend, daemon=True)
        t.start()
        t.join(10)
        assert not t.is_alive(), "a non-waiting RunLock waited"
        assert got["acquired"] is False and got["waited"] is False
        assert got["holder"]["pid"] == os.getpid() and got["holder"]["run_id"] == "b"
    (d / LOCK).write_text("")  # a holder that died before writing its record
    with RunLock(d) as first:
        os.ftruncate(first.fd, 0)
        with RunLock(d) as second:
            assert not second.acquired and second.holder == {}


def test_a_waiting_lock_says_so_once_and_gets_the_lock_when_it_is_released(tmp_path, capsys):
    d = tmp_path / "run"
    for log in ([], None):
        logs, got = log, {}

        def waiter():
            with RunLock(d, "b-run", wait=True, poll=0.01, log=None if logs is None else logs.append) as w:
                got.update(acquired=w.acquired, waited=w.waited,
                           mine=json.loads((d / LOCK).read_text())["pid"] == os.getpid())

        with RunLock(d, "holder") as h:
            assert h.acquired
            t = threading.Thread(target=waiter, daemon=True)
            t.start()
            time.sleep(0.3)  # many polls
            assert t.is_alive() and not got
        t.join(10)
        assert got == {"acquired": True, "waited": True, "mine": True}
        if logs is not None:
            assert logs == [f"b-run: being computed by another process (pid {os.getpid()} on "
                            f"{socket.gethostname()}); waiting for it"]
    assert capsys.readouterr().err.count("being computed by another process") == 1  # the default log: stderr


def test_held_elsewhere_without_a_lock_file_or_when_it_cannot_be_opened(tmp_path, monkeypatch):
    d = tmp_path / "run"
    assert not RunLock.held_elsewhere(d)
    d.mkdir()
    assert not RunLock.held_elsewhere(d) and not (d / LOCK).exists()  # asking creates nothing
    (d / LOCK).write_text("{}")
    assert not RunLock.held_elsewhere(d)
    real = os.open

    def refuse(path, *a, **k):
        if str(path).endswith(LOCK):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(path, *a, **k)

    monkeypatch.setattr(os, "open", refuse)
    assert not RunLock.held_elsewhere(d)


def test_an_unexpected_lock_error_is_raised_not_taken_for_a_busy_run(tmp_path, monkeypatch):
    import fcntl

    def broken(fd, op):
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(fcntl, "flock", broken)
    with pytest.raises(OSError, match="Bad file descriptor"):
        RunLock(tmp_path / "run").__enter__()


def test_a_record_that_cannot_be_written_does_not_cost_the_lock(tmp_path, monkeypatch):
    def full(*a):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "ftruncate", full)
    with RunLock(tmp_path / "run") as lock:
        assert lock.acquired


def test_release_unlocks_even_when_a_forked_child_still_holds_the_descriptor(tmp_path):
    """A run may fork workers (DataLoader) that inherit the lock's descriptor; closing the parent's copy
    alone would leave the flock held by the child: the lock is released explicitly."""
    d = tmp_path / "run"
    lock = RunLock(d).__enter__()
    assert lock.acquired
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child keeps the inherited descriptor open until told to go
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    try:
        os.close(r)
        lock.__exit__(None, None, None)
        assert not RunLock.held_elsewhere(d)
        with RunLock(d) as again:
            assert again.acquired
    finally:
        os.close(w)
        os.waitpid(pid, 0)
