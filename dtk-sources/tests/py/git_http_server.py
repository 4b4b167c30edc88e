#!/usr/bin/env python3
"""A git smart-HTTP(S) server on 127.0.0.1 for the git kind's tests: `git http-backend`
(the real git's CGI program) behind a small threaded HTTP server.

    git_http_server.py --root DIR [--tls] [--require-auth VALUE]

- Repositories are served from DIR/repos (`https://127.0.0.1:PORT/USER/REPO` is
  DIR/repos/USER/REPO, bare or not).
- --tls: HTTPS with a certificate for 127.0.0.1 signed by a test CA made at start-up (with
  the `cryptography` package); the CA's certificate is written to DIR/ca.pem, for the
  client to trust (SSL_CERT_FILE).
- Every request's Authorization header (or "-") is appended, one line per request, to
  DIR/auth.log, so a test can see which credentials reached the server.
- --require-auth VALUE: requests without exactly `Authorization: VALUE` get 401.
- Every request is also logged to DIR/requests.log as `METHOD PATH STATUS`, followed by
  ` early` when it came before the Retry-After the server had last given had passed.
- DIR/busy holding `COUNT SECONDS STATUS` (e.g. `2 1 503`): the next COUNT requests are
  answered STATUS with `Retry-After: SECONDS` (the file is rewritten with COUNT - 1, then
  removed).
- DIR/trickle holding `DELAY [FAST]`: the pack (the answer to a POST other than protocol
  v2's `ls-refs`) is sent one byte every DELAY seconds, after its first FAST bytes (default
  0) at full speed (and the rest at full speed once the file is removed); the request is
  logged again as `POST PATH trickled`.

Prints the port on the first line of stdout, then serves until killed or until its
standard input is closed (so a server started by a test process ends with it).
"""

import argparse
import datetime
import http.server
import os
import ssl
import subprocess
import sys
import threading
import time


def make_certificates(root):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dtk test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_path = os.path.join(root, "ca.pem")
    cert_path = os.path.join(root, "server.pem")
    key_path = os.path.join(root, "server.key")
    with open(ca_path, "wb") as f:
        f.write(ca.public_bytes(pem))
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(pem))
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return cert_path, key_path


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root = None
    require_auth = None
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.cgi()

    def do_POST(self):
        self.cgi()

    busy_until = 0.0

    def log_request_line(self, status, early):
        with open(os.path.join(self.root, "requests.log"), "a") as f:
            f.write("%s %s %d%s\n" % (self.command, self.path, status, " early" if early else ""))

    def busy(self):
        """The (status, seconds) to answer with while DIR/busy says so, else None."""
        path = os.path.join(self.root, "busy")
        try:
            with open(path) as f:
                count, seconds, status = f.read().split()
        except (FileNotFoundError, ValueError):
            return None
        count = int(count) - 1
        if count > 0:
            with open(path, "w") as f:
                f.write("%d %s %s" % (count, seconds, status))
        else:
            os.remove(path)
        return int(status), int(seconds)

    def cgi(self):
        auth = self.headers.get("Authorization")
        with self.lock:
            with open(os.path.join(self.root, "auth.log"), "a") as f:
                f.write((auth or "-") + "\n")
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = self.read_chunked()
        else:
            body = self.rfile.read(length) if length else b""
        with self.lock:
            now = time.monotonic()
            early = now < Handler.busy_until
            busy = self.busy()
            if busy:
                Handler.busy_until = now + busy[1]
            self.log_request_line(busy[0] if busy else 200, early)
        if busy:
            self.send_response(busy[0])
            self.send_header("Retry-After", str(busy[1]))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.require_auth is not None and auth != self.require_auth:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="dtk test"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": os.path.join(self.root, "repos"),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
            "GIT_CONFIG_NOSYSTEM": "1",
            "HOME": self.root,
        }
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        out = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True
        ).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = out.partition(b"\n\n")
        status = 200
        headers = []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        # Only the pack (the `fetch` command of protocol v2, or any v0 POST) trickles.
        trickle = self.trickle() if self.command == "POST" and b"command=ls-refs" not in body else None
        if trickle is None:
            self.wfile.write(payload)
            return
        with self.lock:
            with open(os.path.join(self.root, "requests.log"), "a") as f:
                f.write("%s %s trickled\n" % (self.command, self.path))
        delay, fast = trickle
        try:
            self.wfile.write(payload[:fast])
            self.wfile.flush()
            for i in range(fast, len(payload)):
                if self.trickle() is None:
                    # Cleared meanwhile: the rest at full speed.
                    self.wfile.write(payload[i:])
                    break
                self.wfile.write(payload[i : i + 1])
                self.wfile.flush()
                time.sleep(delay)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def trickle(self):
        try:
            with open(os.path.join(self.root, "trickle")) as f:
                words = f.read().split()
            return float(words[0]), int(words[1]) if len(words) > 1 else 0
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def read_chunked(self):
        data = b""
        while True:
            size = int(self.rfile.readline().strip().split(b";")[0], 16)
            if size == 0:
                self.rfile.readline()
                return data
            data += self.rfile.read(size)
            self.rfile.readline()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--tls", action="store_true")
    p.add_argument("--require-auth")
    a = p.parse_args()
    os.makedirs(os.path.join(a.root, "repos"), exist_ok=True)
    Handler.root = a.root
    Handler.require_auth = a.require_auth
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if a.tls:
        cert, key = make_certificates(a.root)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    sys.stdout.close()

    def watch_parent():
        while sys.stdin.buffer.read(4096):
            pass
        os._exit(0)

    threading.Thread(target=watch_parent, daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
