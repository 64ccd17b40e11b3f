"""The benchmark: speed of our jitted train step and inference beside timm's, in one run on the same machine.

    python -m inception_jax.bench --model inception_v4 --batch 8 --image-size 299 --mode infer --vs-timm
    python -m inception_jax.bench --all --vs-timm --json bench.jsonl
    python -m inception_jax.bench --all --vs-timm --rounds 3   # interleaved processes, medians over rounds
    python -m inception_jax.bench --ops reference,cpu ...      # ours with each implementation of the ops
    python -m inception_jax.bench --model inception_v3 --vs-keras  # beside Keras 3 on the JAX backend
    python -m inception_jax.bench --report FILE [--run NAME]   # tables from saved results, no timing

Reports compile time, steady-state images/s (median of timed runs after warm-up, each ending in
`block_until_ready`), peak memory (the device's where the backend reports it, else the host's peak RSS),
FLOPs per image from XLA's cost analysis of the reference program, the achieved FLOP/s and MFU where a peak is
known or given. Each measurement runs in its own process; with `--rounds` the processes of a setting alternate
(ours, timm, ..., then the reverse order) and the table gives medians over rounds, followed by each round's ratio.
A history file (experiments/results/bench_history.jsonl) holds several runs, each row naming its run (`--run`):
`--report` gives one ratio row per run, `--report FILE --run NAME` that run's table.

Modules: `ours` (our jitted functions), `pytorch` (timm's models in PyTorch), `keras_jax`
(Keras applications on the JAX backend), `timing` (clocks, memory, MFU),
`results` (the rows, tables, ratios and saved files), `__main__` (the command line and its processes), and
`loader` (the input pipeline's throughput beside timm's and torchvision's, `python -m inception_jax.bench.loader`).
"""
