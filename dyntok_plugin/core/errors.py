"""Exceptions raised by dyntok_plugin, and the messages more than one path raises."""


class UnsupportedModelError(TypeError):
    """`patch_llava` was given a model that no host patch recognises."""


def non_finite_error(name: str) -> ValueError:
    """The error for NaN or Inf in `name` (`features` or `similarity_features`), the same on every path."""
    return ValueError(
        f"{name} contain NaN or Inf values; DynTok needs finite features (check the inputs and the dtype: "
        "float16 overflows easily)."
    )
