#!/usr/bin/env python3
"""A registry token service for the tests of the `docker` kind: the realm of a registry
configured with `auth: token` (the "bearer-token dance" of the OCI distribution spec).
Standard library plus the `cryptography` package.

    python3 token_server.py --cert CERT.pem --issuer ISSUER --service SERVICE \\
        --user USER --password PASSWORD [--port 0] [--log FILE] [--ctl DIR] \\
        [--key ec|rsa | --key-file KEY.pem]

At startup it generates an EC P-256 key (ES256 tokens; `--key rsa`: RSA 2048 and RS256;
`--key-file`: a PEM private key of either type) and a self-signed certificate for it,
writes the certificate to CERT.pem (the registry's `auth.token.rootcertbundle`), binds
127.0.0.1 (port 0: any free port), prints the port on the first line of stdout, then
serves until killed.

  GET /token?service=SERVICE&scope=repository:NAME:pull,push[&scope=...]
      answers {"token": JWT, "access_token": JWT, "expires_in": 300, "issued_at": ...}.
      The JWT carries the certificate in its `x5c` header (the registry checks it against
      its rootcertbundle) and the claims iss (ISSUER), sub (the user, or "" when
      anonymous), aud (the service asked for), exp, nbf, iat, jti and `access`: one entry
      per `repository` scope with the actions granted.
      Policy: anonymous requests get `pull` only (when they ask for it); requests with the
      right HTTP Basic credentials get every action they ask for; wrong Basic credentials
      get 401 (and no token). Scopes of other types are granted nothing.

Switches, files in the --ctl DIR (remove them to switch back):
  fields      the reply's token fields, comma-separated (default "token,access_token"):
              "access_token" answers as an OAuth2 token endpoint does.
  expired     tokens are issued already expired (beyond the registry's minute of leeway),
              so the registry refuses them.

The --log FILE gets one JSON object a line per request: method, path (without query),
service, account, scopes (as asked), auth ("anonymous", "valid" or "invalid"; the password
is never written), user, granted (the scopes granted, `repository:NAME:ACTIONS`), status.
"""

import argparse
import base64
import datetime
import json
import os
import secrets
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

ARGS = None
KEY = None
CERT_DER = b""
LOG_LOCK = threading.Lock()
LIFETIME = 300


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def ctl(name):
    if not ARGS.ctl:
        return None
    p = os.path.join(ARGS.ctl, name)
    if not os.path.exists(p):
        return None
    with open(p) as f:
        return f.read().strip()


