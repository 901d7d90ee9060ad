#!/usr/bin/env python3
"""The dashboard end to end: three `sojourn node --http` daemons, agents hopping between them,
the page loaded in headless Chromium (the agents and their hops must be in its DOM; the
screenshot is kept in the build tree), /metrics read by prometheus_client's parser of the
exposition format, and `sojourn top --once`.

Usage: dashboard_test.py SOJOURN_BIN SAMPLES_DIR ARTIFACT_DIR
Exit 77 (SKIPPED, with the reason) without chromium or python3-prometheus-client."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

SKIP = 77


def skip(reason):
    print(f"SKIPPED: {reason}")
    sys.exit(SKIP)


def fail(message):
    print(f"FAILED: {message}")
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)
    print(f"ok: {message}")


try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:
    skip("python3-prometheus-client is not installed (bootstrap.sh test installs it)")
chromium = shutil.which("chromium") or shutil.which("chromium-browser")
if chromium is None:
    skip("chromium is not installed (bootstrap.sh test installs it)")

sojourn, samples, artifacts = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(artifacts, exist_ok=True)
work = tempfile.mkdtemp(prefix="sj-dash-")
nodes = {}


def start(name, *extra):
    out = open(os.path.join(work, name + ".out"), "w+")
    proc = subprocess.Popen([sojourn, "node", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--name", name,
                             "--peer-isolation", "trusted", *extra], stdout=out, stderr=subprocess.DEVNULL)
    for _ in range(200):
        out.seek(0)
        text = out.read()
        listen = re.search(rf"^node {name} listening on (\S+)$", text, re.M)
        http = re.search(rf"^node {name} dashboard at https?://(\S+)/", text, re.M)
        if listen and http:
            nodes[name] = {"proc": proc, "address": listen.group(1), "http": http.group(1)}
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    fail(f"node {name} did not start: {text}")


def fetch(node, path):
    with urllib.request.urlopen(f"http://{nodes[node]['http']}{path}", timeout=10) as r:
        return r.read().decode()


def sojourn_run(*args, timeout=60):
    r = subprocess.run([sojourn, *args], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        fail(f"sojourn {' '.join(args)} exited {r.returncode}: {r.stderr}")
    return r.stdout


try:
    for name in ("a", "b", "c"):
        start(name)
    a, b, c = (nodes[n]["address"] for n in ("a", "b", "c"))

    # One agent tours b and c and ends; a second (the courier) goes to c and waits there.
    hunter_out = sojourn_run("launch", os.path.join(samples, "agents/price_hunter.lua"), "--at", a,
                             "--itinerary", f"{b},{c}", "--state", '{"item":"disk"}', "--wait", "--json")
    hunter = json.loads(hunter_out)
    hunter_id = hunter.get("id") or hunter.get("agent", {}).get("id")
    check(hunter_id and re.fullmatch(r"[0-9a-f]{32}", hunter_id), f"the tour agent ran ({hunter_id})")
    courier = sojourn_run("launch", os.path.join(samples, "agents/courier.lua"), "--at", a, "--itinerary", c).strip()
    check(re.fullmatch(r"[0-9a-f]{32}", courier) is not None, f"the courier launched ({courier})")
    for _ in range(100):
        if '"asleep"' in fetch("c", "/api/agents"):
            break
        time.sleep(0.05)

    # The JSON API at the home, a.
    agents = json.loads(fetch("a", "/api/agents"))["agents"]
    by_id = {x["id"]: x for x in agents}
    check(hunter_id in by_id and [h["node"] for h in by_id[hunter_id]["hops"]] == [a, b, c],
          "/api/agents at the home lists the tour with its hops a, b, c")
    check(by_id[hunter_id]["status"] == "finished", "the tour agent is finished")
    detail = json.loads(fetch("a", f"/api/agents/{hunter_id}"))
    check(any("costs" in line for line in detail["log"]), "/api/agents/ID carries the agent's log")
    node_a = json.loads(fetch("a", "/api/node"))
    check(b in node_a["peers"] and c in node_a["peers"], "node a knows b and c as peers (from the hops)")
    trace = json.loads(fetch("a", "/api/trace?since=0"))
    kinds = [e["kind"] for e in trace["events"]]
    check("launch" in kinds and "departure" in kinds, "the trace has the launches and departures")
    later = json.loads(fetch("a", f"/api/trace?since={trace['last_seq']}"))
    check(later["events"] == [] or later["events"][0]["seq"] > trace["last_seq"], "since=N gives only newer events")

    # /metrics through the exposition-format parser.
    families = {}
    for text_node in ("a", "b", "c"):
        for f in text_string_to_metric_families(fetch(text_node, "/metrics")):
            families.setdefault(text_node, {})[f.name] = f

    def sample(node, family, suffix="", **labels):
        f = families[node][family]
        for s in f.samples:
            if s.name == family + suffix and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
        return None

    check(families["a"]["sojourn_agent_hops"].type == "counter", "sojourn_agent_hops_total parses as a counter")
    check(sample("a", "sojourn_agent_hops", "_total", direction="out") >= 2, "a counts its hops out (tour and courier)")
    check(sample("b", "sojourn_agent_hops", "_total", direction="in") == 1, "b counts one hop in")
    check(sample("c", "sojourn_agent_hops", "_total", direction="in") == 2, "c counts two hops in")
    check(families["b"]["sojourn_agent_step_seconds"].type == "histogram", "step latency parses as a histogram")
    check(sample("b", "sojourn_agent_step_seconds", "_count", isolation="trusted") >= 1, "b timed the step it ran")
    check(sample("a", "sojourn_agents", state="finished") >= 1, "a's gauge counts the finished agent")
    check(sample("c", "sojourn_agents", state="asleep") == 1, "c's gauge counts the courier asleep there")
    check(sample("a", "sojourn_requests", "_total", service="agent.launch", outcome="ok") == 2,
          "a counts its two agent.launch requests")
    check(families["a"]["sojourn_uptime_seconds"].type == "gauge", "uptime parses as a gauge")
    check(sample("c", "sojourn_agent_state_bytes") > 0, "c counts the resident courier's state bytes")

    # The page in a real browser: the agents, their hops and the nodes must be in the DOM.
    url = f"http://{nodes['a']['http']}/"
    browser = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               f"--user-data-dir={os.path.join(work, 'chromium')}", "--virtual-time-budget=4000"]
    dom = subprocess.run(browser + ["--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    check('data-loaded="yes"' in dom, "the page loaded its data")
    check(f'<tr data-agent="{hunter_id}">' in dom, "the tour agent has a row in the table")
    check(f'data-agent="{courier}"' in dom, "the courier is in the table and on the map")
    check(f"{a} → {b} → {c}" in dom, "the tour's route a → b → c is in the table")
    check(f'data-from="{a}" data-to="{b}"' in dom and f'data-from="{b}" data-to="{c}"' in dom,
          "the hops a→b and b→c are drawn on the map")
    for n in (b, c):
        check(f'data-node="{n}"' in dom, f"peer {n} is on the map")
    shot = os.path.join(artifacts, "dashboard.png")
    if os.path.exists(shot):
        os.remove(shot)
    subprocess.run(browser + ["--hide-scrollbars", "--window-size=1400,900", f"--screenshot={shot}", url],
                   capture_output=True, timeout=120)
    check(os.path.exists(shot) and os.path.getsize(shot) > 10000, f"the screenshot is kept at {shot}")

    # The terminal view.
    top = sojourn_run("top", nodes["a"]["http"], "--once")
    check("sojourn top - node a" in top, "sojourn top --once names the node")
    check(hunter_id in top and f"{a} > {b} > {c}" in top, "sojourn top --once lists the tour with its route")
    check(re.search(r"hops in \d+, out \d+", top) is not None and "step  latency p50" in top,
          "sojourn top --once shows hops and latencies")

    # Over TLS: HTTPS with the node's certificate; a client needs a certificate of the CA.
    sojourn_run("ca", "init", os.path.join(work, "ca"))
    for ident in ("t", "me"):
        sojourn_run("keygen", "--name", ident, "--ca", os.path.join(work, "ca"), "--out", os.path.join(work, ident))
    start("t", "--tls", os.path.join(work, "t"))
    check("https://" in open(os.path.join(work, "t.out")).read(), "a --tls node serves the dashboard over HTTPS")
    top = sojourn_run("top", nodes["t"]["http"], "--once", "--tls", os.path.join(work, "me"))
    check("sojourn top - node t" in top, "sojourn top --tls reads it with a certificate of the CA")
    bare = subprocess.run([sojourn, "top", nodes["t"]["http"], "--once"], capture_output=True, text=True, timeout=30)
    check(bare.returncode == 3, f"without a certificate it is refused (exit {bare.returncode}: {bare.stderr.strip()})")
    import ssl
    context = ssl.create_default_context(cafile=os.path.join(work, "me", "ca.crt"))
    context.check_hostname = False
    context.load_cert_chain(os.path.join(work, "me", "me.crt"), os.path.join(work, "me", "me.key"))
    with urllib.request.urlopen(f"https://{nodes['t']['http']}/metrics", context=context, timeout=10) as r:
        tls_families = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
    counts = {(s.labels["listener"], s.labels["outcome"]): s.value for s in tls_families["sojourn_tls_handshakes"].samples}
    check(counts.get(("http", "ok"), 0) >= 1 and counts.get(("http", "refused"), 0) >= 1,
          f"the HTTPS handshakes are counted, accepted and refused ({counts})")
    print("PASSED")
finally:
    for n in nodes.values():
        n["proc"].send_signal(signal.SIGTERM)
    for n in nodes.values():
        try:
            n["proc"].wait(timeout=10)
        except subprocess.TimeoutExpired:
            n["proc"].kill()
    shutil.rmtree(work, ignore_errors=True)
