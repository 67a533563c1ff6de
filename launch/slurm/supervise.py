"""What the coordinator job does (slurm/coordinator.sbatch): run the coordinator service and supervise
the run's city tasks, the Slurm twin of the local launcher (launch/local/launcher.py).

    python -m crosscity.launch.slurm.supervise RUN_DIR -- crosscity coordinator RUN_DIR --host HOST

- The coordinator service (the command after `--`) is started again whenever it dies; it reloads its
  state from the run directory and the cities find its new address in RUN_DIR/coordinator.json.
- A city task that left the queue unfinished (cancelled, failed, timed out, its node died: a final
  Slurm state without RUN_DIR/final/city<C>.json) is brought back after the launchers' backoff
  (launch/restart_policy.py: at once, then 1, 2, 4 ... 30 s; here every failure of the city counts in
  one streak), at most train.max_city_restarts times per city: `scontrol requeue` of that task
  (Slurm requeues a CANCELLED or FAILED array task it still remembers: the same job id, so nothing
  moves), else a resubmission of the same script as a one-task array, whose job id replaces the old
  one in RUN_DIR/slurm/jobs.json. A city that requeues itself (preempted, EXIT_REQUEUE) is PENDING,
  never finished, so it is left alone; so is a task Slurm requeues after a node failure.
- Every bring-back (and a city given up on) is recorded in its jobs.json entry (`supervisor`), which
  `crosscity status` shows next to the coordinator's events.
- It stops once every city finished or was given up on (exit 0, or 1 naming the cities given up on).
The world-spanning baselines (flat, PyTorch's averager) are all-or-nothing: their coordinator hosts
one store for every rank; nothing is brought back, and the job ends when the store does or every
city task has left the queue.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from crosscity.config import load_config
from crosscity.config.sections import WORLD_ALGORITHMS
from crosscity.launch.restart_policy import restart_delay
from crosscity.launch.slurm.plan import write_jobs
from crosscity.launch.slurm.status import FINISHED, JOBS_FILE, JobState, query_states

KILL_GRACE_S = 10.0
UNKNOWN_GRACE_S = 30.0
_TIMEOUT_S = 30


def log(message: str) -> None:
    print(f"[supervise {time.strftime('%H:%M:%S')}] {message}", flush=True)


def read_jobs(run_dir: Path) -> dict | None:
    """RUN_DIR/slurm/jobs.json, or None while `crosscity submit` has not written it yet."""
    try:
        return json.loads((run_dir / JOBS_FILE).read_text())
    except (OSError, ValueError):
        return None


def city_of(entry: dict) -> int:
    return int(entry["name"].removeprefix("city"))


def lost(state: JobState) -> bool:
    """The task is over in Slurm's eyes (not pending, running, requeued), or has vanished from it;
    UNKNOWN is not over."""
    return state.state in FINISHED or state.state == "VANISHED"


@dataclass
class CityWatch:
    """What the supervisor knows of one city beyond jobs.json."""

    city: int
    restart_at: float | None = None  # a lost task waits out its backoff before it is brought back
    unknown_since: float | None = None  # neither the controller nor accounting knows its task
    gave_up: bool = False


class Supervisor:
    def __init__(self, run_dir: Path, command: list[str]) -> None:
        self.run_dir, self.command = run_dir, command
        cfg = load_config(run_dir / "config.yaml")
        self.world = cfg.wan.algorithm in WORLD_ALGORITHMS
        self.cities = [CityWatch(c) for c in range(cfg.topology.cities)]
        self.budget = cfg.train.max_city_restarts
        self.poll_s = min(max(cfg.wan.dead_after_s, 1.0), 10.0)  # as fast as the coordinator notices
        self.service: subprocess.Popen | None = None
        self.stopping = False

    # ------------------------------------------------------------------ the loop

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        self._start_service()
        try:
            while not self.stopping:
                if self.world:
                    if self._world_over():
                        break
                elif self._watch_cities():
                    break
                time.sleep(self.poll_s)
        finally:
            self._stop_service()
        if self.stopping:
            log("stopped by a signal; the cities are left as they are")
            return 1
        given_up = [c.city for c in self.cities if c.gave_up]
        if given_up:
            log(f"gave up on cities {', '.join(map(str, given_up))}; the others finished")
            return 1
        log("every city finished")
        return 0

    def _stop(self, signum: int, frame: object) -> None:
        self.stopping = True

    # ------------------------------------------------------------------ the coordinator service

    def _start_service(self) -> None:
        (self.run_dir / "coordinator.json").unlink(missing_ok=True)  # the cities wait for the new one
        self.service = subprocess.Popen(self.command)

    def _watch_service(self) -> None:
        """Restarted whenever it dies; exit 0 means every city told it that it finished."""
        assert self.service is not None
        code = self.service.poll()
        if code is None or code == 0:
            return
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        log(f"the coordinator exited ({how}); starting it again")
        self._start_service()

    def _stop_service(self) -> None:
        if self.service is None or self.service.poll() is not None:
            return
        self.service.terminate()  # its state is on disk after every round
        try:
            self.service.wait(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            self.service.kill()
            self.service.wait()

    def _world_over(self) -> bool:
        """The baselines: the store ended (every rank checked in), or no city task is left in the queue."""
        assert self.service is not None
        if self.service.poll() is not None:
            return True
        jobs = read_jobs(self.run_dir)
        if not jobs or len(jobs["entries"]) < len(self.cities):
            return False
        states = query_states(e["job"] for e in jobs["entries"])
        if all(lost(s) for s in states.values()):
            log("every city task has left the queue")
            return True
        return False

    # ------------------------------------------------------------------ the cities

    def finished(self, city: int) -> bool:
        return (self.run_dir / "final" / f"city{city}.json").is_file()

    def _watch_cities(self) -> bool:
        """One pass; True once every city finished or was given up on."""
        self._watch_service()
        pending = [c for c in self.cities if not c.gave_up and not self.finished(c.city)]
        if not pending:
            return True
        jobs = read_jobs(self.run_dir)  # None: submitted by hand, nothing to bring back
        entries = {city_of(e): e for e in jobs["entries"]} if jobs else {}
        states = query_states(entries[c.city]["job"] for c in pending if c.city in entries)
        now = time.monotonic()
        for watch in pending:
            entry = entries.get(watch.city)
            if entry is None:
                continue  # its array is still being submitted
            state = states[entry["job"]]
            if state.state == "UNKNOWN":
                state = self._unknown(watch, state, now)
            else:
                watch.unknown_since = None
            if not lost(state):
                watch.restart_at = None  # running, pending, requeued (by itself or by Slurm)
            elif watch.restart_at is None:
                self._lost(watch, entry, state, now)
            elif now >= watch.restart_at:
                watch.restart_at = None
                bring_back(self.run_dir, entry, state)
        return False

    def _unknown(self, watch: CityWatch, state: JobState, now: float) -> JobState:
        """A task the controller forgot (cancelled while pending, or past MinJobAge without accounting)
        is gone once the controller has answered for UNKNOWN_GRACE_S without knowing it; a controller
        that does not answer says nothing about the task."""
        if _run(["scontrol", "ping"]).returncode != 0:
            watch.unknown_since = None
            return state
        watch.unknown_since = watch.unknown_since or now
        if now - watch.unknown_since < UNKNOWN_GRACE_S:
            return state
        return JobState(state.job_id, "VANISHED", None, 0, "none")

    def _lost(self, watch: CityWatch, entry: dict, state: JobState, now: float) -> None:
        failures = len(entry.get("supervisor", [])) + 1
        what = f"city {watch.city} (task {state.job_id} {state.state}, exit code {state.exit_code})"
        if failures > self.budget:
            watch.gave_up = True
            log(f"{what} ended unfinished {failures} times, more than train.max_city_restarts={self.budget}")
            done = {"state": state.state, "exit_code": state.exit_code, "was": state.job_id}
            record(self.run_dir, entry["job"], {"action": "gave_up", **done})
            return
        delay = restart_delay(failures)
        log(f"{what} ended unfinished; bringing it back in {delay:.0f} s ({failures}/{self.budget})")
        watch.restart_at = now + delay


def bring_back(run_dir: Path, entry: dict, state: JobState) -> str:
    """Requeue the task, else resubmit its script as a one-task array; record what was done in
    jobs.json. Returns the job id the city runs as now."""
    old = entry["job"]
    done = {"state": state.state, "exit_code": state.exit_code, "was": old}
    requeue = _run(["scontrol", "requeue", old])
    if requeue.returncode == 0:
        log(f"city {city_of(entry)}: requeued {old}")
        record(run_dir, old, {"action": "requeue", "job": old, **done})
        return old
    why = (requeue.stderr or requeue.stdout).strip()
    try:
        new, moved = resubmit(entry)
    except RuntimeError as exc:
        log(f"city {city_of(entry)}: could not bring back {old}: requeue: {why}; resubmit: {exc}")
        record(run_dir, old, {"action": "failed", "reason": f"{why}; {exc}", **done})
        return old
    log(f"city {city_of(entry)}: {old} could not be requeued ({why}): resubmitted as {new}")
    record(run_dir, old, {"action": "resubmit", "job": new, "reason": why, **done}, moved)
    return new


def record(run_dir: Path, job: str, what: dict, moved: dict | None = None) -> None:
    """Append to the history of the entry running as `job` (and move it to its new job, log and
    array): re-read jobs.json, edit, write it atomically."""
    jobs = read_jobs(run_dir)
    assert jobs is not None, f"{run_dir / JOBS_FILE} disappeared"
    entry = next(e for e in jobs["entries"] if e["job"] == job)
    entry.setdefault("supervisor", []).append({"time": time.time(), **what})
    if moved:
        entry.update(moved)
        jobs["arrays"].append(moved["job"].split("_")[0])
    write_jobs(run_dir, jobs)


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    """A Slurm command with the coordinator job's own SLURM_* variables removed (a job submitted from
    inside a job would inherit them, e.g. its memory options); a timeout is a failure, never a hang."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT_S, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(cmd, 1, "", str(exc))


