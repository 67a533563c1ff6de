"""Run a coordinator: serve cities until every one of them finished, or until told to stop.

Its address goes into RUN_DIR/coordinator.json (written atomically once it listens), which is where
the cities look for it - also after a restart on another port or node.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from crosscity.config import load_config
from crosscity.core.atomic_io import atomic_write_text
from crosscity.federation.coordinator import TICK_S, Coordinator
from crosscity.federation.endpoints import INSECURE_WARNING, coordinator_endpoint, run_certs
from crosscity.federation.tls import Peer as Identity
from crosscity.federation.tls import TlsContext
from crosscity.federation.transport import Server, TlsEndpoint

COORDINATOR_FILE = "coordinator.json"


def read_address(run_dir: Path) -> tuple[str, int]:
    """(host, port) from RUN_DIR/coordinator.json; OSError while there is none (cities retry)."""
    path = Path(run_dir) / COORDINATOR_FILE
    try:
        info = json.loads(path.read_text())
        return str(info["host"]), int(info["port"])
    except (ValueError, KeyError, TypeError) as exc:
        raise OSError(f"{path}: not a coordinator address ({exc})") from None


def _drop_revoked(server: Server, endpoint: TlsEndpoint, coordinator: Coordinator) -> None:
    """A `crosscity certs revoke` takes effect within a tick, not at the city's next reconnect: its
    live connections are closed and it leaves the run (new handshakes check the CRL themselves)."""
    if not isinstance(endpoint.context, TlsContext):
        return
    try:
        serials = endpoint.context.revoked_serials_if_changed()
    except (OSError, ValueError) as exc:  # mid-rewrite or broken: new handshakes fail closed meanwhile
        print(f"[coordinator] revocation list unreadable ({exc}); retrying", flush=True)
        return
    if not serials:
        return
    dropped = server.close_where(lambda p: isinstance(p.identity, Identity) and p.identity.serial in serials)
    for who in {p.identity.name: p.identity for p in dropped if isinstance(p.identity, Identity)}.values():
        print(f"[coordinator] {who.role} {who.name!r} revoked: its connections are closed", flush=True)
        coordinator.revoked(who)


def serve(
    run_dir: Path,
    host: str,
    port: int,
    advertise: str | None = None,
    tls: TlsEndpoint | None = None,
    stop: threading.Event | None = None,
    stop_run: threading.Event | None = None,
) -> int:
    """Blocks until the run finished (exit 0) or `stop` is set (exit 0: the state is on disk).
    `stop_run` set: the cities are told to checkpoint and leave after their next round."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    coordinator = Coordinator(run_dir, cfg)
    if tls is None and coordinator.names is not None:  # secure by default: the run's own CA, made once
        run_certs(cfg, run_dir, coordinator.names, [advertise or host])
    tls = tls if tls is not None else coordinator_endpoint(cfg, run_dir)
    if tls is None:
        print(INSECURE_WARNING, flush=True)
    server = Server(
        host, port, coordinator.serve_connection, coordinator.max_payload, tls, coordinator.refused_handshake
    ).start()
    info = {"host": advertise or host, "port": server.port, "pid": os.getpid(), "kind": "federation"}
    atomic_write_text(run_dir / COORDINATOR_FILE, json.dumps(info))
    print(f"[coordinator] serving {cfg.topology.cities} cities at {info['host']}:{server.port}", flush=True)
    stop = stop or threading.Event()
    try:
        while not stop.wait(TICK_S):
            if stop_run is not None and stop_run.is_set():
                coordinator.request_stop()
            coordinator.tick()
            if tls is not None:
                _drop_revoked(server, tls, coordinator)
            if coordinator.finished():
                print("[coordinator] every city finished", flush=True)
                break
    finally:
        coordinator.stopping = True
        server.stop()
        with coordinator.cond:
            coordinator.cond.notify_all()
        time.sleep(TICK_S)
        coordinator.audit.close()
    return 0
