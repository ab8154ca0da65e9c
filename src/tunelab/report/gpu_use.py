"""The report's GPU utilization section from the job's NVML samples; runs below LOW_UTILIZATION_PCT are flagged. No
samples: no section."""

from __future__ import annotations

from tunelab.report.data import ReportData
from tunelab.report.document import Para, Section, Table
from tunelab.rundir.gpu import LOW_UTILIZATION_PCT, utilization
from tunelab.rundir.layout import SAMPLES_FILE


def gpu_section(data: ReportData) -> Section | None:
    rows, low = [], []
    for r in data.runs:
        u = utilization(r.run_dir)
        if u is None:
            continue
        flag = u.mean_pct < LOW_UTILIZATION_PCT
        if flag:
            low.append(f"{r.name} ({u.mean_pct:.0f} %)")
        rows.append([r.name, str(u.samples), f"{u.mean_pct:.0f} %", f"{u.min_pct:.0f}–{u.max_pct:.0f} %",
                     f"{u.mean_power_w:.0f} W" if u.mean_power_w is not None else "—", f"{u.max_mem_used_gib:.1f}",
                     f"**below {LOW_UTILIZATION_PCT:.0f} %**" if flag else "ok"])
    if not rows:
        return None
    blocks: list = [Table(["Run", "Samples", "Mean util", "Min–max util", "Mean power", "Max mem used (GiB)", ""],
                          rows, f"NVML samples every few seconds while training (`runs/<run>/{SAMPLES_FILE}`), over "
                          "all the run's GPUs; utilization = share of time a kernel ran.")]
    if low:
        blocks.append(Para("GPU mostly idle (mean utilization below "
                           f"{LOW_UTILIZATION_PCT:.0f} %): {', '.join(low)} — data loading, small micro-batches or "
                           "start-up dominate; a larger micro-batch, packing, or several runs per GPU "
                           "(`resources.runs_per_gpu`) would use it better."))
    return Section("GPU utilization", blocks)
