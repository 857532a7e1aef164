"""Instruction counts of the identity resolvers (session 8, issue 3), under callgrind:

    valgrind --tool=callgrind --collect-atstart=no --toggle-collect=functools_reduce \\
        python3.11 bench/cg_identity_native.py KIND PASS EVENTS.pkl

KIND: python | pyhash | pyprep | pytime | native (see bench_identity_native.py); PASS: 1 (a new
resolver) or 2 (after a pass over copies: every identifier known); EVENTS.pkl: a pickled list
of TouchpointEvents with `ts_ms` unread (e.g. `bench_identity.sim_events(1500)`). Only the
timed pass runs inside `functools.reduce`, so only it is counted; divide by the events.
"""

import functools
import gc
import pickle
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from processors.config import IdentityConfig
from processors.identity import IdentityResolver
from processors.identity_native import NativeIdentityResolver

kind, passes, path = sys.argv[1:4]
with open(path, "rb") as f:
    evs = pickle.load(f)
gc.collect()
gc.freeze()
if kind == "python":
    r = IdentityResolver(IdentityConfig(), "bench-salt")
else:
    r = NativeIdentityResolver(IdentityConfig(), "bench-salt", native_hashing=kind != "pyhash",
                               native_prepare=kind in ("native", "pytime"))
    r.native_times = kind == "native"
parts = [evs[i : i + 1000] for i in range(0, len(evs), 1000)]
if passes == "2":
    for p in [pickle.loads(pickle.dumps(x)) for x in parts]:
        r.resolve_batch(p)
functools.reduce(lambda a, p: r.resolve_batch(p), parts, None)
