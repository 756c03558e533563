"""Host patches, one module per host codebase; installed as `dyntok_plugin.patches`.

Each module exposes `is_supported(model)`, `patch(model, config)`, `unpatch(model)` and `SUPPORTED_CLASSES`;
`dyntok_plugin.api` dispatches to them.
"""
