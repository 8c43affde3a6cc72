"""`serve --tls-cert/--tls-key`: the same API over https."""

from __future__ import annotations

import datetime as dt
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from blfs.emulator.control import EmulatorProcess


def self_signed(directory):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_https_serves_the_same_api_and_downloads(emulator_data, tmp_path):
    server = EmulatorProcess(emulator_data, tls=self_signed(tmp_path))
    try:
        emulator = server.emulator
        assert server.url.startswith("https://127.0.0.1:") and server.url.endswith("/api")
        token = emulator.token()
        dataset = next(d for d in emulator.db("datasets") if d["status"] == "stored")
        reply = emulator.get(
            f"/warehouse/dataset/download/{dataset['_id']}", emulator.token("alice")
        )
        assert len(reply.content) == dataset["size"]
        assert emulator.get("/warehouse/project", token).status_code == 200
    finally:
        server.stop()
