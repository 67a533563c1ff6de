"""The messages between a city's ranks and the coordinator, and what each field means.

Every connection starts with `hello` (which city and rank this is; with TLS the coordinator checks it
against the certificate). Local rank 0 of a city then `register`s the city, `heartbeat`s (with early
stopping, also its `validation` passes), and at the end sends `final` and `leave`; every rank carries
its stripe of the model in `exchange`, `initial` and `fetch`. Each request gets exactly one reply (or
`error`). Fields are checked against these
declarations by the wire layer before anything reads them.
"""

from __future__ import annotations

from crosscity.federation.wire import message_kind

# ------------------------------------------------------------------ requests

HELLO = message_kind("hello", city=int, rank=int, run=str)
# run: the config fingerprint; a city of another config (or another run) is refused.
REGISTER = message_kind(
    "register",
    name=str,
    n_params=int,  # flat parameter count: fixes the fragment and stripe layout
    n_extra=int,  # SCAFFOLD: size of the control variate riding with the stripes (n_params), else 0
    initial_sha=str,  # sha256 of the city's parameters if it starts fresh, "" when resuming
    versions=list,  # the city's base version of each fragment (-1: none yet)
    step=int,
)
INITIAL = message_kind("initial", fragment=int, stripe=int)  # + [float32 stripe of the initial model]
WAIT_START = message_kind("wait_start")
HEARTBEAT = message_kind("heartbeat", step=int, state=str)
EXCHANGE = message_kind(
    "exchange",
    fragment=int,
    stripe=int,
    attempt=int,  # this city's attempt counter for the fragment: makes an upload count at most once
    base_version=int,  # version of the global fragment the pseudo-gradient was taken against
    steps=int,  # inner steps since the city's last round of this fragment (capped by the coordinator)
)  # + [codec payload of the pseudo-gradient stripe] (+ [codec payload of SCAFFOLD's delta c_i stripe])
FETCH = message_kind("fetch", fragment=int, stripe=int)
VALIDATION = message_kind("validation", step=int, sums=dict)
# sums: the city's validation pass at `step` (early_stop.SUM_KEYS); with train.patience the coordinator
# pools them per step and ends the run (`finish`); otherwise it ignores them.
FINAL = message_kind("final", metrics=dict)
LEAVE = message_kind("leave", reason=str)

# ------------------------------------------------------------------ replies

WELCOME = message_kind("welcome", epoch=int)
REGISTERED = message_kind("registered", epoch=int, versions=list, need_initial=bool)
OK = message_kind("ok")
START = message_kind("start", versions=list, fleet_step=int)
# fleet_step: the median step of the other live cities (-1: none): a city far
# behind it (restarted, frozen) heals and skips ahead (wan.catch_up, docs/fault_tolerance.md).
ROUND = message_kind(
    "round",
    status=str,  # one of ROUND_STATUSES
    round=int,  # the coordinator's round id of this fragment
    version=int,  # the fragment's global version after the round
    participants=list,  # city ids whose updates were averaged
    mode=str,  # "delta": arrays = codec payload of (new - old global); "full": arrays = [float32 global]
    # (+ with SCAFFOLD: the codec payload of the stripe of the coordinator's control variate c)
    committed_attempt=int,  # this city's last upload of the fragment that took effect (-1: none)
    stop=bool,  # the run is being stopped: checkpoint right after merging this round (exact resume)
    finish=bool,  # early stopping (train.patience): end the run right after merging this round
    reason=str,
    fleet_step=int,  # as in `start`
)
GLOBAL = message_kind("global", version=int, committed_attempt=int)  # + [float32 stripe]
ERROR = message_kind("error", reason=str)

COMMITTED, MISSED, SKIPPED = "committed", "missed", "skipped"
ROUND_STATUSES = (COMMITTED, MISSED, SKIPPED)
# committed: the update was averaged and the global moved; missed: the round had already formed
# without this city; skipped: no quorum formed in time, nothing moved. Missed and skipped cities keep
# training and take part in a later round with the steps they trained meanwhile.
DELTA, FULL = "delta", "full"
