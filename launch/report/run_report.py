"""`crosscity report RUN_DIR`: report.md and plots/*.png from a finished or still-running run.

Reads only what a run writes (config.yaml, metrics/rank*.jsonl, summary.json when present), so it
can be pointed at a run while it trains. Each plot answers one question: is the loss falling in
every city, does the model beat persistence, where does a step's time go, is the hardware busy, how
many bytes crossed the WAN. The launcher writes it once the ranks finished (report_after_run).
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import math
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from crosscity.config import ConfigError, load_config
from crosscity.core.atomic_io import atomic_write, atomic_write_text
from crosscity.launch.report.summary import write_summary
from crosscity.train.observe.metrics_log import read_records
from crosscity.train.observe.straggler import StragglerDetector, peer_ratios

PHASES = (
    ("t_data", "data wait"),
    ("t_compute", "compute"),
    ("t_lan", "LAN all-reduce"),
    ("t_wan", "WAN sync"),
)
SMOOTH = 5  # logged steps in the loss curve's trailing mean
Records = list[dict[str, Any]]


class ReportError(ValueError):
    """A run-directory file exists but cannot be read."""


# ---------------------------------------------------------------- reading the run directory


def _read_structured(path: Path, load: Callable[[str], Any]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = load(path.read_text())
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: cannot parse ({exc})") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


class Run:
    """Everything the report needs from one run directory, grouped by record kind."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir
        self.config = _read_structured(run_dir / "config.yaml", yaml.safe_load) or {}
        self.summary = _read_structured(run_dir / "summary.json", json.loads)
        self.by_kind: dict[str, Records] = defaultdict(list)
        for record in read_records(run_dir):
            self.by_kind[record.get("kind", "")].append(record)
        self.events = self.by_kind["event"]
        times = [r["time"] for rs in self.by_kind.values() for r in rs if "time" in r]
        self.t0 = min(times, default=time.time())
        self.t_last = max(times, default=self.t0)
        self.city_names: dict[int, str] = {}
        for r in self.by_kind["eval"]:
            if "city_name" in r:
                self.city_names[r["city"]] = r["city_name"]
        for c in (self.summary or {}).get("cities", []):
            if isinstance(c, dict) and "city" in c and "name" in c:
                self.city_names[c["city"]] = c["name"]

    def cities(self) -> list[int]:
        return sorted({r["city"] for rs in self.by_kind.values() for r in rs if "city" in r})

    def label(self, city: int) -> str:
        name = self.city_names.get(city)
        return f"city {city} ({name})" if name else f"city {city}"

    def of_city(self, kind: str, city: int) -> Records:
        return [r for r in self.by_kind[kind] if r.get("city") == city]

    def cfg(self, section: str, key: str, default: Any = None) -> Any:
        return (self.config.get(section) or {}).get(key, default)


# ---------------------------------------------------------------- numbers


def _mean(values: Iterable[float]) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(values) if values else math.nan


def _max(values: Iterable[Any]) -> Any:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _rolling_mean(values: list[float], window: int) -> list[float]:
    """Trailing mean over up to `window` values, so noisy per-step losses show their trend."""
    return [statistics.fmean(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))]


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        # counts that arrive as floats (pooled n_windows) read better without decimals
        return f"{value:,.0f}" if value.is_integer() and abs(value) >= 1000 else f"{value:,.{digits}f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _latest_eval(run: Run, city: int) -> dict[str, Any] | None:
    evals = [r for r in run.of_city("eval", city) if r.get("split", "val") == "val"]
    return max(evals, key=lambda r: (r["step"], r["time"]), default=None)


def step_breakdown(run: Run, city: int) -> dict[str, float]:
    """Mean seconds per logged step of each phase (+ `other` = t_step minus the phases)."""
    train = run.of_city("train", city)
    out = {key: _mean(r.get(key, 0.0) for r in train) for key, _ in PHASES}
    out["t_step"] = _mean(r.get("t_step") for r in train)
    out["other"] = max(0.0, out["t_step"] - sum(out[k] for k, _ in PHASES)) if train else math.nan
    return out


