"""Stop anywhere, resume exactly: the pattern end to end.

A classifier for scikit-learn's handwritten digits with dropout, a random augmentation in
the dataset (read by DataLoader workers), AdamW and a learning-rate schedule. Kill it at any
moment and run the same command again: it continues from where it stopped, and ends with
the same weights, bit for bit, as a run that never stopped.

    python examples/resume.py --checkpoint latest     # first start, and every restart

How it is exact:

* everything that changes while training is registered on the Context: model, optimizer,
  scheduler, loader (its epoch and position), recorder (its step), the counters and the
  running loss of the epoch; the Context adds every rank's random number generators;
* the loop iterates ``ctx.loader``, so a SIGTERM (a scheduler preempting the job) stops it
  after the current batch and saves ``checkpoint-preempted.pt`` by itself;
* a checkpoint every ``--save-every`` steps bounds what a SIGKILL (or a crash) loses;
  ``keep_last`` deletes the older ones;
* ``--checkpoint latest`` continues the newest run of this experiment in its own directory,
  or starts a new one when there is none, so the same command serves every start.

See docs/resume.rst for what is guaranteed, and what breaks it.
"""
import logging

import pystematic
import torch
from sklearn.datasets import load_digits
from torch import nn

logger = logging.getLogger("resume-example")


class AugmentedDigits(torch.utils.data.Dataset):
    """The 1,797 8x8 digit images, each shifted by up to a pixel and noised when read."""

    def __init__(self):
        digits = load_digits()
        self.images = torch.tensor(digits.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16
        self.labels = torch.tensor(digits.target, dtype=torch.long)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        shift = torch.randint(-1, 2, (2,)).tolist()  # seeded per fetch by the loader
        image = torch.roll(self.images[index], shifts=shift, dims=(1, 2))
        return image + 0.05 * torch.randn_like(image), self.labels[index]


@pystematic.parameter(name="epochs", type=int, default=4, help="Epochs to train for.")
@pystematic.parameter(name="workers", type=int, default=2, help="DataLoader workers.")
@pystematic.parameter(name="save_every", type=int, default=20, help="Steps between saves.")
@pystematic.parameter(name="log_every", type=int, default=10, help="Steps between log lines.")
@pystematic.experiment
def resume_example(params):
    ctx = pystematic.torch.Context()
    ctx.epoch = 0
    ctx.step = 0
    ctx.epoch_loss = torch.zeros(())  # the epoch's summed loss so far: resumed with the rest
    ctx.recorder = pystematic.torch.Recorder()
    ctx.model = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 10)
    )
    ctx.optimizer = torch.optim.AdamW(ctx.model.parameters(), lr=3e-3)
    ctx.scheduler = torch.optim.lr_scheduler.StepLR(ctx.optimizer, step_size=2, gamma=0.5)
    ctx.loader = pystematic.torch.SmartDataLoader(
        AugmentedDigits(), batch_size=64, shuffle=True, num_workers=params["workers"],
        persistent_workers=params["workers"] > 0,
    )  # fmt: skip
    ctx.autotransform()  # --checkpoint: load everything, before CUDA and DDP
    if ctx.step:
        logger.info(f"resumed at epoch {ctx.epoch}, step {ctx.step}")

    loss_fn = nn.CrossEntropyLoss()
    while ctx.epoch < params["epochs"]:
        for images, labels in ctx.loader:
            loss = loss_fn(ctx.model(images), labels)
            ctx.optimizer.zero_grad()
            loss.backward()
            ctx.optimizer.step()
            ctx.epoch_loss += loss.detach()
            ctx.recorder.scalar("train/loss", loss)
            ctx.recorder.step()
            ctx.step += 1
            if ctx.step % params["log_every"] == 0 and pystematic.torch.is_master():
                logger.info(f"step {ctx.step}: loss {loss.item():.4f}")
            if ctx.step % params["save_every"] == 0:
                pystematic.torch.save_checkpoint(ctx.state_dict(), id=ctx.step, keep_last=2)
        mean_loss = pystematic.torch.all_reduce(ctx.epoch_loss.item() / len(ctx.loader))
        ctx.recorder.scalar("train/epoch_loss", mean_loss)
        ctx.epoch_loss.zero_()
        ctx.scheduler.step()
        ctx.epoch += 1
        if pystematic.torch.is_master():
            logger.info(f"epoch {ctx.epoch}/{params['epochs']}: mean loss {mean_loss:.4f}")
        pystematic.torch.save_checkpoint(ctx.state_dict(), id=f"epoch{ctx.epoch}")


if __name__ == "__main__":
    resume_example.cli()
