"""RLAR: a regulariser on the shared representation against task gradients that align too much.

Salama et al. (arXiv 2603.21095, 2026) observe that naive multitask learning of the nodule mask and
the TI-RADS level fails because the task gradients compete inside the shared representation. RLAR
probes each task's sensitivity with its *normalised adversarial direction in latent space* and
penalises excessive angular alignment between the two directions. The paper's method section is
not public; this module follows the reconstruction of ``docs/papers.md`` 1.2, and every choice it
makes is an option:

* **Adversarial direction.** The L2 fast-gradient direction of a task at the latent ``z``:
  ``d_t = g_t / ||g_t||`` with ``g_t = dL_t/dz`` per sample (the first axis of ``z`` is the batch).
  The gradient of the batch *sum* of the losses is used, so each sample's slice is its own loss's
  gradient; no perturbed forward pass is needed.
* **Penalty** (:func:`rlar_penalty`). The cosine per sample ``c_i = <d_a,i, d_b,i>``, and
  ``mean_i relu(c_i - tau) ** power``: only alignment beyond the margin ``tau`` ("excessive") is
  penalised. ``absolute=True`` penalises ``|c_i|`` instead, so strong anti-alignment counts too.
* **Which latent** (``latent``): ``"deepest"`` (the deepest encoder map, the last tensor both heads
  depend on), ``"pooled"`` (default: the gradients at the deepest map averaged over spatial
  positions before the cosine, i.e. directions of a per-channel shift of ``z``), or ``"encoder"``
  (every encoder map that requires a gradient, each with its own cosine, the penalty and cosines
  averaged over maps; the network must return ``encoder_maps``, and its encoder must normalise
  per sample: BatchNorm in training mode mixes the samples, so :meth:`RLAR.prepare` refuses it).
  With nodule pooling the level reads every encoder map inside the nodule, the mask decoder every
  map through its skips; the deepest map is the one latent both read whole.
* **Where the penalty's gradient flows.** Through double back-propagation (``create_graph``) into
  the encoder (through ``z``) and into both heads' parameters (second-order terms).
  ``detach=<task>`` treats that task's direction as a constant, so only the other task's
  sensitivity is reshaped (an ablation; it also removes that task's double backward).
* **Schedule.** No penalty during the first ``warmup_epochs`` epochs (early gradients are noisy),
  and then only every ``every``-th iteration. With ``lazy_scaling`` (default) the weight of an
  applied penalty is multiplied by ``every``, so the average strength per step stays ``weight``
  (lazy regularisation, as StyleGAN2 does for its R1 penalty).
* **How it composes with a gradient method** (``fold``). RLAR's term ``weight * penalty`` is
  added to the task losses, then the gradient method aggregates them as usual: ``"split"`` (the
  default) adds half to each of the two tasks, so a weighted sum with unit weights sees exactly
  ``weight * penalty``; ``"<task>"`` adds all of it to that task; ``"separate"`` adds it as its own
  entry ``"rlar"``, which the method treats as one more objective (it has no task parameters).
  Task weights of the method multiply the folded term like the rest of that task's loss.

**Defaults** (measured, December 2026; papers.md is silent on every value;
``benchmarks/results/rlar_alignment.json``, 600 phantom images, 64 px, resnet10, 8 epochs). The
first reconstruction (squared hinge at the deepest map, tau 0.1, weight 0.05, every step) never
acted: its penalty stayed at 0.0002-0.0005 and the cosines it targets did not move. With the
level head reading the nodule (nodule pooling) the cosines spread most at the pooled latent:
under the weighted sum, mean ``|c|`` 0.04-0.08 at the deepest map and 0.10-0.21 pooled, with
21-41% of the samples above 0.1 pooled. On the encoder, the penalty's gradient per unit weight
is 0.028 of the task gradient for the old form (so 0.0014 at weight 0.05) and 0.245 for a hinge
with power 1 at the pooled latent (power 2 shrinks it because ``c - tau`` is small). Hence:
``latent="pooled"``, ``power=1`` (a hinge whose gradient does not vanish at the margin),
``tau=0.1`` (only alignment counts; ``absolute=True, tau=0, power=2`` is the ``c^2`` variant),
``weight=0.5`` (about an eighth of the task gradient on the encoder where it acts), applied every
4th iteration with the weight scaled by 4 (``every=4``, lazy: the second-order pass on a quarter
of the steps). With these defaults the pooled ``|c|`` falls from 0.20 (sum) to 0.07 by epoch 8,
the share above tau from 39% to 12%.

Cost: no extra forward pass; one extra backward from each loss to ``z`` with the graph kept (through
the decoder for the mask), and the final backward then also runs the second-order terms, which
dominate (see ``benchmarks/step_cost.py``). When no sample's alignment exceeds ``tau`` the penalty
and its gradient are exactly zero: the term is then not folded in (except with
``fold="separate"``, whose entry must always exist), so the gradient method's backward skips the
second-order pass at no change to the gradients.

Requirements on the model: each sample's outputs must depend only on its own latent (no BatchNorm
after the latent in training mode; ``MultitaskUNet`` uses a per-sample decoder normalisation by
default) and the task losses must be means of per-sample terms (all losses of
:mod:`thyroid_monai.losses` are).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F

from thyroid_monai import keys

LatentChoice = Literal["deepest", "pooled", "encoder"]
SEPARATE_TASK = "rlar"


def rlar_penalty(
    grad_a: torch.Tensor,
    grad_b: torch.Tensor,
    *,
    tau: float,
    power: float = 2.0,
    absolute: bool = False,
    eps: float = 1e-8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RLAR's penalty from two tasks' latent gradients (a pure function, differentiable).

    Args:
        grad_a: Gradient of task a's loss with respect to the latent, batch on the first axis.
        grad_b: Same for task b, same shape.
        tau: Margin: cosines at or below it cost nothing.
        power: Exponent of the hinge (at least 1).
        absolute: Penalise ``|cos|`` instead of ``cos``.
        eps: Floor of the gradient norms in the normalisation.

    Returns:
        ``(penalty, cosines)``: ``mean_i relu(c_i - tau) ** power`` (with ``|c_i|`` if
        ``absolute``) and the per-sample cosines ``(batch,)``.

    Raises:
        ValueError: For mismatched shapes, a tensor without a batch axis, or a bad option.
    """
    if grad_a.shape != grad_b.shape:
        raise ValueError(f"gradient shapes differ: {tuple(grad_a.shape)} vs {tuple(grad_b.shape)}")
    if grad_a.ndim < 2:
        raise ValueError(f"gradients need a batch axis and features, got {tuple(grad_a.shape)}")
    if power < 1:
        raise ValueError(f"power must be at least 1, got {power}")
    direction_a = F.normalize(grad_a.flatten(1), dim=1, eps=eps)
    direction_b = F.normalize(grad_b.flatten(1), dim=1, eps=eps)
    cosines = (direction_a * direction_b).sum(dim=1)
    alignment = cosines.abs() if absolute else cosines
    penalty = F.relu(alignment - tau).pow(power).mean()
    return penalty, cosines


