"""`python -m tests.mailsystem install|start|stop|restart|status|token [--dir DIR]`.

Runs the test mail system by hand; `start` prints its ports, accounts and log directory as JSON;
`token --user ADDRESS [--lifetime SECONDS]` prints an OAuth access token Dovecot accepts for it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tests.mailsystem.system import MailSystem, MailSystemError, ensure_installed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mailsystem", description=__doc__)
    parser.add_argument(
        "action", choices=["install", "start", "stop", "restart", "status", "token"]
    )
    parser.add_argument("--dir", type=Path, help="instance directory (default: a new temp dir)")
    parser.add_argument("--user", help="token: the account's address")
    parser.add_argument("--lifetime", type=float, default=3600.0, help="token: seconds valid")
    args = parser.parse_args(argv)
    try:
        if args.action == "install":
            print(f"install took {ensure_installed():.1f} s")
            return 0
        if args.action == "start":
            t0 = time.monotonic()
            ensure_installed()
            if args.dir and (args.dir / "mailsystem.json").exists():
                system = MailSystem.load(args.dir)
            else:
                system = MailSystem.create(args.dir)
            system.start()
            system.timings["total"] = time.monotonic() - t0
            print(json.dumps(system.describe(), indent=2))
            print(f"timings: {system.timing_report()}", file=sys.stderr)
            return 0
        if args.dir is None:
            parser.error(f"{args.action} needs --dir")
        system = MailSystem.load(args.dir)
        if args.action == "token":
            if not args.user:
                parser.error("token needs --user")
            print(system.mint_token(args.user, lifetime=args.lifetime))
            return 0
        if args.action == "stop":
            system.stop()
        elif args.action == "restart":
            system.restart()
        print(json.dumps(system.describe(), indent=2))
        print(f"timings: {system.timing_report()}", file=sys.stderr)
        return 0
    except MailSystemError as exc:
        print(f"mailsystem: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
