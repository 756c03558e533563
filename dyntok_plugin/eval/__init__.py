"""Evaluation with DynTok on: the lmms-eval model `llava_onevision_dyntok` (`lmms`), the checkpoint backends it
runs (`backends`: Hugging Face or LLaVA-NeXT) and DynTok's statistics in the results (`stats`).

Nothing is imported here eagerly: `dyntok_plugin.eval.lmms` needs lmms-eval (`pip install "dyntok-plugin[eval]"`).
"""
