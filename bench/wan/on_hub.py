"""Run the local launcher on the emulated WAN's hub: `python -m crosscity.bench.wan.on_hub SPEC`.

Why a process of its own: the launcher starts the run's coordinator (or hosts the baselines'
store) next to itself, so to put the coordinator on the hub - one more site behind a WAN link,
delayed and counted like a city - the launcher must run in the hub's network namespace, while
the benchmark itself stays in the host namespace (iptables counters, faults on the cities'
links). The cities still run in their own namespaces through the prefixes in SPEC. Ends with the
launcher's exit code, after writing RUN_DIR/summary.json as `crosscity run` does.

SPEC (JSON): {"netns", "run_dir", "store_host", "prefixes": [per city argv], "env": {...}}.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from crosscity.bench.wan.emulator import WanEmulator, enter_netns

LOG = "launcher.log"  # under RUN_DIR/logs


@dataclass
class HubSpec:
    netns: str
    run_dir: str
    store_host: str
    prefixes: list[list[str]]
    env: dict[str, str] = field(default_factory=dict)


def start_on_hub(
    wan: WanEmulator, run_dir: Path, prefixes: list[list[str]], env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """The launcher of RUN_DIR (its config.yaml written) on the hub; output in RUN_DIR/logs/launcher.log."""
    spec = HubSpec(wan.hub_netns, str(run_dir), wan.coordinator_addr, prefixes, env)
    log_path = Path(run_dir) / "logs" / LOG
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "crosscity.bench.wan.on_hub", json.dumps(asdict(spec))],
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def main(argv: list[str] | None = None) -> int:
    from crosscity.config import load_config
    from crosscity.launch.local.launcher import LocalLauncher
    from crosscity.launch.report.summary import write_summary

    spec = HubSpec(**json.loads((argv or sys.argv[1:])[0]))
    enter_netns(spec.netns)
    run_dir = Path(spec.run_dir)
    cfg = load_config(run_dir / "config.yaml")
    launcher = LocalLauncher(
        run_dir,
        cfg,
        store_host=spec.store_host,
        city_prefix=lambda c: spec.prefixes[c],
        city_env=lambda c: spec.env,
        echo=False,
    )
    code = launcher.run()
    write_summary(run_dir, cfg)
    return code


if __name__ == "__main__":
    sys.exit(main())