def _busy_by_step(run: Run, city: int) -> dict[int, dict[int, float]]:
    """step -> local rank -> busy seconds (data + compute) of that logged step."""
    by_step: dict[int, dict[int, float]] = defaultdict(dict)
    for r in run.of_city("train", city):
        by_step[r["step"]][r["local_rank"]] = r.get("t_data", 0.0) + r.get("t_compute", 0.0)
    return by_step


def straggler_findings(run: Run) -> list[dict[str, Any]]:
    """Straggler episodes found afterwards in each rank's busy time.

    A logged record is ONE step's time, and records are train.log_every steps apart, so noise
    is not averaged out: an episode here needs monitor.straggler_steps consecutive *logged*
    records above the factor (a stricter rule than the live one, which sees every step).
    """
    factor = float(run.cfg("monitor", "straggler_factor", 2.0))
    checks = int(run.cfg("monitor", "straggler_steps", 20))
    found = []
    for city in run.cities():
        det = StragglerDetector(factor, checks)
        by_step = _busy_by_step(run, city)
        for step in sorted(by_step):
            found.extend({**event, "city": city} for event in det.update(step, by_step[step]))
    return found


def busy_ratio_rows(run: Run) -> list[list[Any]]:
    """Per rank: median busy-time ratio to its city peers and the share of checks above the factor."""
    factor = float(run.cfg("monitor", "straggler_factor", 2.0))
    rows = []
    for city in run.cities():
        ratios: dict[int, list[float]] = defaultdict(list)
        for times in _busy_by_step(run, city).values():
            for rank, (ratio, _) in peer_ratios(times).items():
                ratios[rank].append(ratio)
        for rank, rs in sorted(ratios.items()):
            above = 100 * sum(r > factor for r in rs) / len(rs)
            rows.append([run.label(city), rank, len(rs), statistics.median(rs), max(rs), above])
    return rows


# ---------------------------------------------------------------- plots


