#!/usr/bin/env python3
"""bench/clients.py - what the clients people run see through redis-proxy: connections on the master and
throughput with redis-py (RESP2 and RESP3), ioredis and `redis-benchmark -3`, beside direct Redis.

Usage: bench/clients.py [--reps 3] [--ops 20000] [--clients 50] [--base-port 7600]
                        [--proxy LABEL=BINARY ...]    (default: redis-proxy=target/release/redis-proxy)

Starts a master and a replica (redis-server, no persistence) and one proxy per --proxy (allToMaster, pool_size 2)
on 127.0.0.1 ports from --base-port, then runs each workload against direct Redis and every proxy, interleaved
(A B C A B C ...) over --reps repetitions, and prints, per workload and target, the median requests/s, its ratio to
direct Redis in the same repetition (median of the per-repetition ratios), and the most connections the master
had from that target while the workload ran, sampled every 20 ms (a proxy: all its connections to the master, from
`ss`, probes and idle ones included; direct: the master's `connected_clients` over its idle baseline).

Workloads (each bounded: --ops requests in all, RUN_TIMEOUT 120 s):
  py_resp2   --clients redis-py threads, protocol 2, one connection each, SET then GET
  py_resp3   the same with protocol 3 (HELLO 3 and CLIENT SETINFO at connect, as redis-py 5+ does)
  ioredis    --clients ioredis connections (HELLO-less RESP2, CLIENT SETNAME), SET then GET, from one Node process
  rb_resp3   redis-benchmark -3 -c --clients -t set,get -n --ops

Needs redis-server, redis-benchmark, python3 with redis-py, and node with tests/clients/node's node_modules
(`npm ci` there). The servers and proxies are started by bench/serve.sh (bench/lib.sh, as every bench script starts
them): everything binds to 127.0.0.1; every process started here is stopped at exit, by PID, also if this script dies.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_TIMEOUT = 120

try:
    import redis
except ImportError:
    sys.exit("redis-py is missing: pip install -r tests/clients/py/requirements.txt")

IOREDIS_DRIVER = r"""
const Redis = require('ioredis');
const [port, clients, ops] = process.argv.slice(2).map(Number);
(async () => {
  const conns = [];
  for (let i = 0; i < clients; i++) {
    const c = new Redis({ port, host: '127.0.0.1', connectionName: `bench-${i}`, lazyConnect: true,
                          maxRetriesPerRequest: 0, enableAutoPipelining: false });
    await c.connect();
    conns.push(c);
  }
  const per = Math.floor(ops / clients / 2);
  const started = process.hrtime.bigint();
  await Promise.all(conns.map(async (c, i) => {
    for (let j = 0; j < per; j++) {
      const key = `bench:io:${i}:${j % 100}`;
      await c.set(key, 'v'.repeat(16));
      if ((await c.get(key)) !== 'v'.repeat(16)) throw new Error('wrong value');
    }
  }));
  const secs = Number(process.hrtime.bigint() - started) / 1e9;
  console.log(JSON.stringify({ requests: per * 2 * clients, secs }));
  await Promise.all(conns.map((c) => c.quit()));
})().catch((e) => { console.error(e); process.exit(1); });
"""


class Cluster:
    """The servers and proxies of one run, started by bench/serve.sh with bench/lib.sh, which stops them all (by PID)
    when its standard input closes: at stop(), or when this process exits or dies."""

    def __init__(self, base_port, proxies, workdir):
        self.master = base_port + 1
        replica = base_port + 2
        specs = [f"redis:{self.master}", f"replica:{replica}:{self.master}"]
        ports = {}
        for index, (label, binary) in enumerate(proxies):
            ports[label] = port = base_port + 11 + index
            with open(os.path.join(workdir, f"{label}.json"), "w") as f:
                json.dump({"servers": [{"host": "127.0.0.1", "port": self.master},
                                       {"host": "127.0.0.1", "port": replica}],
                           "listen_port": port, "bind_address": "127.0.0.1", "pool_size": 2}, f)
            specs.append(f"proxy:{label}:{port}:{binary}")
        self.server = subprocess.Popen(
            [os.path.join(ROOT, "bench", "serve.sh"), workdir, *specs], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True,
            env={**os.environ, "RUST_LOG": "warn", "PORT_HINT": "choose another --base-port"})
        pids = {}
        for line in self.server.stdout:
            if line.strip() == "ready":
                break
            label, _, pid = line.split()
            pids[label] = int(pid)
        else:
            self.server.wait()
            raise SystemExit(f"bench/serve.sh could not start the servers and proxies (logs in {workdir})")
        self.targets = [("direct", self.master, None)] + [(label, ports[label], pids[label]) for label, _ in proxies]

    def stop(self):
        self.server.stdin.close()
        self.server.wait()


def connected_clients(port):
    with redis.Redis(port=port, protocol=2) as r:
        return int(r.info("clients")["connected_clients"])


def proxy_connections(pid, master):
    """Connections process `pid` has open to the master (probes, shared and private ones), from `ss`."""
    out = subprocess.run(["ss", "-tnpH", "state", "established", f"( dport = :{master} )"], capture_output=True,
                         text=True, timeout=10)
    return sum(f"pid={pid}," in line for line in out.stdout.splitlines())


class PeakConnections:
    """Samples, every 20 ms while a workload runs, the connections on the master from a proxy (`pid`: all of
    them, idle ones included), or for direct Redis (`pid` None) the master's connected_clients over the idle
    baseline; keeps the highest."""

    def __init__(self, master, pid):
        self.master, self.pid = master, pid
        time.sleep(0.5)  # connections of the previous run are closed by now: not in the baseline
        self.baseline = 0 if pid else connected_clients(master)
        self.peak = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def count(self):
        if self.pid:
            return proxy_connections(self.pid, self.master)
        return connected_clients(self.master) - self.baseline

    def sample(self):
        while not self.done.wait(0.02):
            self.peak = max(self.peak, self.count())

    def finish(self):
        self.done.set()
        self.thread.join()
        return self.peak


def redis_py(port, clients, ops, protocol):
    conns = [redis.Redis(port=port, protocol=protocol, single_connection_client=True, decode_responses=True)
             for _ in range(clients)]
    for conn in conns:
        conn.ping()
    per = max(1, ops // clients // 2)
    failures = []

    def work(i, conn):
        for j in range(per):
            key = f"bench:py:{i}:{j % 100}"
            conn.set(key, "v" * 16)
            if conn.get(key) != "v" * 16:
                failures.append(key)

    threads = [threading.Thread(target=work, args=(i, c)) for i, c in enumerate(conns)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(RUN_TIMEOUT)
    secs = time.perf_counter() - started
    for conn in conns:
        conn.close()
    if failures or any(t.is_alive() for t in threads):
        raise SystemExit(f"redis-py protocol {protocol} on {port}: wrong values or a stuck thread")
    return per * 2 * clients / secs


def ioredis(port, clients, ops, driver):
    out = subprocess.run(["node", driver, str(port), str(clients), str(ops)], capture_output=True, text=True,
                         timeout=RUN_TIMEOUT, env={**os.environ, "NODE_PATH": os.path.join(
                             ROOT, "tests", "clients", "node", "node_modules")})
    if out.returncode != 0:
        raise SystemExit(f"ioredis on {port} failed: {out.stderr}")
    result = json.loads(out.stdout)
    return result["requests"] / result["secs"]


def redis_benchmark_resp3(port, clients, ops):
    out = subprocess.run(["redis-benchmark", "-3", "-p", str(port), "-c", str(clients), "-n", str(ops), "-t",
                          "set,get", "--csv"], capture_output=True, text=True, timeout=RUN_TIMEOUT)
    rates = [float(line.split(",")[1].strip('"')) for line in out.stdout.splitlines()[1:] if line.count(",") > 1]
    if out.returncode != 0 or len(rates) != 2:
        raise SystemExit(f"redis-benchmark -3 on {port} failed: {out.stdout}{out.stderr}")
    return statistics.mean(rates)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--ops", type=int, default=20000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--base-port", type=int, default=7600)
    parser.add_argument("--proxy", action="append", default=[], help="LABEL=BINARY")
    args = parser.parse_args()
    proxies = [p.split("=", 1) for p in args.proxy] or [
        ("redis-proxy", os.path.join(ROOT, "target", "release", "redis-proxy"))]
    for tool in ("redis-server", "redis-benchmark", "node", "ss"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing (apt-get install redis-server redis-tools nodejs)")
    workdir = tempfile.mkdtemp(prefix="redis-proxy-clients.")
    driver = os.path.join(workdir, "ioredis_driver.js")
    with open(driver, "w") as f:
        f.write(IOREDIS_DRIVER)
    cluster = Cluster(args.base_port, proxies, workdir)
    workloads = [
        ("py_resp2", lambda port: redis_py(port, args.clients, args.ops, 2)),
        ("py_resp3", lambda port: redis_py(port, args.clients, args.ops, 3)),
        ("ioredis", lambda port: ioredis(port, args.clients, args.ops, driver)),
        ("rb_resp3", lambda port: redis_benchmark_resp3(port, args.clients, args.ops)),
    ]
    try:
        print(f"# {args.clients} clients, {args.ops} requests per run, {args.reps} repetitions, interleaved; "
              f"workdir {workdir}")
        print(f"{'workload':<10} {'target':<20} {'req/s':>9} {'x direct':>9} {'master conns':>13}")
        for name, run in workloads:
            rates = {label: [] for label, _, _ in cluster.targets}
            conns = {label: 0 for label, _, _ in cluster.targets}
            for _ in range(args.reps):
                for label, port, pid in cluster.targets:
                    peak = PeakConnections(cluster.master, pid)
                    rates[label].append(run(port))
                    conns[label] = max(conns[label], peak.finish())
            for label, _, _ in cluster.targets:
                ratio = statistics.median(r / d for r, d in zip(rates[label], rates["direct"]))
                print(f"{name:<10} {label:<20} {statistics.median(rates[label]):>9.0f} {ratio:>9.2f} "
                      f"{conns[label]:>13}", flush=True)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
