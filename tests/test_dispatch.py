"""Command dispatch on the control plane's model, without sockets."""

from __future__ import annotations

from pathlib import Path

from jetstream_server.commands import build_registry
from jetstream_server.commands.dispatch import Dispatcher
from jetstream_server.core.service import Service, Session
from jetstream_server.protocol.lines import Request
from jetstream_server.server import prepare_settings
from tests.conftest import PASSWORDS, make_settings


async def test_dispatch_checks_auth_names_and_parameters_before_handlers(home: Path) -> None:
    settings = make_settings(home)
    service = Service(settings, prepare_settings(settings))
    dispatcher = Dispatcher(service, build_registry(), service.fire)
    session = Session(("127.0.0.1", 5555))
    try:
        denied = await dispatcher.handle(session, Request("createManifest", {}, 1))
        assert (denied["id"], denied["code"]) == (1, "auth_required")
        ok = await dispatcher.handle(session, Request(
            "auth", {"user": "alice", "password": PASSWORDS["alice"]}, 2))
        assert ok == {"id": 2, "status": "success", "message": "Authenticated.",
                      "result": {"user": "alice"}}
        assert session.user == "alice" and not session.raised
        missing = await dispatcher.handle(session, Request("createDestination", {}, 3))
        assert missing["code"] == "missing_parameter"
        assert "destinationAddress" in missing["message"]
        queued = await dispatcher.handle(session, Request("getDestinationsAsync", {}, 4))
        request_id = queued["result"]["requestId"]
        result = await dispatcher.handle(session, Request("getRequestResult",
                                                       {"requestId": request_id}, 5))
        assert result["status"] == "success" and result["result"] == []
        ambiguous = await dispatcher.handle(session, Request("getTransfers", {}, 6))
        assert ambiguous["code"] == "ambiguous_command"
    finally:
        await service.close()


async def test_restoring_state_moves_statuses_by_the_tables(home: Path) -> None:
    """A transfer that was sending goes back to its queue; a manifest being built, a
    request running and an incoming transfer keep (or get) a status the tables allow."""
    from jetstream_server.core.store import StateStore

    (home / "state").mkdir()
    store = StateStore(home / "state")
    store.put("manifest", "m" * 32, {"id": "m" * 32, "owner": "alice", "create_time_us": 1,
                                     "user_data": {}, "status": "pending",
                                     "error_message": None, "files": [], "requested": []})
    store.put("request", "7", {"request_id": 7, "owner": "alice", "command": "x",
                               "status": "pending", "message": "", "result": None,
                               "code": None})
    store.close()
    settings = make_settings(home)
    service = Service(settings, prepare_settings(settings))
    try:
        service.restore()
        manifest = service.manifests["m" * 32]
        assert manifest.status == "error"
        assert manifest.error_message == "The server restarted while it was being built."
        record = service.requests.get(7, lambda owner: True)
        assert record.status == "error" and record.code == "internal_error"
    finally:
        await service.close()