def _renamed(path: str, old: str, new: str) -> str:
    """A per-job file name (log, submitit pickle) of the old task, for the new one."""
    p = Path(path)
    return str(p.with_name(p.name.replace(old, new)))


def resubmit(entry: dict) -> tuple[str, dict]:
    """sbatch the entry's script again for its one task (`--array=T`: the same city, resources and
    options); submitit's pickle is copied to the new job's name while the job is held. Returns the new
    job id and the entry fields that change."""
    old = entry["job"]
    script = entry.get("script")
    if not script or not Path(script).is_file():
        raise RuntimeError(f"no script to resubmit (jobs.json names {script!r})")
    array, _, task = old.partition("_")
    pickle = entry.get("pickle")
    cmd = ["sbatch", "--parsable", *([f"--array={task}"] if task else []), *(["--hold"] if pickle else [])]
    done = _run([*cmd, script])
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} {script}: {done.stderr.strip()}")
    new_array = done.stdout.strip().split(";")[0]
    new = f"{new_array}_{task}" if task else new_array
    moved = {"job": new, "log": _renamed(entry["log"], old, new)}
    if pickle:
        moved["pickle"] = _renamed(pickle, old, new)
        shutil.copyfile(pickle, moved["pickle"])
        released = _run(["scontrol", "release", new_array])
        if released.returncode != 0:
            _run(["scancel", new_array])
            raise RuntimeError(f"scontrol release {new_array}: {released.stderr.strip()}")
    return new, moved


def main(argv: list[str]) -> int:
    """Run the coordinator service and supervise the run's city tasks until every city finished."""
    p = argparse.ArgumentParser(
        prog="python -m crosscity.launch.slurm.supervise",
        description=main.__doc__,
        epilog="example (slurm/coordinator.sbatch):\n  python -m crosscity.launch.slurm.supervise runs/x -- "
        "crosscity coordinator runs/x --host $(hostname)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- the coordinator service's command line")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("the coordinator command is missing: ... -- crosscity coordinator RUN_DIR --host HOST")
    return Supervisor(args.run_dir, command).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
