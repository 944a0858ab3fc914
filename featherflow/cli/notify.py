"""The `notify` commands: channels (add, list, show, remove, enable, disable, test) and
the outbox (log, flush). They parse, call featherflow.notify, and print."""

import json

from featherflow import errors
from featherflow.cli.common import command, group, positive, seconds


def cmd_add(app, args) -> int:
    from featherflow import clock  # lazy: not for --help
    from featherflow.notify import admin  # lazy: peewee

    kinds = [(k, v) for k, v in (("command", args.command), ("webhook", args.webhook),
                                 ("email", args.email), ("ping", args.ping)) if v is not None]
    if len(kinds) != 1:
        raise errors.UsageError("give exactly one of --command CMD, --webhook URL, --email ADDR, --ping URL")
    kind, target = kinds[0]
    smtp = {"smtp_host": args.smtp_host, "smtp_port": args.smtp_port, "smtp_security": args.smtp_security,
            "smtp_user": args.smtp_user, "smtp_password_env": args.smtp_password_env,
            "smtp_password_file": args.smtp_password_file, "email_from": args.email_from}
    channel = admin.add(app.store, clock.now(), name=args.name, kind=kind, target=target, events=args.on,
                        flows=args.flow or (), schedules=args.schedule or (), repeat=args.repeat,
                        every=args.every, fmt=args.format, headers=args.header or (), timeout=args.timeout,
                        heartbeat=args.heartbeat, smtp=smtp)
    print(f"added channel {channel.name}: {channel.kind} on {', '.join(channel.events)} "
          f"(try it: featherflow notify test {channel.name})")
    return 0


def cmd_list(app, args) -> int:
    from featherflow.notify import admin  # lazy: peewee

    if args.json:
        print(json.dumps([admin.channel_json(c) for c in app.store.outbox.list_channels()], indent=2,
                         ensure_ascii=False))
    else:
        print("\n".join(admin.table(app.store)))
    return 0


def cmd_show(app, args) -> int:
    from featherflow.notify import admin  # lazy: peewee

    channel = app.store.outbox.get_channel(args.name)
    if args.json:
        print(json.dumps(admin.channel_json(channel), indent=2, ensure_ascii=False))
    else:
        print("\n".join(admin.channel_lines(channel)))
    return 0


def cmd_remove(app, args) -> int:
    channel = app.store.outbox.remove_channel(args.name)
    print(f"removed channel {channel.name} (its pending notifications are dropped)")
    return 0


def _enable(value: bool):
    def run(app, args) -> int:
        from featherflow import clock  # lazy: not for --help

        channel = app.store.outbox.set_channel_enabled(args.name, value, clock.now())
        print(f"channel {channel.name} {'enabled' if value else 'disabled'}")
        return 0
    return run


def cmd_test(app, args) -> int:
    from featherflow import clock  # lazy: not for --help
    from featherflow.notify import admin, send  # lazy: peewee

    ok, answer = admin.test(app.store, args.name, send.send, clock.now())
    print(f"{'delivered' if ok else 'not delivered'}: {answer}")
    return errors.EXIT_OK if ok else errors.EXIT_FAILED


def cmd_log(app, args) -> int:
    from featherflow.notify import admin  # lazy: peewee

    if args.channel:
        app.store.outbox.get_channel(args.channel)  # an unknown name is an error, not an empty log
    found = app.store.outbox.deliveries(channel=args.channel, state=args.state, limit=args.limit)
    if args.json:
        print(json.dumps([admin.delivery_json(app.store, d, tries=True) for d in found], indent=2,
                         ensure_ascii=False))
    else:
        print("\n".join(admin.log_lines(found)))
    return 0


def cmd_flush(app, args) -> int:
    from featherflow.notify import admin, send  # lazy: peewee

    done = admin.flush(app.store, send.send, budget=args.budget)
    if not args.quiet:
        print(f"notify flush: {done['events']} event(s) fanned out, {done['sent']} sent, "
              f"{done['retry']} to retry, {done['failed']} failed for good")
    return errors.EXIT_OK if not done["failed"] else errors.EXIT_FAILED


