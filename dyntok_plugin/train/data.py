"""Video question-answer data for fine-tuning: JSONL records, their encoding with the checkpoint's processor, the
dataset that decodes videos with PyAV and the collator that pads a batch.

Each JSONL line is one example: `{"video": "clips/a.mp4", "question": "What happens?", "answer": "...",
"num_frames": 8}`; `video` is absolute or relative to the JSONL file, `num_frames` optional. Only the answer (and
the chat template's end of turn) is trained on: every other label is -100, and the DynTok patch sets the visual
positions to -100 itself when it re-splices the compressed video tokens.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..hf.splice import IGNORE_INDEX
from ..video import load_video


@dataclass(frozen=True)
class VideoQARecord:
    """One training example: a video file, a question about it and the answer to learn."""

    video: str
    question: str
    answer: str
    num_frames: int


def load_records(path: str | os.PathLike, num_frames: int = 8) -> list[VideoQARecord]:
    """Read and validate a JSONL file of `{"video", "question", "answer"[, "num_frames"]}` lines.

    Relative video paths are resolved against the JSONL file's folder, so a dataset folder can be moved as a whole.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {str(path)!r}; pass --data PATH_TO.jsonl")
    records = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name}, line {line_no}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where} is not valid JSON ({err.msg}); write one JSON object per line") from None
        if not isinstance(item, dict):
            raise ValueError(f"{where} is a {type(item).__name__}, not an object; write one JSON object per line")
        missing = [key for key in ("video", "question", "answer") if not isinstance(item.get(key), str)]
        if missing:
            raise ValueError(f"{where} lacks the string field(s) {missing}; each line needs video, question, answer")
        if not item["answer"].strip():
            raise ValueError(f"{where} has an empty answer; nothing would be trained on, give a non-empty answer")
        frames = item.get("num_frames", num_frames)
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
            raise ValueError(f"{where}: num_frames must be a positive integer, got {frames!r}")
        video = Path(item["video"])
        video = video if video.is_absolute() else path.parent / video
        if not video.is_file():
            raise FileNotFoundError(f"{where}: video {str(video)!r} not found; paths are relative to the JSONL file")
        records.append(VideoQARecord(str(video), item["question"], item["answer"], frames))
    if not records:
        raise ValueError(f"{str(path)!r} holds no examples; write one JSON object per line")
    return records


def split_conversation(processor: Any, question: str, answer: str) -> tuple[str, str]:
    """The generation prompt (with the `<video>` slot) and the text to learn: the answer plus the end of turn.

    The prompt is what inference sends (`add_generation_prompt=True`); the end-of-turn string (e.g. `<|im_end|>`)
    is read off the checkpoint's own template rendering the answer, so the model learns to stop. Templates may
    render the assistant header differently in the two cases (LLaVA-OneVision's does), hence this split.
    """
    user = {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}
    assistant = {"role": "assistant", "content": [{"type": "text", "text": answer}]}
    prompt = processor.apply_chat_template([user], add_generation_prompt=True, tokenize=False)
    full = processor.apply_chat_template([user, assistant], tokenize=False)
    at = full.rfind(answer)
    if at < 0:
        raise ValueError(
            "the chat template does not render the answer verbatim, so its end of turn cannot be found; "
            "use a template that writes the assistant's text as given"
        )
    return prompt, answer + full[at + len(answer) :]


def encode_example(processor: Any, frames: np.ndarray, question: str, answer: str) -> dict[str, torch.Tensor]:
    """One example as model inputs: `input_ids`, `attention_mask`, `labels` (answer only), `pixel_values_videos`.

    The prompt goes through the processor (which expands `<video>` into its placeholder run); the answer is
    tokenized on its own and appended, so the label span is exact whatever the tokenizer does at the boundary.
    """
    prompt, target = split_conversation(processor, question, answer)
    encoded = processor(text=[prompt], videos=[frames], return_tensors="pt")
    prompt_ids = encoded["input_ids"][0]
    target_ids = torch.tensor(processor.tokenizer(target, add_special_tokens=False)["input_ids"], dtype=torch.long)
    input_ids = torch.cat([prompt_ids, target_ids])
    labels = torch.cat([torch.full_like(prompt_ids, IGNORE_INDEX), target_ids])
    example = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    if "video_grid_thw" not in encoded:  # LLaVA-OneVision: (1, F, 3, H, W)
        example["pixel_values_videos"] = encoded["pixel_values_videos"][0]
        return example
    # Qwen VL: patch rows of the video, its grid, token types (the answer is text) and, for Qwen2.5-VL, timing.
    example.update(pixel_values_videos=encoded["pixel_values_videos"], video_grid_thw=encoded["video_grid_thw"])
    if encoded.get("mm_token_type_ids") is not None:
        types = encoded["mm_token_type_ids"][0]
        example["mm_token_type_ids"] = torch.cat([types, torch.zeros_like(target_ids, dtype=types.dtype)])
    if encoded.get("second_per_grid_ts") is not None:
        example["second_per_grid_ts"] = torch.as_tensor(encoded["second_per_grid_ts"], dtype=torch.float32)
    return example


