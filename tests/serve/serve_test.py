#!/usr/bin/env python3
"""`dsi serve` end to end: the official `openai` client and curl against a server under mpirun.

A non-SI server (2 ranks) gives the reference text of each prompt; a DSI server (SP 3) must
answer every greedy request with exactly that text, and every seeded sampled request with the
non-SI server's sampled text (the Gumbel coupling). Then: every error status, stop strings,
a client that disconnects mid-stream (its generation is preempted), idle and slow connections
that must not stall anyone, a bounded load test (concurrent clients, streaming and not,
disconnects, malformed requests: every request answered once, properly, memory flat), and a
SIGTERM drain after which every rank exits 0. With --gguf, the same text checks on a real
model (chat template, context limit).

Prints "ok: ..." per check and the load figures; any failure prints "FAIL: ..." and exits 1.
"""
import argparse
import http.client
import json
import os
import random
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

try:
    import openai
except ImportError:  # setup.sh installs it; without it the test cannot be what it claims
    print("FAIL: the openai package is not installed (launch/setup.sh installs it)")
    sys.exit(1)

KEY = "test-key-1234"
FAILS = []


def check(cond, what):
    if cond:
        print("ok:", what, flush=True)
    else:
        print("FAIL:", what, flush=True)
        FAILS.append(what)


