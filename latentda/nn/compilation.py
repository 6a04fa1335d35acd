"""Regional compilation: ``torch.compile`` of a model's repeated blocks, in place.

Each block named in ``model._no_split_modules`` (the transformer's attention blocks, the
autoencoder's residual blocks — the same units FSDP shards) gets its forward compiled with
``nn.Module.compile``. Blocks of one class share their compiled code, so compiling costs about one
block rather than the whole network, and parameter names, state dicts, checkpoints, EMA and FSDP
sharding are unchanged. The first calls at each new input shape are slow (compilation); later ones
run the compiled kernels. Measured speed-ups are in docs/benchmarks.md (``tools/bench_compile.py``).
"""

from __future__ import annotations

from torch import nn

__all__ = ["compile_blocks", "repeated_blocks"]


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The submodules of ``model`` whose class is named in ``model._no_split_modules`` (diffusers'
    list of blocks never to split; here also the units of compilation and FSDP sharding)."""
    units = set(getattr(model, "_no_split_modules", None) or ())
    return [module for module in model.modules() if module is not model and type(module).__name__ in units]


def compile_blocks(model: nn.Module, **options) -> int:
    """Compile every repeated block of ``model`` in place (``options`` go to ``torch.compile``);
    returns the number of blocks compiled."""
    blocks = repeated_blocks(model)
    for block in blocks:
        block.compile(**options)
    return len(blocks)
