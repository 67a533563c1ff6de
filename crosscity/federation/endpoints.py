"""Which TLS identity a process of the run speaks with, and which city a certificate may speak for.

Secure by default: with `security.certs` empty the launcher makes a fresh CA and identities for the
run in RUN_DIR/certs (`run_certs`); a real multi-site run points `security.certs` at each site's
exported kit (`crosscity certs export`: the CA, the revocation list and that site's own key only).
`security.insecure=true` is plaintext, and every log line and report says so.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from crosscity.config import Config
from crosscity.federation import certs, tls
from crosscity.federation.transport import TlsEndpoint

RUN_CERTS = "certs"  # RUN_DIR/certs: the run's own CA when security.certs is empty
INSECURE_WARNING = (
    "[security] INSECURE: security.insecure=true - cities and coordinator talk in plaintext, without "
    "identities; anyone on the path can read and inject updates (docs/security.md)"
)


def certs_dir(cfg: Config, run_dir: Path) -> Path:
    return Path(cfg.security.certs) if cfg.security.certs else Path(run_dir) / RUN_CERTS


def run_certs(cfg: Config, run_dir: Path, names: Sequence[str], hosts: Sequence[str]) -> Path | None:
    """The run's own CA and identities, made by the coordinator at its first start (locally and on
    Slurm alike; the cities read them from the shared run directory), kept on resume."""
    if cfg.security.insecure or cfg.security.certs:
        return None
    folder = certs_dir(cfg, run_dir)
    hosts = list(dict.fromkeys([*hosts, *certs.LOCAL_HOSTS]))
    if not (folder / certs.CA_CERT).is_file():
        certs.init(folder, list(names), hosts, days=30)
    else:
        certs.cover_hosts(folder, hosts, days=30)
    return folder


def coordinator_endpoint(cfg: Config, run_dir: Path) -> TlsEndpoint | None:
    if cfg.security.insecure:
        return None
    kit = certs.load_kit(certs_dir(cfg, run_dir), certs.COORDINATOR)
    return TlsEndpoint(tls.server_context(kit), tls.peer_identity)


def city_endpoint(cfg: Config, run_dir: Path, city_name: str) -> TlsEndpoint | None:
    if cfg.security.insecure:
        return None
    kit = certs.load_kit(certs_dir(cfg, run_dir), certs.CITY, city_name)
    return TlsEndpoint(tls.client_context(kit), tls.coordinator_peer)


def city_names(cfg: Config, run_dir: Path) -> list[str] | None:
    """City index -> name, as the launcher resolved it (RUN_DIR/dataset.json, in topology order), else
    data.cities: what a certificate's name must match. None when neither says."""
    record = Path(run_dir) / "dataset.json"
    if record.is_file():
        return list(json.loads(record.read_text())["cities"])
    return list(cfg.data.cities) or None
