"""`featherflow serve`: a read-only status page and JSON for scripts, over the standard
library's threaded HTTP server.

site.py reads (the dashboard's snapshot, report.py's documents, log files by run, task
and attempt), pages.py turns what was read into HTML, auth.py decides who may ask, and
server.py answers requests. Nothing here writes to the database or runs anything.
"""
