"""A round through the coordinator on real gloo city worlds: average is the mean of the cities' moves,
diloco the outer Nesterov step on it, every codec within its bound and bit-identical everywhere, and
the bytes accounted are what the kernel saw written."""

from __future__ import annotations

import fcntl
import hashlib
import socket
import struct
import termios
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from crosscity.federation.codecs import CODECS, make_codec
from crosscity.train.distributed.process_groups import Groups
from crosscity.train.distributed.topology import Topology
from tests.helpers.distributed import run_on_cities
from tests.helpers.federation import run_config
from tests.helpers.wan import federated_sync

TLS_RECORD_OVERHEAD = 22
PATIENT = ["wan.round_timeout_s=60", "wan.dead_after_s=20", "wan.heartbeat_s=5", "wan.sync_every=1"]


def initial_model() -> nn.Module:
    torch.manual_seed(7)  # every city starts from the same model
    return nn.Linear(100, 40)  # 4040 parameters: stripes of several codec chunks


def move(city: int, numel: int) -> torch.Tensor:
    """What city `city` learned since the last round: a different move per city, with a spike."""
    m = torch.randn(numel, generator=torch.Generator().manual_seed(100 + city))
    m[17 * (city + 1)] = 5.0
    return m


def _kernel_sent(sync: Any) -> int:
    """tcpi_bytes_acked of the rank's connection to the coordinator: what TCP really delivered, read
    once the send queue is empty (a delayed ACK would otherwise count earlier bytes into this round)."""
    conn = sync.link.conn
    if conn is None:
        return 0
    deadline = time.monotonic() + 10
    while _unacked(conn.sock) and time.monotonic() < deadline:
        time.sleep(0.01)
    info = conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return struct.unpack_from("Q", info, 120)[0]  # struct tcp_info: u64 bytes_acked at offset 120


def _unacked(sock: socket.socket) -> int:
    """Bytes in the socket's send queue, sent or not, that the peer has not acknowledged yet."""
    out = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    return struct.unpack("i", out)[0]


def _one_round(topo: Topology, groups: Groups, run_dir: Path) -> dict[str, Any]:
    model = initial_model()
    sync = federated_sync(run_dir, model, torch.optim.SGD(model.parameters(), lr=0.1), topo, groups)
    assert sync.heal(
        [0], patience_s=10
    )  # opens this rank's connection (the global is still the initial model)
    flat = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    torch.nn.utils.vector_to_parameters(flat + move(topo.city, flat.numel()), model.parameters())
    before = _kernel_sent(sync)
    rnd = sync.after_step(1, 8)
    written = _kernel_sent(sync) - before
    after = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    sync.close()
    assert rnd is not None
    return {
        "params": after,
        "digest": hashlib.sha256(after.numpy().tobytes()).hexdigest(),
        "sent": rnd.bytes_sent,
        "recv": rnd.bytes_recv,
        "written": written,
        "participants": rnd.participants,
    }


def experiments(tmp: Path, ranks: int, names: list[str]) -> dict[str, Path]:
    dirs = {}
    for name in names:
        algorithm, codec = name.split("-")
        run_config(tmp / name, 2, ranks, f"wan.algorithm={algorithm}", f"wan.codec={codec}", *PATIENT)
        dirs[name] = tmp / name
    return dirs


def _every(topo: Topology, groups: Groups, dirs: dict[str, Path]) -> dict[str, Any]:
    return {name: _one_round(topo, groups, d) for name, d in dirs.items()}


@pytest.fixture(scope="module")
def two_by_two(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, Any]]:
    names = ["average-none", "diloco-none", *(f"average-{c}" for c in CODECS if c != "none")]
    dirs = experiments(tmp_path_factory.mktemp("rounds"), 2, names)
    return run_on_cities(_every, 2, 2, dirs, run_dirs=list(dirs.values()))


def test_average_is_the_mean_and_diloco_the_outer_nesterov_step(
    two_by_two: dict[int, dict[str, Any]],
) -> None:
    init = torch.nn.utils.parameters_to_vector(initial_model().parameters()).detach()
    mean_move = (move(0, init.numel()) + move(1, init.numel())) / 2  # one step each: equal weights
    for r in two_by_two.values():
        torch.testing.assert_close(r["average-none"]["params"], init + mean_move, rtol=1e-6, atol=1e-6)
        # pseudo-gradient g = -mean move; the first Nesterov step moves by -lr (1 + mu) g
        torch.testing.assert_close(
            r["diloco-none"]["params"], init + 0.7 * 1.9 * mean_move, rtol=1e-5, atol=1e-6
        )
        assert r["average-none"]["participants"] == [0, 1]
    for name in two_by_two[0]:
        assert len({r[name]["digest"] for r in two_by_two.values()}) == 1, f"{name}: ranks disagree"


def test_every_codec_is_within_its_bound_and_moves_its_share_of_bytes(
    two_by_two: dict[int, dict[str, Any]],
) -> None:
    init = torch.nn.utils.parameters_to_vector(initial_model().parameters()).detach()
    exact = init + (move(0, init.numel()) + move(1, init.numel())) / 2
    largest = torch.maximum(move(0, init.numel()).abs(), move(1, init.numel()).abs()).numpy()
    for rank, r in two_by_two.items():
        stripe = init.numel() // 2  # 2020 values each
        for name in CODECS:
            got = r[f"average-{name}"]
            codec = make_codec(name)
            # two encodes: the city's stripe up, the global's change down (each within its bound)
            bound = 2 * codec.error_bound(largest) + 1e-5
            assert float((got["params"] - exact).abs().max()) <= bound, (name, rank)
            payload = codec.payload_bytes(stripe)
            assert payload < got["sent"] < payload + 400, (name, rank, got["sent"], payload)  # + JSON header
            assert payload < got["recv"] < payload + 400, (name, rank, got["recv"], payload)
        sent = {name: r[f"average-{name}"]["sent"] for name in CODECS}
        assert sent["int8"] < sent["none"] / 3 and sent["int4"] < sent["none"] / 5


@pytest.mark.skipif(not hasattr(socket, "TCP_INFO"), reason="needs Linux TCP_INFO")
def test_the_bytes_accounted_are_the_bytes_the_kernel_delivered(tmp_path: Path) -> None:
    """The round's accounted bytes are what the kernel's TCP delivered on the rank's connection,
    less TLS framing."""
    dirs = experiments(tmp_path, 1, ["average-none", "average-int8"])
    results = run_on_cities(_every, 2, 1, dirs, run_dirs=list(dirs.values()))
    for r in results.values():
        for got in r.values():
            assert got["sent"] > 0
            # The data link carries nothing else meanwhile; TLS 1.3 adds 22 B per record (5 B header,
            # 1 B content type, 16 B AEAD tag), a record per send of at most 16 KiB.
            overhead = got["written"] - got["sent"]
            assert overhead % TLS_RECORD_OVERHEAD == 0, got
            assert -(-got["sent"] // 16384) <= overhead // TLS_RECORD_OVERHEAD <= got["sent"] // 16384 + 3, (
                got
            )
    assert np.isclose(results[0]["average-none"]["sent"] / results[0]["average-int8"]["sent"], 4, rtol=0.15)
