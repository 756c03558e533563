"""`python -m dyntok_plugin`: the `dyntok` command."""

from .cli import main

raise SystemExit(main())
