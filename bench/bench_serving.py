"""Serving API latency under a loopback load test, next to a bare Redis HGET loop.

    python bench/bench_serving.py [--customers 20000] [--seconds 10] [--clients 1]
                                  [--redis-url URL] [--port 18765]

1. Writes the serving state of `--customers` customers and their identity-graph nodes into Redis
   under a fresh prefix (removed at the end).
2. Starts the API (uvicorn, one process, `journeymap dashboard`'s app) in a subprocess.
3. Starts `--clients` client processes; each issues GET /api/customers/email/<raw email> (raw
   identifiers: the server normalizes, salts and hashes them, then one Lua round trip to Redis)
   over one keep-alive connection, one request at a time, for `--seconds`, each request followed
   by a bare `HGET` of a random identity-graph node (the baseline: one Redis round trip, no HTTP,
   no hashing), so both see the same machine load.
4. Prints p50/p90/p99/max and requests/s of both, and the p99 ratio API / HGET.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOKEN = "bench-token-" + "x" * 20
SALT = "bench-salt"


def _email(i: int) -> str:
    return f"Customer{i}@Example.com"


def _settings_env(args: argparse.Namespace, group: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "JOURNEYMAP_REDIS__URL": args.redis_url,
        "JOURNEYMAP_KAFKA__CONSUMER_GROUP": group,
        "JOURNEYMAP_IDENTITY_SALT": SALT,
        "JOURNEYMAP_SERVING__TOKENS": json.dumps(
            [{"name": "bench", "token": TOKEN, "role": "reader"}]
        ),
        "JOURNEYMAP_CONFIG": str(ROOT / "journeymap.toml"),
        "PYTHONPATH": str(ROOT),
    })
    return env


def populate(args: argparse.Namespace, group: str) -> None:
    import redis

    from processors.config import IdentityConfig
    from processors.identity import IdentityResolver
    from sinks.serving import ServingStore

    client = redis.Redis.from_url(args.redis_url)
    hasher = IdentityResolver(IdentityConfig(), SALT)
    store = ServingStore(client, f"jm:serve:{group}", f"jm:id:{group}")
    pipe = client.pipeline(transaction=False)
    states = []
    for i in range(args.customers):
        cid = f"c_{i:016x}"
        key = hasher.key_of("email", _email(i))
        pipe.hset(f"jm:id:{group}:n", key, f"{cid}|0|0")
        pipe.sadd(f"jm:id:{group}:m:{cid}", key)
        states.append({
            "customer_id": cid, "segment": f"s{i % 6}",
            "funnels": [{"funnel": "signup", "stage": "visited", "stage_index": 0,
                         "stage_entered_at_ms": 1_772_323_200_000, "time_in_stage_s": 60.0}],
            "p_convert": 0.2, "p_churn": 0.1,
            "top_features": [{"feature": "n_sessions", "weight": 0.5}] * 3,
            "next_best_action": "demo_offer", "expected_lift": 0.03, "sentiment": None,
            "last_event_at_ms": 1_772_323_260_000, "updated_at_ms": 1_772_323_261_000,
        })
        if len(pipe) >= 2000:
            pipe.execute()
    pipe.execute()
    store.write(states)
    client.close()


def cleanup(args: argparse.Namespace, group: str) -> None:
    import redis

    client = redis.Redis.from_url(args.redis_url)
    for pattern in (f"jm:id:{group}*", f"jm:serve:{group}*"):
        keys = list(client.scan_iter(pattern, count=5000))
        for i in range(0, len(keys), 5000):
            client.unlink(*keys[i : i + 5000])
    client.close()


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from streams.settings import load_settings
    from streams.web.app import create_app

    uvicorn.run(create_app(load_settings()), host="127.0.0.1", port=args.port,
                log_level="warning", access_log=False)


def _percentiles(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)

    def q(p: float) -> float:
        return ms[min(len(ms) - 1, int(p * len(ms)))]

    return {"n": len(ms), "p50": q(0.50), "p90": q(0.90), "p99": q(0.99), "max": ms[-1]}


def client(args: argparse.Namespace) -> None:
    """One load-test client: API requests and bare HGETs, interleaved one for one for
    `seconds`, so that both see the same machine load."""
    import redis

    from processors.config import IdentityConfig
    from processors.identity import IdentityResolver

    rng = random.Random(args.seed)
    conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=10)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    r = redis.Redis.from_url(args.redis_url)
    hasher = IdentityResolver(IdentityConfig(), SALT)
    graph = f"jm:id:{args.group}:n"
    api: list[float] = []
    bare: list[float] = []
    errors = 0
    end = time.perf_counter() + args.seconds
    while time.perf_counter() < end:
        i = rng.randrange(args.customers)
        t0 = time.perf_counter()
        conn.request("GET", f"/api/customers/email/{_email(i)}", headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        api.append((time.perf_counter() - t0) * 1000)
        if resp.status != 200 or b'"customer_id"' not in body:
            errors += 1
        key = hasher.key_of("email", _email(rng.randrange(args.customers)))
        t0 = time.perf_counter()
        if r.hget(graph, key) is None:
            errors += 1
        bare.append((time.perf_counter() - t0) * 1000)
    conn.close()
    r.close()
    print(json.dumps({"api": _percentiles(api), "hget": _percentiles(bare), "errors": errors,
                      "seconds": args.seconds}))


def _wait_ready(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/openapi.json")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the API did not start on port {port} within {timeout_s:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--port", type=int, default=18765)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--redis-url",
                        default=os.environ.get("JOURNEYMAP_REDIS__URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--role", choices=["main", "serve", "client"], default="main",
                        help=argparse.SUPPRESS)
    parser.add_argument("--group", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "serve":
        return serve(args)
    if args.role == "client":
        return client(args)

    group = f"bench-serving-{uuid.uuid4().hex[:8]}"
    env = _settings_env(args, group)
    me = [sys.executable, str(Path(__file__).resolve())]
    common = ["--port", str(args.port), "--redis-url", args.redis_url, "--group", group,
              "--customers", str(args.customers), "--seconds", str(args.seconds)]
    print(f"populating {args.customers:,} customers under jm:serve:{group} ...", flush=True)
    populate(args, group)
    server = subprocess.Popen([*me, "--role", "serve", *common], env=env)
    try:
        _wait_ready(args.port)
        print(f"API up (pid {server.pid}); {args.clients} client process(es), "
              f"{args.seconds:.0f} s of API requests interleaved with bare HGETs", flush=True)
        clients = [
            subprocess.Popen([*me, "--role", "client", *common, "--seed", str(args.seed + k)],
                             env=env, stdout=subprocess.PIPE, text=True)
            for k in range(args.clients)
        ]
        results = [json.loads(c.communicate(timeout=args.seconds * 3 + 60)[0]) for c in clients]
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        cleanup(args, group)
    for k, res in enumerate(results):
        api, hget = res["api"], res["hget"]
        print(f"client {k}: {api['n']:,} API requests and {hget['n']:,} HGETs in "
              f"{res['seconds']:.0f} s, {res['errors']} errors")
        print("  {:<8} {:>8} {:>8} {:>8} {:>8}".format("ms", "p50", "p90", "p99", "max"))
        for name, r in (("API", api), ("HGET", hget)):
            print(f"  {name:<8} {r['p50']:>8.3f} {r['p90']:>8.3f} {r['p99']:>8.3f} "
                  f"{r['max']:>8.2f}")
        print(f"  p99 ratio API / HGET: {api['p99'] / hget['p99']:.1f}x; p50 ratio "
              f"{api['p50'] / hget['p50']:.1f}x; target API p99 <= 10 ms: "
              f"{'met' if api['p99'] <= 10 else 'NOT met'}")


if __name__ == "__main__":
    main()
