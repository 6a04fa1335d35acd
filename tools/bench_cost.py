"""Cost of sampling, guidance and training, as ratios measured in one run.

    python tools/bench_cost.py --pipeline runs/ldm-kolmogorov/pipeline [--iterations 1 3] [--lengths 1 2 4 8]

Prints, with FLOPs counted by torch.utils.flop_counter (exact, whatever else the machine does) and
wall times (median of repeats):

1. unconditional denoiser cost per state for L = K, 2K, 4K, 8K (blankets: must stay constant);
2. one MMPS step (n solver iterations) and one DPS step over one unguided step, and over the
   op-count bound: 1 denoiser forward + n denoiser VJPs + 1 decoder forward + n tangent JVPs
   (one decoder forward each) + n decoder VJPs, each primitive measured alone (the correction
   Jᵀ Aᵀ u is summed from the solver's products: latentda.posterior.solvers, ``lifted``); the same step
   with A·v by a double backward (the previous method) and the cost of torch.func.linearize;
3. reanalysis cost per state (MMPS step) for the same lengths;
4. training throughput of the denoiser (samples/s, achieved FLOP/s) next to the FLOP/s of a large
   float32 matmul measured in the same run.

Costs do not depend on the weights, so ``--pipeline`` may as well be an untrained pipeline of the
architecture to measure (there is no ``--random`` option).
"""

import argparse
import json
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from latentda.diffusion.denoiser import denoising_loss
from latentda.observe.operators import ObservationGroup, ObservationOperator
from latentda.pipeline import LatentDAPipeline
from latentda.posterior.guidance import DPSDenoiser, Linearization, MMPSDenoiser
from latentda.posterior.reanalysis import LatentOperator
from latentda.training.loop import BatchRandom
from latentda.cli import ScriptHelpFormatter


class _GlobalOnly:
    """FlopCounterMode's module tracker hooks break autograd.grad on leaves: count globally only."""

    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return None


def flops(fn) -> int:
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    with counter:
        fn()
    return counter.get_total_flops()


