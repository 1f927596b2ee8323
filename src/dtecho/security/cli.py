"""``dtecho keys create|list|get|revoke|rotate``: API keys from the command line.

Works on the store the settings name (the same one the server uses). With Redis configured a
revocation or rotation is published, so running servers drop their cached entry at once;
without it they see the change within their cache TTL (0.5 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from dtecho.config import LimitProfile, Settings
from dtecho.errors import DtechoError

__all__ = ["add_keys_parser", "run_keys"]


def add_keys_parser(commands: Any) -> None:
    """Add ``keys`` and its actions to the ``dtecho`` sub-commands."""
    keys = commands.add_parser("keys", help="create, list, revoke and rotate API keys")
    actions = keys.add_subparsers(dest="keys_command", metavar="ACTION")

    create = actions.add_parser("create", help="issue a key (printed once)")
    create.add_argument("--name")
    create.add_argument("--project")
    create.add_argument("--role", action="append", default=[], dest="roles")
    create.add_argument("--model", action="append", dest="models", help="allowed model (repeat)")
    create.add_argument("--rpm", type=int, help="requests per minute")
    create.add_argument("--tpm", type=int, help="tokens per minute")
    create.add_argument("--max-parallel", type=int)
    create.add_argument("--token-budget", type=int)
    create.add_argument("--budget-period", choices=("day", "month"), default="day")
    create.add_argument("--expires-in", type=float, metavar="SECONDS")
    create.add_argument("--metadata", type=json.loads, default={}, metavar="JSON")

    listing = actions.add_parser("list", help="list keys")
    listing.add_argument("--all", action="store_true", help="include revoked keys")
    listing.add_argument("--project")

    get = actions.add_parser("get", help="show one key")
    get.add_argument("key_id")

    revoke = actions.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key_id")

    rotate = actions.add_parser("rotate", help="give a key a new secret")
    rotate.add_argument("key_id")
    rotate.add_argument(
        "--grace", type=float, default=3600.0, metavar="SECONDS",
        help="how long the current secret keeps working (default 3600)",
    )  # fmt: skip

    for action in (create, listing, get, revoke, rotate):
        action.add_argument("--config", metavar="FILE", help="YAML config file")


def _limits(args: argparse.Namespace) -> dict[str, Any]:
    profile = LimitProfile(
        rpm=args.rpm,
        tpm=args.tpm,
        max_parallel=args.max_parallel,
        token_budget=args.token_budget,
        budget_period=args.budget_period,
    )
    return profile.model_dump(exclude_defaults=True)


async def _run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    import redis.asyncio as aioredis

    from dtecho.security.keys import describe_key, key_service
    from dtecho.store import Store

    store = Store(settings.store_url)
    await store.start(migrate=settings.database_auto_migrate)
    url = settings.limits_redis_url
    redis = aioredis.Redis.from_url(url, socket_timeout=2) if url else None
    try:
        keys = key_service(settings, store, redis)
        command = args.keys_command
        if command == "create":
            expires = (
                datetime.now(UTC) + timedelta(seconds=args.expires_in) if args.expires_in else None
            )
            issued = await keys.create(
                name=args.name,
                project=args.project,
                roles=args.roles,
                allowed_models=args.models,
                limits=_limits(args),
                metadata=args.metadata,
                expires_at=expires,
                created_by="cli",
            )
            return {**describe_key(issued.record, [issued.secret]), "key": issued.key}
        if command == "list":
            records = await keys.list(include_revoked=args.all, project=args.project)
            return {"object": "list", "data": [describe_key(record) for record in records]}
        if command == "get":
            return describe_key(*await keys.get(args.key_id))
        if command == "revoke":
            return describe_key(await keys.revoke(args.key_id))
        issued = await keys.rotate(args.key_id, grace_seconds=args.grace)
        return {**describe_key(issued.record, [issued.secret]), "key": issued.key}
    finally:
        if redis is not None:
            await redis.aclose()
        await store.close()


def run_keys(args: argparse.Namespace, settings: Settings) -> int:
    """Run one ``dtecho keys`` action; prints JSON, returns the exit status."""
    if args.keys_command is None:
        print("dtecho keys: give an action: create, list, get, revoke, rotate", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(_run(args, settings))
    except DtechoError as exc:
        print(f"dtecho keys: {exc.message}", file=sys.stderr)
        return 1
    except (OSError, ConnectionError) as exc:
        print(f"dtecho keys: the store cannot be reached: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0
