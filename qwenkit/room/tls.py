"""A TLS certificate for a router that listens on the LAN: made by the kit, or the leader's own.

The kit makes a self-signed certificate (openssl, EC P-256, 30 days) naming the addresses the
router is reached by. Participants pass the certificate file to their client, so nothing on the
network can read keys or prompts or pretend to be the router:

    ctx = ssl.create_default_context(cafile="room-cert.pem")
    OpenAI(base_url="https://10.0.0.2:4000/v1", api_key=KEY, http_client=httpx.Client(verify=ctx))
"""
from __future__ import annotations

import ipaddress
import shutil
import socket
import subprocess
from pathlib import Path

from qwenkit.errors import RoomError

__all__ = ["DAYS", "fingerprint", "lan_addresses", "make_self_signed"]

DAYS = 30


def lan_addresses() -> list[str]:
    """This machine's non-loopback IPv4 addresses that a UDP 'connect' would use (no packet is sent)."""
    out = []
    for probe in ("10.255.255.255", "192.168.255.255", "172.31.255.255"):
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((probe, 9))
                ip = s.getsockname()[0]
                if not ip.startswith("127.") and ip not in out:
                    out.append(ip)
        except OSError:
            pass
    return out


def make_self_signed(dir: Path, names: list[str]) -> tuple[Path, Path]:
    """Write room-cert.pem (hand it out) and room-key.pem (mode 0600, stays here); returns both."""
    openssl = shutil.which("openssl")
    if not openssl:
        raise RoomError("openssl is not installed, so the kit cannot make a certificate",
                        "sudo apt-get install openssl, or give your own: --tls-cert FILE --tls-key FILE")
    dir.mkdir(parents=True, exist_ok=True)
    cert, key = dir / "room-cert.pem", dir / "room-key.pem"
    sans = []
    for n in dict.fromkeys(names + ["127.0.0.1", "localhost"]):
        try:
            ipaddress.ip_address(n)
            sans.append(f"IP:{n}")
        except ValueError:
            sans.append(f"DNS:{n}")
    key.touch(mode=0o600, exist_ok=True)
    key.chmod(0o600)
    r = subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-days", str(DAYS), "-subj", "/CN=qwenkit room",
                        "-addext", "subjectAltName=" + ",".join(sans),
                        "-keyout", str(key), "-out", str(cert)], capture_output=True, text=True, timeout=60,
                       check=False)
    if r.returncode != 0:   # openssl's stderr says why: raised with it below
        raise RoomError(f"openssl could not make the certificate: {r.stderr.strip()[-400:]}",
                        "give your own: --tls-cert FILE --tls-key FILE")
    key.chmod(0o600)
    return cert, key


def fingerprint(cert: Path) -> str:
    """SHA-256 fingerprint, to read out to the room (they can compare it with what they got)."""
    import hashlib
    import ssl
    der = ssl.PEM_cert_to_DER_cert(Path(cert).read_text())
    h = hashlib.sha256(der).hexdigest().upper()
    return ":".join(h[i:i + 2] for i in range(0, len(h), 2))
