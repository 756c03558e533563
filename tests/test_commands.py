"""The shared command runner (tests/commands.py): a command that did not do its job fails the test with its own
output, whatever its exit code; only known transient connection failures are retried. Real subprocesses."""

import sys

import pytest

import commands


def python(code: str) -> list:
    return [sys.executable, "-c", code]


def failure_of(*args, **kwargs) -> str:
    with pytest.raises(pytest.fail.Exception) as info:
        commands.run(*args, **kwargs)
    return str(info.value)


def test_a_command_that_exits_0_without_its_result_fails_with_its_output(tmp_path):
    result = tmp_path / "result.json"
    message = failure_of(python("import sys; print('loaded the task'); print('ImportError: filelock._api', file=sys.stderr)"),
                         check=lambda done: result.exists())
    assert "exit code 0" in message and "result check failed" in message
    assert "loaded the task" in message and "ImportError: filelock._api" in message


def test_a_failed_check_says_what_is_missing(tmp_path):
    def wrote_it(done):
        assert (tmp_path / "out.txt").exists(), "no out.txt written"

    assert "no out.txt written" in failure_of(python("print('hi')"), check=wrote_it)
    done = commands.run(python(f"open({str(tmp_path / 'out.txt')!r}, 'w').write('x')"), check=wrote_it)
    assert done.returncode == 0


def test_a_nonzero_exit_fails_with_the_tail_of_its_output():
    message = failure_of(python("import sys; print('x' * 10000 + 'the end'); sys.exit(3)"))
    assert "exit code 3" in message and "the end" in message and len(message) < 6000


def test_a_command_that_hangs_is_killed_and_reported():
    message = failure_of(python("import time; print('started', flush=True); time.sleep(60)"), timeout=2)
    assert "still running after 2 s" in message and "started" in message


def test_only_transient_connection_failures_are_retried(tmp_path):
    marker = tmp_path / "attempts"
    flaky = python(
        f"import pathlib, sys; p = pathlib.Path({str(marker)!r}); n = len(p.read_text()) if p.exists() else 0; "
        "p.write_text('x' * (n + 1)); "
        "sys.exit(0) if n else sys.exit('RuntimeError: Gloo connectFullMesh failed with ... Connection closed by peer')"
    )
    commands.run(flaky, attempts=3)
    assert marker.read_text() == "xx"

    marker.unlink()
    broken = python(
        f"import pathlib, sys; p = pathlib.Path({str(marker)!r}); p.write_text(p.read_text() + 'x' if p.exists() else 'x'); "
        "sys.exit('ValueError: a real bug')"
    )
    assert "a real bug" in failure_of(broken, attempts=3)
    assert marker.read_text() == "x", "a non-transient failure must not be retried"


def test_the_command_may_change_between_attempts():
    seen = []

    def command(attempt):
        seen.append(attempt)
        return python("import sys; sys.exit('Address already in use')" if attempt == 0 else "print('ok')")

    assert commands.run(command, attempts=2).stdout.strip() == "ok" and seen == [0, 1]
