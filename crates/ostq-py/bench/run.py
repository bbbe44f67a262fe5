"""Runs the Python job queues side by side on one private redis-server and prints the figures
as ratios: ostq's Python package (sync and asyncio handlers) beside RQ, arq, Celery, Dramatiq,
BullMQ's Python port and ChasquiMQ's Python binding. Driven by scripts/bench-python, which
prepares the virtualenvs, the work folder and Redis.

Each measurement is the shared harness (../shared/peers/py/harness.py, copied into the work
folder): FLUSHALL, time the bulk enqueue of N no-op jobs with no worker running, then start one
worker process and take its steady processing rate from the jobs' own timestamps (first to last
job start). Measurements run round-robin, RUNS rounds; medians are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

PURE_PYTHON = ("rq", "arq", "celery", "dramatiq", "bullmq")


def measurements(args):
    peers, bullmq = args.peers_python, args.bullmq_python
    return [
        ("ostq_sync_c50", peers, "ostq", "sync_c50", args.n),
        ("ostq_async_c50", peers, "ostq", "async_c50", args.n),
        ("chasquimq_default_c50", peers, "chasquimq", "default_c50", args.n),
        ("chasquimq_lean_c50", peers, "chasquimq", "lean_c50", args.n),
        ("bullmq_c50", bullmq, "bullmq", "c50", args.n),
        ("dramatiq_p1t8", peers, "dramatiq", "p1t8", args.n),
        ("arq_poll10ms", peers, "arq", "poll10ms", args.n),
        ("celery_solo", peers, "celery", "solo", args.n),
        ("rq_simple", peers, "rq", "simple", args.rq_n),
    ]


def start_redis(args):
    os.makedirs(args.redis_dir, exist_ok=True)
    server = subprocess.Popen(
        [args.redis_server, "--port", str(args.port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", args.redis_dir],
        stdout=subprocess.DEVNULL)
    cli = [os.path.join(os.path.dirname(args.redis_server), "redis-cli")]
    if not os.access(cli[0], os.X_OK):
        cli = ["redis-cli"]
    for _ in range(100):
        if subprocess.run(cli + ["-p", str(args.port), "ping"], capture_output=True).returncode == 0:
            return server
        time.sleep(0.1)
    server.kill()
    sys.exit("redis-server did not start")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", required=True, help="folder holding py/ (harness and peers)")
    parser.add_argument("--redis-server", required=True)
    parser.add_argument("--redis-dir", required=True)
    parser.add_argument("--port", type=int, default=6395)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--rq-n", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated measurement names")
    parser.add_argument("--peers-python", required=True)
    parser.add_argument("--bullmq-python", required=True)
    parser.add_argument("--results", required=True, help="JSONL file, appended to")
    args = parser.parse_args()

    chosen = measurements(args)
    if args.only:
        names = set(args.only.split(","))
        chosen = [m for m in chosen if m[0] in names]
    version = subprocess.run([args.redis_server, "--version"], capture_output=True,
                             text=True).stdout.strip()
    print(f"{version}; N={args.n} (RQ {args.rq_n}), {args.runs} rounds, port {args.port}",
          flush=True)
    server = start_redis(args)
    env = {**os.environ, "PORT": str(args.port),
           "REDIS_URL": f"redis://127.0.0.1:{args.port}/0"}
    rows: dict[str, list[dict]] = {name: [] for name, *_ in chosen}
    try:
        for run in range(1, args.runs + 1):
            for name, python, peer, variant, n in chosen:
                load = os.getloadavg()[0]
                done = subprocess.run([python, "harness.py", peer, variant, str(n), str(run)],
                                      cwd=os.path.join(args.work, "py"), env=env,
                                      capture_output=True, text=True, timeout=900)
                try:
                    line = json.loads(done.stdout.strip().splitlines()[-1])
                except (IndexError, json.JSONDecodeError):
                    line = {"ok": False, "error": done.stderr[-2000:]}
                line.update(name=name, load_before=load, redis=version)
                with open(args.results, "a") as results:
                    results.write(json.dumps(line) + "\n")
                rows[name].append(line)
                shown = {k: round(v) if isinstance(v, float) else v for k, v in line.items()
                         if k in ("ok", "enqueue_rate", "process_rate", "wall_rate")}
                print(f"  run {run} {name}: {shown}", flush=True)
    finally:
        server.terminate()
        server.wait(10)
    summarize(rows)


def median(lines, key):
    values = [line[key] for line in lines if line.get("ok") and line.get(key)]
    return statistics.median(values) if values else None


def summarize(rows):
    enqueue = {name: median(lines, "enqueue_rate") for name, lines in rows.items()}
    process = {name: median(lines, "process_rate") for name, lines in rows.items()}
    wall = {name: median(lines, "wall_rate") for name, lines in rows.items()}
    pure = {n: r for n, r in process.items() if r and n.split("_")[0] in PURE_PYTHON}
    fastest = max(pure, key=pure.get) if pure else None
    print()
    print("| measurement | enqueue jobs/s | process jobs/s (steady) | incl. worker start |"
          " runs ok |")
    print("|---|---:|---:|---:|---:|")
    for name, lines in rows.items():
        ok = sum(1 for line in lines if line.get("ok"))
        fmt = lambda v: f"{v:,.0f}" if v else "–"  # noqa: E731
        print(f"| {name} | {fmt(enqueue[name])} | {fmt(process[name])} | {fmt(wall[name])} |"
              f" {ok}/{len(lines)} |")
    print()
    for ostq in (n for n in rows if n.startswith("ostq_")):
        if not process.get(ostq):
            continue
        parts = []
        if fastest:
            parts.append(f"{process[ostq] / pure[fastest]:.1f}x {fastest} (the fastest "
                         "pure-Python peer)")
        for chasqui in ("chasquimq_default_c50", "chasquimq_lean_c50"):
            if process.get(chasqui):
                parts.append(f"{process[ostq] / process[chasqui]:.2f}x {chasqui}")
        print(f"{ostq} processing: " + ", ".join(parts))
    best_enqueue = {n: r for n, r in enqueue.items() if r and not n.startswith("ostq_")}
    if best_enqueue and enqueue.get("ostq_sync_c50"):
        top = max(best_enqueue, key=best_enqueue.get)
        print(f"ostq enqueue (push_bulk): {enqueue['ostq_sync_c50'] / best_enqueue[top]:.1f}x "
              f"{top} (the fastest other enqueue)")


if __name__ == "__main__":
    main()
