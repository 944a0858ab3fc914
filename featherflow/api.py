"""The Python API: `Featherflow`, compatible with the original tool's class.

    from featherflow import Featherflow
    ff = Featherflow(flows_dir="flows", tasks_dir="tasks", output_dir="out")
    ff.list_flows()
    script = ff.execute_flow("etl", params={"day": "2026-01-01"})
    ff.last_run.state  # "success"

The CLI is a thin layer over this class.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional

from featherflow import config
from featherflow.errors import READ_ONLY, DatabaseError, FeatherflowError, ValidationError, filesystem_state

if TYPE_CHECKING:  # flow.py is imported where it is used: `runs list` needs none of it
    from featherflow import flow as flowmod


@dataclass
class FlowInfo:
    name: str
    description: str
    tasks: int
    path: str
    error: Optional[str] = None


class Featherflow:
    def __init__(self, flows_dir=None, tasks_dir=None, output_dir=None, config_dir=None,
                 db=None, log_dir=None, env=None):
        self.config = config.resolve(flows_dir, tasks_dir, output_dir, config_dir, db, log_dir, env=env)
        self._store = None
        self.read_only = False  # the store is a read-only connection (read_store on a read-only disk)
        self.last_run = None

    # -- flows -------------------------------------------------------------

    def load_flow(self, name: str) -> "flowmod.Flow":
        """Load and validate a flow, its default params included: a task the kernel would
        refuse to start (limits.py) makes the flow invalid."""
        from featherflow.engine import limits  # lazy: peewee, not for `list`/`validate`

        return limits.load_flow(self.config.flows_dir, name, self.config.tasks_dir)

    def flow_infos(self) -> List[FlowInfo]:
        """Every flow file in the flows dir; a broken one carries its first error."""
        from featherflow import flow as flowmod  # lazy: 5-10 ms, not for `runs list`

        infos = []
        for name in flowmod.list_names(self.config.flows_dir):
            path = str(flowmod.flow_path(self.config.flows_dir, name))
            try:
                flow = self.load_flow(name)
            except ValidationError as exc:
                infos.append(FlowInfo(name, "", 0, path, exc.errors[0]))
            except FeatherflowError as exc:
                infos.append(FlowInfo(name, "", 0, path, str(exc)))
            else:
                infos.append(FlowInfo(name, flow.description, len(flow.tasks), path))
        return infos

    def list_flows(self) -> List[str]:
        """Names of the flows in the flows dir (the original API)."""
        from featherflow import flow as flowmod  # lazy: 5-10 ms, not for `runs list`

        return flowmod.list_names(self.config.flows_dir)

    def validate(self, names: Optional[List[str]] = None) -> Dict[str, List[str]]:
        """{flow name: [errors]} for the named flows, or all of them."""
        names = names or self.list_names_or_fail()
        problems: Dict[str, List[str]] = {}
        for name in names:
            try:
                self.load_flow(name)
                problems[name] = []
            except ValidationError as exc:
                problems[name] = exc.errors
        return problems

    def list_names_or_fail(self) -> List[str]:
        names = self.list_flows()
        if not names:
            raise FeatherflowError(f"no flows in {self.config.flows_dir} (a flow is <flows-dir>/<name>.json)")
        return names

    # -- storage -----------------------------------------------------------

    @property
    def store(self):
        if self._store is None:
            from featherflow.store import Store, db  # lazy: peewee, not for `list`/`validate`

            self._store = Store(db.open_database(self.config.db_path, self.config.config_dir))
        return self._store

    def read_store(self):
        """The store for a command that only reads (runs list/show/logs).

        The usual store when the database can be opened for writing; when its
        filesystem is read-only (a remount after an error, a write-protected SD
        card), a read-only connection instead, so what is recorded can still be
        read. Nothing can be reconciled or migrated through it: `read_only` says so.
        """
        from featherflow.store import db  # lazy: peewee, not for `list`/`validate`
        from featherflow.store import Store  # lazy: peewee, not for `list`/`validate`

        try:
            return self.store
        except DatabaseError:
            path = self.config.db_path
            if filesystem_state(path) != READ_ONLY or not path.is_file():
                raise
        self._store = Store(db.open_read_only(self.config.db_path, bind_models=True))
        self.read_only = True
        return self._store

    @property
    def opened(self):
        """The store if a command opened it, else None (nothing is opened to ask)."""
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    # -- notifications ------------------------------------------------------

    def add_channel(self, name: str, kind: str, target: str, **fields):
        """A notification channel, as `featherflow notify add` makes it (fields: events,
        flows, schedules, repeat, every, fmt, headers, timeout, heartbeat, smtp)."""
        from featherflow import clock  # lazy: not for import featherflow
        from featherflow.notify import admin

        return admin.add(self.store, clock.now(), name=name, kind=kind, target=target, **fields)

    def channels(self):
        return self.store.outbox.list_channels()

    def remove_channel(self, name: str):
        return self.store.outbox.remove_channel(name)

    def flush_notifications(self, budget: float = 300.0) -> Dict[str, int]:
        """Deliver what is due now, as `featherflow notify flush` does."""
        from featherflow.notify import admin, send

        return admin.flush(self.store, send.send, budget)

    # -- runs ----------------------------------------------------------------

    def execute_flow(self, name: str, params: Optional[dict] = None, dry_run: bool = False,
                     max_parallel: Optional[int] = None) -> str:
        """Run a flow to its end and return the path of its script (the original API).

        The run itself is in `self.last_run` afterwards (id, state, ...).
        """
        from featherflow.engine import launch  # lazy: peewee, not for `list`/`validate`

        store = None if dry_run else self.store  # a dry run records nothing: no database opened for it
        prepared = launch.prepare(self.config, store, name, params or {}, max_parallel=max_parallel,
                                  dry_run=dry_run)
        if not dry_run:
            launch.run_and_wait(prepared)
            self.last_run = self.store.runs.get_run(prepared.run.id)
        return str(prepared.script_path)
