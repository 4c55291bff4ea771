"""TLS ([server] tls_cert_file / tls_key_file) and mutual TLS (tls_client_ca_file), with
certificates made for the test by `cryptography`."""
from __future__ import annotations

import contextlib
import datetime
import ipaddress
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from quota.v1 import admin_service_pb2 as apb
from quota.v1 import admin_service_pb2_grpc as apb_grpc

from quota_server.server import QuotaServer, StartupError
from tests.support.config import build_config


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject: str, key, issuer_name: str, issuer_key, *, ca: bool = False, server: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path | bytes]:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate, as files."""
    root = tmp_path_factory.mktemp("pki")
    ca_key = _key()
    ca = _cert("test-ca", ca_key, "test-ca", ca_key, ca=True)
    server_key, client_key = _key(), _key()
    server = _cert("localhost", server_key, "test-ca", ca_key, server=True)
    client = _cert("billing-backend", client_key, "test-ca", ca_key)
    out: dict[str, Path | bytes] = {}
    for name, data in [("ca", ca.public_bytes(serialization.Encoding.PEM)),
                       ("server", server.public_bytes(serialization.Encoding.PEM)),
                       ("server_key", _pem_key(server_key)),
                       ("client", client.public_bytes(serialization.Encoding.PEM)),
                       ("client_key", _pem_key(client_key))]:
        path = root / f"{name}.pem"
        path.write_bytes(data)
        out[name] = path
        out[name + "_bytes"] = data
    return out


async def _serving(channel: grpc.aio.Channel) -> bool:
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
    except grpc.RpcError:
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


@contextlib.asynccontextmanager
async def tls_server(config_data: dict, pki: dict, *, client_ca: bool = False) -> AsyncIterator[str]:
    """A started QuotaServer with the test certificate (and client CA); yields its target."""
    config_data["server"].update(tls_cert_file=str(pki["server"]), tls_key_file=str(pki["server_key"]))
    if client_ca:
        config_data["server"]["tls_client_ca_file"] = str(pki["ca"])
    server = QuotaServer(build_config(config_data))
    await server.start()
    try:
        yield f"localhost:{server.port}"
    finally:
        await server.stop()


async def test_tls_serves_tls_clients_only(server_config_data, pki):
    """Goal: with a certificate and key the server speaks TLS: a client that trusts the CA works
    (an admin call too), a plaintext client does not get through."""
    async with tls_server(server_config_data, pki) as target:
        credentials = grpc.ssl_channel_credentials(root_certificates=pki["ca_bytes"])
        async with grpc.aio.secure_channel(target, credentials) as channel:
            assert await _serving(channel)
            admin = apb_grpc.AdminServiceStub(channel)
            reply = await admin.UpsertAccount(apb.UpsertAccountRequest(account_id="a", plan_id="prepaid"))
            assert reply.created
        async with grpc.aio.insecure_channel(target) as plain:
            assert not await _serving(plain)


async def test_mutual_tls_requires_a_client_certificate_from_the_ca(server_config_data, pki, caplog):
    """Goal: with tls_client_ca_file, only clients presenting a certificate signed by that CA
    get through; the startup line says mutual TLS (it read the same as plaintext)."""
    caplog.set_level(logging.INFO, logger="quota.server")
    async with tls_server(server_config_data, pki, client_ca=True) as target:
        assert "(mutual TLS; storage" in caplog.text, caplog.text
        anonymous = grpc.ssl_channel_credentials(root_certificates=pki["ca_bytes"])
        async with grpc.aio.secure_channel(target, anonymous) as channel:
            assert not await _serving(channel)
        with_cert = grpc.ssl_channel_credentials(root_certificates=pki["ca_bytes"], private_key=pki["client_key_bytes"],
                                                 certificate_chain=pki["client_bytes"])
        async with grpc.aio.secure_channel(target, with_cert) as channel:
            assert await _serving(channel)


@pytest.mark.parametrize("files, problem", [
    ({"tls_cert_file": "missing.pem"}, "server.tls_cert_file: cannot read"),
    ({"tls_key_file": "not-pem"}, "server.tls_key_file: "),
    # PEM files that gRPC only refused at bind time, naming server.listen:
    ({"tls_key_file": "client_key"}, "server.tls_cert_file / server.tls_key_file: .* not a certificate and its "
                                     "private key"),
    ({"tls_cert_file": "server_key", "tls_key_file": "server"}, "server.tls_cert_file / server.tls_key_file"),
    ({"tls_client_ca_file": "server_key"}, "server.tls_client_ca_file: .* holds no CA certificate"),
])
async def test_a_bad_tls_file_stops_the_server_naming_the_key(server_config_data, pki, tmp_path, files, problem):
    """Goal: an unreadable or non-PEM file, a key that is not the certificate's, swapped cert
    and key files, or a client CA file without a certificate is a startup error that names the
    key; nothing is opened (the store stays free for the next try)."""
    (tmp_path / "not-pem").write_text("hello")
    paths = {"missing.pem": tmp_path / "missing.pem", "not-pem": tmp_path / "not-pem", "client_key": pki["client_key"],
             "server_key": pki["server_key"], "server": pki["server"]}
    files = {"tls_cert_file": str(pki["server"]), "tls_key_file": str(pki["server_key"]),
             **{key: str(paths[name]) for key, name in files.items()}}
    server_config_data["server"].update(files)
    server = QuotaServer(build_config(server_config_data))
    with pytest.raises(StartupError, match=problem):
        await server.start()
    server_config_data["server"].update(tls_cert_file=str(pki["server"]), tls_key_file=str(pki["server_key"]))
    server_config_data["server"].pop("tls_client_ca_file", None)
    again = QuotaServer(build_config(server_config_data))
    await again.start()
    await again.stop()


async def test_quotactl_connects_with_tls_and_a_client_certificate(server_config_data, pki):
    """Goal: quotactl --tls-ca/--tls-cert/--tls-key reach a mutual-TLS server; without a client
    certificate the call fails with a non-zero exit."""
    import asyncio
    import io

    from quota_server import cli

    async with tls_server(server_config_data, pki, client_ca=True) as target:
        base = ["--target", target, "--timeout", "3", "--tls-ca", str(pki["ca"])]
        out, err = io.StringIO(), io.StringIO()
        code = await asyncio.to_thread(cli.main, base + ["--tls-cert", str(pki["client"]), "--tls-key",
                                                         str(pki["client_key"]), "account", "upsert", "t-1",
                                                         "--plan", "prepaid"], stdout=out, stderr=err)
        assert code == 0, err.getvalue()
        code = await asyncio.to_thread(cli.main, base + ["--json", "account", "get", "t-1"], stdout=(out := io.StringIO()),
                                       stderr=io.StringIO())
        assert code == 1 and out.getvalue() == ""  # the handshake fails: an RPC error, no output
        code = await asyncio.to_thread(cli.main, base + ["--tls-cert", str(pki["client"]), "account", "get", "t-1"],
                                       stdout=io.StringIO(), stderr=(err := io.StringIO()))
        assert code == 2 and "--tls-cert and --tls-key go together" in err.getvalue()
