"""``python -m mcmi``: the command line. With ``MCMI_LAUNCHER=fork_server`` (the config's ``launcher:
fork_server``) the job runs in a child of the fork server, which has imported torch and the package
once (:mod:`mcmi.forkserver`); this entry then imports only the standard library."""

import sys

from mcmi.forkserver import run_through_server

status = run_through_server(sys.argv)
if status is None:
    from mcmi.cli import main

    status = main()
sys.exit(status)
