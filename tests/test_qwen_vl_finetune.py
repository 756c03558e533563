"""`examples/finetune_hf.py` on tiny offline Qwen2.5-VL / Qwen3-VL checkpoints with the stock processors and the
bundled real clip: the processor's inputs train through DynTok, and the saved folder reloads with its settings and
the plugin's trained marker. Needs the HF video processor, hence torchvision (`.venv-tv`); skipped elsewhere."""

import json

import pytest
import torch

pytest.importorskip("torchvision")
pytest.importorskip("av")

from dyntok_plugin import train  # noqa: E402
from dyntok_plugin.train.finetune import train as run_finetune  # noqa: E402
from dyntok_plugin.hf import synthetic_qwen as sq  # noqa: E402
from dyntok_plugin.hf.synthetic import write_qa_dataset  # noqa: E402
from media import CITY_CLIP  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


@pytest.mark.parametrize("kind", ["qwen2_5_vl", "qwen3_vl"])
def test_finetune_command_trains_and_reloads_a_qwen_checkpoint(kind, tmp_path):
    checkpoint = sq.save_random_qwen_checkpoint(tmp_path / "base", kind, processor=True)
    data = write_qa_dataset(tmp_path / "data", CITY_CLIP, [4, 2], [("what is in the video ?", "w50 w51 ."),
                                                                  ("what is happening ?", "w60 w61 .")])
    trainer, processor, dataset, out = run_finetune([
        "--model", str(checkpoint), "--data", str(data), "--output-dir", str(tmp_path / "out"), "--cpu",
        "--max-steps", "2", "--batch-size", "2", "--lr", "0.05", "--marker", "row", "--threshold", "0.5",
        "--train-threshold-range", "0.3", "0.7",
    ])
    example = dataset[0]
    assert int((example["input_ids"] == sq.VIDEO_ID).sum()) == int(example["video_grid_thw"].prod()) // 4
    losses = json.loads((out / "train_losses.json").read_text())
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    model = trainer.model.eval()
    reloaded = train.load_for_inference(out)
    assert reloaded.dyntok == model.dyntok and reloaded.dyntok.marker == "row"
    assert torch.equal(train.host_parts(reloaded)["marker"][0], train.host_parts(model)["marker"][0])
    batch = train.VideoQACollator(processor.tokenizer.pad_token_id)([dataset[1]])
    batch.pop("labels")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits, rtol=1e-5, atol=1e-5)
