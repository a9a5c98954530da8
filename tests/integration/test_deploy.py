"""The deploy/ folder (SPEC §11; issue 8): example configs, the systemd unit, the container build
file, the Kubernetes manifests, the Grafana dashboard and the Prometheus alert rules, each checked
with the tool that reads it (postern --check-config, systemd-analyze, promtool, yamllint,
kubectl kustomize) and against a real postern's /metrics, so that a renamed metric or label
breaks this test and not an operator's dashboard.

Not run here, because they need what this machine does not have: building the container image
(no container engine runs), `kubectl apply --dry-run=client` (it asks an API server for the
resource types first; `kubectl kustomize`, which renders offline, is run instead), and starting
the unit under a real systemd (`systemd-analyze verify` and `security --offline` read it)."""

import imaplib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import tomllib
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import pki as test_pki  # noqa: E402
from harness import PASSWORD, USER  # noqa: E402

DEPLOY = os.path.join(harness.ROOT, "deploy")
EXAMPLES = ["legacy-fronting.toml", "balanced-fleet.toml", "mx-edge.toml", "multi-tenant.toml"]
UNIT = os.path.join(DEPLOY, "systemd", "postern.service")
CONTAINERFILE = os.path.join(DEPLOY, "container", "Containerfile")
KUBERNETES = os.path.join(DEPLOY, "kubernetes")
DASHBOARD = os.path.join(DEPLOY, "grafana", "postern-dashboard.json")
ALERTS = os.path.join(DEPLOY, "prometheus", "postern-alerts.yml")
ALERT_TESTS = os.path.join(DEPLOY, "prometheus", "postern-alerts.test.yml")

# The certificate files the shipped configs name under /etc/postern/tls/, and the test PKI's
# file standing in for each. A config naming a file missing here fails the test: add it.
TLS_STAND_INS = {
    "mail.example.org.ecdsa.pem": "mail-ecdsa.pem",
    "mail.example.org.ecdsa.key": "mail-ecdsa.key",
    "mail.example.org.ecdsa.ocsp.der": "mail-ecdsa.ocsp.der",
    "mail.example.org.rsa.pem": "mail-rsa.pem",
    "mail.example.org.rsa.key": "mail-rsa.key",
    "mx.example.org.pem": "other.pem",
    "mx.example.org.key": "other.key",
    "internal-ca.pem": "ca.pem",
    "tls.crt": "mail-ecdsa.pem",  # the Kubernetes Secret's keys
    "tls.key": "mail-ecdsa.key",
}
TLS_PATH = re.compile(r"/etc/postern/tls/([A-Za-z0-9_.\-]+)")

workdir = None
pki = None
tls_dir = None


def setUpModule():
    global workdir, pki, tls_dir
    workdir = tempfile.mkdtemp(prefix="postern-deploy-")
    pki = test_pki.Pki(os.path.join(workdir, "pki")).create()
    tls_dir = os.path.join(workdir, "tls")
    os.makedirs(tls_dir)
    for name, source in TLS_STAND_INS.items():
        shutil.copy(pki.path(source), os.path.join(tls_dir, name))


def tearDownModule():
    if os.environ.get("POSTERN_KEEP_RUN") != "1":
        shutil.rmtree(workdir, ignore_errors=True)


def run(*args, **kwargs):
    kwargs.setdefault("timeout", 120)
    return subprocess.run(args, capture_output=True, text=True, **kwargs)


def need(tool):
    path = shutil.which(tool)
    if path is None:
        raise AssertionError(f"{tool} is not installed (bash tools/install-deps.sh installs it)")
    return path


def read(path):
    with open(path) as f:
        return f.read()


