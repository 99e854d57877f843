"""The ``seqfakeformer`` recipe: the authors' optimizer groups, warm-up then step schedule, and clipping
(configs/r34.json, r50.json and train.py of github.com/rshaojimmy/SeqDeepFake)."""

import warnings

import pytest
import torch

from mlcdf.config import TrainConfig
from mlcdf.models import create_model
from mlcdf.train.stage import _optimizer_and_scheduler, warmup_step_factor

pytestmark = pytest.mark.usefixtures("one_thread")


def test_schedule_factors_of_the_authors_170_epochs():
    # Their LambdaLR: (epoch + 1) / 20 for epochs 0..19, then 0.1 ** #{70, 120 <= epoch}.
    expected = {0: 1 / 20, 9: 10 / 20, 19: 1.0, 20: 1.0, 69: 1.0, 70: 0.1, 119: 0.1, 120: 0.01, 169: 0.01}
    for epoch, factor in expected.items():
        assert warmup_step_factor(epoch, 170) == pytest.approx(factor)
    # A run of 17 epochs: warm-up 2, steps at 7 and 12.
    assert [round(warmup_step_factor(e, 17), 6) for e in range(17)] == [
        0.5,
        1,
        1,
        1,
        1,
        1,
        1,
        0.1,
        0.1,
        0.1,
        0.1,
        0.1,
        0.01,
        0.01,
        0.01,
        0.01,
        0.01,
    ]


def test_optimizer_groups_schedule_and_clipping():
    config = TrainConfig(prepared="p", model="seqfakeformer_r34", out="o", recipe="seqfakeformer", epochs=170).resolve()
    assert config.lr == 1e-3 and config.clip_grad_norm == 0.1 and config.weight_decay == 1e-4
    model = create_model("seqfakeformer_r34", 5, backbone="test_resnet")
    optimizer, scheduler = _optimizer_and_scheduler(model, config, steps_per_epoch=3)
    assert isinstance(optimizer, torch.optim.AdamW)
    backbone = {id(p) for p in model.backbone.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    grouped = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(grouped) == len(trainable)  # the frozen stem and layer1 are not optimised
    for group in optimizer.param_groups:
        in_backbone = {id(p) in backbone for p in group["params"]}
        assert len(in_backbone) == 1
        assert group["initial_lr"] == pytest.approx(1e-4 if in_backbone.pop() else 1e-3)
        assert group["weight_decay"] == 1e-4  # every parameter decays, biases and norms too, as their AdamW
    # Stepped per batch, constant within an epoch: epoch 0 at 1/20, epoch 1 at 2/20.
    lrs = lambda: sorted(group["lr"] for group in optimizer.param_groups)  # noqa: E731  (backbone, head)
    assert lrs() == pytest.approx([1e-4 / 20, 1e-3 / 20])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(3):
            scheduler.step()
    assert lrs() == pytest.approx([2e-4 / 20, 2e-3 / 20])


class _Killed(BaseException):
    """Stands for the process being killed between epochs."""


def test_a_sequence_run_with_the_recipe_resumes_bit_exact(tmp_path):
    from state_compare import assert_same_state
    from toy import write_toy_prepared

    from mlcdf.train.callbacks import SilentCallbacks
    from mlcdf.train.checkpoint import load_checkpoint
    from mlcdf.train.stage import train

    class KillBeforeEpoch1(SilentCallbacks):
        def epoch_start(self, epoch, epochs, steps):
            if epoch == 1:
                raise _Killed

    prepared = write_toy_prepared(tmp_path, {"train": 16, "val": 8})

    def config(out):
        values = dict(prepared=str(prepared), model="seqfakeformer_r34", backbone="test_resnet", out=str(out), recipe="seqfakeformer")
        return TrainConfig(**values, epochs=2, batch_size=8, image_size=32, workers=0, device="cpu", patience=0)

    train(config(tmp_path / "straight"))
    with pytest.raises(_Killed):
        train(config(tmp_path / "resumed"), callbacks=KillBeforeEpoch1())
    train(config(tmp_path / "resumed"), resume=True)
    straight = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    for key in ("model", "ema", "optimizer", "scheduler", "epoch", "best_map", "rng"):
        assert_same_state(straight[key], resumed[key], key)
    # The recipe's schedule ran: the log holds the backbone's rate after each epoch's steps, the next epoch's.
    assert [r["lr"] for r in straight["history"]] == pytest.approx([1e-4 * warmup_step_factor(e, 2) for e in (1, 2)])
