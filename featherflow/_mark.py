"""`_mark` as the generated script starts it: `python -I -S .../featherflow/_mark.py DB RUN_ID ...`.

Python compiles a file it runs as a script on every start, and imports a module from
its cached bytecode: so this file is a few lines, and everything is in mark.py, imported
(~4 ms less on each `_mark` process start). Same arguments and exit codes as mark.py.
"""

import os
import sys

# Started with `python -I -S`: the package's parent is not on sys.path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from featherflow import mark  # noqa: E402  (after the path it is found by)

mark.script()