def seconds(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sparse_operator(pipeline, length: int, fraction: float = 0.05, seed: int = 0) -> ObservationOperator:
    generator = torch.Generator().manual_seed(seed)
    H, W = pipeline.layout.shape
    groups = []
    for channel in range(pipeline.layout.num_channels):
        mask = torch.rand(H, W, generator=generator) < fraction
        values = torch.full((length, H, W), float("nan"), dtype=torch.float64)
        values[:, mask] = 0.0
        groups.append(ObservationGroup(f"o{channel}", [channel], "identity", "grid", values.numpy(), 0.1,
                                       periodic=pipeline.layout.periodic))
    return ObservationOperator(groups)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    parser.add_argument("--pipeline", required=True, help="pipeline folder (or Hub repo id)")
    parser.add_argument("--iterations", type=int, nargs="+", default=[1, 3], help="MMPS solver iterations n to measure")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1, 2, 4, 8],
                        help="trajectory lengths L, in multiples of the window K")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement; their median is reported")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    torch.manual_seed(0)
    pipeline = LatentDAPipeline.from_pretrained(args.pipeline)
    K = pipeline.window
    shape = pipeline.latent_shape
    sigma = torch.tensor(1.0)
    results = {"window": K, "latent_shape": list(shape)}

    print(f"== 1. unconditional denoiser cost per state (K = {K})")
    blanket = pipeline.trajectory_denoiser()
    per_state = {}
    for multiple in args.lengths:
        L = multiple * K
        z = torch.randn(1, L, *shape)

        def step():
            with torch.no_grad():
                blanket(z, sigma)

        per_state[L] = (flops(step) / L, seconds(step, args.repeats) / L)
    base = per_state[K]
    for L, (f, s) in per_state.items():
        print(f"L = {L:4d}: {f / 1e9:8.3f} GFLOP/state ({f / base[0]:.2f}× L=K), {s * 1e3:8.2f} ms/state ({s / base[1]:.2f}×)")
    results["unconditional_per_state"] = {L: {"flops": f, "seconds": s} for L, (f, s) in per_state.items()}

    print(f"\n== 2. guided step / unguided step (L = {2 * K}, 5% of pixels observed)")
    L = 2 * K
    operator = sparse_operator(pipeline, L)
    y, noise_std = operator.observed()
    A = LatentOperator(pipeline, operator)
    z = torch.randn(1, L, *shape)

    def unguided():
        with torch.no_grad():
            blanket(z, sigma)

    # primitives, each measured alone
    zz = z.clone().requires_grad_()
    f_forward = flops(unguided)

    def denoiser_vjp():
        out = blanket(zz, sigma)
        torch.autograd.grad(out, zz, torch.ones_like(out))

    f_denoiser_vjp = flops(denoiser_vjp) - f_forward
    anchor = z.clone().requires_grad_()

    def decoder_forward():
        with torch.no_grad():
            A(anchor)

    f_decoder = flops(decoder_forward)
    predicted = A(anchor)
    f_decoder_vjp = flops(lambda: torch.autograd.grad(predicted, anchor, torch.ones_like(predicted), retain_graph=True))
    # Ways to take A·v at a fixed point, each alone: the tangent pass (latentda.nn.linearization),
    # the double backward through the transposed graph, and torch.func.linearize.
    v = torch.randn_like(z)
    tangent = A.linearize(z)
    f_tangent = flops(lambda: tangent.forward(v))
    t_tangent, t_decoder = seconds(lambda: tangent.forward(v), args.repeats), seconds(decoder_forward, args.repeats)
    double = Linearization(lambda x: A(x), z)
    f_transposed = flops(lambda: double.forward(v))  # first product: builds the transposed graph
    f_double = flops(lambda: double.forward(v))
    t_double = seconds(lambda: double.forward(v), args.repeats)
    f_linearize_setup = flops(lambda: torch.func.linearize(A, z))
    _, linearized = torch.func.linearize(A, z)
    f_linearize = flops(lambda: linearized(v))
    t_linearize = seconds(lambda: linearized(v), args.repeats)
    t_unguided = seconds(unguided, args.repeats)
    print(f"primitives (GFLOP): denoiser forward {f_forward / 1e9:.3f}, denoiser VJP {f_denoiser_vjp / 1e9:.3f}, "
          f"decoder+H forward {f_decoder / 1e9:.3f}, decoder VJP {f_decoder_vjp / 1e9:.3f}")
    print(f"A·v: tangent pass {f_tangent / 1e9:.3f} GFLOP ({t_tangent / t_decoder:.2f}× decoder forward time); "
          f"double backward {f_double / 1e9:.3f} (+ {(f_transposed - f_double) / 1e9:.3f} once per step, "
          f"{t_double / t_decoder:.2f}× time); torch.func.linearize {f_linearize / 1e9:.3f} "
          f"(+ {f_linearize_setup / 1e9:.3f} per linearisation, {t_linearize / t_decoder:.2f}× time)")
    results["primitives"] = {"denoiser_forward": f_forward, "denoiser_vjp": f_denoiser_vjp, "decoder_forward": f_decoder,
                             "decoder_vjp": f_decoder_vjp, "tangent_jvp": f_tangent, "double_backward_jvp": f_double,
                             "double_backward_setup": f_transposed - f_double, "linearize_jvp": f_linearize,
                             "linearize_setup": f_linearize_setup, "tangent_time_over_forward": t_tangent / t_decoder,
                             "double_backward_time_over_forward": t_double / t_decoder,
                             "linearize_time_over_forward": t_linearize / t_decoder}
    results["guided"] = {}
    variants = [(f"MMPS n={n}", A, n) for n in args.iterations] + [
        (f"MMPS n={n} (double backward)", lambda x: A(x), n) for n in args.iterations] + [("DPS", A, None)]
    for name, operator_, n in variants:
        guided = DPSDenoiser(blanket, operator_, y, noise_std) if n is None else MMPSDenoiser(blanket, operator_, y, noise_std, iterations=n)
        measured = flops(lambda: guided(z, sigma))
        if n is None:
            bound = f_forward + f_denoiser_vjp + f_decoder + f_decoder_vjp
            count = "1 fwd + 1 denoiser VJP + 1 decoder fwd + 1 decoder VJP"
        else:
            bound = f_forward + n * f_denoiser_vjp + (1 + n) * f_decoder + n * f_decoder_vjp
            count = f"1 fwd + {n} denoiser VJPs + 1 decoder fwd + {n} tangent JVPs + {n} decoder VJPs"
        wall = seconds(lambda: guided(z, sigma), args.repeats)
        print(f"{name:28s}: {measured / f_forward:6.2f}× unguided FLOPs = {measured / bound:.3f}× the op-count bound "
              f"({bound / f_forward:.2f}×: {count}); wall {wall / t_unguided:6.2f}× unguided "
              f"= {wall / t_unguided / (measured / f_forward):.2f}× the FLOP ratio")
        results["guided"][name] = {"flops_ratio": measured / f_forward, "bound_ratio": bound / f_forward,
                                   "flops_over_bound": measured / bound, "wall_ratio": wall / t_unguided}

    print("\n== 3. reanalysis (MMPS, n = 1) cost per state")
    base = None
    results["reanalysis_per_state"] = {}
    for multiple in args.lengths:
        L = multiple * K
        operator = sparse_operator(pipeline, L)
        y, noise_std = operator.observed()
        guided = MMPSDenoiser(blanket, LatentOperator(pipeline, operator), y, noise_std, iterations=1)
        z = torch.randn(1, L, *shape)
        f = flops(lambda: guided(z, sigma)) / L
        s = seconds(lambda: guided(z, sigma), max(1, args.repeats - 1)) / L
        base = base or (f, s)
        print(f"L = {L:4d}: {f / 1e9:8.3f} GFLOP/state ({f / base[0]:.2f}×), {s * 1e3:8.1f} ms/state ({s / base[1]:.2f}×)")
        results["reanalysis_per_state"][L] = {"flops": f, "seconds": s}

    print("\n== 4. training throughput vs a large matmul")
    batch = 16
    x = torch.randn(batch, K, *shape)
    backbone = pipeline.backbone.train()
    optimizer = torch.optim.AdamW(backbone.parameters(), lr=1e-6)

    def train_step():
        loss = denoising_loss(pipeline.denoiser, x, BatchRandom(0, 0, range(batch)))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    f_train = flops(train_step)
    t_train = seconds(train_step, args.repeats)
    a = torch.randn(2048, 2048)
    t_matmul = seconds(lambda: a @ a, 5)
    matmul_rate = 2 * 2048**3 / t_matmul
    rate = f_train / t_train
    print(f"denoiser training: {batch / t_train:.1f} samples/s, {rate / 1e9:.1f} GFLOP/s; "
          f"2048² matmul: {matmul_rate / 1e9:.1f} GFLOP/s; ratio {rate / matmul_rate:.2f}")
    results["training"] = {"samples_per_second": batch / t_train, "flops_per_second": rate,
                           "matmul_flops_per_second": matmul_rate, "ratio": rate / matmul_rate}
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
