"""Old name of `dyntok_plugin.train.llava_next`, kept so `python -m dyntok_plugin.llava_next_train` keeps working."""

from .train.llava_next import DEFAULT_MODULES, DynTokTrainerCallback, default_trainer_callback, main

__all__ = ["DEFAULT_MODULES", "DynTokTrainerCallback", "default_trainer_callback", "main"]

if __name__ == "__main__":
    main()
