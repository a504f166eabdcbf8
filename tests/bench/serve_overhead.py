#!/usr/bin/env python3
"""What `dsi serve` costs per token over `dsi run`, on the synthetic engine (one process, one
launch: a benchmark, not a test).

For the same config and token budget it runs `dsi run --json` R times (each its own launch)
and R sequential non-streaming requests to one `dsi serve`, then prints per token:
  run_ms     dsi run's generation latency (its summary's latency_per_token_ms)
  gen_ms     the server's generation latency (the response's dsi.latency_per_token_ms)
  client_ms  the request's wall time seen by the client, over its tokens
and the ratios gen/run (the coordinator loop inside the server against the plain command) and
client/gen (HTTP, queueing, configuring the workers and the prefill per request).

  serve_overhead.py --dsi build/dsi [--np 5] [--t-ms 3] [--tokens 64] [--runs 5]
"""
import argparse
import http.client
import json
import os
import shlex
import signal
import statistics
import subprocess
import tempfile
import time

MPIRUN = "mpirun --oversubscribe --mca btl self,vader --mca btl_vader_single_copy_mechanism none"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dsi", default="build/dsi")
    ap.add_argument("--config", default="configs/synthetic.yaml")
    ap.add_argument("--mpirun", default=MPIRUN)
    ap.add_argument("--np", type=int, default=5)
    ap.add_argument("--t-ms", type=float, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    sets = ["--set", f"synthetic.t_ms={args.t_ms}", "--set", f"generation.max_new_tokens={args.tokens}"]
    mpi = shlex.split(args.mpirun) + ["-np", str(args.np), args.dsi]

    run_ms, run_ids, run_text = [], None, None
    for _ in range(args.runs):
        out = subprocess.run(mpi + ["run", "--config", args.config, "--json"] + sets,
                             capture_output=True, text=True, check=True).stdout
        s = json.loads(out.strip().splitlines()[-1])
        run_ms.append(s["latency_per_token_ms"])
        run_ids, run_text = s["prompt_ids"], "".join(f" {t}" for t in s["generated_ids"])

    d = tempfile.mkdtemp(prefix="dsi-serve-bench-")
    pf = os.path.join(d, "port")
    srv = subprocess.Popen(mpi + ["serve", "--config", args.config, "--port", "0", "--port-file", pf] + sets,
                           stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    while not (os.path.exists(pf) and len(open(pf).read().split()) == 2):
        if srv.poll() is not None:
            raise SystemExit("the server did not start")
        time.sleep(0.05)
    port, pid = map(int, open(pf).read().split())
    prompt = run_ids
    gen_ms, client_ms = [], []
    for i in range(args.runs + 1):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        body = json.dumps({"prompt": prompt, "max_tokens": args.tokens})
        t0 = time.perf_counter()
        c.request("POST", "/v1/completions", body=body)
        r = json.loads(c.getresponse().read())
        t1 = time.perf_counter()
        c.close()
        if i == 0:
            continue  # the first request warms the ranks, as dsi run's configure does
        n = r["usage"]["completion_tokens"]
        if r["choices"][0]["text"] != run_text:
            raise SystemExit("FAIL: the server's text differs from dsi run's")
        gen_ms.append(r["dsi"]["latency_per_token_ms"])
        client_ms.append((t1 - t0) * 1e3 / n)
    os.kill(pid, signal.SIGTERM)
    srv.wait(60)

    m = statistics.median
    print(f"serve overhead: synthetic t {args.t_ms} ms, {args.np} ranks, {args.tokens} tokens, "
          f"median of {args.runs}")
    print(f"  run_ms {m(run_ms):.3f}  gen_ms {m(gen_ms):.3f}  client_ms {m(client_ms):.3f} per token")
    print(f"  gen/run {m(gen_ms) / m(run_ms):.3f}  client/gen {m(client_ms) / m(gen_ms):.3f}  "
          f"overhead per token {(m(client_ms) - m(run_ms)) * 1e3:.0f} us "
          f"(of which in the coordinator loop {(m(gen_ms) - m(run_ms)) * 1e3:.0f} us)")


if __name__ == "__main__":
    main()
