"""The periodic convolution's padding: one copy with a folding backward against one F.pad per axis.

    python tools/bench_periodic_pad.py --pipeline pretrained/kolmogorov [--frames 16] [--rounds 5]

Decodes ``--frames`` random latents with the pipeline's decoder, alone (forward) and followed by
its vector-Jacobian product (forward + VJP), with ``PeriodicConv2d`` padding both axes at once
(``latentda.nn.autoencoder._TorusPad``, the library's) and, alternately in the same process, one
circular ``F.pad`` per axis with autograd's backward (the previous code). Prints the milliseconds
of each (median over rounds of 10 calls) and the largest difference of outputs and gradients.
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from latentda.nn import autoencoder
from latentda.pipeline import LatentDAPipeline
from latentda.cli import ScriptHelpFormatter


def _two_pads(self, x):
    q = self.margin
    x = F.pad(F.pad(x, (0, 0, q, q), mode="circular"), (q, q, 0, 0), mode="circular")
    return torch.nn.Conv2d.forward(self, x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    parser.add_argument("--pipeline", required=True, help="pipeline folder (or Hub repo id) whose decoder is timed")
    parser.add_argument("--frames", type=int, default=16, help="random latent frames decoded per call")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds of 10 timed calls of each variant, alternating; the median round is reported")
    args = parser.parse_args()
    decoder = LatentDAPipeline.from_pretrained(args.pipeline).autoencoder
    z = torch.randn(args.frames, *decoder.latent_shape, requires_grad=True)

    def forward():
        with torch.no_grad():
            return decoder.decode(z)

    def forward_vjp():
        x = decoder.decode(z)
        return torch.autograd.grad(x, z, torch.ones_like(x))[0]

    variants = {"one copy (now)": autoencoder.PeriodicConv2d.forward, "one F.pad per axis": _two_pads}
    times, outputs = {}, {}
    for _ in range(args.rounds):
        for name, method in variants.items():
            autoencoder.PeriodicConv2d.forward = method
            outputs[name] = (forward(), forward_vjp())
            for kind, fn in (("forward", forward), ("forward + VJP", forward_vjp)):
                start = time.perf_counter()
                for _ in range(10):
                    fn()
                times.setdefault((name, kind), []).append((time.perf_counter() - start) / 10 * 1e3)
    autoencoder.PeriodicConv2d.forward = variants["one copy (now)"]
    for (name, kind), values in times.items():
        print(f"{name:20s} {kind:14s} {statistics.median(values):7.1f} ms")
    now, before = outputs.values()
    print("largest difference: outputs", float((now[0] - before[0]).abs().max()),
          "gradients", float((now[1] - before[1]).abs().max()))


if __name__ == "__main__":
    main()