class RLAR:
    """RLAR as a loss regulariser: computes the penalty and folds it into the task losses.

    The defaults are chosen from measurements (see "Defaults" in the module docstring); the
    first reconstruction of papers.md is ``RLAR(weight=0.05, power=2.0, latent="deepest",
    every=1)``.

    Args:
        weight: ``lambda_adv``, the weight of the penalty (papers.md suggested 0.01-0.1 for the
            squared hinge at the deepest map, where it never acts).
        tau: Cosine margin (papers.md suggests 0-0.3).
        power: Exponent of the hinge.
        absolute: Penalise ``|cos|`` (also anti-alignment).
        tasks: The two tasks whose directions are compared.
        latent: ``"deepest"``, ``"pooled"`` or ``"encoder"``.
        detach: ``None`` or one of ``tasks``: that task's direction is a constant.
        warmup_epochs: Epochs without the penalty at the start.
        every: Apply the penalty every ``every`` iterations.
        lazy_scaling: Multiply the weight by ``every`` when the penalty is applied.
        fold: ``"split"``, one of ``tasks``, or ``"separate"``.
        eps: Floor of the gradient norms.

    Raises:
        ValueError: For an invalid option (the message names it).
    """

    def __init__(
        self,
        weight: float = 0.5,
        tau: float = 0.1,
        power: float = 1.0,
        absolute: bool = False,
        tasks: Sequence[str] = (keys.SEG, keys.CLS),
        latent: LatentChoice = "pooled",
        detach: str | None = None,
        warmup_epochs: int = 5,
        every: int = 4,
        lazy_scaling: bool = True,
        fold: str = "split",
        eps: float = 1e-8,
    ):
        pair = tuple(tasks)
        if len(pair) != 2 or pair[0] == pair[1]:
            raise ValueError(f"RLAR compares exactly two different tasks, got {pair}")
        if weight < 0:
            raise ValueError(f"weight must be non-negative, got {weight}")
        if not -1.0 <= tau < 1.0:
            raise ValueError(f"tau must be in [-1, 1), got {tau}")
        if power < 1:
            raise ValueError(f"power must be at least 1, got {power}")
        if latent not in ("deepest", "pooled", "encoder"):
            raise ValueError(f"unknown latent {latent!r}; use deepest, pooled or encoder")
        if detach is not None and detach not in pair:
            raise ValueError(f"detach must be None or one of {pair}, got {detach!r}")
        if warmup_epochs < 0 or every < 1:
            raise ValueError(
                f"need warmup_epochs >= 0 and every >= 1, got {warmup_epochs}, {every}"
            )
        if fold not in ("split", "separate", *pair):
            raise ValueError(f"unknown fold {fold!r}; use split, separate or one of {pair}")
        self.weight = float(weight)
        self.tau = float(tau)
        self.power = float(power)
        self.absolute = absolute
        self.tasks: tuple[str, str] = (pair[0], pair[1])
        self.latent = latent
        self.detach = detach
        self.warmup_epochs = warmup_epochs
        self.every = every
        self.lazy_scaling = lazy_scaling
        self.fold = fold
        self.eps = eps

    def is_active(self, epoch: int, iteration: int) -> bool:
        """Whether the penalty applies at this (1-based) epoch and global iteration."""
        return self.weight > 0 and epoch > self.warmup_epochs and (iteration - 1) % self.every == 0

    def applied_weight(self) -> float:
        """Weight of the penalty on the iterations where it applies."""
        return self.weight * (self.every if self.lazy_scaling else 1)

    def latents(self, outputs: Mapping[str, Any]) -> list[torch.Tensor]:
        """The latent tensors the directions are taken at."""
        if self.latent == "encoder":
            if keys.ENCODER_MAPS not in outputs:
                raise ValueError(
                    "RLAR latent='encoder' needs the encoder maps: build the network with "
                    "expose_encoder_maps=True"
                )
            maps = [m for m in outputs[keys.ENCODER_MAPS] if m.requires_grad]
        else:
            maps = [outputs[keys.LATENT]]
        if not maps or not all(m.requires_grad for m in maps):
            raise ValueError("RLAR needs latent tensors that are part of the autograd graph")
        return maps

    def latent_gradients(
        self, loss: torch.Tensor, latents: Sequence[torch.Tensor], *, create_graph: bool
    ) -> list[torch.Tensor]:
        """Per-sample gradients of a batch-mean loss at each latent (pooled if configured).

        The loss is scaled by the batch size, so each sample's slice is the gradient of that
        sample's own loss term.
        """
        batch = latents[0].shape[0]
        grads = torch.autograd.grad(
            loss * batch,
            list(latents),
            create_graph=create_graph,
            retain_graph=True,
            allow_unused=True,
        )
        result = [
            torch.zeros_like(m) if g is None else g for g, m in zip(grads, latents, strict=True)
        ]
        return self.shaped(result)

    def shaped(self, gradients: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Latent gradients as this latent choice compares them (averaged over space if pooled)."""
        if self.latent != "pooled":
            return list(gradients)
        return [g.mean(dim=tuple(range(2, g.ndim))) if g.ndim > 2 else g for g in gradients]

    def penalty(
        self, losses: Mapping[str, torch.Tensor], outputs: Mapping[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The penalty (averaged over latent maps) and the per-sample cosines (likewise)."""
        missing = [task for task in self.tasks if task not in losses]
        if missing:
            raise ValueError(f"RLAR needs the losses of {self.tasks}; missing {missing}")
        latents = self.latents(outputs)
        task_a, task_b = self.tasks
        grads_a = self.latent_gradients(losses[task_a], latents, create_graph=self.detach != task_a)
        grads_b = self.latent_gradients(losses[task_b], latents, create_graph=self.detach != task_b)
        penalties, cosines = zip(
            *(
                rlar_penalty(
                    a, b, tau=self.tau, power=self.power, absolute=self.absolute, eps=self.eps
                )
                for a, b in zip(grads_a, grads_b, strict=True)
            ),
            strict=True,
        )
        return torch.stack(penalties).mean(), torch.stack(cosines).mean(dim=0)

    def __call__(
        self,
        losses: Mapping[str, torch.Tensor],
        outputs: Mapping[str, Any],
        *,
        epoch: int,
        iteration: int,
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Folds the weighted penalty into the task losses when it applies.

        Args:
            losses: Per-task losses, attached to the graph.
            outputs: Network outputs holding the latent(s).
            epoch: Current epoch (1-based).
            iteration: Global iteration (1-based).

        Returns:
            The losses to hand to the gradient method, and float diagnostics: ``rlar_weight``
            (0 where the penalty does not apply) and, where it does, ``rlar_penalty``,
            ``rlar_cos_mean``, ``rlar_cos_max`` and ``rlar_excess_share`` (share of samples whose
            alignment exceeds ``tau``).
        """
        folded = dict(losses)
        if not self.is_active(epoch, iteration):
            return folded, {"rlar_weight": 0.0}
        penalty, cosines = self.penalty(losses, outputs)
        weight = self.applied_weight()
        term = weight * penalty
        if self.fold == "separate":
            folded[SEPARATE_TASK] = term
        elif bool(penalty.detach() > 0):
            # relu(c - tau) ** power is 0 with a zero gradient for every c <= tau: an all-zero
            # penalty would change nothing but add the second-order pass to the backward
            if self.fold == "split":
                for task in self.tasks:
                    folded[task] = folded[task] + 0.5 * term
            else:
                folded[self.fold] = folded[self.fold] + term
        alignment = cosines.detach().abs() if self.absolute else cosines.detach()
        return folded, {
            "rlar_weight": weight,
            "rlar_penalty": float(penalty.detach()),
            "rlar_cos_mean": float(cosines.detach().mean()),
            "rlar_cos_max": float(cosines.detach().max()),
            "rlar_excess_share": float((alignment > self.tau).float().mean()),
        }

    def prepare(self, network: torch.nn.Module) -> None:
        """Asks ``network`` for the tensors this regulariser reads (every encoder map).

        Raises:
            ValueError: If the latent is ``"encoder"`` and the network cannot expose its maps.
        """
        if self.latent != "encoder":
            return
        if not hasattr(network, "expose_encoder_maps"):
            raise ValueError(
                f"RLAR latent='encoder' needs a network that can expose its encoder maps; "
                f"{type(network).__name__} cannot"
            )
        # MultitaskUNet's encoder is unet.encoder; another network is checked whole
        encoder = getattr(getattr(network, "unet", network), "encoder", network)
        coupling = batch_coupling_layers(encoder)
        if coupling:
            raise ValueError(
                "RLAR latent='encoder' compares per-sample gradients at every encoder map, but "
                f"the encoder normalises with batch statistics ({coupling[0]}"
                f"{f' and {len(coupling) - 1} more' if len(coupling) > 1 else ''}): in training "
                "they mix the samples of a batch, so a sample's slice of the gradient is not the "
                "gradient of its own loss. Use latent 'deepest' or 'pooled' (exact: the heads "
                "after the deepest map are per-sample), or an encoder without BatchNorm"
            )
        setattr(network, "expose_encoder_maps", True)  # noqa: B010  (a module attribute)

    def tracking_params(self) -> dict[str, Any]:
        """What a tracked run records: the constructor options and their values."""
        return self._describe()

    def _describe(self) -> dict[str, Any]:
        return {
            "weight": self.weight,
            "tau": self.tau,
            "power": self.power,
            "absolute": self.absolute,
            "tasks": self.tasks,
            "latent": self.latent,
            "detach": self.detach,
            "warmup_epochs": self.warmup_epochs,
            "every": self.every,
            "lazy_scaling": self.lazy_scaling,
            "fold": self.fold,
        }

    def __repr__(self) -> str:
        arguments = ", ".join(f"{key}={value!r}" for key, value in self._describe().items())
        return f"RLAR({arguments})"


def batch_coupling_layers(module: torch.nn.Module) -> list[str]:
    """Names of the layers in ``module`` that mix the samples of a batch in training mode.

    BatchNorm (any dimension, synchronised too) normalises with statistics of the whole batch;
    every other normalisation of torch and MONAI (group, instance, layer) is per sample.
    """
    return [
        name or type(module).__name__
        for name, layer in module.named_modules()
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm)
    ]


def optional_rlar(enabled: bool, **options: Any) -> RLAR | None:
    """An :class:`RLAR` with ``options`` when ``enabled``, else None (the bundle's ``use_rlar``).

    The options are RLAR's own (``rlar#tau``...); their defaults are written once, in RLAR.
    """
    return RLAR(**options) if enabled else None