class VideoQADataset(torch.utils.data.Dataset):
    """Decodes each record's video with PyAV and encodes it with the checkpoint's processor.

    `cache=True` keeps the decoded frames in memory (small datasets, many epochs).
    """

    def __init__(self, records: Sequence[VideoQARecord], processor: Any, cache: bool = False):
        self.records = list(records)
        self.processor = processor
        self._frames: Optional[dict[int, np.ndarray]] = {} if cache else None

    def __len__(self) -> int:
        return len(self.records)

    def frames(self, index: int) -> np.ndarray:
        if self._frames is not None and index in self._frames:
            return self._frames[index]
        record = self.records[index]
        frames = load_video(record.video, record.num_frames)
        if self._frames is not None:
            self._frames[index] = frames
        return frames

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        record = self.records[index]
        return encode_example(self.processor, self.frames(index), record.question, record.answer)


class VideoQACollator:
    """Pads encoded examples into a batch (labels padded with -100) and batches their videos.

    LLaVA-OneVision: videos with one frame count are stacked into the stock `(B, F, 3, H, W)` tensor; a batch that
    mixes frame counts gets a list of `(F_i, 3, H, W)` tensors, which the DynTok patch accepts (the unpatched model
    does not). Qwen VL (examples with `video_grid_thw`): patch rows, grids and timings are concatenated in order and
    `mm_token_type_ids` padded with 0, as the processor batches them.
    """

    def __init__(self, pad_token_id: int, padding_side: str = "right"):
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.pad_token_id = int(pad_token_id)
        self.padding_side = padding_side

    def __call__(self, examples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        needed = ("input_ids", "labels", "pixel_values_videos")
        for example in examples:
            absent = [key for key in needed if key not in example]
            if absent:
                raise KeyError(
                    f"an example lacks {absent}; with Trainer keep them by leaving the patched forward's signature "
                    "intact (patch_llava does) or set remove_unused_columns=False"
                )
        width = max(int(example["input_ids"].shape[0]) for example in examples)
        batch = {
            "input_ids": torch.full((len(examples), width), self.pad_token_id, dtype=torch.long),
            "attention_mask": torch.zeros((len(examples), width), dtype=torch.long),
            "labels": torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long),
        }
        if "mm_token_type_ids" in examples[0]:  # Qwen VL: 0 on text and padding
            batch["mm_token_type_ids"] = torch.zeros((len(examples), width),
                                                     dtype=examples[0]["mm_token_type_ids"].dtype)
        for row, example in enumerate(examples):
            length = int(example["input_ids"].shape[0])
            span = slice(0, length) if self.padding_side == "right" else slice(width - length, width)
            batch["input_ids"][row, span] = example["input_ids"]
            batch["attention_mask"][row, span] = 1
            batch["labels"][row, span] = example["labels"]
            if "mm_token_type_ids" in batch:
                batch["mm_token_type_ids"][row, span] = example["mm_token_type_ids"]
        if "video_grid_thw" in examples[0]:
            return self._qwen_videos(examples, batch)
        videos = [example["pixel_values_videos"] for example in examples]
        same_frames = len({int(video.shape[0]) for video in videos}) == 1
        batch["pixel_values_videos"] = torch.stack(videos) if same_frames else videos
        return batch

    def _qwen_videos(self, examples: Sequence[dict[str, torch.Tensor]], batch: dict) -> dict[str, torch.Tensor]:
        for key in ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts"):
            if key in examples[0]:
                batch[key] = torch.cat([example[key] for example in examples])
        return batch
