"""Entry points for ``medgen serve`` and its key commands (``create-key``, ``list-keys``, ``revoke-key``): plain
functions returning an exit code."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from medgen.serve.settings import BundleSpec, ServeSettings, default_data_dir

logger = logging.getLogger(__name__)


def _split(flag: str, item: str, names: Sequence[str], sep: str = "=") -> tuple[str, str]:
    """``NAME<sep>VALUE``; a bare VALUE applies to the only bundle given."""
    name, found, value = item.partition(sep)
    if found and name in names:
        return name, value
    if len(names) == 1:
        return names[0], item
    raise ValueError(f"{flag} {item!r}: write NAME{sep}VALUE with NAME one of {list(names)}")


def bundle_specs(bundles: Sequence[str] = (), ckpts: Sequence[str] = (), overrides: Sequence[str] = (),
                 discover: bool = True) -> dict[str, BundleSpec]:
    """The bundles to serve: discovered ones with weights (unless ``discover`` is False) plus ``--bundle``
    ``NAME=PATH`` (or a name/path), each with optional ``--ckpt NAME=PATH`` and ``--override NAME:key=value``."""
    from medgen.bundles import find_bundle
    from medgen.serve.catalog import discover_bundles

    specs = discover_bundles() if discover else {}
    named: list[str] = []
    for item in bundles:
        name, eq, path = item.partition("=")
        folder = find_bundle(path if eq else item).resolve()
        name = name if eq else folder.name
        specs[name] = BundleSpec(name, folder)
        named.append(name)
    names = named or list(specs)
    for item in ckpts:
        name, path = _split("--ckpt", item, names)
        specs[name].ckpt = Path(path).expanduser().resolve()
    for item in overrides:
        name, pair = _split("--override", item, names, sep=":")
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise ValueError(f"--override {item!r}: write NAME:key=value (value in YAML, e.g. image_size=32)")
        specs[name].overrides[key] = yaml.safe_load(value)
    for spec in specs.values():
        if not spec.weights.is_file():
            logger.error("bundle %s: no trained weights at %s; it is served as unavailable (train it with "
                         "`medgen train %s` or pass --ckpt %s=PATH)", spec.name, spec.weights, spec.name, spec.name)
    return specs


def serve_command(host: str = "127.0.0.1", port: int = 8000, data_dir: str | Path | None = None,
                  bundles: Sequence[str] = (), ckpts: Sequence[str] = (), overrides: Sequence[str] = (),
                  discover: bool = True, max_images: int = 64, queue_size: int = 16,
                  max_body_bytes: int = 64 * 1024, retention_days: float = 30.0) -> int:
    """``medgen serve``: run the REST API, the worker and the web page until interrupted.

    The process umask is set to 077, so whatever else it writes (logs, exports) is owner-only as well."""
    import uvicorn

    from medgen.serve.app import create_app

    if max_body_bytes < 1024:
        raise ValueError(f"--max-body-bytes must be at least 1024, got {max_body_bytes}")
    if retention_days < 0:
        raise ValueError(f"--retention-days must be 0 (keep results) or more, got {retention_days:g}")
    os.umask(0o077)
    specs = bundle_specs(bundles, ckpts, overrides, discover)
    if not specs:
        logger.warning("no bundle has trained weights: serving none (give one with --bundle NAME=PATH --ckpt ...)")
    settings = ServeSettings(data_dir=Path(data_dir).expanduser() if data_dir else default_data_dir(),
                             bundles=specs, max_images=max_images, queue_size=queue_size,
                             max_body_bytes=max_body_bytes, retention_days=retention_days)
    app = create_app(settings)
    logger.info("serving %s from %s on http://%s:%d (web page /ui, API docs /docs)",
                ", ".join(specs) or "no bundles", settings.data_dir, host, port)
    uvicorn.run(app, host=host, port=port, log_level="info")
    return 0


def create_key_command(name: str, data_dir: str | Path | None = None, max_jobs: int = 4) -> int:
    """``medgen serve create-key NAME``: print a new API key (stdout, once); only its hash is stored."""
    from medgen.serve.auth import create_key
    from medgen.serve.jobs import SQLiteJobStore

    settings = ServeSettings(data_dir=Path(data_dir).expanduser() if data_dir else default_data_dir())
    key = create_key(SQLiteJobStore(settings.db_path), name, max_jobs)
    print(f"created API key {name!r} (at most {max_jobs} active jobs) in {settings.db_path}; "
          "copy it now, only its hash is kept:", file=sys.stderr)
    print(key)
    return 0


def _store(data_dir: str | Path | None):
    from medgen.serve.jobs import SQLiteJobStore

    settings = ServeSettings(data_dir=Path(data_dir).expanduser() if data_dir else default_data_dir())
    if not settings.db_path.is_file():
        raise FileNotFoundError(f"no service database at {settings.db_path}: give --data-dir of the server "
                                "(or create a key first with `medgen serve create-key NAME`)")
    return SQLiteJobStore(settings.db_path)


def list_keys_command(data_dir: str | Path | None = None) -> int:
    """``medgen serve list-keys``: id, name, active-job limit, creation time and state of every key (never a key
    or its hash)."""
    keys = _store(data_dir).list_keys()
    print(f"{'ID':<16}  {'NAME':<24}  {'MAX_JOBS':>8}  {'CREATED':<29}  STATE")
    for k in keys:
        print(f"{k.id:<16}  {k.name:<24}  {k.max_jobs:>8}  {k.created_at:<29}  {'revoked' if k.revoked else 'active'}")
    return 0


def revoke_key_command(name_or_id: str, data_dir: str | Path | None = None) -> int:
    """``medgen serve revoke-key NAME|ID``: revoke the key with this id, else every key with this name. A running
    server checks the store on every request, so the key gets 401 from the next request on."""
    store = _store(data_dir)
    revoked = store.revoke_keys(name_or_id)
    if not revoked:
        known = [k for k in store.list_keys() if name_or_id in (k.id, k.name)]
        if known:
            print(f"key {name_or_id!r} was already revoked", file=sys.stderr)
            return 0
        raise ValueError(f"no key with id or name {name_or_id!r}; see `medgen serve list-keys`")
    for k in revoked:
        print(f"revoked key {k.id} ({k.name!r}); requests with it now get 401", file=sys.stderr)
    return 0


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``medgen serve`` and its ``create-key`` subcommand (shared by ``medgen`` and
    ``python -m medgen.serve``)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument("--data-dir", help="service state (default: $MEDGEN_SERVE_DIR or ~/.medgen/serve)")
    parser.add_argument("--bundle", action="append", default=[], metavar="NAME=PATH",
                        help="serve this bundle folder (repeatable); bundles with models/model.pt are found anyway")
    parser.add_argument("--ckpt", action="append", default=[], metavar="NAME=PATH", help="weights for a bundle")
    parser.add_argument("--override", action="append", default=[], metavar="NAME:KEY=VALUE",
                        help="inference.yaml override for a bundle, e.g. cxr:image_size=32")
    parser.add_argument("--no-discover", action="store_true", help="serve only the --bundle ones")
    parser.add_argument("--max-images", type=int, default=64, help="largest num_images per job")
    parser.add_argument("--queue-size", type=int, default=16, help="jobs that may wait")
    parser.add_argument("--max-body-bytes", type=int, default=64 * 1024,
                        help="largest request body in bytes; larger ones get 413 unread (default 65536)")
    parser.add_argument("--retention-days", type=float, default=30.0,
                        help="delete finished jobs' results this many days after they finished; 0 keeps them "
                             "(default 30)")
    verbs = parser.add_subparsers(dest="serve_verb")
    key = verbs.add_parser("create-key", help="create an API key (printed once)")
    key.add_argument("name", help="a name for the key (who or what uses it)")
    key.add_argument("--data-dir", dest="key_data_dir", help="as for serve")
    key.add_argument("--max-jobs", type=int, default=4, help="active (queued + running) jobs allowed at once")
    listing = verbs.add_parser("list-keys", help="list API keys (id, name, limit, created, active/revoked)")
    listing.add_argument("--data-dir", dest="key_data_dir", help="as for serve")
    revoke = verbs.add_parser("revoke-key", help="revoke an API key by id or name (401 from the next request)")
    revoke.add_argument("name_or_id", metavar="NAME|ID", help="the key's id (see list-keys) or name")
    revoke.add_argument("--data-dir", dest="key_data_dir", help="as for serve")


def run_from_args(args: argparse.Namespace) -> int:
    verb = getattr(args, "serve_verb", None)
    if verb == "create-key":
        return create_key_command(args.name, args.key_data_dir or args.data_dir, args.max_jobs)
    if verb == "list-keys":
        return list_keys_command(args.key_data_dir or args.data_dir)
    if verb == "revoke-key":
        return revoke_key_command(args.name_or_id, args.key_data_dir or args.data_dir)
    return serve_command(args.host, args.port, args.data_dir, args.bundle, args.ckpt, args.override,
                         discover=not args.no_discover, max_images=args.max_images, queue_size=args.queue_size,
                         max_body_bytes=args.max_body_bytes, retention_days=args.retention_days)
