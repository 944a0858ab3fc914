"""`retention set/show/clear`: the policy the scheduler applies once a day (and
`runs prune --policy` on demand). Parse, call the store, print; the rules and how they
are applied are in store/rules.py and store/retention.py."""

import json

from featherflow.cli.common import command, group


def _rule_json(rule):
    from featherflow import clock  # lazy: not for --help

    return {"scope": "global" if rule.scope == "*" else "flow", "flow": None if rule.scope == "*" else rule.scope,
            "enabled": rule.enabled,
            "older_than_seconds": None if rule.older_than is None else int(rule.older_than.total_seconds()),
            "keep_last": rule.keep_last, "updated_at": clock.iso(rule.updated_at)}


def policy_lines(rules, applied, now):
    """What `retention show` prints: the global rule, each flow's own, the last application."""
    from featherflow import text  # lazy: not for --help
    from featherflow.store import rules as rulemod  # lazy: peewee

    glob = rules.get(rulemod.GLOBAL)
    lines = [f"global: {rulemod.describe(glob)}" + ("" if glob else " (no global rule: runs are kept "
                                                       "until `featherflow runs prune`)")]
    for scope, rule in rules.items():
        if scope != rulemod.GLOBAL:
            lines.append(f"flow {scope}: {rulemod.describe(rule)}")
    if applied is None:
        lines.append("last applied: never (the scheduler applies it once a day; `featherflow runs prune --policy` now)")
    else:
        ago = text.duration((now - applied.at).total_seconds())
        lines.append(f"last applied: {text.local(applied.at)} ({ago} ago), deleted {applied.runs} run(s), "
                     f"{text.size(applied.bytes)}")
    return lines


def cmd_retention_set(app, args) -> int:
    from featherflow import clock  # lazy: not for --help
    from featherflow.cli import format as views  # lazy: not for --help
    from featherflow.errors import UsageError
    from featherflow.store import retention, rules as rulemod  # lazy: peewee

    try:
        older = views.parse_age(args.older_than) if args.older_than is not None else None
    except ValueError as exc:
        raise UsageError(f"--older-than: {exc}") from None
    rule = retention.set_policy(app.store, clock.now(), args.flow, older, args.keep_last, args.off)
    scope = "global rule" if rule.scope == rulemod.GLOBAL else f"rule of flow {rule.scope}"
    print(f"{scope}: {'delete finished runs ' if rule.active else ''}{rulemod.describe(rule)}")
    return 0


def cmd_retention_show(app, args) -> int:
    from featherflow import clock  # lazy: not for --help

    store, now = app.read_store(), clock.now()
    rules, applied = store.rules.rules(), store.rules.last_applied()
    if args.json:
        print(json.dumps({"rules": [_rule_json(r) for r in rules.values()],
                          "last_applied": None if applied is None else {
                              "at": clock.iso(applied.at), "runs": applied.runs, "bytes": applied.bytes}},
                         indent=2, ensure_ascii=False))
    else:
        print("\n".join(policy_lines(rules, applied, now)))
    return 0


def cmd_retention_clear(app, args) -> int:
    from featherflow.store import rules as rulemod  # lazy: peewee

    gone = app.store.rules.clear_rule(args.flow or rulemod.GLOBAL)
    what = f"the rule of flow {args.flow}" if args.flow else "the global rule"
    if not gone:
        print(f"no {what[4:]} to remove")
    elif args.flow:
        print(f"removed {what}: the global rule applies to it")
    else:
        print(f"removed {what}: runs are kept until `featherflow runs prune` (flows with a rule of their own excepted)")
    return 0


# -- parser -----------------------------------------------------------------

def add_commands(sub) -> None:
    """`retention set/show/clear`, under `sub`."""
    r_sub = group(sub, "retention", "the retention policy: which finished runs the scheduler deletes daily",
                  "The retention policy: finished runs (rows, scripts and logs) the scheduler deletes once a "
                  "day, and `runs prune --policy` on demand. Queued and running runs are never deleted.")
    p = command("set", cmd_retention_set, "set the global rule, or a flow's own (--flow), replacing the old one",
                r_sub)
    p.add_argument("--older-than", metavar="AGE",
                   help="delete finished runs that ended longer ago than AGE, e.g. 30d, 12h")
    p.add_argument("--keep-last", type=int, metavar="N",
                   help="always keep the newest N runs of each flow (alone: delete all but the newest N)")
    p.add_argument("--flow", metavar="FLOW", help="a rule for this flow only, in place of the global one")
    p.add_argument("--off", action="store_true",
                   help="delete nothing by itself (with --flow: never this flow's runs)")

    p = command("show", cmd_retention_show, "show the rules and when the policy was last applied", r_sub)
    p.add_argument("--json", action="store_true", help="print JSON (rules, last_applied)")

    p = command("clear", cmd_retention_clear, "remove the global rule (nothing deleted by itself) or a flow's "
                "own (--flow: the global rule applies again)", r_sub)
    p.add_argument("--flow", metavar="FLOW", help="remove this flow's rule")
