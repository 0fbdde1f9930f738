"""Monitoring: the trainer's /metrics scraped by a real Prometheus, and the deploy/ files
checked against it (`prometheus` from Debian; where it is absent these tests say so and skip)."""
from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

import pytest
import yaml

from tests.conftest import ROOT, child_env, run

DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "kmervae.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")
needs_prometheus = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed "
                                      "(apt-get install --no-install-recommends prometheus; .ci/run does)")
TINY = ["--hidden", "64,32", "--latent", "8", "--batch-size", "48", "--workers", "0"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dashboard_queries(run_id: str) -> list[str]:
    """Every PromQL expression of the dashboard, its variables filled in as Grafana would."""
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    return [e.replace("$run", run_id).replace("$rank", ".*").replace("$__rate_interval", "15s") for e in exprs]


def alert_rules() -> list[dict]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


class Prom:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}/api/v1/"

    def get(self, path: str, **params) -> dict:
        with urllib.request.urlopen(self.base + path + "?" + urllib.parse.urlencode(params), timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.get("query", query=expr)["result"]


@pytest.fixture(scope="module")
def scraped(train_store, tmp_path_factory):
    """A 2-process gloo run serving /metrics, scraped every second by a real Prometheus."""
    if PROMETHEUS is None:
        pytest.skip("prometheus is not installed")
    d = tmp_path_factory.mktemp("monitoring")
    metrics_port, prom_port = free_port(), free_port()
    (d / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{"job_name": "kmervae", "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}]}))
    prom = subprocess.Popen([PROMETHEUS, f"--config.file={d / 'prometheus.yml'}", f"--storage.tsdb.path={d / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = child_env(OMP_NUM_THREADS="1")
    trainer = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                "-m", "train", "--data", train_store[0], "--out", str(d / "monrun"), "--epochs", "400",
                                "--log-every", "2", "--metrics-port", str(metrics_port), *TINY],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    api = Prom(prom_port)
    try:
        deadline, ready = time.time() + 180, False
        while time.time() < deadline and trainer.poll() is None:
            try:  # poll, don't sleep: the first scrape of a new target comes ~5 s after start
                ready = (len(api.query('kmervae_val_kmer_mse{run="monrun"}')) == 6
                         and len(api.query('kmervae_rank_samples_per_second{run="monrun"}')) == 2
                         and len(api.query('rate(kmervae_samples_total{run="monrun"}[15s]) > 0')) == 1)
            except OSError:
                ready = False
            if ready:
                break
            time.sleep(0.5)
        assert ready, "Prometheus never saw the run's series"
        yield api
    finally:
        os.killpg(trainer.pid, signal.SIGTERM)
        output = trainer.communicate(timeout=60)[0]
        prom.terminate()
        prom.wait(timeout=30)
        assert "metrics: http://" in output  # the main-job command says where metrics are served


@pytest.mark.slow
@needs_prometheus
def test_prometheus_scrapes_the_one_target_of_the_job(scraped):
    assert [s["value"][1] for s in scraped.query('up{job="kmervae"}')] == ["1"]


@pytest.mark.slow
@needs_prometheus
def test_validation_error_is_scraped_per_kmer_size(scraped):
    series = scraped.query('kmervae_val_kmer_mse{run="monrun"}')
    assert sorted(s["metric"]["k"] for s in series) == ["1", "2", "3", "4", "5", "6"]


@pytest.mark.slow
@needs_prometheus
def test_the_sample_count_is_the_global_batch_of_every_step(scraped):
    """Samples of all ranks (2 x 24 a step), from one scrape; a scrape may fall between the step
    count's increment and the sample count's, so the difference is 0 or one batch."""
    expr = 'kmervae_samples_total{run="monrun"} - on(run) (48 * kmervae_steps_total{run="monrun"})'
    [difference] = scraped.query(expr)
    assert float(difference["value"][1]) in (0.0, -48.0)


@pytest.mark.slow
@needs_prometheus
def test_per_rank_throughput_is_scraped_from_the_one_target(scraped):
    ranks = scraped.query('kmervae_rank_samples_per_second{run="monrun"}')
    assert sorted(s["metric"]["rank"] for s in ranks) == ["0", "1"]


@pytest.mark.slow
@needs_prometheus
def test_run_info_names_the_run_its_world_size_and_its_feed(scraped):
    info = scraped.query("kmervae_run_info")[0]["metric"]
    assert info["world_size"] == "2" and info["run"] == "monrun" and len(info["config_hash"]) == 12
    assert info["cache"] == "host" and info["cuda_graphs"] == "off"  # the feed the run uses (CPU here)


@pytest.mark.slow
@needs_prometheus
def test_no_label_is_set_twice(scraped):
    labels = {k for s in scraped.query('{__name__=~"kmervae_.*"}') for k in s["metric"]}
    assert not [k for k in labels if k.startswith("exported_")]  # Prometheus renames a label the target sets twice


@pytest.mark.slow
@needs_prometheus
def test_every_dashboard_query_returns_data(scraped):
    """Device memory is CUDA's alone: these CPU ranks export none (the host RSS beside it they do)."""
    for expr in dashboard_queries("monrun"):
        assert bool(scraped.query(expr)) != ("kmervae_rank_device_memory_bytes" in expr), f"data or none for {expr}"


@pytest.mark.slow
@needs_prometheus
def test_the_dashboard_variables_find_the_run_and_its_ranks(scraped):
    assert "monrun" in scraped.get("label/run/values", **{"match[]": "kmervae_run_info"})
    ranks = scraped.get("label/rank/values", **{"match[]": 'kmervae_rank_samples_per_second{run="monrun"}'})
    assert ranks == ["0", "1"]


@pytest.mark.slow
@needs_prometheus
def test_every_alert_rule_evaluates_on_data(scraped):
    comparison = re.compile(r"\s(>=|<=|==|!=|>|<)\s")
    for rule in alert_rules():
        scraped.query(rule["expr"])  # parses and evaluates
        for side in comparison.split(rule["expr"])[::2]:
            assert scraped.query(side), f"{rule['alert']}: no data for {side}"
    deadline = time.time() + 30
    while time.time() < deadline:  # Prometheus loaded the same file and evaluates it cleanly
        rules = [r for g in scraped.get("rules")["groups"] for r in g["rules"]]
        if len(rules) == len(alert_rules()) and all(r["health"] == "ok" for r in rules):
            break
        time.sleep(0.5)
    assert len(rules) == len(alert_rules()) and all(r["health"] == "ok" for r in rules), rules


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian package prometheus)")
def test_promtool_accepts_the_deploy_config_and_rules():
    for args in (["check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")], ["check", "rules", str(ALERTS)]):
        proc = subprocess.run([PROMTOOL, *args], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def variables(dash: dict) -> set[str]:
    return {v["name"] for v in dash["templating"]["list"]}


def test_dashboard_panel_ids_are_unique(dashboard):
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_defines_the_run_and_rank_variables(dashboard):
    assert {"run", "rank"} <= variables(dashboard)


def test_every_panel_uses_the_provisioned_datasource_and_has_a_place(dashboard):
    datasource = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    for p in dashboard["panels"]:
        assert p["datasource"]["uid"] == uid and {"h", "w", "x", "y"} <= set(p["gridPos"])


def test_a_panels_queries_have_distinct_ids(dashboard):
    for p in dashboard["panels"]:
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs))


def test_queries_use_only_defined_variables(dashboard):
    defined = variables(dashboard)
    for p in dashboard["panels"]:
        for t in p["targets"]:
            used = set(re.findall(r"\$(\w+)", t["expr"])) - {"__rate_interval", "__interval", "__range"}
            assert used <= defined, f"panel {p['title']!r} uses undefined {used - defined}"
    for var in dashboard["templating"]["list"]:
        used = set(re.findall(r"\$(\w+)", var["query"]["query"]))
        assert used <= defined - {var["name"]}


def test_grafana_provisions_the_dashboard_from_the_folder_compose_mounts():
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "kmervae.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_port_in_use_is_one_warning_and_training_goes_on(train_store, tmp_path):
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run("train", "--data", train_store[0], "--out", tmp_path, "--epochs", "1", "--metrics-port", port, *TINY)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "metrics not served" in line]
    assert len(warnings) == 1 and str(port) in warnings[0] and "training goes on" in warnings[0]
    assert "Epoch 1/1" in proc.stdout


def test_pushgateway_gets_the_final_summary(train_store, tmp_path):
    received = []

    class Gateway(http.server.BaseHTTPRequestHandler):
        def do_PUT(self):
            received.append((self.path, self.rfile.read(int(self.headers["Content-Length"])).decode()))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        run("train", "--data", train_store[0], "--out", tmp_path / "pushed", "--epochs", "1", "--metrics-port", "0",
            "--pushgateway", f"http://127.0.0.1:{server.server_port}", *TINY, check=True)
    finally:
        server.shutdown()
    assert len(received) == 1
    path, body = received[0]
    assert path == "/metrics/job/kmervae/run/pushed"
    assert "kmervae_val_loss{" in body and 'kmervae_val_kmer_mse{k="6"' in body and "kmervae_steps_total" in body