class Server:
    def __init__(self, args, np, extra, name):
        self.dir = tempfile.mkdtemp(prefix="dsi-serve-")
        self.port_file = os.path.join(self.dir, "port")
        self.log_path = os.path.join(self.dir, "log")
        cmd = shlex.split(args.mpirun) + ["-np", str(np), args.dsi, "serve", "--port", "0",
                                          "--port-file", self.port_file] + extra
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        self.name = name
        deadline = time.time() + 120
        while time.time() < deadline:
            if os.path.exists(self.port_file):
                lines = open(self.port_file).read().split()
                if len(lines) == 2:
                    self.port, self.pid = int(lines[0]), int(lines[1])
                    break
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        else:
            self.proc.kill()
        if not hasattr(self, "port"):
            print(open(self.log_path).read())
            print(f"FAIL: {name} server did not start")
            sys.exit(1)

    def url(self):
        return f"http://127.0.0.1:{self.port}/v1"

    def client(self, key=KEY):
        return openai.OpenAI(base_url=self.url(), api_key=key, max_retries=0, timeout=60)

    def rss_kib(self):
        for line in open(f"/proc/{self.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return -1

    def stop(self, timeout=60):
        # Rank 0 drains on SIGTERM (scancel signals every task; the workers ignore it). mpirun
        # turns a SIGTERM of its own into an abort of the job, so it is not the one signalled.
        os.kill(self.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return "hang"

    def output(self):
        self.log.flush()
        return open(self.log_path).read()


def request(port, method, path, body=None, headers=None, timeout=60):
    """Raw HTTP: (status, headers, body bytes)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    h = {"Authorization": f"Bearer {KEY}"}
    h.update(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, dict(r.getheaders()), data


def complete(port, body, timeout=60):
    st, hd, data = request(port, "POST", "/v1/completions", body, timeout=timeout)
    return st, hd, json.loads(data) if data else None


def stream_raw(port, path, body, first_only=False, timeout=60):
    """A streaming request over a raw socket: (status line, [events], t_first, t_list)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    payload = json.dumps(body).encode()
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
              f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
              + payload)
    buf, t0, times, events = b"", time.time(), [], []
    status = None
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
        if status is None and b"\r\n\r\n" in buf:
            head, buf = buf.split(b"\r\n\r\n", 1)
            status = head.split(b"\r\n")[0].decode()
        while status is not None and b"\n\n" in buf:
            ev, buf = buf.split(b"\n\n", 1)
            events.append(ev.decode())
            times.append(time.time() - t0)
            if first_only:
                s.close()
                return status, events, times
    s.close()
    return status, events, times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dsi", required=True)
    ap.add_argument("--mpirun", required=True)
    ap.add_argument("--config", required=True, help="the synthetic config")
    ap.add_argument("--gguf", default="", help="a real model (SmolLM2) for the text checks")
    ap.add_argument("--requests", type=int, default=120, help="load test requests")
    ap.add_argument("--clients", type=int, default=16)
    args = ap.parse_args()
    rng = random.Random(5)

    synth = ["--config", args.config, "--set", "synthetic.t_ms=3", "--set", "synthetic.a=0.8",
             "--set", "synthetic.c=0.1"]
    ref_srv = Server(args, 2, synth + ["--set", "mode=nonsi", "--api-key", KEY], "non-SI")
    srv = Server(args, 5, synth + ["--set", "mode=dsi", "--set", "dsi.lookahead=3", "--api-key",
                                   KEY, "--queue", "4", "--max-body", "65536",
                                   "--read-timeout", "2", "--max-connections", "4096"], "DSI")
    prompts = [[rng.randrange(64) for _ in range(rng.randrange(3, 12))] for _ in range(12)]
    ref_c, c = ref_srv.client(), srv.client()

    # -- text equality with the openai client
    ref = [ref_c.completions.create(model="dsi", prompt=p, max_tokens=24, temperature=0).choices[0].text
           for p in prompts]
    got = [c.completions.create(model="dsi", prompt=p, max_tokens=24, temperature=0) for p in prompts]
    check(all(g.choices[0].text == r for g, r in zip(got, ref)),
          "greedy completions from DSI (SP 3) equal the non-SI server's, 12 prompts")
    g = got[0]
    check(g.usage.prompt_tokens == len(prompts[0]) and g.usage.completion_tokens == 24 and
          g.choices[0].finish_reason == "length", "usage and finish_reason")
    d = (g.model_extra or {}).get("dsi", {})
    check(d.get("mode") == "dsi" and d.get("sp") == 3 and "acceptance_rate" in d and
          "tasks_preempted" in d, f"the dsi object: {d}")
    parts, finish = [], None
    for ch in c.completions.create(model="dsi", prompt=prompts[1], max_tokens=24, stream=True):
        parts.append(ch.choices[0].text)
        finish = ch.choices[0].finish_reason or finish
    check("".join(parts) == ref[1] and finish == "length" and len(parts) >= 3,
          f"streamed completion equals non-SI ({len(parts)} chunks)")
    text_prompt = " ".join(map(str, prompts[2]))
    chat = c.chat.completions.create(model="dsi", max_tokens=24,
                                     messages=[{"role": "user", "content": text_prompt}])
    check(chat.choices[0].message.content == ref[2] and chat.choices[0].message.role == "assistant",
          "chat completion equals non-SI")
    parts = []
    for ch in c.chat.completions.create(model="dsi", max_tokens=24, stream=True,
                                        stream_options={"include_usage": True},
                                        messages=[{"role": "user", "content": text_prompt}]):
        if ch.choices:
            parts.append(ch.choices[0].delta.content or "")
        else:
            usage = ch.usage
    check("".join(parts) == ref[2] and usage.completion_tokens == 24,
          "streamed chat equals non-SI, with the usage chunk")
    for seed in (7, 8):
        a = c.completions.create(model="dsi", prompt=prompts[3], max_tokens=24, temperature=0.8,
                                 seed=seed).choices[0].text
        b = ref_c.completions.create(model="dsi", prompt=prompts[3], max_tokens=24,
                                     temperature=0.8, seed=seed).choices[0].text
        check(a == b and a != ref[3], f"sampled (T 0.8, seed {seed}) text equals non-SI's")
    a = c.completions.create(model="dsi", prompt=prompts[3], max_tokens=24, temperature=0.8)
    b = c.completions.create(model="dsi", prompt=prompts[3], max_tokens=24, temperature=0.8)
    seed = (a.model_extra or {}).get("dsi", {}).get("seed")
    again = c.completions.create(model="dsi", prompt=prompts[3], max_tokens=24, temperature=0.8,
                                 seed=seed).choices[0].text if seed is not None else None
    check(a.choices[0].text != b.choices[0].text and again == a.choices[0].text,
          "unseeded samples differ, and the seed each reports reproduces it")
    words = ref[4].split()
    stop = " " + words[5] if len(words) > 6 else None
    if stop:
        r = c.completions.create(model="dsi", prompt=prompts[4], max_tokens=24, stop=[stop])
        cut = ref[4][:ref[4].find(stop)]
        check(r.choices[0].text == cut and r.choices[0].finish_reason == "stop",
              "a stop string ends the text before it")
    try:
        srv.client(key="wrong").models.list()
        check(False, "a wrong API key is refused")
    except openai.AuthenticationError:
        check(True, "a wrong API key is refused (401)")
    check([m.id for m in c.models.list()] == ["dsi"], "/v1/models")
    # It listens on the address asked for (127.0.0.1) only: not on this host's other address.
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.connect(("192.0.2.1", 9))  # no packet is sent; this picks the outgoing address
        other = u.getsockname()[0]
    except OSError:
        other = None
    u.close()
    if other and not other.startswith("127."):
        try:
            socket.create_connection((other, srv.port), timeout=5).close()
            check(False, f"nothing listens on {other}:{srv.port}")
        except OSError as e:
            check(True, f"nothing listens on {other}:{srv.port} ({e.__class__.__name__})")
    else:
        print("skipped: no address besides loopback to check the bind against")

    # -- errors with curl and raw HTTP
    def curl(*a):
        p = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}"] + list(a),
                           capture_output=True, text=True, timeout=30)
        return p.stdout
    base = f"http://127.0.0.1:{srv.port}"
    check(curl(base + "/health") == "200", "curl /health without a key: 200")
    check(curl(base + "/metrics") == "401", "curl /metrics without a key: 401")
    check(curl("-H", f"Authorization: Bearer {KEY}", base + "/metrics") == "200", "curl /metrics")
    check(curl("-H", f"Authorization: Bearer {KEY}", base + "/nope") == "404", "unknown path: 404")
    check(curl("-H", f"Authorization: Bearer {KEY}", base + "/v1/completions") == "405",
          "GET on a POST endpoint: 405")
    cases = [
        (b"{not json", 400, None), (b'{"prompt": "1 2", "max_tokens": "5"}', 400, "max_tokens"),
        (b'{"prompt": [1, 2], "n": 2}', 400, "n"), (b'{"prompt": [1], "logit_bias": {}}', 400, "logit_bias"),
        (b'{"prompt": [1], "temperature": 5}', 400, "temperature"), (b'{"prompt": [999]}', 400, "prompt"),
        (b'{"prompt": "one two"}', 400, "prompt"), (b'{"prompt": "\xff\xfe"}', 400, None),
        (b'{"max_tokens": 3}', 400, "prompt"), (b"[1, 2]", 400, None),
        (b'{"prompt": [1], "stop": 3}', 400, "stop"),
    ]
    for body, want, param in cases:
        st, _, data = request(srv.port, "POST", "/v1/completions", body)
        err = json.loads(data).get("error", {}) if data else {}
        check(st == want and err.get("message") and (param is None or err.get("param") == param),
              f"{body[:40]!r}: {st} {err.get('message')}")
    st, _, _ = request(srv.port, "POST", "/v1/completions", b'{"prompt": "' + b"1 " * 40000 + b'"}')
    check(st == 413, f"a body over --max-body: {st}")
    try:
        c.completions.create(model="dsi", prompt="1 " * 200000, max_tokens=2)
        check(False, "the openai client's oversized body is refused")
    except openai.APIStatusError as e:  # the answer, not a reset mid-upload
        check(e.status_code == 413, f"the openai client's 400 KB body: {e.status_code}")

    # -- a client that leaves mid-stream: its generation is preempted
    before = request(srv.port, "GET", "/metrics")[2].decode()
    status, ev, _ = stream_raw(srv.port, "/v1/completions", {"prompt": prompts[0], "max_tokens": 4000,
                                                            "stream": True}, first_only=True)
    t0 = time.time()
    st, _, r = complete(srv.port, {"prompt": prompts[5], "max_tokens": 24})
    took = time.time() - t0
    check(st == 200 and r["choices"][0]["text"] == ref[5] and took < 5,
          f"after a client left a 4000-token stream, the next request took {took:.2f} s")
    after = request(srv.port, "GET", "/metrics")[2].decode()
    stopped = lambda m: float([l for l in m.splitlines() if l.startswith("dsi_generations_stopped_total")][0].split()[1])
    check(stopped(after) >= stopped(before) + 1, "the left generation was stopped early")

    # -- idle and slow connections stall nobody
    import resource
    n_idle = max(100, min(2000, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 2 - 200))
    idle = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(n_idle)]
    slow = socket.create_connection(("127.0.0.1", srv.port))
    slow.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Le")
    t0 = time.time()
    st, _, r = complete(srv.port, {"prompt": prompts[6], "max_tokens": 24})
    check(st == 200 and r["choices"][0]["text"] == ref[6] and time.time() - t0 < 3,
          f"with {n_idle} idle and 1 half-sent connection open, a request took {time.time() - t0:.2f} s")
    slow.settimeout(10)
    t0 = time.time()
    try:
        closed = slow.recv(100) == b""
    except (ConnectionResetError, socket.timeout):
        closed = False
    check(closed and time.time() - t0 < 5, "a half-sent request is closed after --read-timeout")
    for s in idle:
        s.close()

    # -- load test
    rss0 = srv.rss_kib()
    outcomes, lock = [], threading.Lock()
    ttft, itl = [], []
    counter = iter(range(args.requests))

    def client_thread(tid):
        trng = random.Random(tid)
        while True:
            with lock:
                try:
                    n = next(counter)
                except StopIteration:
                    return
            i = trng.randrange(len(prompts))
            kind = trng.random()
            while True:
                try:
                    if kind < 0.05:
                        st, _, _ = request(srv.port, "POST", "/v1/completions", b'{"prompt": [1], "n": 3')
                        res = ("malformed", st == 400)
                    elif kind < 0.15:
                        status, ev, _ = stream_raw(srv.port, "/v1/completions",
                                                   {"prompt": prompts[i], "max_tokens": 400, "stream": True},
                                                   first_only=True)
                        if "429" in (status or ""):
                            time.sleep(0.05)
                            continue
                        res = ("left", status is not None and "200" in status)
                    elif kind < 0.55:
                        status, ev, times = stream_raw(srv.port, "/v1/completions",
                                                       {"prompt": prompts[i], "max_tokens": 24, "stream": True})
                        if "429" in (status or ""):
                            time.sleep(0.05)
                            continue
                        datas = [e[6:] for e in ev if e.startswith("data: ")]
                        chunks = [json.loads(x) for x in datas[:-1]]
                        text = "".join(ch["choices"][0]["text"] for ch in chunks if ch.get("choices"))
                        ok = datas and datas[-1] == "[DONE]" and text == ref[i] and \
                            chunks[-1]["choices"][0]["finish_reason"] == "length"
                        with lock:
                            ttft.append(times[0])
                            itl.extend(b - a for a, b in zip(times, times[1:-2]))
                        res = ("stream", bool(ok))
                    else:
                        st, hd, r = complete(srv.port, {"prompt": prompts[i], "max_tokens": 24})
                        if st == 429:
                            time.sleep(float(hd.get("Retry-After", "1")) * 0.05)
                            continue
                        res = ("plain", st == 200 and r["choices"][0]["text"] == ref[i])
                except Exception as e:  # noqa: BLE001 - a lost request is the failure
                    res = ("error: " + repr(e), False)
                break
            with lock:
                outcomes.append((n,) + res)

    t0 = time.time()
    threads = [threading.Thread(target=client_thread, args=(t,)) for t in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    wall = time.time() - t0
    bad = [o for o in outcomes if not o[2]]
    check(len(outcomes) == args.requests and len({o[0] for o in outcomes}) == args.requests,
          f"load: {len(outcomes)} of {args.requests} requests answered, each once")
    check(not bad, f"load: every answer complete and equal to non-SI, or a proper error ({bad[:3]})")
    time.sleep(0.5)
    rss1 = srv.rss_kib()
    check(rss1 - rss0 < 16 * 1024, f"rank 0's memory: {rss0 / 1024:.1f} -> {rss1 / 1024:.1f} MiB")
    kinds = {}
    for o in outcomes:
        kinds[o[1]] = kinds.get(o[1], 0) + 1
    q = lambda xs, p: sorted(xs)[min(len(xs) - 1, int(p * len(xs)))] * 1e3 if xs else float("nan")
    print(f"load: {args.requests} requests from {args.clients} clients in {wall:.1f} s = "
          f"{args.requests / wall:.1f} req/s; {kinds}; TTFT p50 {q(ttft, .5):.1f} ms p99 "
          f"{q(ttft, .99):.1f} ms; inter-token p50 {q(itl, .5):.2f} ms p99 {q(itl, .99):.2f} ms",
          flush=True)
    st, _, r = complete(srv.port, {"prompt": prompts[7], "max_tokens": 24})
    check(st == 200 and r["choices"][0]["text"] == ref[7], "every rank alive after the load")

    # -- SIGTERM drains
    long_res = {}

    def long_request():
        long_res["r"] = complete(srv.port, {"prompt": prompts[8], "max_tokens": 1500}, timeout=120)
    t = threading.Thread(target=long_request)
    t.start()
    time.sleep(0.3)
    os.kill(srv.pid, signal.SIGTERM)
    time.sleep(0.3)
    try:
        st = request(srv.port, "POST", "/v1/completions", {"prompt": [1], "max_tokens": 2})[0]
    except OSError:
        st = "refused"
    t.join(120)
    rc = srv.proc.wait(60)
    st_long, _, r = long_res.get("r", (None, None, None))
    check(st == 503, f"a request during the drain: {st}")
    check(st_long == 200 and r["usage"]["completion_tokens"] == 1500,
          "the running request finished during the drain")
    check(rc == 0 and "drained" in srv.output(), f"every rank exited 0 after SIGTERM (rc {rc})")
    rc = ref_srv.stop()
    check(rc == 0, f"the non-SI server drained (rc {rc})")

    # -- a real model
    if not args.gguf:
        print("skipped: the SmolLM2 checks (no --gguf: launch/test.sh fetches it)")
    else:
        cfg = ["--set", "engine=llama", "--set", f"model.path={args.gguf}"]
        ref_srv = Server(args, 2, cfg + ["--set", "mode=nonsi", "--api-key", KEY], "SmolLM2 non-SI")
        srv = Server(args, 4, cfg + ["--set", "mode=dsi", "--api-key", KEY], "SmolLM2 DSI")
        msgs = [[{"role": "user", "content": "What is the capital of France?"}],
                [{"role": "system", "content": "You are terse."},
                 {"role": "user", "content": "Name three colours."}]]
        for m in msgs:
            a = srv.client().chat.completions.create(model="dsi", messages=m, max_tokens=24)
            b = ref_srv.client().chat.completions.create(model="dsi", messages=m, max_tokens=24)
            check(a.choices[0].message.content == b.choices[0].message.content and
                  a.choices[0].message.content, f"SmolLM2 chat equals non-SI: {a.choices[0].message.content!r}")
        parts = [ch.choices[0].delta.content or "" for ch in srv.client().chat.completions.create(
            model="dsi", messages=msgs[0], max_tokens=24, stream=True) if ch.choices]
        b = ref_srv.client().chat.completions.create(model="dsi", messages=msgs[0], max_tokens=24)
        check("".join(parts) == b.choices[0].message.content, "SmolLM2 streamed chat equals non-SI")
        a = srv.client().completions.create(model="dsi", prompt="The sky is", max_tokens=16)
        b = ref_srv.client().completions.create(model="dsi", prompt="The sky is", max_tokens=16)
        check(a.choices[0].text == b.choices[0].text, f"SmolLM2 completion equals non-SI: {a.choices[0].text!r}")
        base = f"http://127.0.0.1:{srv.port}"
        check(curl(base + "/health") == "200" and
              curl("-H", f"Authorization: Bearer {KEY}", base + "/metrics") == "200" and
              curl("-H", f"Authorization: Bearer {KEY}", "-d",
                   '{"prompt": "Hi", "max_tokens": 4}', base + "/v1/completions") == "200",
              "curl /health, /metrics and /v1/completions on SmolLM2")
        st, _, r = complete(srv.port, {"prompt": "hi " * 300, "max_tokens": 8000})
        check(st == 400 and "context" in r["error"]["message"], f"over the context: {st} {r['error']['message']}")
        check(srv.stop() == 0 and ref_srv.stop() == 0, "SmolLM2 servers drained")

    if FAILS:
        print(f"FAIL: {len(FAILS)} checks failed")
        return 1
    print("all serve checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
