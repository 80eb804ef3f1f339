"""Mixed precision, gradient accumulation and clipping through the Context.

A small transformer learns to predict a sequence's running mean. The loop is the plain one
with three helpers in place of ``loss.backward()`` and ``optimizer.step()``:

    python examples/mixed_precision.py                               # float32
    python examples/mixed_precision.py --precision bf16-mixed       # bfloat16, CPU or GPU
    python examples/mixed_precision.py --precision 16-mixed         # float16, CUDA GPU
    python examples/mixed_precision.py --batch-size 8 --accumulate 4 # updates of batch 32
    python examples/mixed_precision.py --checkpoint latest           # continue the last run
"""
import logging

import pystematic
import torch
from torch import nn

logger = logging.getLogger("mixed-precision-example")


def running_mean_data(samples: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(samples, 12, 8, generator=generator)
    targets = inputs.cumsum(dim=1) / torch.arange(1, 13).view(1, 12, 1)
    return torch.utils.data.TensorDataset(inputs, targets)


class SequenceModel(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()
        self.embed = nn.Linear(8, width)
        self.block = nn.TransformerEncoderLayer(
            width, nhead=4, dim_feedforward=64, dropout=0.0, batch_first=True
        )
        self.head = nn.Linear(width, 8)
        mask = nn.Transformer.generate_square_subsequent_mask(12)
        self.register_buffer("causal", mask, persistent=False)

    def forward(self, x):
        return self.head(self.block(self.embed(x), src_mask=self.causal, is_causal=True))


@pystematic.parameter(name="epochs", type=int, default=6, help="Epochs to train for.")
@pystematic.parameter(name="batch_size", type=int, default=16, help="Samples per micro-batch.")
@pystematic.parameter(name="accumulate", type=int, default=2,
                      help="Micro-batches per optimizer step.")  # fmt: skip
@pystematic.experiment
def mixed_precision_example(params):
    ctx = pystematic.torch.Context()  # trains in --precision
    ctx.epoch = 0
    ctx.model = SequenceModel()
    ctx.optimizer = torch.optim.AdamW(ctx.model.parameters(), lr=3e-3)
    ctx.loader = pystematic.torch.SmartDataLoader(
        running_mean_data(512, seed=0), batch_size=params["batch_size"], shuffle=True,
        loading_bar=False,
    )  # fmt: skip
    ctx.scheduler = torch.optim.lr_scheduler.ExponentialLR(ctx.optimizer, gamma=0.98)
    ctx.autotransform()  # --checkpoint -> load, --cuda -> move, --distributed -> DDP
    ctx.accumulate(params["accumulate"])
    validation = pystematic.torch.move_to_device(ctx.device, running_mean_data(256, seed=1)[:])

    while ctx.epoch < params["epochs"]:
        ctx.model.train()
        for x, y in ctx.loader:
            with ctx.autocast():
                loss = nn.functional.mse_loss(ctx.model(x).float(), y)
            ctx.backward(loss)
            if ctx.step_optimizer(ctx.optimizer, clip_grad_norm=1.0):
                ctx.scheduler.step()  # only when the optimizer stepped
        ctx.epoch += 1

        ctx.model.eval()
        with torch.no_grad(), ctx.autocast():
            x, y = validation
            val_loss = nn.functional.mse_loss(ctx.model(x).float(), y).item()
        if pystematic.torch.is_master():
            logger.info(f"epoch {ctx.epoch}: validation loss {val_loss:.9f}")
        # Checkpoints at cycle boundaries: an epoch here is a whole number of cycles.
        pystematic.torch.save_checkpoint(ctx.state_dict(), id=ctx.epoch)


if __name__ == "__main__":
    mixed_precision_example.cli()
