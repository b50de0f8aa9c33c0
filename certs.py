"""Make what TLS and SuperNode authentication need, for a local or test federation.

    python certs.py certificates/ 127.0.0.1 localhost    # a CA and a SuperLink certificate
    python certs.py --keys keys/ superlink client-1      # authentication key pairs
    cat keys/client-*.pub > keys/known-clients.csv       # the SuperNodes the SuperLink admits

For a real deployment, have your organisation's CA sign the SuperLink's certificate.
"""

import argparse
import datetime
import ipaddress
from pathlib import Path
from typing import Dict, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALID_DAYS = 365


def make_certificates(folder: Path, hosts: Sequence[str]) -> Dict[str, Path]:
    """Write `ca.crt`, and `server.pem` with its key `server.key` for `hosts`.

    `hosts` are the names and IP addresses the SuperLink is reached by: the clients
    check that the address they dial is one of them. Returns the three paths.
    """
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, server_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Flower federation CA")])
    ca_cert = (
        _certificate(ca_name, ca_name, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    names = [
        x509.IPAddress(ipaddress.ip_address(host)) if _is_ip(host) else x509.DNSName(host)
        for host in hosts
    ]
    server_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    server_cert = (
        _certificate(server_name, ca_name, server_key.public_key(), now)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {name: folder / name for name in ("ca.crt", "server.pem", "server.key")}
    paths["ca.crt"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths["server.pem"].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    paths["server.key"].write_bytes(server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    paths["server.key"].chmod(0o600)
    return paths


def make_key_pair(folder: Path, name: str) -> Dict[str, Path]:
    """Write `<name>` (private) and `<name>.pub`: an EC key pair in OpenSSH format,
    as flwr 1.10's SuperLink and SuperNode authentication reads them."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = folder / name, folder / f"{name}.pub"
    private.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    private.chmod(0o600)
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n")
    return {"private": private, "public": public}


def _certificate(subject: x509.Name, issuer: x509.Name, public_key, now: datetime.datetime):
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
    )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("names", nargs="+", help="SuperLink hosts (certificates) or key names (keys)")
    parser.add_argument("--keys", action="store_true", help="make authentication key pairs, not certificates")
    args = parser.parse_args()
    if args.keys:
        for key_name in args.names:
            print(make_key_pair(args.folder, key_name))
    else:
        print(make_certificates(args.folder, args.names))