def seconds(duration):
    """A config duration ("250ms", "30s", "10m", "1h") in seconds."""
    match = re.fullmatch(r"(\d+)(ms|s|m|h)", duration)
    assert match, duration
    return int(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def with_test_certificates(text):
    """The config text with every /etc/postern/tls/ file replaced by the test PKI's stand-in."""
    unknown = sorted(set(TLS_PATH.findall(text)) - set(TLS_STAND_INS))
    assert not unknown, f"no test stand-in for {unknown}: add them to TLS_STAND_INS"
    text = text.replace("/etc/postern/tls/", tls_dir + "/")
    for line in text.splitlines():
        assert "/etc/postern" not in line.split("#", 1)[0], f"no stand-in for: {line}"
    return text


def check_config(test, text, name):
    path = os.path.join(workdir, name)
    with open(path, "w") as f:
        f.write(with_test_certificates(text))
    out = run(harness.postern_binary(), "--check-config", path, timeout=30)
    test.assertEqual(out.returncode, 0, f"{name}:\n{out.stderr}")
    test.assertIn("OK", out.stdout)


def load_yaml_documents(path):
    import yaml  # PyYAML: in the machine image; yamllint depends on it too
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


# --- Example configs --------------------------------------------------------------------------

class ExampleConfigs(unittest.TestCase):
    def config(self, name):
        return tomllib.loads(read(os.path.join(DEPLOY, "examples", name)))

    def test_examples_pass_the_checker_with_real_certificates(self):
        for name in EXAMPLES:
            with self.subTest(name):
                check_config(self, read(os.path.join(DEPLOY, "examples", name)), name)

    def test_the_checker_really_loads_the_certificates(self):
        # Without the stand-ins the paths do not exist on this machine, and the checker says so.
        out = run(harness.postern_binary(), "--check-config",
                  os.path.join(DEPLOY, "examples", "legacy-fronting.toml"), timeout=30)
        self.assertEqual(out.returncode, 1)
        self.assertIn("cannot load certificate", out.stderr)

    def test_examples_are_commented(self):
        for name in EXAMPLES:
            text = read(os.path.join(DEPLOY, "examples", name))
            comments = [line for line in text.splitlines() if line.lstrip().startswith("#")]
            self.assertGreater(len(comments), 15, name)

    def test_legacy_fronting_offers_every_port_in_front_of_plaintext_servers(self):
        config = self.config("legacy-fronting.toml")
        ports = {(int(listener["listen"].rsplit(":", 1)[1]), listener["tls"])
                 for listener in config["listener"]}
        expected = {(110, "starttls"), (143, "starttls"), (25, "starttls"), (26, "starttls"),
                    (587, "starttls"), (995, "implicit"), (993, "implicit"), (465, "implicit")}
        self.assertEqual(ports, expected)
        for backend in config["backend"]:
            self.assertEqual(backend.get("tls", "none"), "none", backend["name"])
        for listener in config["listener"]:
            if listener["listen"].endswith((":25", ":26")):
                self.assertFalse(listener["require_tls"], "an MX must not require STARTTLS")
                self.assertFalse(listener["allow_auth"])

    def test_balanced_fleet_logs_in_and_hashes_users_over_three_servers(self):
        config = self.config("balanced-fleet.toml")
        for listener in config["listener"]:
            self.assertEqual(listener.get("mode"), "login", listener["name"])
        hashed = [backend for backend in config["backend"]
                  if backend.get("balance") == "user_hash"]
        self.assertTrue(hashed)
        for backend in hashed:
            self.assertEqual(len(backend["servers"]), 3, backend["name"])

    def test_multi_tenant_routes_every_tenant_to_its_own_pool(self):
        config = self.config("multi-tenant.toml")
        pools = {backend["name"] for backend in config["backend"]}
        routed = set()
        for listener in config["listener"]:
            for route in listener.get("routes", []):
                self.assertIn(route["backend"], pools)
                routed.add(route["backend"])
                if "sni" in route and listener["tls"] == "starttls":
                    self.assertEqual(listener.get("mode"), "login", listener["name"])
        self.assertEqual(routed, {"tenant-a", "tenant-b"})

    def test_mx_edge_is_opportunistic_without_auth_and_forwards_with_xclient(self):
        config = self.config("mx-edge.toml")
        backends = {backend["name"]: backend for backend in config["backend"]}
        port25 = [listener for listener in config["listener"]
                  if listener["listen"].endswith(":25")]
        self.assertTrue(port25)
        for listener in port25:
            self.assertEqual(listener["protocol"], "smtp")
            self.assertEqual(listener["tls"], "starttls")
            self.assertFalse(listener["require_tls"])
            self.assertFalse(listener["allow_auth"])
            self.assertTrue(backends[listener["backend"]]["smtp_xclient"])


# --- systemd ----------------------------------------------------------------------------------

def unit_directives():
    """[Section] -> {key: [values in order]} of the unit file."""
    sections, section = {}, None
    for line in read(UNIT).splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = sections.setdefault(line.strip("[]"), {})
            continue
        key, value = line.split("=", 1)
        section.setdefault(key.strip(), []).append(value.strip())
    return sections


class SystemdUnit(unittest.TestCase):
    def unit_for_this_machine(self):
        """The unit with ExecStart pointing at the binary under test (verify checks that the
        executables exist), as postern.service in a folder of its own."""
        folder = tempfile.mkdtemp(dir=workdir)
        path = os.path.join(folder, "postern.service")
        with open(path, "w") as f:
            f.write(read(UNIT).replace("/usr/local/bin/postern", harness.postern_binary()))
        return path

    def test_systemd_analyze_verify_is_clean(self):
        # Works without a running systemd (checked on Debian 12's systemd 252): it parses the
        # unit and its executables, and prints a line for every unknown key or bad value.
        need("systemd-analyze")
        out = run("systemd-analyze", "verify", self.unit_for_this_machine())
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertEqual((out.stdout + out.stderr).strip(), "")

    def test_security_exposure_is_low(self):
        need("systemd-analyze")
        out = run("systemd-analyze", "security", "--offline=true", "--threshold=25",
                  "--no-pager", self.unit_for_this_machine())
        if "offline" in out.stderr and "unrecognized" in out.stderr:
            self.skipTest("this systemd-analyze has no --offline (systemd < 250)")
        self.assertEqual(out.returncode, 0, out.stdout[-3000:] + out.stderr)

    def test_required_hardening_and_lifecycle(self):
        service = unit_directives()["Service"]

        def one(key):
            self.assertIn(key, service)
            return service[key][-1]

        self.assertEqual(one("AmbientCapabilities"), "CAP_NET_BIND_SERVICE")
        self.assertEqual(one("CapabilityBoundingSet"), "CAP_NET_BIND_SERVICE")
        for key, value in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                           ("ProtectHome", "yes"), ("PrivateTmp", "yes"),
                           ("PrivateDevices", "yes"), ("KillSignal", "SIGTERM")]:
            self.assertEqual(one(key), value, key)
        self.assertTrue(one("User") == "postern" or service.get("DynamicUser") == ["yes"])
        families = one("RestrictAddressFamilies").split()
        self.assertIn("AF_INET", families)
        self.assertIn("AF_INET6", families)
        self.assertNotIn("AF_PACKET", families)
        self.assertIn("@system-service", service["SystemCallFilter"][0].split())
        self.assertIn("/bin/kill -HUP $MAINPID", service["ExecReload"])
        config_path = one("ExecStart").split("--config", 1)[1].strip()
        self.assertIn(f"--check-config {config_path}", one("ExecStartPre"))
        # The drain must finish before systemd kills it, and descriptors must not run out first.
        stop_timeout = seconds(one("TimeoutStopSec"))
        descriptors = int(one("LimitNOFILE"))
        for name in EXAMPLES:
            config = tomllib.loads(read(os.path.join(DEPLOY, "examples", name)))["global"]
            self.assertGreater(stop_timeout, seconds(config.get("shutdown_grace", "30s")), name)
            self.assertGreater(descriptors, 2 * config.get("max_connections", 20000), name)
        self.assertEqual(unit_directives()["Install"]["WantedBy"], ["multi-user.target"])


