"""Document functions of the `dyntok_clip_qa` test task: videos come from the repository's assets folder."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parents[2] / "assets"


def doc_to_visual(doc: dict) -> list:
    """The document's clip as a path, as lmms-eval video tasks return them."""
    path = ASSETS / doc["video"]
    if not path.is_file():
        raise FileNotFoundError(f"test clip {path} is missing; the task expects it in the repository's assets folder")
    return [str(path)]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict = None) -> str:
    return doc["question"]


def process_results(doc: dict, results: list) -> dict:
    return {"exact_match": float(results[0].strip() == doc["answer"])}
