"""``instant402 sandbox``: the whole product offline in one command.

The web app runs on PORT; the OpenRouter emulator on PORT+1; the devnet chain's JSON-RPC (at ``/``) and the
facilitator (``/facilitator``) on PORT+2. The chain lives in memory (balances start afresh on every start); the
database, the master key, the account keys and the demo data live in the data dir and are reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

from instant402.config import Mode, Settings

SANDBOX_CONTROL_HINT = "control API at {emulator}/_emulator (see docs/emulator.md)"


@dataclass
class Ports:
    web: int
    emulator: int
    chain: int

    @classmethod
    def from_base(cls, port: int) -> Ports:
        return cls(port, port + 1, port + 2)


def _check_free(port: int) -> None:
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            raise SystemExit(f"port {port} is in use: pick another base port with --port")


class _ThreadServer:
    """A uvicorn server on a background thread (the emulator and the chain, beside the web app)."""

    def __init__(self, app, port: int):
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise SystemExit("a sandbox service failed to start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class _OwnSignalsServer(uvicorn.Server):
    """uvicorn re-raises Ctrl-C after shutting down; the sandbox handles the signal itself and exits quietly."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


async def _serve_until_signal(server: uvicorn.Server) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    await server.serve()


def sandbox_settings(ports: Ports, data_dir: Path, devnet=None) -> Settings:
    extra = {}
    if devnet is not None:
        extra = {
            "network": devnet.network,
            "asset_address": devnet.token,
            "asset_name": devnet.asset_name,
            "asset_version": devnet.asset_version,
            "buyer_private_key": devnet.buyers[0].private_key,
        }
    return Settings(
        mode=Mode.sandbox,
        data_dir=data_dir,
        database_url=None,
        host="127.0.0.1",
        port=ports.web,
        public_url=f"http://127.0.0.1:{ports.web}",
        openrouter_base_url=f"http://127.0.0.1:{ports.emulator}/api/v1",
        facilitator_url=f"http://127.0.0.1:{ports.chain}/facilitator",
        chain_rpc_url=f"http://127.0.0.1:{ports.chain}/",
        log_format="text",
        **extra,
    )


async def prepare(settings: Settings, payout_address: str):
    """Migrate, sync the catalog from the emulator, and create the demo data."""
    from instant402.db import Database
    from instant402.db.migrate import upgrade
    from instant402.keys.vault import load_vault
    from instant402.sandbox.demo import ensure_catalog, ensure_demo

    db = Database(settings)
    try:
        await upgrade(db.engine)
        await ensure_catalog(db, settings)
        return await ensure_demo(db, settings, load_vault(settings), payout_address)
    finally:
        await db.dispose()


def _register_sandbox_key(emulator_url: str, key: str) -> None:
    r = httpx.post(f"{emulator_url}/_emulator/keys", json={"key": key, "limit": "25", "label": "sandbox"}, timeout=10)
    r.raise_for_status()


def write_manifest(path: Path, settings: Settings, ports: Ports, devnet, demo) -> dict:
    manifest = {
        "url": settings.public_url,
        "rpc_url": f"http://127.0.0.1:{ports.chain}/",
        "facilitator_url": settings.facilitator_url,
        "openrouter_base_url": settings.openrouter_base_url,
        "network": devnet.network,
        "asset": devnet.token,
        "buyer_private_key": devnet.buyers[0].private_key,
        "buyer_address": devnet.buyers[0].address,
        "demo_creator": {"username": demo.username, "password_file": str(settings.data_dir / "demo-password.txt")},
        "demo_resources": [f"{settings.public_url}/{slug}" for slug in demo.resources],
    }
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    path.chmod(0o600)
    return manifest


def run_sandbox(port: int, data_dir: Path) -> None:
    from instant402.app import create_app
    from instant402.devnet import Devnet, build_facilitator, facilitator_app, rpc_app
    from instant402.emulator.app import create_emulator_app
    from instant402.logs import configure_logging
    from instant402.sandbox.demo import sandbox_openrouter_key

    ports = Ports.from_base(port)
    for p in (ports.web, ports.emulator, ports.chain):
        _check_free(p)
    data_dir = data_dir.resolve()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    print("instant402 sandbox: starting the chain, the emulator and the marketplace…", flush=True)

    devnet = Devnet.start(data_dir=data_dir, buyers=3)
    facilitator = build_facilitator(devnet)
    settings = sandbox_settings(ports, data_dir, devnet)
    configure_logging(settings)

    chain_app = Starlette(routes=[Mount("/facilitator", facilitator_app(facilitator)), Mount("/", rpc_app(devnet))])
    services = [
        # Keys creators register with the emulator are kept in the data dir: they still work after a restart.
        _ThreadServer(create_emulator_app(control=True, keys_file=data_dir / "emulator-keys.json"), ports.emulator),
        _ThreadServer(chain_app, ports.chain),
    ]
    for service in services:
        service.start()
    try:
        emulator_root = f"http://127.0.0.1:{ports.emulator}"
        _register_sandbox_key(emulator_root, sandbox_openrouter_key(data_dir))
        payout = devnet.new_account().address
        demo = asyncio.run(prepare(settings, payout))
        buyer_key_file = data_dir / "buyer.key"
        buyer_key_file.write_text(devnet.buyers[0].private_key + "\n")
        buyer_key_file.chmod(0o600)
        manifest = write_manifest(data_dir / "sandbox.json", settings, ports, devnet, demo)
        _print_banner(settings, manifest, demo, buyer_key_file, emulator_root)
        config = uvicorn.Config(
            create_app(settings, facilitator=facilitator),
            host="127.0.0.1",
            port=ports.web,
            access_log=False,
            log_level="warning",
            **settings.uvicorn_proxy_options,
        )
        asyncio.run(_serve_until_signal(_OwnSignalsServer(config)))
    finally:
        for service in services:
            service.stop()
        print("instant402 sandbox stopped.", flush=True)


def _print_banner(settings: Settings, manifest: dict, demo, buyer_key_file: Path, emulator_root: str) -> None:
    first = demo.resources[0]
    password = demo.password or (settings.data_dir / "demo-password.txt").read_text().strip()
    lines = [
        "",
        f"  marketplace     {settings.public_url}",
        f"  demo creator    {demo.username} / {password}",
        f"  emulator        {settings.openrouter_base_url}  ({SANDBOX_CONTROL_HINT.format(emulator=emulator_root)})",
        f"  chain JSON-RPC  {manifest['rpc_url']}   network {manifest['network']}  token {manifest['asset']}",
        f"  facilitator     {manifest['facilitator_url']}",
        f"  manifest        {settings.data_dir / 'sandbox.json'}",
        "",
        "  Pay a demo resource from another terminal:",
        f"    .venv/bin/instant402 call {first} --param topic=lighthouses --url {settings.public_url} "
        f"--key-file {buyer_key_file} --yes",
        "",
        "  Ctrl-C stops everything.",
        "",
    ]
    print("\n".join(lines), flush=True)
