"""A tiny multitask model for the gradient-method tests."""

import torch
from torch import nn

TASKS = ("seg", "cls", "rad", "margin")


class ToyMultitask(nn.Module):
    """A shared trunk and one head per task, like the multitask U-Net but tiny."""

    def __init__(self, tasks=TASKS):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh())
        self.heads = nn.ModuleDict({task: nn.Linear(8, 1) for task in tasks})

    def forward(self, x):
        latent = self.trunk(x)
        return latent, {task: head(latent) for task, head in self.heads.items()}

    def shared_parameters(self):
        return list(self.trunk.parameters())

    def task_parameters(self):
        return {task: list(head.parameters()) for task, head in self.heads.items()}


def toy_losses(model, tasks=TASKS, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 6, generator=generator)
    latent, outputs = model(x)
    losses = {}
    for index, task in enumerate(tasks):
        target = torch.randn(16, 1, generator=generator) * (index + 1)
        losses[task] = ((outputs[task] - target) ** 2).mean()
    return latent, losses