# --- Container --------------------------------------------------------------------------------

def containerfile_stages():
    """[{"from": FROM arguments, "lines": [(INSTRUCTION, arguments)]}] per build stage."""
    stages = []
    for instruction, arguments in containerfile_instructions():
        if instruction == "FROM":
            stages.append({"from": arguments, "lines": []})
        else:
            stages[-1]["lines"].append((instruction, arguments))
    return stages


def containerfile_instructions():
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in read(CONTAINERFILE).splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        line = pending + line
        pending = ""
        instruction, _, arguments = line.strip().partition(" ")
        out.append((instruction.upper(), arguments.strip()))
    return out


class ContainerBuildFile(unittest.TestCase):
    # The image itself is not built here: no container engine runs on this machine.

    def test_multi_stage_debian_12_non_root(self):
        stages = containerfile_stages()
        self.assertEqual(len(stages), 2)
        self.assertRegex(stages[0]["from"], r"^debian:12(-slim)? AS build$")
        self.assertEqual(stages[1]["from"], "debian:12-slim")
        runtime = dict(stages[1]["lines"])
        user = runtime["USER"].split(":")[0]
        self.assertTrue(user.isdigit() and int(user) > 0, "a numeric, non-root USER")
        self.assertEqual(json.loads(runtime["ENTRYPOINT"]),
                         ["/usr/local/bin/postern", "--config", "/etc/postern/postern.toml"])
        exposed = {int(port) for port in runtime["EXPOSE"].split()}
        self.assertLessEqual({25, 110, 143, 465, 587, 993, 995, 9464}, exposed)
        self.assertIn("HEALTHCHECK", runtime)
        self.assertIn("--from=build", runtime["COPY"])

    def test_build_stage_copies_every_source_folder(self):
        copied = set()
        for instruction, arguments in containerfile_stages()[0]["lines"]:
            if instruction == "COPY":
                sources = arguments.split()[:-1]
                for source in sources:
                    self.assertTrue(os.path.exists(os.path.join(harness.ROOT, source)), source)
                    copied.add(source.rstrip("/"))
        cmake = read(os.path.join(harness.ROOT, "CMakeLists.txt"))
        folders = {path.split("/")[0] for path in re.findall(r"\b([\w/]+\.cpp)\b", cmake)
                   if not path.startswith("tests/")}
        self.assertTrue(folders)
        self.assertLessEqual(folders, copied, "a source folder the build needs is not copied")

    def test_runtime_stage_installs_every_linked_library(self):
        if os.environ.get("POSTERN_SANITIZED", "0") in ("1", "ON", "TRUE", "true"):
            self.skipTest("a sanitizer build links its runtimes; the image build does not")
        if shutil.which("dpkg") is None:
            self.skipTest("dpkg tells which Debian package holds each library")
        installed = set()
        for instruction, arguments in containerfile_stages()[1]["lines"]:
            if instruction == "RUN" and "apt-get install" in arguments:
                installed |= {word for word in arguments.split() if re.match(r"^[a-z0-9]", word)}
        in_base_image = {"libc6", "libgcc-s1", "libstdc++6", "zlib1g"}
        ldd = run("ldd", harness.postern_binary())
        self.assertEqual(ldd.returncode, 0, ldd.stderr)
        for library in re.findall(r"=> (/\S+)", ldd.stdout):
            owner = run("dpkg", "-S", os.path.realpath(library))
            if owner.returncode != 0:
                owner = run("dpkg", "-S", library)
            self.assertEqual(owner.returncode, 0, f"no package holds {library}")
            package = owner.stdout.split(":")[0]
            with self.subTest(library=library):
                self.assertIn(package, installed | in_base_image)