class Plots:
    """One PNG per question under RUN_DIR/plots, written atomically."""

    def __init__(self, run: Run) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.plt = plt
        self.run = run
        self.written: list[tuple[str, Path]] = []

    def _save(self, fig: Any, name: str, title: str) -> None:
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        self.plt.close(fig)
        path = self.run.dir / "plots" / name
        atomic_write(path, lambda fh: fh.write(buf.getvalue()))
        self.written.append((title, path))

    def _axes(self, title: str, xlabel: str, ylabel: str) -> tuple[Any, Any]:
        fig, ax = self.plt.subplots(figsize=(8, 4.5))
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        return fig, ax

    def loss(self) -> None:
        run = self.run
        if not run.by_kind["train"]:
            return
        title = "Is training loss falling in every city?"
        fig, ax = self._axes(title, "inner step", "training loss (MSE, normalised)")
        losses = [r["loss"] for r in run.by_kind["train"]]
        for city in run.cities():
            per_step: dict[int, list[float]] = defaultdict(list)
            for r in run.of_city("train", city):
                per_step[r["step"]].append(r["loss"])
            steps = sorted(per_step)
            if not steps:
                continue
            ys = [_mean(per_step[s]) for s in steps]
            (raw,) = ax.plot(steps, ys, lw=0.8, alpha=0.35)
            ax.plot(steps, _rolling_mean(ys, SMOOTH), color=raw.get_color(), lw=2, label=run.label(city))
        if min(losses) > 0 and max(losses) / min(losses) > 20:
            ax.set_yscale("log")
        ax.legend(title=f"mean of {SMOOTH} logged steps (faint: raw)")
        self._save(fig, "loss.png", "Training loss per city (mean over the city's ranks)")

    def validation(self) -> None:
        run = self.run
        latest = [(city, _latest_eval(run, city)) for city in run.cities()]
        latest = [(c, e) for c, e in latest if e is not None]
        if not latest:
            return
        title = "Does the model beat persistence? (latest validation)"
        fig, ax = self._axes(title, "city", "validation RMSE of the forecast (µg/m³)")
        x = range(len(latest))
        bars = ax.bar([i - 0.2 for i in x], [e["rmse"] for _, e in latest], 0.4, label="model")
        ax.bar(
            [i + 0.2 for i in x],
            [e.get("persistence_rmse", math.nan) for _, e in latest],
            0.4,
            label="persistence",
        )
        ax.bar_label(bars, labels=[f"step {e['step']}" for _, e in latest], fontsize=8)
        ax.set_xticks(list(x), [run.label(c) for c, _ in latest], rotation=15)
        ax.legend()
        self._save(fig, "val_rmse.png", title)

    def step_time(self) -> None:
        run = self.run
        cities = [c for c in run.cities() if run.of_city("train", c)]
        if not cities:
            return
        title = "Where does a step's time go? (mean per logged step)"
        fig, ax = self._axes(title, "city", "time per step (ms)")
        parts = {c: step_breakdown(run, c) for c in cities}
        bottom = [0.0] * len(cities)
        for key, name in [*PHASES, ("other", "other")]:
            heights = [1000 * parts[c][key] for c in cities]
            ax.bar(range(len(cities)), heights, 0.6, bottom=bottom, label=name)
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        ax.bar_label(ax.containers[-1], labels=[f"{b:.0f} ms" for b in bottom])
        ax.margins(y=0.12)
        ax.set_xticks(range(len(cities)), [run.label(c) for c in cities], rotation=15)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        self._save(fig, "step_time.png", title)

    def _series(self, kind: str, key: str, name: str, title: str, ylabel: str, limit_key: str = "") -> None:
        """One line per (rank, device) over wall time since the run started."""
        run = self.run
        rows: dict[tuple[int, Any], list[tuple[float, float, float]]] = defaultdict(list)
        for r in run.by_kind[kind]:
            if key in r:
                rows[(r["global_rank"], r.get("gpu"))].append((r["time"], r[key], r.get(limit_key, math.nan)))
        if not rows:
            return
        fig, ax = self._axes(title, "time since the run started (min)", ylabel)
        for (rank, gpu), pts in sorted(rows.items()):
            pts.sort()
            label = f"rank {rank}" + (f" GPU {gpu}" if gpu is not None else "")
            minutes = [(t - run.t0) / 60 for t, _, _ in pts]
            (line,) = ax.plot(minutes, [v for _, v, _ in pts], label=label)
            if limit_key and any(math.isfinite(lim) for _, _, lim in pts):
                ax.plot(minutes, [lim for _, _, lim in pts], ls="--", color=line.get_color(), lw=0.8)
        ax.legend(fontsize=8, ncol=2)
        self._save(fig, name, title)

    def devices(self) -> None:
        self._series("gpu", "util_gpu_pct", "gpu_util.png", "Are the GPUs busy?", "GPU utilization (%)")
        self._series(
            "gpu",
            "power_w",
            "gpu_power.png",
            "GPU power draw (dashed: enforced limit)",
            "power (W)",
            "power_limit_w",
        )
        self._series(
            "host", "cpu_pct", "host_cpu.png", "CPU used by each rank", "process CPU (% of one core)"
        )
        self._series("host", "rss_mib", "host_rss.png", "Memory held by each rank", "resident memory (MiB)")

    def wan_bytes(self) -> None:
        run = self.run
        if not run.by_kind["wan"]:
            return
        title = "How many bytes crossed the WAN?"
        fig, ax = self._axes(title, "inner step", "cumulative WAN bytes sent (MB)")
        series = [(run.label(c), run.of_city("wan", c)) for c in run.cities()]
        series.append(("all cities", run.by_kind["wan"]))
        for k, (label, records) in enumerate(s for s in series if s[1]):
            rows = sorted((r["step"], r.get("bytes_sent", 0)) for r in records)
            ys = list(itertools.accumulate(sent / 1e6 for _, sent in rows))
            total = label == "all cities"
            style = (
                {"color": "black", "lw": 2.5} if total else {"ls": ("-", "--", "-.", ":")[k % 4], "lw": 1.5}
            )
            ax.step([s for s, _ in rows], ys, where="post", label=label, **style)
        ax.legend()
        self._save(fig, "wan_bytes.png", title)


# ---------------------------------------------------------------- markdown


