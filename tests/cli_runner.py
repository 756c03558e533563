"""Running the `dyntok` command inside the test process, shared by the command's tests."""

from __future__ import annotations

import contextlib
import io

from dyntok_plugin.cli import main


def run(argv: list) -> tuple[int, str, str]:
    """`main(argv)` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()
