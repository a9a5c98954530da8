"""A throw-away PKI for the tests and the quickstart, made with the openssl command: a CA, server
certificates (ECDSA P-256 and RSA-2048 for one name set, ECDSA for a second name), a client
certificate, a backend certificate, and an OCSP response for the main certificate."""

import os
import subprocess


def run(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)


MAIN_NAMES = "DNS:mail.example.test,DNS:localhost,IP:127.0.0.1,IP:::1"


class Pki:
    def __init__(self, folder):
        self.dir = folder
        os.makedirs(folder, exist_ok=True)

    def path(self, name):
        return os.path.join(self.dir, name)

    def exists(self):
        return os.path.exists(self.path("mail-ecdsa.ocsp.der"))

    def _key(self, name, kind):
        if kind == "rsa":
            run("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out",
                f"{name}.key", cwd=self.dir)
        else:
            run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out",
                f"{name}.key", cwd=self.dir)

    def _issue(self, name, subject, extensions, kind="ecdsa", days=30):
        self._key(name, kind)
        run("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr",
            cwd=self.dir)
        with open(self.path(f"{name}.ext"), "w") as f:
            f.write(extensions)
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", str(days), "-extfile", f"{name}.ext", "-out",
            f"{name}.pem", cwd=self.dir)
        os.remove(self.path(f"{name}.csr"))
        os.remove(self.path(f"{name}.ext"))

    def _server(self, name, names, kind="ecdsa", days=30):
        cn = names.split(",")[0].split(":", 1)[1]
        self._issue(name, f"/CN={cn}",
                    "basicConstraints=critical,CA:FALSE\n"
                    "keyUsage=critical,digitalSignature,keyEncipherment\n"
                    "extendedKeyUsage=serverAuth\n"
                    f"subjectAltName={names}\n", kind, days)

    def create(self):
        """Makes every file unless they are there already; returns self."""
        if self.exists():
            return self
        run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-days", "60", "-subj", "/CN=postern test CA", "-keyout", "ca.key", "-out", "ca.pem",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=self.dir)
        self._server("mail-ecdsa", MAIN_NAMES, "ecdsa", days=30)
        self._server("mail-rsa", MAIN_NAMES, "rsa", days=29)
        self._server("other", "DNS:other.example.test", "ecdsa", days=20)
        self._server("backend", "DNS:backend.example.test,IP:127.0.0.1,IP:127.0.0.3", "ecdsa",
                     days=25)
        self._issue("client", "/CN=test client",
                    "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                    "extendedKeyUsage=clientAuth\n")
        # A client certificate from the right CA that expired yesterday (-days -1).
        self._key("expired", "ecdsa")
        run("req", "-new", "-key", "expired.key", "-subj", "/CN=expired client", "-out",
            "expired.csr", cwd=self.dir)
        with open(self.path("expired.ext"), "w") as f:
            f.write("extendedKeyUsage=clientAuth\n")
        run("x509", "-req", "-in", "expired.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "-1", "-extfile", "expired.ext", "-out", "expired.pem",
            cwd=self.dir)
        # A self-signed client certificate no configured CA vouches for.
        run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-days", "2", "-subj", "/CN=stranger", "-keyout", "stranger.key", "-out",
            "stranger.pem", cwd=self.dir)
        self._ocsp("mail-ecdsa")
        return self

    def _ocsp(self, name):
        """An OCSP response saying `name` is good, signed by the CA (openssl ocsp -respout)."""
        serial = subprocess.run(["openssl", "x509", "-in", f"{name}.pem", "-noout", "-serial"],
                                cwd=self.dir, check=True, capture_output=True,
                                text=True).stdout.strip().split("=", 1)[1]
        subject = subprocess.run(["openssl", "x509", "-in", f"{name}.pem", "-noout", "-subject",
                                  "-nameopt", "compat"], cwd=self.dir, check=True,
                                 capture_output=True, text=True).stdout.strip().split("=", 1)[1]
        with open(self.path("index.txt"), "w") as f:
            f.write(f"V\t391231235959Z\t\t{serial}\tunknown\t{subject.strip()}\n")
        run("ocsp", "-issuer", "ca.pem", "-cert", f"{name}.pem", "-reqout", f"{name}.ocsp.req",
            cwd=self.dir)
        run("ocsp", "-index", "index.txt", "-rsigner", "ca.pem", "-rkey", "ca.key", "-CA",
            "ca.pem", "-reqin", f"{name}.ocsp.req", "-respout", f"{name}.ocsp.der", "-ndays",
            "2", cwd=self.dir)
