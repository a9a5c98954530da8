"""The command line as an operator meets it (SPEC §2, §3): --check-config, --print-example-config,
--version, and refusing to start without a config."""

import os
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


def postern(*args, **kwargs):
    return subprocess.run([harness.postern_binary(), *args], capture_output=True, text=True,
                          timeout=30, **kwargs)


class CommandLine(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="postern-cli-")

    def tearDown(self):
        subprocess.run(["rm", "-rf", self.dir], check=False)

    def write(self, name, text):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_version(self):
        out = postern("--version")
        self.assertEqual(out.returncode, 0)
        self.assertRegex(out.stdout, r"^postern \d+\.\d+\.\d+\n$")

    def test_example_config_passes_the_checker(self):
        example = postern("--print-example-config")
        self.assertEqual(example.returncode, 0)
        self.assertIn("[[listener]]", example.stdout)
        self.assertIn("# ", example.stdout, "the example is commented")
        path = self.write("example.toml", example.stdout)
        out = postern("--check-config", path)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("OK", out.stdout)

    def test_shipped_configs_pass_the_checker(self):
        folder = os.path.join(harness.ROOT, "deploy", "quickstart")
        import pki
        pki.Pki(os.path.join(folder, "certs")).create()  # what the quickstart makes first
        for name in sorted(os.listdir(folder)):
            if name.endswith(".toml"):
                out = postern("--check-config", os.path.join(folder, name))
                self.assertEqual(out.returncode, 0, f"{name}: {out.stderr}")

    def test_check_config_lists_every_error_with_position(self):
        path = self.write("bad.toml", """[global]
workers = "many"

[[listener]]
name = "imap"
protocol = "imap"
listen = "0.0.0.0:143"
tls = "startls"
backend = "imap-pool"
colour = "blue"
""")
        out = postern("--check-config", path)
        self.assertEqual(out.returncode, 1)
        lines = out.stderr.splitlines()
        self.assertIn(f"{path}:2:1: global.workers: expected an integer, got a string", lines)
        self.assertIn(f"{path}:8:1: listener[0].tls: expected one of none|starttls|implicit, "
                      f'got "startls"', lines)
        self.assertIn(f'{path}:9:1: listener[0].backend: no [[backend]] is named "imap-pool"',
                      lines)
        self.assertIn(f"{path}:10:1: listener[0].colour: unknown key", lines)
        self.assertEqual(lines[-1], f"{path}: 4 errors")

    def test_run_refuses_an_invalid_config(self):
        path = self.write("bad.toml", "[[listener]]\nname = 1\n")
        out = postern("--config", path)
        self.assertEqual(out.returncode, 1)
        self.assertIn("listener[0].name: expected a string, got an integer", out.stderr)

    def test_missing_file(self):
        out = postern("--check-config", os.path.join(self.dir, "absent.toml"))
        self.assertEqual(out.returncode, 1)
        self.assertIn("cannot read the file", out.stderr)

    def test_no_config_says_how_to_get_one(self):
        out = postern()
        self.assertEqual(out.returncode, 2)
        self.assertIn("--print-example-config", out.stderr)

    def test_port_already_in_use_fails_to_start(self):
        import socket
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            path = self.write("busy.toml", f"""[metrics]
listen = ""
[[listener]]
name = "imap"
protocol = "imap"
listen = "127.0.0.1:{port}"
backend = "pool"
[[backend]]
name = "pool"
servers = ["127.0.0.1:1"]
""")
            out = postern("--config", path)
        self.assertEqual(out.returncode, 1)
        self.assertIn(f"cannot listen on 127.0.0.1:{port}", out.stderr)


if __name__ == "__main__":
    unittest.main()