def _section_setup(run: Run) -> str:
    status = (
        "finished (summary.json present)"
        if run.summary is not None
        else f"running or stopped early: no summary.json; last record {time.time() - run.t_last:,.0f} s ago"
    )
    c = run.cfg
    lines = [
        f"- status: {status}",
        f"- records: {sum(len(v) for v in run.by_kind.values()):,} from {len(run.cities())} cities, "
        f"{(run.t_last - run.t0) / 60:.1f} min of wall time",
        f"- topology: {c('topology', 'cities', '?')} cities x {c('topology', 'ranks_per_city', '?')} ranks; "
        f"model {c('model', 'kind', '?')} hidden {c('model', 'hidden', '?')}; "
        f"steps {c('train', 'steps', '?')}, batch {c('data', 'batch_size', '?')}/rank",
        f"- WAN: algorithm {c('wan', 'algorithm', '?')}, sync every {c('wan', 'sync_every', '?')} steps, "
        f"codec {c('wan', 'codec', '?')}",
        "- security: **INSECURE: plaintext between cities and coordinator, no identities "
        "(security.insecure=true)**"
        if c("security", "insecure", False)
        else "- security: mutual TLS 1.3 with per-city certificates; audit trail: "
        + (
            "[audit.jsonl](audit.jsonl) (`crosscity audit` verifies it)"
            if (run.dir / "audit.jsonl").is_file()
            else "none yet"
        ),
    ]
    return "## Run\n" + "\n".join(lines)


def _section_progress(run: Run) -> str:
    rows = []
    for city in run.cities():
        train = run.of_city("train", city)
        if not train:
            continue
        last_step = max(r["step"] for r in train)
        last = [r for r in train if r["step"] == last_step]
        samples = sum(
            max((r["samples"] for r in train if r["local_rank"] == k), default=0)
            for k in {r["local_rank"] for r in train}
        )
        rate = sum(
            _mean(r["samples_per_s"] for r in train if r["local_rank"] == k)
            for k in {r["local_rank"] for r in train}
        )
        rows.append([run.label(city), last_step, samples, _mean(r["loss"] for r in last), rate])
    if not rows:
        return "## Progress\nNo training records yet."
    return "## Progress\n" + _table(["city", "last step", "samples", "last loss", "samples/s (city)"], rows)


def _section_validation(run: Run) -> str:
    rows = []
    for city in run.cities():
        e = _latest_eval(run, city)
        if e is None:
            continue
        p = e.get("persistence_rmse", math.nan)
        skill = 100 * (1 - e["rmse"] / p) if p else math.nan
        rest = (e.get(k) for k in ("mae", "persistence_mae", "n_windows"))
        rows.append([run.label(city), e["step"], e["rmse"], p, skill, *rest])
    if not rows:
        return "## Validation\nNo validation records yet."
    head = ["city", "step", "RMSE (µg/m³)", "persistence RMSE", "skill vs persistence (%)"]
    text = "## Validation (latest per city)\n" + _table([*head, "MAE", "persistence MAE", "windows"], rows)
    overall = (run.summary or {}).get("overall")
    if isinstance(overall, dict) and overall:
        text += "\n\nFinal, pooled over cities (summary.json): " + ", ".join(
            f"{k} {_fmt(v)}" for k, v in overall.items()
        )
    text += _final_model_note(run.summary or {})
    return text


def _final_model_note(summary: dict[str, Any]) -> str:
    """Which step's model final/model.pt holds, and the RMSE on hours new since the init_from run."""
    chosen = summary.get("final_model")
    if not isinstance(chosen, dict):
        return ""
    how = "lowest pooled validation RMSE" if chosen.get("selected_by") == "best" else "the last step"
    text = f"\n\nfinal/model.pt: the model of step {chosen.get('step')} ({how}; training ran to step "
    text += f"{chosen.get('last_step')}{', stopped early' if chosen.get('stopped_early') else ''})."
    new = summary.get("new_hours")
    if chosen.get("init_from") and isinstance(new, dict):
        before, after = new["before"], new["after"]
        text += (
            f" Started from {chosen['init_from']}; on the test windows after its data "
            f"({_fmt(after['n_windows'])} windows): RMSE {_fmt(before['rmse'])} before, "
            f"{_fmt(after['rmse'])} after (persistence {_fmt(after['persistence_rmse'])})."
        )
    return text


