"""A packet capture on one interface (AF_PACKET, root), for the attack tests: what crossed the wire.

No tcpdump needed: every IPv4/TCP frame seen on the interface is kept as (src, dst, sport, dport,
seq, payload, ip_length); `stream` reassembles one direction of one connection from it.
"""

from __future__ import annotations

import socket
import struct
import threading
from dataclasses import dataclass, field

ETH_P_ALL = 0x0003


@dataclass
class Segment:
    src: str
    dst: str
    sport: int
    dport: int
    seq: int
    payload: bytes
    ip_length: int


@dataclass
class Capture:
    iface: str
    segments: list[Segment] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(ETH_P_ALL))
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)  # do not drop under load
        self._sock.bind((self.iface, 0))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self._sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                return
            segment = _parse(frame)
            if segment is not None:
                self.segments.append(segment)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()

    def payload(self) -> bytes:
        """Every TCP payload byte seen, in arrival order (what a wiretapper holds)."""
        return b"".join(s.payload for s in self.segments)

    def ip_bytes(self, src: str, dst: str, port: int) -> int:
        """IP bytes (headers included) from src to dst on connections to or from `port`."""
        return sum(
            s.ip_length for s in self.segments if s.src == src and s.dst == dst and port in (s.sport, s.dport)
        )

    def stream(self, src: str, dst: str, dport: int) -> bytes:
        """The client-to-server bytes of the first connection from src to dst:dport, in sequence order."""
        first = next((s for s in self.segments if s.src == src and s.dst == dst and s.dport == dport), None)
        if first is None:
            return b""
        chunks = {
            s.seq: s.payload
            for s in self.segments
            if (s.src, s.dst, s.sport, s.dport) == (src, dst, first.sport, dport) and s.payload
        }
        return b"".join(chunks[seq] for seq in sorted(chunks))


def _parse(frame: bytes) -> Segment | None:
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":  # Ethernet II carrying IPv4
        return None
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    total = struct.unpack("!H", ip[2:4])[0]
    if ip[9] != 6 or len(ip) < ihl + 20:  # TCP only
        return None
    tcp = ip[ihl:total]
    sport, dport, seq = struct.unpack("!HHI", tcp[:8])
    offset = (tcp[12] >> 4) * 4
    src, dst = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
    return Segment(src, dst, sport, dport, seq, bytes(tcp[offset:]), total)
