"""Hold every packet of one NFQUEUE for a fixed time, then accept it: the WAN's one-way delay.

Why this exists: the kernel here has no netem, so the emulated WAN delays packets in user space.
iptables sends each bridged packet to an NFQUEUE; this daemon reads the queue over raw netlink
(NETLINK_NETFILTER, nfnetlink_queue messages; standard library only) and answers ACCEPT once the
packet has waited `delay_ms`. The delay is the same for every packet, so release order equals
arrival order and one batch verdict ("accept every id <= N") releases all packets that are due;
it also releases any packet whose notification was lost to a full socket buffer (ENOBUFS).

Run as `python nfqueue_delay.py --queue Q --delay-ms D`; it prints `ready` once bound (add the
iptables rule only after that: NFQUEUE without a listener drops traffic) and exits on SIGTERM
or when its parent dies.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import errno
import os
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_CONFIG, NFQNL_MSG_VERDICT_BATCH = 0, 2, 3
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN, NFQA_CFG_MASK, NFQA_CFG_FLAGS = 1, 2, 3, 4, 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_CFG_F_GSO = 1 << 2  # take GSO super-packets whole: far fewer packets to handle
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR, NLMSG_DONE = 2, 3
NF_ACCEPT = 1
NLA_TYPE_MASK = 0x3FFF
PR_SET_PDEATHSIG = 1
SOL_NETLINK = 270


def _attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes (length and type in host order)."""
    head = struct.pack("=HH", 4 + len(payload), kind)
    return head + payload + b"\0" * (-len(payload) % 4)


def _message(msg: int, queue: int, attrs: bytes, flags: int) -> bytes:
    """nlmsghdr + nfgenmsg(AF_UNSPEC, version 0, res_id = queue number in network order)."""
    body = struct.pack("=BB", socket.AF_UNSPEC, 0) + struct.pack(">H", queue) + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg, flags, 0, 0) + body


def _messages(buf: bytes):
    """Yield (type, payload after nfgenmsg-or-error header start) for each netlink message."""
    pos = 0
    while pos + 16 <= len(buf):
        length, kind = struct.unpack_from("=IH", buf, pos)
        if length < 16:
            return
        yield kind, buf[pos + 16 : pos + length]
        pos += (length + 3) & ~3


def _packet_id(payload: bytes) -> int | None:
    """The packet id inside an NFQNL_MSG_PACKET (attribute NFQA_PACKET_HDR, big-endian)."""
    pos = 4  # skip nfgenmsg
    while pos + 4 <= len(payload):
        length, kind = struct.unpack_from("=HH", payload, pos)
        if length < 4:
            return None
        if kind & NLA_TYPE_MASK == NFQA_PACKET_HDR:
            return struct.unpack_from(">I", payload, pos + 4)[0]
        pos += (length + 3) & ~3
    return None


class DelayQueue:
    """A bound NFQUEUE whose packets are released `delay_s` after they arrive."""

    def __init__(self, queue: int, delay_s: float, maxlen: int = 65536) -> None:
        self.queue = queue
        self.delay_s = delay_s
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE: 16 MiB (root)
        self.sock.bind((0, 0))
        self.pending: collections.deque[tuple[float, int]] = collections.deque()
        self.packets = self.lost_notifications = 0
        self.max_late_s = 0.0
        cmd = struct.pack("=BB", NFQNL_CFG_CMD_BIND, 0) + struct.pack(">H", 0)
        self._configure(_attr(NFQA_CFG_CMD, cmd))
        self._configure(
            _attr(NFQA_CFG_PARAMS, struct.pack(">IB", 0, NFQNL_COPY_META))
            + _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack(">I", maxlen))
            + _attr(NFQA_CFG_MASK, struct.pack(">I", NFQA_CFG_F_GSO))
            + _attr(NFQA_CFG_FLAGS, struct.pack(">I", NFQA_CFG_F_GSO))
        )

    def _configure(self, attrs: bytes) -> None:
        self.sock.send(_message(NFQNL_MSG_CONFIG, self.queue, attrs, NLM_F_REQUEST | NLM_F_ACK))
        for kind, payload in _messages(self.sock.recv(65536)):
            if kind == NLMSG_ERROR:
                code = struct.unpack_from("=i", payload)[0]
                if code != 0:
                    raise OSError(-code, f"nfqueue {self.queue} config: {os.strerror(-code)}")
                return
        raise RuntimeError(f"nfqueue {self.queue}: no acknowledgement for a config message")

    def _receive(self) -> None:
        try:
            buf = self.sock.recv(1 << 20, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            self.lost_notifications += 1  # the next batch verdict releases those packets too
            return
        now = time.monotonic()
        for kind, payload in _messages(buf):
            if kind & 0xFF == NFQNL_MSG_PACKET and kind >> 8 == NFNL_SUBSYS_QUEUE:
                packet_id = _packet_id(payload)
                if packet_id is not None:
                    self.pending.append((now + self.delay_s, packet_id))
                    self.packets += 1

    def _release_due(self) -> None:
        now = time.monotonic()
        last = None
        while self.pending and self.pending[0][0] <= now:
            due, last = self.pending.popleft()
            self.max_late_s = max(self.max_late_s, now - due)
        if last is not None:
            verdict = _attr(NFQA_VERDICT_HDR, struct.pack(">II", NF_ACCEPT, last))
            self.sock.send(_message(NFQNL_MSG_VERDICT_BATCH, self.queue, verdict, NLM_F_REQUEST))

    def serve(self, stop: list[bool]) -> None:
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        while not stop[0]:
            timeout_ms = 100.0
            if self.pending:
                timeout_ms = max(0.0, (self.pending[0][0] - time.monotonic()) * 1000.0)
            if poller.poll(timeout_ms):
                self._receive()
            self._release_due()
        # Whatever is still held goes out now: the queue is being torn down.
        if self.pending:
            self.pending = collections.deque([(0.0, self.pending[-1][1])])
            self._release_due()


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the parent is already gone
        sys.exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queue", type=int, required=True, help="NFQUEUE number (0..65535)")
    parser.add_argument("--delay-ms", type=float, required=True, help="one-way delay per packet")
    args = parser.parse_args(argv)
    if not 0 <= args.queue <= 65535 or args.delay_ms < 0:
        parser.error(f"--queue {args.queue} must be 0..65535 and --delay-ms {args.delay_ms} >= 0")
    _die_with_parent()
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    signal.signal(signal.SIGINT, lambda *_: stop.__setitem__(0, True))
    with contextlib.suppress(OSError):
        os.nice(-10)  # delays must stay accurate while training ranks load the 2 cores
    queue = DelayQueue(args.queue, args.delay_ms / 1000.0)
    print("ready", flush=True)
    queue.serve(stop)
    print(
        f"nfqueue {args.queue}: {queue.packets} packets held {args.delay_ms} ms, "
        f"max release lag {queue.max_late_s * 1000:.2f} ms, lost notifications {queue.lost_notifications}",
        file=sys.stderr,
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
