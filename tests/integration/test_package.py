"""The Debian package (issue 17): tools/build-deb.sh packages the binary under test; lintian
reports no errors; the package installs into a throw-away root (dpkg --root, its maintainer
script creating the postern user there); the installed binary accepts the installed config;
and the man pages document exactly the configuration keys the example config (every key the
loader knows, at its default) has. Skipped, with the reason, where dpkg-deb or lintian are
missing or the binary under test is a sanitizer build (it is not what ships)."""

import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

ROOT = harness.ROOT
MAN = os.path.join(ROOT, "deploy", "man")
SANITIZED = os.environ.get("POSTERN_SANITIZED", "0") in ("1", "ON", "TRUE", "true")

work = None
deb = None


def setUpModule():
    global work, deb
    for tool in ("dpkg-deb", "dpkg-shlibdeps", "lintian"):
        if shutil.which(tool) is None:
            raise unittest.SkipTest(f"{tool} is not installed (tools/install-deps.sh installs it)")
    if SANITIZED:
        raise unittest.SkipTest("a sanitizer build is not what the package ships")
    work = tempfile.mkdtemp(prefix="postern-package-")
    env = dict(os.environ, POSTERN_BIN=harness.postern_binary(), OUT_DIR=work)
    done = subprocess.run(["bash", os.path.join(ROOT, "tools", "build-deb.sh")], env=env,
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        raise RuntimeError(f"build-deb.sh failed:\n{done.stdout}\n{done.stderr}")
    deb = done.stdout.strip().splitlines()[-1]


def tearDownModule():
    if work is not None:
        shutil.rmtree(work, ignore_errors=True)


def run(*args, **kwargs):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120, **kwargs)


class Package(unittest.TestCase):
    def test_lintian_reports_no_errors(self):
        done = run("lintian", "--tag-display-limit", "0", deb)
        errors = [line for line in done.stdout.splitlines() if line.startswith("E:")]
        self.assertEqual(errors, [], done.stdout)

    def test_contents_and_conffiles(self):
        listing = run("dpkg-deb", "-c", deb).stdout
        for path in ("./usr/sbin/postern", "./lib/systemd/system/postern.service",
                     "./usr/lib/sysusers.d/postern.conf", "./etc/postern/postern.toml",
                     "./usr/share/man/man8/postern.8.gz",
                     "./usr/share/man/man5/postern.toml.5.gz",
                     "./usr/share/doc/postern/copyright"):
            self.assertIn(path, listing)
        control = os.path.join(work, "control")
        run("dpkg-deb", "-e", deb, control)
        with open(os.path.join(control, "conffiles")) as f:
            self.assertEqual(f.read().split(), ["/etc/postern/postern.toml"])
        fields = run("dpkg-deb", "-f", deb, "Depends").stdout
        for library in ("libuv1", "libssl3", "libprometheus-cpp-pull", "libtomlplusplus"):
            self.assertIn(library, fields)

    def test_installs_into_a_throwaway_root_and_checks_its_config(self):
        root = os.path.join(work, "root")
        for sub in ("var/lib/dpkg/info", "var/lib/dpkg/updates"):
            os.makedirs(os.path.join(root, sub), exist_ok=True)
        open(os.path.join(root, "var/lib/dpkg/status"), "w").close()
        done = run("dpkg", f"--root={root}", "--force-depends", "--force-script-chrootless",
                   "--log=/dev/null", "-i", deb)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        status = run("dpkg", f"--root={root}", "-s", "postern").stdout
        self.assertIn("Status: install ok installed", status)
        # The maintainer script made the system user inside that root, not on this machine.
        with open(os.path.join(root, "etc", "passwd")) as f:
            self.assertRegex(f.read(), r"(?m)^postern:x:\d+:\d+:")
        binary = os.path.join(root, "usr", "sbin", "postern")
        config = os.path.join(root, "etc", "postern", "postern.toml")
        check = run(binary, "--check-config", config)
        self.assertEqual(check.returncode, 0, check.stdout + check.stderr)
        self.assertIn("OK", check.stdout + check.stderr)
        with open(os.path.join(root, "lib", "systemd", "system", "postern.service")) as f:
            unit = f.read()
        self.assertIn("ExecStart=/usr/sbin/postern --config /etc/postern/postern.toml", unit)
        self.assertNotIn("/usr/local/bin", unit)
        with gzip.open(os.path.join(root, "usr/share/man/man5/postern.toml.5.gz"), "rt") as f:
            with open(os.path.join(MAN, "postern.toml.5")) as source:
                self.assertEqual(f.read(), source.read())


def example_keys():
    """Every key of the example config, commented-out ones too, by section."""
    text = run(harness.postern_binary(), "--print-example-config").stdout
    keys = set()
    for line in text.splitlines():
        line = line.lstrip("# ").strip()
        match = re.match(r"^([a-z_]+)\s*=", line)
        if match:
            keys.add(match.group(1))
        for inline in re.findall(r"\{([^}]*)\}", line):
            keys.update(re.findall(r"([a-z_]+)\s*=", inline))
    return keys


def documented_keys():
    with open(os.path.join(MAN, "postern.toml.5")) as f:
        text = f.read()
    keys = set(re.findall(r"(?m)^\.TP\n\.B ([a-z_]+)$", text))
    # Keys of inline tables (certificates, routes, health) are set in bold in the text.
    keys.update(re.findall(r"\\fB([a-z_]+)\\fR", text))
    return keys


class ManPages(unittest.TestCase):
    def test_postern_toml_5_documents_exactly_the_keys_the_loader_knows(self):
        example = example_keys()
        documented = documented_keys()
        self.assertGreater(len(example), 50)
        self.assertEqual(sorted(example - documented), [], "keys without a man page entry")
        self.assertEqual(sorted(documented - example), [], "man page keys the loader does not know")

    def test_postern_8_lists_every_option_the_binary_has(self):
        usage = run(harness.postern_binary(), "--help")
        options = set(re.findall(r"--[a-z-]+", usage.stdout + usage.stderr))
        self.assertGreaterEqual(len(options), 4)
        with open(os.path.join(MAN, "postern.8")) as f:
            page = f.read().replace("\\-", "-")
        for option in options:
            self.assertIn(option, page)
        for signal in ("SIGHUP", "SIGTERM", "SIGINT"):
            self.assertIn(signal, page)

    def test_man_pages_render_without_warnings(self):
        if shutil.which("man") is None:
            self.skipTest("man is not installed")
        for page in ("postern.8", "postern.toml.5"):
            done = run("man", "--warnings", "-l", os.path.join(MAN, page),
                       env=dict(os.environ, MANWIDTH="80", MAN_KEEP_STDERR="1"))
            self.assertEqual(done.returncode, 0, done.stderr)
            self.assertEqual(done.stderr.strip(), "", page)


if __name__ == "__main__":
    unittest.main()
