"""An emulated WAN on one host: one network namespace per city, shaped links, a fixed delay.

Why: the WAN benchmark and its CI test must run real multi-process training across real, slow
links, on one machine. Each city is a namespace `{prefix}{c}` whose `eth0` is one end of a veth
pair; the other end is a port of the bridge `{prefix}br`, which stands for the WAN hub.

- rate: a TBF qdisc on the city's uplink (`eth0` egress inside the namespace) and on its downlink
  (host end of the veth, egress towards the city). Burst 64 KiB (smaller bursts lose throughput,
  below one frame connections hang).
- delay: the kernel has no netem, so bridged packets go through iptables (br_netfilter,
  `-m physdev`) to an NFQUEUE, where `nfqueue_delay.py` holds each one `delay_ms` before accepting
  it. A packet crosses the hub once per direction: RTT between two cities = 2 x delay_ms.
- hub: the coordinator's own namespace `{prefix}hub` (`coordinator_addr`), one more bridge port
  like a city: its traffic is bridged, so it is delayed and counted like city-to-city traffic (a
  city's RTT to the coordinator equals its RTT to another city). Its link is unshaped unless
  `hub_rate_mbit` is given. `on_hub.py` runs the local launcher there (its coordinator, or the
  baselines' store, listen on the hub); the bridge's own address (`host_addr`) stays in the host
  namespace for helpers such as the link probe's rendezvous store (routed: shaped, not delayed).

Ranks of one city share the namespace, so their LAN traffic stays on loopback. gloo needs
`GLOO_SOCKET_IFNAME=eth0` in every namespace (`rank_env`). Teardown is idempotent and also runs
at start, so a crashed run's leftovers (same prefix) are removed; a lock file stops two live
emulators from sharing one prefix.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import ipaddress
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType, TracebackType

log = logging.getLogger(__name__)

DAEMON = Path(__file__).with_name("nfqueue_delay.py")
TBF_BURST = "64kb"
CLONE_NEWNET = 0x40000000
BRIDGE_NF_SYSCTL = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")


class WanEmulatorError(RuntimeError):
    """The emulated WAN could not be built (missing privilege, tool or kernel feature)."""


def _run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise WanEmulatorError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc


class WanEmulator:
    """Context manager: `with WanEmulator(cities=2, rate_mbit=50, delay_ms=20) as wan: ...`."""

    def __init__(
        self,
        cities: int,
        rate_mbit: float,
        delay_ms: float,
        *,
        prefix: str = "cc",
        subnet: str = "10.77.0.0/24",
        queue: int = 7700,
        hub_rate_mbit: float | None = None,
    ) -> None:
        net = ipaddress.ip_network(subnet)
        if not 1 <= cities < net.num_addresses - 2:
            raise ValueError(f"cities={cities}: allowed 1..{net.num_addresses - 3} for subnet {subnet}")
        if rate_mbit <= 0 or delay_ms < 0:
            raise ValueError(f"rate_mbit={rate_mbit} must be > 0 and delay_ms={delay_ms} >= 0")
        if hub_rate_mbit is not None and hub_rate_mbit <= 0:
            raise ValueError(f"hub_rate_mbit={hub_rate_mbit}: allowed > 0, or None (unshaped)")
        if not prefix.isalnum() or len(prefix) > 8:
            raise ValueError(f"prefix={prefix!r}: allowed 1-8 letters/digits (interface names are short)")
        self.cities = cities
        self.rate_mbit = rate_mbit
        self.delay_ms = delay_ms
        self.prefix = prefix
        self.queue = queue
        self.hub_rate_mbit = hub_rate_mbit
        self._net = net
        self._hosts = list(net.hosts())
        self.bridge = f"{prefix}br"
        self.chain = f"CROSSCITY-{prefix.upper()}"
        self._daemon: subprocess.Popen[str] | None = None
        self._lock_fd: int | None = None
        self._old_handlers: dict[int, object] = {}

    # ------------------------------------------------------------ addressing
    def netns(self, city: int) -> str:
        self._check_city(city)
        return f"{self.prefix}{city}"

    def addr(self, city: int) -> str:
        self._check_city(city)
        return str(self._hosts[city])

    @property
    def coordinator_addr(self) -> str:
        """The hub namespace's address: the coordinator listens here, reachable from every city."""
        return str(self._hosts[-1])

    @property
    def host_addr(self) -> str:
        """The bridge's address in the host namespace (routed to the cities: shaped, not delayed)."""
        return str(self._hosts[-2])

    @property
    def hub_netns(self) -> str:
        return f"{self.prefix}hub"

    def exec_prefix(self, city: int) -> list[str]:
        return ["ip", "netns", "exec", self.netns(city)]

    def rank_env(self) -> dict[str, str]:
        """Environment every process in a city namespace needs for gloo."""
        return {"GLOO_SOCKET_IFNAME": "eth0"}

    def _check_city(self, city: int) -> None:
        if not 0 <= city < self.cities:
            raise ValueError(f"city {city} outside 0..{self.cities - 1}")

    def _host_veth(self, city: int | str) -> str:
        return f"{self.prefix}{city}h"

    def _ports(self) -> list[tuple[int | str, str, str, float | None]]:
        """(city index or "hub", namespace, address, link rate) of every bridge port."""
        cities = [(c, self.netns(c), self.addr(c), self.rate_mbit) for c in range(self.cities)]
        return [*cities, ("hub", self.hub_netns, self.coordinator_addr, self.hub_rate_mbit)]

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> WanEmulator:
        if os.geteuid() != 0:
            raise WanEmulatorError("the WAN emulator needs root (network namespaces, tc, iptables)")
        self._acquire_lock()
        try:
            self._install_signal_handlers()
            self.teardown()
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Remove everything; safe to call more than once."""
        try:
            self.teardown()
        finally:
            self._restore_signal_handlers()
            self._release_lock()

    def _acquire_lock(self) -> None:
        path = Path(f"/run/crosscity-wan-{self.prefix}.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise WanEmulatorError(
                f"another WAN emulator with prefix {self.prefix!r} is running (pid {holder}, lock {path})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _install_signal_handlers(self) -> None:
        """SIGTERM/SIGHUP become SystemExit so `with` blocks unwind and tear the WAN down."""
        if not _in_main_thread():
            return

        def _exit(signum: int, frame: FrameType | None) -> None:
            raise SystemExit(128 + signum)

        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, _exit)

    def _restore_signal_handlers(self) -> None:
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._old_handlers.clear()

    # ------------------------------------------------------------ build
    def _build(self) -> None:
        for tool in ("ip", "tc", "iptables"):
            if _run(["which", tool], check=False).returncode != 0:
                raise WanEmulatorError(f"`{tool}` not found: apt-get install iproute2 iptables")
        _run(["ip", "link", "add", self.bridge, "type", "bridge"])
        _run(["ip", "addr", "add", f"{self.host_addr}/{self._net.prefixlen}", "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])
        for port, ns, addr, rate in self._ports():
            host_end = self._host_veth(port)
            _run(["ip", "netns", "add", ns])
            _run(["ip", "link", "add", host_end, "type", "veth", "peer", "name", f"{host_end}c"])
            _run(["ip", "link", "set", f"{host_end}c", "netns", ns, "name", "eth0"])
            _run(["ip", "link", "set", host_end, "master", self.bridge, "up"])
            inside = ["ip", "netns", "exec", ns]
            _run([*inside, "ip", "link", "set", "lo", "up"])
            _run([*inside, "ip", "addr", "add", f"{addr}/{self._net.prefixlen}", "dev", "eth0"])
            _run([*inside, "ip", "link", "set", "eth0", "up"])
            if rate is not None:
                # Queue limit = 100 ms at line rate (at least one burst): deep enough for TCP to fill it.
                limit = max(65536, int(rate * 1e6 / 8 * 0.1))
                tbf = ["tbf", "rate", f"{rate}mbit", "burst", TBF_BURST, "limit", str(limit)]
                _run([*inside, "tc", "qdisc", "replace", "dev", "eth0", "root", *tbf])
                _run(["tc", "qdisc", "replace", "dev", host_end, "root", *tbf])
        self._route_bridged_traffic()

    def _route_bridged_traffic(self) -> None:
        """One iptables rule per port (cities, hub): counts the bytes it sends into the WAN, delays them."""
        if not BRIDGE_NF_SYSCTL.exists():
            _run(["modprobe", "br_netfilter"], check=False)
        if not BRIDGE_NF_SYSCTL.exists():
            raise WanEmulatorError(f"{BRIDGE_NF_SYSCTL} missing: the kernel lacks br_netfilter")
        BRIDGE_NF_SYSCTL.write_text("1\n")
        target: list[str] = []
        if self.delay_ms > 0:
            self._start_daemon()
            target = ["-j", "NFQUEUE", "--queue-num", str(self.queue)]
        _run(["iptables", "-N", self.chain])
        for port, *_ in self._ports():
            match = ["-m", "physdev", "--physdev-is-bridged", "--physdev-in", self._host_veth(port)]
            _run(["iptables", "-A", self.chain, *match, *target])
        _run(["iptables", "-I", "FORWARD", "-j", self.chain])

    def _start_daemon(self) -> None:
        """The daemon must be listening before the rule exists: NFQUEUE with no listener drops."""
        self._daemon = subprocess.Popen(
            [sys.executable, str(DAEMON), "--queue", str(self.queue), "--delay-ms", str(self.delay_ms)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self._daemon.stdout is not None
        line = self._daemon.stdout.readline().strip()
        if line != "ready":
            self._daemon.wait(timeout=5)
            err = self._daemon.stderr.read().strip() if self._daemon.stderr else ""
            raise WanEmulatorError(f"delay daemon did not start (exit {self._daemon.returncode}): {err}")

    def set_link(self, city: int, up: bool) -> None:
        """Cut a city off the WAN (its bridge port down: nothing in or out, its ranks and their
        loopback LAN keep running) or restore it; the port keeps its shaping."""
        self._check_city(city)
        _run(["ip", "link", "set", self._host_veth(city), "up" if up else "down"])

    # ------------------------------------------------------------ measurement
    def wire_bytes(self) -> list[int]:
        """IP bytes each city has sent into the WAN (to other cities and to the hub; headers and ACKs
        included) since reset."""
        sent = self._port_bytes()
        return [sent[c] for c in range(self.cities)]

    def hub_bytes(self) -> int:
        """IP bytes the hub (the coordinator, or the baselines' store) has sent to the cities."""
        return self._port_bytes()["hub"]

    def _port_bytes(self) -> dict[int | str, int]:
        out = _run(["iptables", "-nvxL", self.chain]).stdout
        sent: dict[int | str, int] = {}
        for line in out.splitlines():
            for port, *_ in self._ports():
                if f"--physdev-in {self._host_veth(port)} " in line + " ":
                    sent[port] = int(line.split()[1])
        return sent

    def reset_wire_bytes(self) -> None:
        _run(["iptables", "-Z", self.chain])

    # ------------------------------------------------------------ teardown
    def teardown(self) -> None:
        """Delete the iptables chain, stop the daemon, delete namespaces and bridge. Idempotent."""
        while _run(["iptables", "-D", "FORWARD", "-j", self.chain], check=False).returncode == 0:
            pass
        _run(["iptables", "-F", self.chain], check=False)
        _run(["iptables", "-X", self.chain], check=False)
        self._stop_daemon()
        for ns in self._namespaces():
            self._kill_namespace_processes(ns)
            _run(["ip", "netns", "del", ns], check=False)
            _run(["ip", "link", "del", f"{ns}h"], check=False)  # gone with the namespace, unless half-built
        _run(["ip", "link", "del", self.bridge], check=False)

    def _namespaces(self) -> list[str]:
        """This emulator's cities and hub plus any `{prefix}N` a crashed, larger run left behind."""
        listed = _run(["ip", "netns", "list"], check=False).stdout.split("\n")
        names = {line.split()[0] for line in listed if line.strip()}
        mine = {n for n in names if n.startswith(self.prefix) and n[len(self.prefix) :].isdigit()}
        return sorted(mine | {ns for _, ns, _, _ in self._ports()})

    def _stop_daemon(self) -> None:
        daemon, self._daemon = self._daemon, None
        if daemon is None:
            return
        daemon.terminate()
        try:
            _, err = daemon.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            daemon.kill()
            _, err = daemon.communicate()
        if err.strip():
            log.info("%s", err.strip())

    @staticmethod
    def _kill_namespace_processes(ns: str) -> None:
        """Processes still inside a namespace we created (ranks left behind) would keep it alive."""
        pids = _run(["ip", "netns", "pids", ns], check=False).stdout.split()
        for pid in pids:
            log.warning("killing pid %s left in namespace %s", pid, ns)
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        if pids:
            time.sleep(0.1)


def enter_netns(name: str) -> None:
    """Move this process into network namespace `name` (as `ip netns exec` does, but keeping the
    mount namespace: `ip netns exec` remounts /sys, hiding the cgroups the cities' prefixes join)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise WanEmulatorError(f"setns into {name}: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
