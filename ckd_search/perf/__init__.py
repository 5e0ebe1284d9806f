"""Performance benchmarks of the CKD training step (run them through ``bench/`` or ``ckd-search bench``).

Modules:
    timing: device-aware step timers, peak memory and plain-text tables.
    synthetic: random :class:`~ckd_search.prepare.Prepared` data of any shape (throughput only).
    baseline: the plain spikingjelly two-stream VGGSNN step of performance.md section 6.
    step_bench: full CKD step vs the baseline (``bench/step_throughput.py``).
    packing: 1..n CKD trials packed on one device as processes (``bench/packing.py``).
    cpu_epoch: one Digits-DVS epoch on the CPU with the default config (``bench/cpu_epoch.py``).
    profile_step: torch.profiler breakdown of the CKD step and A/B tries of faster variants.
    variants: the candidate speed-ups (fused membrane tap, fused streams, fast CPU LIF), as copies.
"""