def make_key(kind, key_file):
    if key_file:
        with open(key_file, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
        if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
            sys.exit(f"{key_file}: not an EC or RSA private key")
        if isinstance(key, ec.EllipticCurvePrivateKey) and not isinstance(
            key.curve, ec.SECP256R1
        ):
            sys.exit(f"{key_file}: EC keys must be P-256 (ES256)")
        return key
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def self_signed(key):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dtk test token issuer")])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )


def sign(signing_input):
    """The JWS signature of `signing_input`: raw r||s for ES256, PKCS#1 v1.5 for RS256."""
    if isinstance(KEY, ec.EllipticCurvePrivateKey):
        der = KEY.sign(signing_input, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return KEY.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())


def jwt(claims):
    alg = "ES256" if isinstance(KEY, ec.EllipticCurvePrivateKey) else "RS256"
    header = {"typ": "JWT", "alg": alg, "x5c": [base64.b64encode(CERT_DER).decode()]}
    signing_input = (
        b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64url(json.dumps(claims, separators=(",", ":")).encode())
    ).encode()
    return signing_input.decode() + "." + b64url(sign(signing_input))


def parse_scope(scope):
    """`repository:NAME:a,b` as (type, name, [actions]); None when malformed."""
    kind, sep, rest = scope.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not sep or not sep2 or not kind or not name:
        return None
    return kind, name, [a for a in actions.split(",") if a]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "dtk-token-server/1"

    def log_message(self, fmt, *args):  # quiet
        pass

    def basic(self):
        """("anonymous" | "valid" | "invalid", user)."""
        header = self.headers.get("Authorization")
        if header is None:
            return "anonymous", ""
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return "invalid", ""
        try:
            user, sep, password = base64.b64decode(value.strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return "invalid", ""
        if sep and user == ARGS.user and secrets.compare_digest(password, ARGS.password):
            return "valid", user
        return "invalid", user

    def record(self, entry):
        if not ARGS.log:
            return
        with LOG_LOCK:
            with open(ARGS.log, "a") as f:
                f.write(json.dumps(entry, sort_keys=True) + "\n")

    def reply(self, status, obj, headers=None):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_POST(self):
        # The OAuth2 form (grant_type=password|refresh_token) is not offered; docker and
        # containers/image fall back to GET on 404/405.
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        entry = {"method": "POST", "path": urlsplit(self.path).path, "status": 405}
        self.record(entry)
        self.reply(405, {"errors": [{"code": "UNSUPPORTED", "message": "use GET"}]})

    def do_GET(self):
        try:
            self.handle_get()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def handle_get(self):
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        auth, user = self.basic()
        entry = {
            "method": "GET",
            "path": url.path,
            "service": (query.get("service") or [""])[0],
            "account": (query.get("account") or [""])[0],
            "scopes": query.get("scope", []),
            "auth": auth,
            "user": user,
            "granted": [],
        }
        if url.path != "/token":
            entry["status"] = 404
            self.record(entry)
            self.reply(404, {"errors": [{"code": "NOT_FOUND", "message": url.path}]})
            return
        if auth == "invalid":
            entry["status"] = 401
            self.record(entry)
            self.reply(
                401,
                {"errors": [{"code": "UNAUTHORIZED", "message": "invalid credentials"}]},
                {"WWW-Authenticate": 'Basic realm="dtk test token server"'},
            )
            return
        access = {}
        for scope in entry["scopes"]:
            for one in scope.split(" "):
                parsed = parse_scope(one)
                if parsed is None or parsed[0] != "repository":
                    continue
                _, name, actions = parsed
                allowed = actions if auth == "valid" else [a for a in actions if a == "pull"]
                have = access.setdefault(name, [])
                have.extend(a for a in allowed if a not in have)
        grants = [
            {"type": "repository", "name": n, "actions": a} for n, a in access.items() if a
        ]
        entry["granted"] = [f"repository:{g['name']}:{','.join(g['actions'])}" for g in grants]
        now = int(time.time())
        if ctl("expired") is not None:
            now -= 3600
        claims = {
            "iss": ARGS.issuer,
            "sub": user,
            "aud": entry["service"],
            "exp": now + LIFETIME,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": grants,
        }
        token = jwt(claims)
        fields = [f.strip() for f in (ctl("fields") or "token,access_token").split(",")]
        body = {f: token for f in fields if f in ("token", "access_token")}
        body["expires_in"] = LIFETIME
        body["issued_at"] = (
            datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
            .isoformat()
            .replace("+00:00", "Z")
        )
        entry["status"] = 200
        self.record(entry)
        self.reply(200, body)


def main():
    global ARGS, KEY, CERT_DER
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cert", required=True, help="where to write the certificate (PEM)")
    ap.add_argument("--issuer", required=True)
    ap.add_argument("--service", required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--log", help="one JSON line per request")
    ap.add_argument("--ctl", help="a directory of switches")
    ap.add_argument("--key", choices=["ec", "rsa"], default="ec")
    ap.add_argument("--key-file", help="a PEM private key (EC P-256 or RSA) to use")
    ARGS = ap.parse_args()
    KEY = make_key(ARGS.key, ARGS.key_file)
    cert = self_signed(KEY)
    CERT_DER = cert.public_bytes(serialization.Encoding.DER)
    tmp = ARGS.cert + ".partial"
    with open(tmp, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp, ARGS.cert)
    server = ThreadingHTTPServer(("127.0.0.1", ARGS.port), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
