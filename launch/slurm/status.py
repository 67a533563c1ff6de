"""Slurm job state that never depends on accounting, and `crosscity status RUN_DIR`.

submitit and friends read state only through `sacct`; with accounting off a cancelled job stays
UNKNOWN forever. Here the controller is asked first (`scontrol show job`, which knows every job
that is pending, running or finished less than MinJobAge ago, with or without accounting), and
`sacct` only for jobs the controller has already forgotten. Every command has a timeout, so a
dead daemon gives "UNKNOWN", never a hang.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from crosscity.launch.slurm.history import city_histories, describe, read_events

JOBS_FILE = "slurm/jobs.json"  # written by submit/sweep inside the run or sweep folder
FINISHED = {  # Slurm's final job states
    "COMPLETED",
    "PREEMPTED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
}
_TOKEN = re.compile(r"(\w+)=(\S*)")
_TIMEOUT_S = 10


@dataclass(frozen=True)
class JobState:
    job_id: str  # "123" or, for an array task, "123_4"
    state: str  # Slurm's base state (PENDING, RUNNING, COMPLETED, CANCELLED, ...) or UNKNOWN
    exit_code: int | None
    restarts: int
    source: str  # scontrol | sacct | local | none

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


def _run(cmd: list[str]) -> str | None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _expand_tasks(spec: str) -> list[int]:
    """`2-5%2` / `1,3,7-8` -> task ids (the pending remainder of an array)."""
    ids: list[int] = []
    for part in spec.split("%")[0].split(","):
        lo, _, hi = part.partition("-")
        ids.extend(range(int(lo), int(hi or lo) + 1))
    return ids


def _exit_code(text: str) -> int | None:
    code, _, sig = text.partition(":")
    if not code.isdigit():
        return None
    return 128 + int(sig) if sig.isdigit() and int(sig) else int(code)


def _from_scontrol(job: str) -> list[JobState]:
    out = _run(["scontrol", "show", "job", "-o", job])
    states = []
    for line in (out or "").splitlines():
        rec = dict(_TOKEN.findall(line))
        if "JobState" not in rec:
            continue
        base = dict(state=rec["JobState"], exit_code=_exit_code(rec.get("ExitCode", "")), source="scontrol")
        restarts = int(rec.get("Restarts", "0") or 0)
        task = rec.get("ArrayTaskId", "N/A")
        if task == "N/A":
            states.append(JobState(rec["JobId"], restarts=restarts, **base))
        else:
            arr = rec["ArrayJobId"]
            states.extend(JobState(f"{arr}_{t}", restarts=restarts, **base) for t in _expand_tasks(task))
    return states


def _from_sacct(job: str) -> list[JobState]:
    out = _run(["sacct", "-n", "-X", "-P", "-j", job, "-o", "JobID,State,ExitCode"])
    states = []
    for line in (out or "").splitlines():
        parts = line.split("|")
        if len(parts) != 3:
            continue
        job_id, state, code = parts
        if "[" in job_id:  # pending remainder of an array: 123_[2-5%2]
            arr, _, spec = job_id.partition("_[")
            ids = [f"{arr}_{t}" for t in _expand_tasks(spec.rstrip("]"))]
        else:
            ids = [job_id]
        # "CANCELLED by 0" -> "CANCELLED"
        states.extend(JobState(i, state.split()[0], _exit_code(code), 0, "sacct") for i in ids)
    return states


def query_states(job_ids: Iterable[str]) -> dict[str, JobState]:
    """State of each job id ("123" or "123_4"); UNKNOWN where neither controller nor sacct knows."""
    wanted = list(dict.fromkeys(job_ids))
    found: dict[str, JobState] = {}
    for parent in dict.fromkeys(j.split("_")[0] for j in wanted):
        found.update({s.job_id: s for s in _from_scontrol(parent)})
    missing = [j for j in wanted if j not in found]
    for parent in dict.fromkeys(j.split("_")[0] for j in missing):
        found.update({s.job_id: s for s in _from_sacct(parent) if s.job_id not in found})
    return {j: found.get(j, JobState(j, "UNKNOWN", None, 0, "none")) for j in wanted}


# ---------------------------------------------------------------- crosscity status


def last_line(path: Path, max_bytes: int = 8192) -> str:
    """Last non-empty line of a (possibly large, still growing) text file; "" if none."""
    return "\n".join(tail_lines(path, 1, max_bytes))


def tail_lines(path: Path, n: int, max_bytes: int = 16384) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            text = fh.read().decode(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-n:]


def last_step(run_dir: Path, ranks: Iterable[int]) -> int | None:
    """Highest `step` in the last metrics record of the given global ranks."""
    steps = []
    for rank in ranks:
        line = last_line(run_dir / "metrics" / f"rank{rank}.jsonl")
        try:
            steps.append(int(json.loads(line)["step"]))
        except (ValueError, KeyError, TypeError):
            continue
    return max(steps) if steps else None


def load_jobs(folder: Path) -> dict:
    path = folder / JOBS_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(
            f"crosscity status: {path} not found; was {folder} submitted with crosscity submit/sweep?"
        ) from None
    except json.JSONDecodeError as exc:
        raise SystemExit(f"crosscity status: {path}: not valid JSON ({exc})") from None


def entry_states(jobs: dict) -> dict[str, JobState]:
    """Entry name -> state: a local run's recorded exit code, else the Slurm job's state."""
    slurm = query_states(e["job"] for e in jobs["entries"] if "exit_code" not in e)
    out = {}
    for e in jobs["entries"]:
        if "exit_code" in e:
            state = "COMPLETED" if e["exit_code"] == 0 else "FAILED"
            out[e["name"]] = JobState(e["job"], state, e["exit_code"], 0, "local")
        else:
            out[e["name"]] = slurm[e["job"]]
    return out


def status_rows(folder: Path) -> list[dict]:
    """One row per entry of jobs.json (a city of a run, or a point of a sweep); a run's cities also
    carry what the coordinator saw of them and what the coordinator job did (launch/slurm/history.py)."""
    jobs = load_jobs(folder)
    states = entry_states(jobs)
    city_of = {
        e["name"]: int(e["name"][4:])
        for e in jobs["entries"]
        if jobs.get("kind") == "run" and re.fullmatch(r"city\d+", e["name"])
    }
    histories = {}
    if city_of:  # one run: every entry names the same run folder
        events = read_events(Path(jobs["entries"][0]["run_dir"]))
        histories = city_histories(events, list(city_of.values()))
    rows = []
    for e in jobs["entries"]:
        st = states[e["name"]]
        run_dir = Path(e["run_dir"])
        row = {
            "name": e["name"],
            "job": e["job"],
            "state": st.state,
            "exit": "" if st.exit_code is None else st.exit_code,
            "restarts": st.restarts,
            "step": last_step(run_dir, e.get("ranks", [])),
            "last_line": last_line(Path(e["log"])),
        }
        if e["name"] in city_of:
            history, supervisor = histories[city_of[e["name"]]], e.get("supervisor", [])
            row.update(history.as_row(), supervisor=supervisor)
            row["history"] = describe(e["name"], history, supervisor)
        rows.append(row)
    return rows


def format_rows(rows: list[dict]) -> str:
    """The table (one line per entry), then a run's cities one line each: liveness, rounds, outages."""
    head = ("name", "job", "state", "exit", "restarts", "step", "last_line")
    cells = [[str("" if r[k] is None else r[k]) for k in head] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(head)]
    widths[-1] = 0
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines += [r["history"] for r in rows if r.get("history")]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """`crosscity status RUN_DIR|SWEEP_DIR [--json]`: exit 0 all completed, 1 any failed, 3 running."""
    parser = argparse.ArgumentParser(prog="crosscity status", description=main.__doc__)
    parser.add_argument("folder", type=Path, help="run folder (crosscity submit) or sweep folder")
    parser.add_argument("--json", action="store_true", help="print rows as JSON")
    args = parser.parse_args(argv)
    rows = status_rows(args.folder)
    print(json.dumps(rows, indent=1) if args.json else format_rows(rows))
    states = {r["state"] for r in rows}
    if states <= {"COMPLETED"}:
        return 0
    if states & (FINISHED - {"COMPLETED"}):
        return 1
    return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
