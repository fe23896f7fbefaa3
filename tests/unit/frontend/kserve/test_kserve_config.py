"""--grpc-port: Triton's 8001 by default, 0 turns the KServe API off, `tandem up` passes it on."""

from __future__ import annotations

import pytest
from tandem.frontend.app import Frontend
from tandem.frontend.config import FrontendConfig
from tandem.launcher.up import UpConfig
from tandem.runtime.config import config_to_argv, parse_config


def test_the_default_port_is_tritons_and_0_serves_none() -> None:
    assert parse_config(FrontendConfig, [], environ={}).grpc_port == 8001
    assert Frontend(parse_config(FrontendConfig, ["--grpc-port", "9101"])).kserve is not None
    assert Frontend(parse_config(FrontendConfig, ["--grpc-port", "0"])).kserve is None
    with pytest.raises(ValueError, match="grpc_port must be in"):
        FrontendConfig(grpc_port=70000)


def test_tandem_up_hands_the_port_to_the_frontend() -> None:
    up = UpConfig(engine="mocker", grpc_port=9101)
    runtime = up.runtime(nats="nats://127.0.0.1:1", etcd="http://127.0.0.1:2")
    argv = config_to_argv(up.frontend_config(runtime), environ={})
    assert parse_config(FrontendConfig, argv, environ={}).grpc_port == 9101
    default = UpConfig(engine="mocker", grpc_port=FrontendConfig.grpc_port)
    assert "--grpc-port" not in config_to_argv(default.frontend_config(runtime), environ={})


async def test_a_taken_port_cannot_start() -> None:
    """A port in use is a StartupError (the frontend exits 78 with one line), never a share."""
    import socket

    from tandem.frontend.kserve.server import KserveServer
    from tandem.runtime.startup import StartupError
    from tandem.runtime.wire.kserve.grpc_service_pb2_grpc import GRPCInferenceServiceServicer

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        service = GRPCInferenceServiceServicer()  # never serves here
        server = KserveServer(service, 1 << 20)  # type: ignore[arg-type]
        with pytest.raises(StartupError, match="cannot listen"):
            await server.start("127.0.0.1", taken.getsockname()[1])