def _section_time(run: Run) -> str:
    rows = []
    for city in run.cities():
        if not run.of_city("train", city):
            continue
        b = step_breakdown(run, city)
        comm = 100 * (b["t_lan"] + b["t_wan"]) / b["t_step"] if b["t_step"] else math.nan
        rows.append(
            [run.label(city), *(1000 * b[k] for k, _ in PHASES), 1000 * b["other"], 1000 * b["t_step"], comm]
        )
    if not rows:
        return "## Where the time goes\nNo training records yet."
    head = ["city", *(f"{name} (ms)" for _, name in PHASES), "other (ms)", "step (ms)", "communication (%)"]
    return "## Where the time goes (mean per logged step)\n" + _table(head, rows)


def _section_wan(run: Run) -> str:
    wan = run.by_kind["wan"]
    if not wan:
        return "## WAN\nNo inter-city rounds recorded."
    sent, recv = sum(r.get("bytes_sent", 0) for r in wan), sum(r.get("bytes_recv", 0) for r in wan)
    rounds = len({(r.get("round"), r.get("fragment")) for r in wan})
    codecs = sorted({str(r.get("codec")) for r in wan})
    return (
        "## WAN\n"
        f"- rounds: {rounds:,}; codec: {', '.join(codecs)}\n"
        f"- bytes sent {sent / 1e6:,.2f} MB, received {recv / 1e6:,.2f} MB (all ranks)\n"
        f"- mean seconds per round and rank: {_mean(r.get('seconds') for r in wan):.3f}"
        + _overlap_hint(run, wan)
    )


def _overlap_hint(run: Run, wan: Records) -> str:
    """Streaming hides an exchange only if tau steps outlast it; say so when merges had to wait."""
    merges = [r for r in wan if "blocked_s" in r]
    if not merges:
        return ""
    step_s = _mean(r["t_step"] for r in run.by_kind["train"] if "t_step" in r)
    exchange_s = _mean(r["seconds"] for r in merges)
    blocked = [r["blocked_s"] for r in merges if r["blocked_s"] > 0.1 * step_s]
    line = (
        f"\n- streaming: exchanges take {exchange_s:.3f} s on average (~{exchange_s / step_s:.1f} steps of "
        f"{1000 * step_s:.0f} ms); {len(blocked)} of {len(merges)} merges (all ranks) waited, "
        f"{sum(blocked):.2f} s in all"
    )
    tau = merges[0].get("overlap_steps", 0)
    if blocked and exchange_s > tau * step_s:
        line += f"; raise wan.overlap_steps (now {tau}) to >= {math.ceil(exchange_s / step_s)} to hide them"
    return line


def _section_devices(run: Run) -> str:
    parts = ["## Devices"]
    by_dev: dict[tuple[int, Any], Records] = defaultdict(list)
    for r in run.by_kind["gpu"]:
        by_dev[(r["global_rank"], r.get("uuid"))].append(r)
    if by_dev:
        rows = []
        for (rank, _), rs in sorted(by_dev.items()):
            energy = [r["energy_j"] for r in rs if "energy_j" in r]
            reasons = sorted({n for r in rs for n in r.get("throttle", []) if n != "gpu_idle"})
            rows.append(
                [
                    rank,
                    f"{rs[0].get('gpu')} {rs[0].get('name', '')}",
                    len(rs),
                    _mean(r.get("util_gpu_pct") for r in rs),
                    _max(r.get("mem_used_mib") for r in rs),
                    _mean(r.get("power_w") for r in rs),
                    _mean(r.get("power_pct") for r in rs),
                    _max(r.get("temp_c") for r in rs),
                    (energy[-1] - energy[0]) / 3600 if len(energy) > 1 else None,
                    ", ".join(reasons) or "none",
                    _max(r.get("ecc_uncorrected") for r in rs),
                    _max(r.get("xid_count") for r in rs),
                ]
            )
        head = [
            "rank",
            "GPU",
            "samples",
            "util (%)",
            "max mem (MiB)",
            "power (W)",
            "power (% limit)",
            "max temp (°C)",
            "energy (Wh)",
            "throttle reasons seen",
            "uncorrected ECC",
            "XIDs",
        ]
        parts.append(_table(head, rows))
    else:
        parts.append("No GPU samples (CPU run, or NVML unavailable).")
    host = run.by_kind["host"]
    if host:
        rows = []
        for rank in sorted({r["global_rank"] for r in host}):
            rs = [r for r in host if r["global_rank"] == rank]
            rows.append(
                [
                    rank,
                    len(rs),
                    _mean(r.get("cpu_pct") for r in rs),
                    _max(r.get("rss_mib") for r in rs),
                    _mean(r.get("load1") for r in rs),
                ]
            )
        parts.append(
            _table(["rank", "host samples", "CPU (% of a core)", "max RSS (MiB)", "load (1 min)"], rows)
        )
    return "\n\n".join(parts)


