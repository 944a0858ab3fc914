"""`featherflow serve`: the read-only status page (web/), its token and its systemd unit.

Like the dashboard it never opens app.store (that would create or migrate the
database) and never reconciles (that writes).
"""

import argparse

from featherflow.cli.common import command

DEFAULT_PORT = 8787


def port(value: str) -> int:
    """A TCP port, 0 (any free one) to 65535."""
    if not value.isdigit() or int(value) > 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port (valid: 0 to 65535)")
    return int(value)


def cmd_serve(app, args) -> int:
    import sys
    from pathlib import Path

    from featherflow.web import auth  # lazy: not for --help

    token_file = Path(args.token_file) if args.token_file else Path(app.config.config_dir) / auth.TOKEN_FILE
    if args.print_unit:
        import getpass

        from featherflow import config  # lazy: not for --help
        from featherflow.scheduler import systemd  # lazy: peewee

        user = config.scheduler_env()["sudo_user"] or getpass.getuser()
        sys.stdout.write(systemd.serve_unit_text(app.config, user, args.bind, args.port,
                                                 str(token_file.absolute()), system=not args.user))
        return 0
    if args.new_token:
        token = auth.new_token(token_file)
        host = "THIS-MACHINE" if args.bind in ("0.0.0.0", "::") else args.bind
        print(f"wrote a new token to {token_file} (readable only by you); the old one no longer works")
        print(f"open on your phone: http://{host}:{args.port}/login?token={token}")
        return 0
    from featherflow.web import import_server  # lazy: not for --help

    server = import_server()  # without ssl: the status page's memory

    token = auth.read_token(token_file)

    def ready(srv) -> None:
        host, port = srv.server_address[:2]
        print(f"serving http://{host}:{port}/ (read only; {'token required' if token else 'loopback only'}); "
              "Ctrl-C stops", flush=True)

    return server.serve(app.config.db_path, args.bind, args.port, token, on_ready=ready)


def add_commands(sub) -> None:
    p = command("serve", cmd_serve, "a read-only status page and JSON API over HTTP (loopback unless a token "
                "is configured)", sub)
    p.add_argument("--bind", default="127.0.0.1", metavar="ADDRESS",
                   help="address to listen on (default: 127.0.0.1; any other needs a token, see --new-token)")
    p.add_argument("--port", type=port, default=DEFAULT_PORT, metavar="PORT",
                   help=f"TCP port (default: {DEFAULT_PORT}; 0 picks a free one)")
    p.add_argument("--token-file", metavar="PATH",
                   help="the token every request must carry, when the file exists (default: <config dir>/serve.token)")
    p.add_argument("--new-token", action="store_true",
                   help="write a new random token to the token file (0600), print the /login URL, and exit")
    p.add_argument("--print-unit", action="store_true",
                   help="print a systemd unit that runs this command at boot, and exit")
    p.add_argument("--user", action="store_true", help="with --print-unit: a user unit (systemctl --user)")
