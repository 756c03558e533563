"""Training with DynTok switched to a no-op follows the unpatched model's loss curve.

The same tiny checkpoint is trained for the same steps on the same real-clip batches three times: unpatched,
patched with a fixed threshold >= 1 and the stock marker layout (`marker="video"`), and patched with training
thresholds drawn from [1, 2) (seeded). Nothing merges, so every loss and every trained weight must agree with the
unpatched run to float tolerance. Needs the HF video processor (torchvision, `.venv-tv`).
"""

import pytest
import torch

pytest.importorskip("torchvision")
pytest.importorskip("av")

import finetune_utils as fu  # noqa: E402
from dyntok_plugin import train as fine_tuning  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

STEPS = 12
FRAMES = (3, 3, 3, 3)  # one frame count, so the unpatched model can take the batch as one tensor


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import AutoProcessor

    fh = fine_tuning
    root = tmp_path_factory.mktemp("convergence")
    checkpoint = fu.save_checkpoint(root / "checkpoint", seed=1)
    processor = AutoProcessor.from_pretrained(checkpoint)
    records = fh.load_records(fu.write_dataset(root / "data", frame_counts=FRAMES))
    return fh, checkpoint, processor, fh.VideoQADataset(records, processor, cache=True), root


def train_curve(setup, dyntok):
    """Loss per step and final weights of a full fine-tuning run; `dyntok` None trains the unpatched model."""
    from transformers import LlavaOnevisionForConditionalGeneration

    from dyntok_plugin import patch_llava

    fh, checkpoint, processor, dataset, root = setup
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(checkpoint)
    if dyntok is not None:
        patch_llava(model, **dyntok)
    model.requires_grad_(True)
    trainer = fh.build_trainer(
        model, processor, dataset, output_dir=str(root / "run"), use_cpu=True, max_steps=STEPS, learning_rate=3e-3,
        per_device_train_batch_size=2, seed=0, disable_tqdm=True,
    )
    trainer.train()
    losses = torch.tensor([entry["loss"] for entry in trainer.state.log_history if "loss" in entry])
    return losses, {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.fixture(scope="module")
def unpatched(setup):
    return train_curve(setup, None)


@pytest.mark.parametrize(
    "dyntok",
    [
        dict(threshold=1.0, marker="video"),
        dict(threshold=1.0, train_threshold_range=(1.0, 2.0), seed=0, marker="video", similarity="projected"),
    ],
    ids=["fixed-threshold", "training-draws"],
)
def test_no_merge_dyntok_follows_the_unpatched_loss_curve(setup, unpatched, dyntok):
    reference_losses, reference_weights = unpatched
    losses, weights = train_curve(setup, dyntok)
    assert len(losses) == STEPS and bool(torch.isfinite(losses).all())
    assert reference_losses[-1] < reference_losses[0]  # the run actually trains
    torch.testing.assert_close(losses, reference_losses, rtol=1e-5, atol=1e-6)
    assert weights.keys() == reference_weights.keys()
    for name, value in weights.items():
        torch.testing.assert_close(value, reference_weights[name], rtol=1e-4, atol=1e-6, msg=name)
