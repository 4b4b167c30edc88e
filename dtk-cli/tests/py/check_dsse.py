"""Verify a DSSE envelope from `dkt inspect --format slsa --sign` with securesystemslib.

    check_dsse.py ENVELOPE.json PUBLIC_KEY.pub KEYID

PUBLIC_KEY.pub is the OpenSSH public key (`dkt key show --json` .public_key). Prints the
verified statement's _type and exits 0; exits 1 when the signature does not verify; exits 3
naming what is missing when a package is not installed.
"""
import base64
import json
import sys

try:
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key
    from securesystemslib.dsse import Envelope
    from securesystemslib.exceptions import VerificationError
    from securesystemslib.signer import SSlibKey
except ImportError as e:  # never skip silently
    print(f"missing Python package: {e.name} (pip install securesystemslib cryptography)",
          file=sys.stderr)
    sys.exit(3)

envelope_file, public_file, keyid = sys.argv[1:4]
with open(envelope_file) as f:
    envelope = Envelope.from_dict(json.load(f))
with open(public_file, "rb") as f:
    public = load_ssh_public_key(f.read())
key = SSlibKey.from_crypto(public, keyid=keyid)
assert key.keytype == "ed25519", key.keytype
try:
    verified = envelope.verify([key], 1)
except VerificationError as e:
    print(f"not verified: {e}", file=sys.stderr)
    sys.exit(1)
assert keyid in verified, verified
assert envelope.payload_type == "application/vnd.in-toto+json", envelope.payload_type
statement = json.loads(envelope.payload)
print(statement["_type"])
