"""`python -m sweep.worker [OPTIONS]`: one worker process, with the options of `sweep worker`.

A pool starts each of its processes this way: by the installed package's name, never through
a module that the current directory (a user's project, with its own packages) could shadow.
"""

import sys

from sweep.cli import app

app(["worker", *sys.argv[1:]], prog_name="python -m sweep.worker")