def _section_events(run: Run) -> str:
    factor = float(run.cfg("monitor", "straggler_factor", 2.0))
    lines = ["## Stragglers and events"]
    rows = busy_ratio_rows(run)
    if rows:
        lines.append(
            "Busy time (data + compute, before the all-reduce) of each rank relative to the median of "
            "the other ranks of its city, per logged step; a persistent straggler has a median well above 1."
        )
        head = ["city", "local rank", "checks", "median ratio", "max ratio", f"checks > {factor:g}x (%)"]
        lines.append("\n" + _table(head, rows) + "\n")
    found = straggler_findings(run)
    if found:
        lines.append("Straggler episodes found in the metrics:")
        lines += [f"- {run.label(e['city'])}: {e['message']}" for e in found]
    else:
        checks = run.cfg("monitor", "straggler_steps", 20)
        lines.append(
            f"No straggler episode: no rank stayed above {factor:g}x its peers for {checks} logged steps."
        )
    if run.events:
        lines.append("\nEvents recorded during the run (last 20):")
        for e in sorted(run.events, key=lambda e: e.get("time", 0))[-20:]:
            where = f"city {e.get('city', '?')} rank {e.get('local_rank', '?')}"
            lines.append(f"- {_fmt(e.get('step'))} {where}: {e.get('event', '?')}: {e.get('message', '')}")
    return "\n".join(lines)


def write_report(run_dir: Path) -> tuple[Path, list[Path]]:
    """Write RUN_DIR/report.md and RUN_DIR/plots/*.png; return their paths."""
    run = Run(Path(run_dir))
    plots = Plots(run)
    for draw in (plots.loss, plots.validation, plots.step_time, plots.devices, plots.wan_bytes):
        draw()
    sections = [
        f"# Run report: {run.dir.name}\n\nGenerated {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())} "
        "by `crosscity report`.",
        _section_setup(run),
        _section_progress(run),
        _section_validation(run),
        _section_time(run),
        _section_wan(run),
        _section_devices(run),
        _section_events(run),
        "## Plots\n" + "\n\n".join(f"### {title}\n![{title}](plots/{p.name})" for title, p in plots.written),
    ]
    path = run.dir / "report.md"
    atomic_write_text(path, "\n\n".join(sections) + "\n")
    return path, [p for _, p in plots.written]


def report_after_run(run_dir: Path) -> None:
    """The launcher's last step once the ranks finished: a report that fails is a warning line on
    stderr, never a failed run (the model and summary.json are already written)."""
    try:
        write_report(run_dir)
    except Exception as exc:  # a plot, a full disk, an odd record: the run's result stands regardless
        print(
            f"[warning] the run finished but its report was not written ({type(exc).__name__}: {exc}); "
            f"retry with `crosscity report {run_dir}`",
            file=sys.stderr,
            flush=True,
        )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="crosscity report",
        description="Write RUN_DIR/report.md and RUN_DIR/plots/*.png (works while the run is still going).",
    )
    parser.add_argument("run_dir", type=Path, help="run directory (holds config.yaml and metrics/)")
    args = parser.parse_args(argv)
    run_dir: Path = args.run_dir
    if not (run_dir / "metrics").is_dir() and not (run_dir / "config.yaml").is_file():
        print(
            f"crosscity report: {run_dir} has neither metrics/ nor config.yaml: not a run directory",
            file=sys.stderr,
        )
        return 2
    try:
        if not (run_dir / "summary.json").is_file() and any((run_dir / "final").glob("city*.json")):
            write_summary(run_dir, load_config(run_dir / "config.yaml"))  # on Slurm nobody else pools them
        path, pngs = write_report(run_dir)
    except (ReportError, ConfigError) as exc:
        print(f"crosscity report: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} and {len(pngs)} plots in {run_dir / 'plots'}")
    return 0
