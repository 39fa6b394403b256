"""Lightning callbacks of every training run (a module of their own so that they pickle: the
``ddp_spawn`` strategy sends the trainer, callbacks included, to the processes it starts)."""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback

from histoxmodal.training.trainer import die_with_fit_parent


class DieWithParent(Callback):
    """In every process of a fit, also those Lightning spawns or forks for other devices: die
    with the process that started the fit (see
    :func:`~histoxmodal.training.trainer.die_with_fit_parent`)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        die_with_fit_parent()
