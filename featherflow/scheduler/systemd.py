"""The systemd unit that starts the scheduler at boot, and `scheduler install`, which writes it.

The unit runs `featherflow scheduler start --foreground`
with the config dir, database and log dir of the CLI that wrote it, so systemd
supervises the same daemon `scheduler start` would.
"""

import os
import pwd
import sys
from pathlib import Path
from typing import Optional

from featherflow.config import Config
from featherflow.errors import UsageError

UNIT_NAME = "featherflow-scheduler.service"


def _systemd_quote(word: str) -> str:
    word = word.replace("%", "%%").replace("$", "$$")
    if word and all(c.isalnum() or c in "/._-+:=@," for c in word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unit_text(cfg: Config, user: Optional[str], system: bool = True, check_interval: Optional[float] = None,
              python: str = sys.executable, allow_root: bool = False) -> str:
    """A systemd unit that starts the scheduler at boot, once the clock is synchronised.

    `allow_root`: the unit runs the scheduler as root and passes --allow-root on.
    """
    argv = [python, "-m", "featherflow", "--config-dir", str(cfg.config_dir), "--db", str(cfg.db_path),
            "--log-dir", str(cfg.log_dir), "scheduler", "start", "--foreground"]
    if check_interval:
        argv += ["--check-interval", f"{check_interval:g}"]
    if allow_root:
        argv.append("--allow-root")
    path = os.pathsep.join([str(Path(python).parent), "/usr/local/bin", "/usr/bin", "/bin"])
    unit = [
        "# Featherflow scheduler; written by `featherflow scheduler install`.",
        "[Unit]",
        f"Description=Featherflow scheduler{f' of {user}' if user else ''}",
    ]
    if system:
        unit += [
            "# Slots are wall-clock times: wait for NTP (a Pi has no RTC) when",
            "# systemd-time-wait-sync.service (or chrony's equivalent) is enabled.",
            "After=time-sync.target network-online.target",
            "Wants=time-sync.target",
        ]
    else:
        unit += ["# A user unit cannot wait for time-sync.target: use --system on a machine without RTC."]
    unit += ["", "[Service]", "Type=simple"]
    if user == "root" and allow_root:
        unit.append("# As root, with --allow-root: every scheduled flow runs as root.")
    elif user == "root":
        unit += [f"# {line}" for line in (ROOT_NOTE[0].upper() + ROOT_NOTE[1:]).split("\n")]
    if system and user:
        unit.append(f"User={user}")
    unit += [
        f"ExecStart={' '.join(_systemd_quote(a) for a in argv)}",
        f"Environment={_systemd_quote('PATH=' + path)}",
        "Restart=on-failure",
        "RestartSec=10",
        "# Stop (or restart) only the scheduler: the flows it started keep running.",
        "KillMode=process",
        "",
        "[Install]",
        f"WantedBy={'multi-user.target' if system else 'default.target'}",
        "",
    ]
    return "\n".join(unit)


ROOT_NOTE = ("this unit runs the scheduler as root, and the scheduler refuses root without --allow-root:\n"
             "run `featherflow scheduler install --print` as the user it should run as, or\n"
             "add --allow-root (every scheduled flow then runs as root).")


def runs_as_root(euid: Optional[int] = None, sudo_user: Optional[str] = None) -> bool:
    """True when `scheduler install` makes a unit for root: root with no other user behind sudo."""
    euid = os.geteuid() if euid is None else euid
    return euid == 0 and (not sudo_user or sudo_user == "root")


def install(cfg: Config, system: bool = True, write: bool = True, euid: Optional[int] = None,
            sudo_user: Optional[str] = None, home: Optional[str] = None, allow_root: bool = False):
    """(path or None, unit text): the unit for the invoking user, written unless `write` is False.

    As root with no user behind sudo (a container, a t2.nano with only root), the unit runs
    the scheduler as root: printing it is harmless, writing it needs `allow_root`, the
    same explicit choice as `scheduler start --allow-root`, which the unit then passes on.
    """
    euid = os.geteuid() if euid is None else euid
    if euid == 0 and not runs_as_root(euid, sudo_user):
        if not system:
            raise UsageError("a --user unit is installed by the user it runs as: run it without sudo")
        root_home = home or os.path.expanduser("~")
        if str(cfg.config_dir).startswith(root_home.rstrip("/") + "/"):
            raise UsageError(f"under sudo the config dir is root's ({cfg.config_dir}); pass --config-dir, or run "
                             f"`featherflow scheduler install --print | sudo tee /etc/systemd/system/{UNIT_NAME}` "
                             f"as {sudo_user}")
        user = sudo_user
    elif runs_as_root(euid, sudo_user):
        user = "root"
        if write and not allow_root:
            raise UsageError("a unit that runs the scheduler as root (every scheduled flow with it) needs "
                             "--allow-root, which its ExecStart then passes on (or, as the user it should run "
                             f"as: `featherflow scheduler install --print | sudo tee /etc/systemd/system/{UNIT_NAME}`)")
    else:
        user = pwd.getpwuid(euid).pw_name
    text = unit_text(cfg, user, system, allow_root=allow_root and user == "root")
    if not write:
        return None, text
    if system:
        path = Path("/etc/systemd/system") / UNIT_NAME
    else:
        path = Path(home or os.path.expanduser("~")) / ".config" / "systemd" / "user" / UNIT_NAME
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:
        raise UsageError(f"cannot write {path} ({exc.strerror}); print it instead: "
                         f"`featherflow scheduler install --print | sudo tee {path}`") from None
    return path, text


SERVE_UNIT_NAME = "featherflow-serve.service"


def serve_unit_text(cfg: Config, user: Optional[str], bind: str, port: int, token_file: Optional[str],
                    system: bool = True, python: str = sys.executable) -> str:
    """A unit of its own for `featherflow serve` (`serve --print-unit`): the status page
    starts at boot, with the scheduler's config dir and database, read-only everywhere
    but the config dir (a WAL reader writes the database's -shm file)."""
    argv = [python, "-m", "featherflow", "--config-dir", str(cfg.config_dir), "--db", str(cfg.db_path),
            "serve", "--bind", bind, "--port", str(port)]
    if token_file:
        argv += ["--token-file", str(token_file)]
    unit = ["# Featherflow status page; written by `featherflow serve --print-unit`.",
            "[Unit]", f"Description=Featherflow status page{f' of {user}' if user else ''}",
            "After=network-online.target", "", "[Service]", "Type=simple"]
    if system and user:
        unit.append(f"User={user}")
    unit += [f"ExecStart={' '.join(_systemd_quote(a) for a in argv)}",
             "Restart=on-failure", "RestartSec=10",
             "# It only reads: nothing but the database's directory may be written.",
             "NoNewPrivileges=yes", "ProtectSystem=strict", f"ReadWritePaths={_systemd_quote(str(cfg.config_dir))}",
             "PrivateTmp=yes",
             "", "[Install]", f"WantedBy={'multi-user.target' if system else 'default.target'}", ""]
    return "\n".join(unit)
