"""Exceptions raised by dyntok_plugin."""


class UnsupportedModelError(TypeError):
    """`patch_llava` was given a model that no host patch recognises."""
