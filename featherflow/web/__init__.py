"""`featherflow serve`: a read-only status page and JSON for scripts, over the standard
library's threaded HTTP server.

site.py reads (the dashboard's snapshot, report.py's documents, log files by run, task
and attempt), pages.py turns what was read into HTML, auth.py decides who may ask, and
server.py answers requests. Nothing here writes to the database or runs anything.
"""


def import_server():
    """featherflow.web.server, imported for a process that only serves (`featherflow serve`):
    without ssl (see lean.py). The status page speaks plain HTTP and opens no connection
    of its own; only this process's http.client lacks HTTPSConnection, so a process that
    may send HTTPS (the tests, `notify flush`) imports server.py the plain way."""
    from featherflow import lean

    with lean.without("ssl"):
        from featherflow.web import server
    return server
