"""Gradient methods under DistributedDataParallel: two gloo processes on CPU."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from monai.data import DataLoader, Dataset
from torch.nn.parallel import DistributedDataParallel

from thyroid_monai import keys
from thyroid_monai.engine import MultitaskTrainer
from thyroid_monai.losses import MultitaskLoss
from thyroid_monai.mtl import build_gradient_method
from thyroid_monai.mtl.distributed import all_reduce_gradients
from thyroid_monai.networks import MultitaskUNet

METHODS = ("camegrad", "uncertainty")


def rank_batches(rank, count=4, size=32):
    """Each rank sees different images, so unsynchronised ranks would drift apart."""
    generator = torch.Generator().manual_seed(100 + rank)
    items = []
    for i in range(count):
        label = torch.zeros(1, size, size)
        label[:, 4 + rank : 20, 6:24] = 1
        image = torch.rand(1, size, size, generator=generator) + label
        items.append({keys.IMAGE: image, keys.LABEL: label, keys.TIRADS: torch.tensor(i % 3)})
    return DataLoader(Dataset(items), batch_size=2)


def train_rank(rank, world_size, init_file, out_dir):
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    torch.set_num_threads(1)
    results = {}
    for name in METHODS:
        torch.manual_seed(0)
        network = DistributedDataParallel(MultitaskUNet(num_classes=3))
        method = build_gradient_method(name, task_weights={"seg": 1.0, "cls": 1.0})
        params = [*network.parameters(), *method.extra_parameters()]
        initial = torch.cat([p.detach().reshape(-1).clone() for p in params])
        trainer = MultitaskTrainer(
            device=torch.device("cpu"),
            max_epochs=1,
            train_data_loader=rank_batches(rank),
            network=network,
            optimizer=torch.optim.Adam(params, 1e-3),
            loss_function=MultitaskLoss(),
            gradient_method=method,
        )
        trainer.run()
        final = torch.cat([p.detach().reshape(-1) for p in params])
        results[name] = {
            "initial": initial,
            "final": final,
            "loss": trainer.state.output[0]["loss"],
        }
    # A missing gradient on one rank counts as zeros on every rank.
    lone = torch.nn.Parameter(torch.zeros(3))
    if rank == 0:
        lone.grad = torch.full((3,), 4.0)
    all_reduce_gradients([lone])
    results["lone_grad"] = lone.grad
    torch.save(results, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_gloo_ranks_end_with_equal_weights(tmp_path):
    mp.spawn(train_rank, args=(2, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name in METHODS:
        first, second = ranks[0][name], ranks[1][name]
        assert first["loss"] != second["loss"]  # the ranks trained on different batches
        assert not torch.equal(first["final"], first["initial"])
        assert torch.equal(first["final"], second["final"]), name
    for result in ranks:
        assert torch.equal(result["lone_grad"], torch.full((3,), 2.0))