def add_commands(sub) -> None:
    """The `notify` group, under `sub`."""
    notify = group(sub, "notify", "notifications: channels, test, log, flush",
                   "Tell someone when a flow fails, recovers, is interrupted or misses its slot. Channels "
                   "are stored in the database; events go through a durable outbox.")
    p = command("add", cmd_add, "add a channel: --command, --webhook, --email or --ping", notify)
    p.add_argument("name", metavar="NAME", help="channel name (letters, digits, _ . -)")
    kind = p.add_argument_group("kind (exactly one)")
    kind.add_argument("--command", metavar="CMD", help="run CMD with sh -c, the event as JSON on stdin; exit 0 = delivered")
    kind.add_argument("--webhook", metavar="URL", help="POST the event to URL; 2xx = delivered")
    kind.add_argument("--email", metavar="ADDR", help="mail the event to ADDR over SMTP")
    kind.add_argument("--ping", metavar="URL", help="healthchecks.io-style: URL/start, URL, URL/fail")
    p.add_argument("--on", metavar="EVENTS",
                   help="comma-separated: started, succeeded, failed, interrupted, recovered, missed, cancelled, "
                        "scheduler, heartbeat (default failed,interrupted,recovered,missed; ping: "
                        "started,succeeded,recovered,failed,interrupted,cancelled)")
    p.add_argument("--flow", action="append", metavar="FLOW", help="only events of this flow (repeatable)")
    p.add_argument("--schedule", action="append", metavar="NAME", help="only events of this schedule (repeatable)")
    p.add_argument("--repeat", metavar="PERIOD",
                   help="a flow that keeps failing alerts again at most once per PERIOD (default 6h)")
    p.add_argument("--every", action="store_true", help="send every event (no storm control)")
    p.add_argument("--format", choices=("json", "slack", "discord", "ntfy"), help="webhook body (default json)")
    p.add_argument("--header", action="append", metavar="'K: V'", help="an HTTP header (repeatable)")
    p.add_argument("--timeout", type=seconds, metavar="S",
                   help="seconds before a try gives up (default: command 30, webhook/ping 10, email 20)")
    p.add_argument("--heartbeat", metavar="PERIOD", help="with --on heartbeat: how often the daemon pings (default 5m)")
    p.add_argument("--smtp-host", metavar="HOST", help="SMTP server (default localhost)")
    p.add_argument("--smtp-port", type=positive, metavar="PORT", help="default 25, 587 with starttls, 465 with ssl")
    p.add_argument("--smtp-security", choices=("none", "starttls", "ssl"),
                   help="default starttls with --smtp-user, else none")
    p.add_argument("--smtp-user", metavar="USER", help="SMTP login")
    p.add_argument("--smtp-password-env", metavar="VAR", help="read the password from environment variable VAR when sending")
    p.add_argument("--smtp-password-file", metavar="PATH", help="read the password from the first line of PATH when sending")
    p.add_argument("--email-from", metavar="ADDR", help="sender address (default featherflow@HOSTNAME)")
    p = command("list", cmd_list, "list channels", notify)
    p.add_argument("--json", action="store_true", help="JSON output")
    p = command("show", cmd_show, "show one channel", notify)
    p.add_argument("name", metavar="NAME")
    p.add_argument("--json", action="store_true", help="JSON output")
    p = command("remove", cmd_remove, "remove a channel", notify)
    p.add_argument("name", metavar="NAME")
    p = command("enable", _enable(True), "enable a channel", notify)
    p.add_argument("name", metavar="NAME")
    p = command("disable", _enable(False), "disable a channel (its events are not recorded while it is off)", notify)
    p.add_argument("name", metavar="NAME")
    p = command("test", cmd_test, "send a test event to a channel now and print the receiver's answer", notify)
    p.add_argument("name", metavar="NAME")
    p = command("log", cmd_log, "what was sent, to whom, when, how many tries, the last answer", notify)
    p.add_argument("--channel", metavar="NAME", help="one channel only")
    p.add_argument("--state", choices=("pending", "sending", "sent", "failed", "suppressed"), help="one state only")
    p.add_argument("--limit", type=positive, default=50, help="newest N (default 50)")
    p.add_argument("--json", action="store_true", help="JSON output, with every try")
    p = command("flush", cmd_flush, "deliver what is due now (for a cron line where no scheduler runs)", notify)
    p.add_argument("--quiet", action="store_true", help="print nothing")
    p.add_argument("--budget", type=seconds, default=300.0, metavar="S", help="stop after S seconds (default 300)")