# --- Kubernetes -------------------------------------------------------------------------------

class KubernetesManifests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.files = sorted(name for name in os.listdir(KUBERNETES) if name.endswith(".yaml"))
        cls.documents = []
        for name in cls.files:
            if name != "kustomization.yaml":
                cls.documents += load_yaml_documents(os.path.join(KUBERNETES, name))

    def kind(self, kind, name=None):
        found = [doc for doc in self.documents if doc["kind"] == kind
                 and (name is None or doc["metadata"]["name"] == name)]
        self.assertEqual(len(found), 1, f"{kind} {name or ''}")
        return found[0]

    def postern_config(self):
        return self.kind("ConfigMap")["data"]["postern.toml"]

    def container(self):
        return self.kind("Deployment")["spec"]["template"]["spec"]["containers"][0]

    def test_kustomization_lists_every_manifest(self):
        kustomization = load_yaml_documents(os.path.join(KUBERNETES, "kustomization.yaml"))[0]
        self.assertEqual(sorted(kustomization["resources"]),
                         [name for name in self.files if name != "kustomization.yaml"])
        kinds = sorted(doc["kind"] for doc in self.documents)
        self.assertEqual(kinds, sorted(["Namespace", "ConfigMap", "Secret", "Deployment",
                                        "PodDisruptionBudget", "Service", "Service",
                                        "ServiceMonitor"]))

    def test_config_map_config_passes_the_checker(self):
        check_config(self, self.postern_config(), "kubernetes.toml")

    def test_load_balancer_ports_reach_proxy_protocol_listeners(self):
        config = tomllib.loads(self.postern_config())
        listeners = {int(listener["listen"].rsplit(":", 1)[1]): listener
                     for listener in config["listener"]}
        container_ports = {port["name"]: port["containerPort"]
                           for port in self.container()["ports"]}
        service = self.kind("Service", "postern")
        self.assertEqual(service["spec"]["type"], "LoadBalancer")
        self.assertEqual(service["spec"]["externalTrafficPolicy"], "Local")
        annotations = service["metadata"]["annotations"]
        aws = "service.beta.kubernetes.io/aws-load-balancer-proxy-protocol"
        self.assertEqual(annotations[aws], "*")
        standard = {143: ("imap", "starttls"), 993: ("imap", "implicit"),
                    110: ("pop3", "starttls"), 995: ("pop3", "implicit"),
                    25: ("smtp", "starttls"), 587: ("smtp", "starttls"),
                    465: ("smtp", "implicit")}
        self.assertEqual({port["port"] for port in service["spec"]["ports"]}, set(standard))
        for port in service["spec"]["ports"]:
            with self.subTest(port=port["port"]):
                listener = listeners[container_ports[port["targetPort"]]]
                self.assertEqual((listener["protocol"], listener["tls"]), standard[port["port"]])
                self.assertTrue(listener["accept_proxy_protocol"])
                self.assertTrue(listener["trusted_proxies"])
        self.assertEqual(len(listeners), len(service["spec"]["ports"]),
                         "every listener has a Service port")

    def test_deployment_runs_unprivileged_and_is_probed_on_the_metrics_port(self):
        config = tomllib.loads(self.postern_config())
        pod = self.kind("Deployment")["spec"]["template"]["spec"]
        container = self.container()
        self.assertTrue(pod["securityContext"]["runAsNonRoot"])
        self.assertGreater(pod["securityContext"]["runAsUser"], 0)
        image_user = dict(containerfile_stages()[1]["lines"])["USER"].split(":")[0]
        self.assertEqual(pod["securityContext"]["runAsUser"], int(image_user))
        context = container["securityContext"]
        self.assertTrue(context["readOnlyRootFilesystem"])
        self.assertFalse(context["allowPrivilegeEscalation"])
        self.assertEqual(context["capabilities"]["drop"], ["ALL"])
        self.assertNotIn("add", context["capabilities"], "high container ports need no caps")
        for port in container["ports"]:
            self.assertGreaterEqual(port["containerPort"], 1024, port["name"])
        metrics_port = int(config["metrics"]["listen"].rsplit(":", 1)[1])
        named = {port["name"]: port["containerPort"] for port in container["ports"]}
        for probe in ("readinessProbe", "livenessProbe"):
            get = container[probe]["httpGet"]
            self.assertEqual(get["path"], "/metrics", probe)
            self.assertEqual(named[get["port"]], metrics_port, probe)
        pause = 0
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {})
        if pre_stop.get("command", [""])[0].endswith("sleep"):
            pause = int(pre_stop["command"][1])
        grace = seconds(config["global"].get("shutdown_grace", "30s"))
        self.assertGreater(pod["terminationGracePeriodSeconds"], pause + grace)
        mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
        self.assertEqual(mounts["/etc/postern/postern.toml"], "config")
        self.assertEqual(mounts["/etc/postern/tls"], "tls")
        secret = self.kind("Secret")
        self.assertEqual(secret["type"], "kubernetes.io/tls")
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        self.assertEqual(volumes["tls"]["secret"]["secretName"], secret["metadata"]["name"])
        self.assertEqual(volumes["config"]["configMap"]["name"],
                         self.kind("ConfigMap")["metadata"]["name"])

    def test_service_monitor_scrapes_the_metrics_service(self):
        monitor = self.kind("ServiceMonitor")
        self.assertEqual(monitor["apiVersion"], "monitoring.coreos.com/v1")
        service = self.kind("Service", "postern-metrics")
        labels = service["metadata"]["labels"]
        for key, value in monitor["spec"]["selector"]["matchLabels"].items():
            self.assertEqual(labels.get(key), value)
        port_names = {port["name"] for port in service["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            self.assertIn(endpoint["port"], port_names)
            self.assertEqual(endpoint["path"], "/metrics")
        # The load balancer must not expose the metrics port to the internet.
        public = self.kind("Service", "postern")
        self.assertNotIn("metrics", {port["name"] for port in public["spec"]["ports"]})

    def test_kustomize_renders_offline(self):
        if shutil.which("kubectl") is None:
            self.skipTest("kubectl is not installed (Debian 12 does not package it)")
        out = run("kubectl", "kustomize", KUBERNETES, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("kind: ServiceMonitor", out.stdout)
        self.assertIn("namespace: postern", out.stdout)
        self.assertIn("image: registry.example.org/mail/postern:0.1.0", out.stdout)


# --- YAML, alert rules, dashboard -------------------------------------------------------------

class Yaml(unittest.TestCase):
    def test_deploy_yaml_is_yamllint_clean(self):
        need("yamllint")
        files = [os.path.join(folder, name) for folder, _, names in os.walk(DEPLOY)
                 for name in names if name.endswith((".yaml", ".yml"))]
        self.assertGreaterEqual(len(files), 10)
        # The default rules, warnings included; run from the root, which has no .yamllint.
        out = run("yamllint", "--strict", "--format", "parsable", *sorted(files),
                  cwd=harness.ROOT)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)


def alert_rules():
    import yaml
    with open(ALERTS) as f:
        return [rule for group in yaml.safe_load(f)["groups"] for rule in group["rules"]]


def dashboard_expressions():
    with open(DASHBOARD) as f:
        dashboard = json.load(f)
    return [target["expr"] for panel in dashboard["panels"]
            for target in panel.get("targets", [])]


class AlertRules(unittest.TestCase):
    def test_promtool_check_rules(self):
        out = run(need("promtool"), "check", "rules", ALERTS)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertIn("SUCCESS", out.stdout)

    def test_promtool_unit_tests_pass(self):
        out = run(need("promtool"), "test", "rules", ALERT_TESTS,
                  cwd=os.path.dirname(ALERT_TESTS))
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertIn("SUCCESS", out.stdout)

    def test_unit_tests_see_every_alert_fire_and_stay_quiet(self):
        import yaml
        with open(ALERT_TESTS) as f:
            tests = yaml.safe_load(f)["tests"]
        fired, quiet = set(), set()
        for case in tests:
            for check in case.get("alert_rule_test", []):
                (fired if check["exp_alerts"] else quiet).add(check["alertname"])
        names = {rule["alert"] for rule in alert_rules()}
        self.assertEqual(fired, names, "every alert has a case where it fires")
        self.assertTrue(quiet, "some cases assert that nothing fires")

    def test_rules_cover_the_issue(self):
        text = " ".join(rule["expr"] for rule in alert_rules())
        for metric in ["postern_tls_certificate_expiry_timestamp_seconds",
                       "postern_backend_certificate_expiry_timestamp_seconds",
                       "postern_backend_up", "postern_tls_handshakes_total",
                       "postern_connections_active", "postern_connections_rejected_total",
                       "postern_config_reloads_total"]:
            self.assertIn(metric, text)
        self.assertIn("14 * 86400", text)
        for rule in alert_rules():
            self.assertIn(rule["labels"]["severity"], ("warning", "critical"), rule["alert"])
            self.assertIn("summary", rule["annotations"], rule["alert"])


class Dashboard(unittest.TestCase):
    def setUp(self):
        with open(DASHBOARD) as f:
            self.dashboard = json.load(f)

    def test_valid_dashboard_with_panels_on_a_templated_data_source(self):
        dashboard = self.dashboard
        self.assertTrue(dashboard["title"])
        self.assertTrue(dashboard["uid"])
        variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
        self.assertEqual(variables["datasource"]["type"], "datasource")
        self.assertEqual(variables["datasource"]["query"], "prometheus")
        self.assertIn("listener", variables)
        self.assertIn("listener", variables["listener"]["definition"])
        graphs = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
        self.assertGreaterEqual(len(graphs), 20)
        ids = [panel["id"] for panel in dashboard["panels"]]
        self.assertEqual(len(ids), len(set(ids)))
        for panel in graphs:
            with self.subTest(panel=panel["title"]):
                self.assertEqual(panel["datasource"]["uid"], "${datasource}")
                self.assertTrue(panel["targets"])
                for target in panel["targets"]:
                    self.assertEqual(target["datasource"]["uid"], "${datasource}")
                position = panel["gridPos"]
                self.assertLessEqual(position["x"] + position["w"], 24)
        uses_listener = [panel for panel in graphs
                         if any('listener=~"$listener"' in target["expr"]
                                for target in panel["targets"])]
        self.assertGreaterEqual(len(uses_listener), 10)

    def test_every_expression_is_valid_promql(self):
        # promtool parses each expression as a recording rule, Grafana's variables filled in.
        rules = []
        for index, expr in enumerate(dashboard_expressions()):
            expr = expr.replace("$__rate_interval", "5m")
            expr = re.sub(r"\$\w+", ".*", expr)
            rules.append({"record": f"dashboard:expression_{index}", "expr": expr})
        path = os.path.join(workdir, "dashboard-rules.yml")
        with open(path, "w") as f:
            json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
        out = run(need("promtool"), "check", "rules", path)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)

    def test_dashboard_covers_the_issue(self):
        text = "\n".join(dashboard_expressions())
        self.assertRegex(text, r"by \(protocol, port\) \(postern_connections_active")
        self.assertRegex(text, r"by \(protocol, port\) \(\s*rate\(postern_bytes_total")
        self.assertIn('postern_tls_handshakes_total{', text)
        self.assertIn('result="failed"', text)
        self.assertIn('postern_starttls_total{', text)
        self.assertIn('postern_backend_up{', text)
        self.assertIn('postern_tls_certificate_expiry_timestamp_seconds{', text)
        self.assertIn('postern_backend_certificate_expiry_timestamp_seconds{', text)
        # Issue 17: what the runtime API did (drained/disabled servers, kicked sessions).
        self.assertIn('postern_backend_admin_state{', text)
        self.assertIn('reason="kicked"', text)


# --- Against a real postern -------------------------------------------------------------------

METRIC_NAME = re.compile(r"\bpostern_[a-z0-9_]+\b")
SELECTOR = re.compile(r"\b(postern_[a-z0-9_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
# Labels Prometheus adds to every scraped series, and the histogram bucket bound.
SCRAPE_LABELS = {"job", "instance"}


class RealScrape(unittest.TestCase):
    """Every metric and label the dashboard and the alert rules use exists in what a running
    postern exports, and on a healthy postern no alert fires."""

    @classmethod
    def setUpClass(cls):
        cls.servers = harness.MailServers(pki=pki).start()
        try:
            cls.postern = harness.Postern(cls.config_text())
            cls.postern.start()
            cls.produce_every_series()
            cls.scrape = cls.postern.scrape()
        except Exception:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "postern", None) is not None:
            cls.postern.cleanup()
        cls.servers.stop()

    @classmethod
    def config_text(cls):
        servers = cls.servers
        health = 'health = { interval = "1s", timeout = "1s", rise = 1, fall = 3 }'
        return f"""[global]
shutdown_grace = "2s"

[metrics]
listen = "127.0.0.1:0"

[tls]
certificates = [
  {{ cert = "{pki.path('mail-ecdsa.pem')}", key = "{pki.path('mail-ecdsa.key')}" }},
  {{ cert = "{pki.path('mail-rsa.pem')}", key = "{pki.path('mail-rsa.key')}" }},
]

[[listener]]
name = "imap"
protocol = "imap"
listen = "127.0.0.1:0"
tls = "starttls"
backend = "imap-pool"

[[listener]]
name = "imaps"
protocol = "imap"
listen = "127.0.0.1:0"
tls = "implicit"
backend = "imaps-pool"

[[listener]]
name = "smtp"
protocol = "smtp"
listen = "127.0.0.1:0"
tls = "starttls"
require_tls = false
allow_auth = false
backend = "smtp-pool"

[[backend]]
name = "imap-pool"
servers = ["{servers.host}:{servers.imap_port}"]
{health}

[[backend]]
name = "imaps-pool"
servers = ["{servers.host}:{servers.imaps_port}"]
tls = "implicit"
ca_file = "{pki.path('ca.pem')}"
{health}

[[backend]]
name = "smtp-pool"
servers = ["{servers.host}:{servers.smtp_port}"]
{health}
"""

    @classmethod
    def metric(cls, name, **labels):
        return cls.postern.metric(name, **labels)

    @classmethod
    def produce_every_series(cls):
        """Series that exist only once something happened: a refused plaintext login
        (postern_auth_total), a TLS session through a TLS backend, a good and a bad reload."""
        postern = cls.postern
        host, port = postern.address("imap")
        with socket.create_connection((host, port), timeout=10) as s, s.makefile("rb") as reader:
            reader.readline()
            s.sendall(f"a1 LOGIN {USER} {PASSWORD}\r\n".encode())
            assert b"PRIVACYREQUIRED" in reader.readline()
            s.sendall(b"a2 LOGOUT\r\n")
            reader.read()
        context = ssl.create_default_context(cafile=pki.path("ca.pem"))
        host, port = postern.address("imaps")
        client = imaplib.IMAP4_SSL(host, port, ssl_context=context, timeout=10)
        client.login(USER, PASSWORD)
        client.logout()
        assert harness.wait_until(lambda: cls.metric("postern_sessions_closed_total") >= 2)

        postern.process.send_signal(signal.SIGHUP)
        assert harness.wait_until(
            lambda: cls.metric("postern_config_reloads_total", result="ok") >= 1)
        good = read(postern.config_path)
        with open(postern.config_path, "w") as f:
            f.write(good + "\n[global]\nworkers = 1\n")  # a second [global]: does not load
        postern.process.send_signal(signal.SIGHUP)
        assert harness.wait_until(
            lambda: cls.metric("postern_config_reloads_total", result="failed") >= 1)
        with open(postern.config_path, "w") as f:
            f.write(good)

        # The TLS backend's certificate is seen by its health checks; every server is up.
        assert harness.wait_until(lambda: cls.metric(
            "postern_backend_certificate_expiry_timestamp_seconds", backend="imaps-pool") > 0)
        assert harness.wait_until(lambda: cls.metric("postern_backend_up") == 3), \
            postern.log()

    # --- the scrape, parsed ---
    def series(self):
        out = []
        for line in self.scrape.splitlines():
            if not line or line.startswith("#"):
                continue
            match = SAMPLE.match(line)
            self.assertIsNotNone(match, line)
            out.append((match.group(1), match.group(2) or "", match.group(3)))
        return out

    def labels_by_metric(self):
        names, values = {}, {}
        for name, labels, _ in self.series():
            names.setdefault(name, set())
            for key, value in LABEL.findall(labels):
                names[name].add(key)
                values.setdefault((name, key), set()).add(value)
        return names, values

    def check_expressions(self, expressions, where):
        names, values = self.labels_by_metric()
        for expr in expressions:
            used = set(METRIC_NAME.findall(expr))
            with self.subTest(where=where, expr=expr):
                if not used:
                    self.assertRegex(expr, r"^up\{", "names no postern metric")
                    continue
                missing = sorted(used - set(names))
                self.assertEqual(missing, [], f"not in a real scrape of postern: {missing}")
                known = set().union(*(names[name] for name in used)) | SCRAPE_LABELS
                for name, matchers in SELECTOR.findall(expr):
                    for label, operator, value in MATCHER.findall(matchers):
                        self.assertIn(label, names[name] | SCRAPE_LABELS, f"{name}{{{label}}}")
                        if operator == "=" and "$" not in value and label not in SCRAPE_LABELS:
                            self.assertIn(value, values.get((name, label), set()),
                                          f'{name}{{{label}="{value}"}} is never exported')
                for group in LABEL_LIST.findall(expr):
                    for label in filter(None, (word.strip() for word in group.split(","))):
                        self.assertIn(label, known, f"label {label}")

    def test_dashboard_uses_only_exported_metrics_and_labels(self):
        self.check_expressions(dashboard_expressions(), "dashboard")

    def test_alert_rules_use_only_exported_metrics_and_labels(self):
        self.check_expressions([rule["expr"] for rule in alert_rules()], "alert rules")

    def test_alerts_stay_quiet_on_a_healthy_postern(self):
        """The scrape becomes promtool input, held for 40 minutes (counters flat, certificate
        expiry as time left, since promtool's clock starts at 0); no alert may fire."""
        now = time.time()
        input_series = [{"series": 'up{job="postern",instance="scraped:9464"}',
                         "values": "1x40"}]
        for name, labels, value in self.series():
            if not name.startswith("postern_"):
                continue
            number = float(value)
            if number != number:  # NaN
                continue
            if name.endswith("_expiry_timestamp_seconds") and number > 0:
                number -= now
            extra = 'job="postern",instance="scraped:9464"'
            selector = f"{name}{{{labels},{extra}}}" if labels else f"{name}{{{extra}}}"
            input_series.append({"series": selector, "values": f"{number:.17g}x40"})
        checks = [{"eval_time": "30m", "alertname": rule["alert"], "exp_alerts": []}
                  for rule in alert_rules()]
        test_file = os.path.join(workdir, "quiet.test.yml")
        with open(test_file, "w") as f:
            json.dump({"rule_files": [ALERTS], "evaluation_interval": "1m",
                       "tests": [{"interval": "1m", "input_series": input_series,
                                  "alert_rule_test": checks}]}, f)
        out = run(need("promtool"), "test", "rules", test_file)
        self.assertEqual(out.returncode, 0, out.stdout[-5000:] + out.stderr)


if __name__ == "__main__":
    unittest.main()
