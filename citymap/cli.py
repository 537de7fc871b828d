"""``citystream map``: serve the city map and its API."""

from __future__ import annotations

import argparse
import logging
import secrets

from citystream.settings import CitymapSettings, Settings, TokenGrant

DESCRIPTION = "Serve the live city map and its API (OpenAPI at /api/v1/docs)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="listen address (default: settings, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="HTTP port (default: settings, 8080)")
    parser.add_argument("--no-live", action="store_true", help="do not tail Kafka (no SSE data)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])


def demo_tokens() -> tuple[TokenGrant, ...]:
    """One random token per role, for a machine whose settings name none."""
    return tuple(
        TokenGrant(token=secrets.token_urlsafe(18), role=role, name=f"demo-{role}")
        for role in ("operator", "utility", "viewer")
    )


def with_overrides(settings: Settings, host: str | None, port: int | None) -> Settings:
    cm = settings.citymap
    update: dict[str, object] = {}
    if host:
        update["host"] = host
    if port:
        update["port"] = port
    if not cm.tokens:
        update["tokens"] = demo_tokens()
    new_cm = CitymapSettings.model_validate({**cm.model_dump(), **update})
    return settings.model_copy(update={"citymap": new_cm})


def run(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from citymap.app import create_app
    from citystream.worker import setup_logging

    setup_logging(args.log_level)
    generated = not settings.citymap.tokens
    settings = with_overrides(settings, args.host, args.port)
    cm = settings.citymap
    base = f"http://{cm.host}:{cm.port}"
    print(f"City map: {base}/   API docs: {base}/api/v1/docs", flush=True)
    if generated:
        print("No tokens configured (CITYSTREAM_CITYMAP__TOKENS); made these for this run:")
        for g in cm.tokens:
            print(f"  {g.role:<9} {base}/#token={g.token}")
    app = create_app(settings, live=not args.no_live)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    uvicorn.run(
        app,
        host=cm.host,
        port=cm.port,
        log_level=args.log_level.lower(),
        timeout_graceful_shutdown=3,
    )
    return 0


def main() -> int:
    """``python -m citymap.cli``: the same as ``citystream map`` (used by the benchmark)."""
    from citystream.settings import load_settings

    parser = argparse.ArgumentParser(prog="citymap", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(), load_settings())


if __name__ == "__main__":
    raise SystemExit(main())
