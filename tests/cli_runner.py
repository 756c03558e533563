"""Running the `dyntok` command inside the test process, shared by the command's tests."""

from __future__ import annotations

import contextlib
import io

from commands import tail

from dyntok_plugin.cli import main


def run(argv: list) -> tuple[int, str, str]:
    """`main(argv)` in this process: (exit code, stdout, stderr).

    When `main` raises instead of returning a code, the exception goes on with what the command had printed attached
    (shown in the test's report), so a crash is reported with the command's own output.
    """
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in argv])
    except BaseException as exc:
        if hasattr(exc, "add_note"):  # Python 3.11+
            exc.add_note(f"dyntok {' '.join(map(str, argv))}\n--- stdout (end) ---\n{tail(out.getvalue()) or '(empty)'}"
                         f"\n--- stderr (end) ---\n{tail(err.getvalue()) or '(empty)'}")
        raise
    return code, out.getvalue(), err.getvalue()
