"""``bsp-dali bench``: throughput of the pipeline against what users would otherwise write, and
against what the hardware can decode.

* ``data``: the generated Kinetics-like H.264 (or a user's indexed folder) and its decode cost;
* ``rows``: one function per row (pipeline, baseline, decode ceilings, kernel, training step);
* ``run``: settings, the grid, the goals of the open performance issues;
* ``report``: JSON, Markdown and the plot; ``machine``: what it ran on.

Every loader row is timed by :func:`bsp_dali.measure.steady_rate`; the training step by
:class:`bsp_dali.measure.LoopTimer`, the accounting of ``bsp-dali train``.
"""

from .data import QUICK_DATA, BenchDataSpec, bench_data, describe_data, textured_frames, user_data
from .machine import cpu_model, describe_machine
from .report import markdown, plot, write_results
from .rows import (bench_baseline, bench_cpu_ceiling, bench_gpu_ceiling, bench_kernel, bench_pipeline,
                   bench_train_step, decode_cost, plan_counts, stage_profile)
from .run import GOALS, BenchSettings, Goal, attach_ceilings, check_sane, evaluate_goals, run_bench

__all__ = ["GOALS", "QUICK_DATA", "BenchDataSpec", "BenchSettings", "Goal", "attach_ceilings", "bench_baseline",
           "bench_cpu_ceiling", "bench_data", "bench_gpu_ceiling", "bench_kernel", "bench_pipeline",
           "bench_train_step", "check_sane", "cpu_model", "decode_cost", "describe_data", "describe_machine",
           "evaluate_goals", "markdown", "plan_counts", "plot", "run_bench", "stage_profile", "textured_frames",
           "user_data", "write_results"]
