"""Resuming from a checkpoint continues exactly where an uninterrupted training would be."""

import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.handlers import LrScheduleHandler
from monai.transforms import Compose, RandAffined, RandFlipd

from thyroid_monai import keys
from thyroid_monai.engine import (
    MultitaskTrainer,
    RandomStates,
    TrainingCheckpointLoader,
    TrainingCheckpointSaver,
)
from thyroid_monai.losses import MultitaskLoss
from thyroid_monai.networks import MultitaskUNet
from thyroid_monai.transforms import RandReaderd


def items(count=6, size=32):
    generator = torch.Generator().manual_seed(7)
    result = []
    for i in range(count):
        readers = (torch.rand(3, size, size, generator=generator) > 0.5).float()
        result.append({
            keys.IMAGE: torch.rand(1, size, size, generator=generator),
            keys.LABEL: readers[:1],
            keys.TIRADS: torch.tensor(i % 3),
            keys.LABEL_READERS: readers,
            keys.TIRADS_READERS: torch.tensor([i % 3, (i + 1) % 3, i % 3]),
        })  # fmt: skip
    return result


def build(seed, max_epochs, handlers):
    torch.manual_seed(seed)
    network = MultitaskUNet(num_classes=3, dropout=0.5)
    optimizer = torch.optim.AdamW(network.parameters(), 1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    # RandAffined draws from the generators of the array transforms it wraps.
    augment = Compose([RandReaderd(), RandFlipd(keys=[keys.IMAGE, keys.LABEL], prob=0.5),
                       RandAffined(keys=[keys.IMAGE, keys.LABEL], prob=0.5, rotate_range=0.3,
                                   mode=["bilinear", "nearest"])])  # fmt: skip
    loader = DataLoader(Dataset(items(), augment), batch_size=2, shuffle=True)
    objects = {
        "model": network,
        "optimizer": optimizer,
        "lr_scheduler": scheduler,
        "random_states": RandomStates(augment),
    }
    trainer = MultitaskTrainer(
        device=torch.device("cpu"),
        max_epochs=max_epochs,
        train_data_loader=loader,
        network=network,
        optimizer=optimizer,
        loss_function=MultitaskLoss(),
        train_handlers=[LrScheduleHandler(scheduler, print_lr=False), *handlers(objects)],
    )
    return trainer, network


def test_resume_restores_model_optimiser_scheduler_epoch_and_random_states(tmp_path):
    straight, straight_net = build(0, 3, lambda objects: [])
    straight.run()

    saver = lambda objects: [TrainingCheckpointSaver(save_dir=tmp_path, save_dict=objects,  # noqa: E731
                                                     save_interval=1, n_saved=1)]  # fmt: skip
    interrupted, _ = build(0, 1, saver)
    interrupted.run()
    checkpoint = tmp_path / "checkpoint_epoch=1.pt"
    assert checkpoint.is_file()

    torch.rand(100)  # a different global random state, and a different initialisation below
    loader = lambda objects: [TrainingCheckpointLoader(load_path=str(checkpoint),  # noqa: E731
                                                       load_dict=objects)]  # fmt: skip
    resumed, resumed_net = build(1, 3, loader)
    resumed.run()
    assert resumed.state.epoch == 3
    assert resumed.state.iteration == straight.state.iteration == 9
    assert resumed.optimizer.param_groups[0]["lr"] == straight.optimizer.param_groups[0]["lr"]
    for a, b in zip(
        straight_net.state_dict().values(), resumed_net.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_resuming_from_a_missing_checkpoint_names_it(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match=r"nope\.pt"):
        build(0, 1, lambda objects: [TrainingCheckpointLoader(load_path=str(missing),
                                                              load_dict=objects)])  # fmt: skip
