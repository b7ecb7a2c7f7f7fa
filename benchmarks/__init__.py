"""GPU benchmarks: our engine against the reference's path, side by side in one run (`python -m benchmarks`).

A repository tool, not part of the installed `framepack` package. Modules by concern:
- `reference`: the reference's per-call transformer forward and random section inputs (also used by the tests);
- `random_models`: every component at full size (or the tiny test architecture) with random weights;
- `measure`: timing, GPU clocks, kernel split, relative L2, peak memory;
- `forward`: one transformer forward, stock against ours (bf16, FP8), CFG batching, VAE decode;
- `end_to_end`: whole generations timed per stage, the reference's loop against ours;
- `low_vram`: low-VRAM mode under memory caps against high-VRAM mode, from weights saved on disk;
- `cli`: the command line that runs them and writes the JSON report.
"""
